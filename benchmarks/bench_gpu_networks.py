"""Training speed of every network of the repository in float32, mixed_float16 and mixed_bfloat16.

Every network of ``leukocyte_cnn/models/`` (``networks.py``, ``resnext.py``) is trained on random
batches held in memory, at the input size and batch size of the study that uses it (no input
pipeline: this is what the accelerator can do). For each precision policy:

* images/s of training, timed over ``SECONDS_PER_CASE`` after two untimed steps; each step
  is a whole training step as the scripts run it (``AUGMENT_IN = "step"``): uint8 batches
  in, then the online augmentation (any-angle turn and flips,
  ``step_augment.StepAugmentation``) on the device, then the network (``--no-augment``: the
  network alone, float32 batches; the U-Net is never augmented: its masks would need the
  same transform);
* the first step's wall time: building the step function (tracing, XLA/cuDNN compilation),
  which every fold of a run pays once;
* whether the loss stayed finite over all steps (``mixed_float16`` trains with Keras' loss
  scaling; the output layers are float32);

and a table with each mixed policy's speed as a ratio to float32 measured in the same run.
The study's full default run is then estimated as training images x epochs / (images/s)
(upper bound: early stopping usually ends sooner; no input pipeline, no validation passes).

Pure Keras: it runs on any Keras 3 backend, so a GPU machine with CUDA and JAX but no
TensorFlow can run it with ``KERAS_BACKEND=jax`` (copy ``benchmarks/`` and ``leukocyte_cnn/``;
``pip install keras jax[cuda12]``). TensorFlow is imported only when
it is Keras' backend (device list, the CPU convolution fixes for ResNeXt).

Run: ``.venv/bin/python benchmarks/bench_gpu_networks.py [--quick] [--only NAMES]``
(``--quick``: tiny inputs and batches, eager steps: a smoke run of every network in about two
minutes on a CPU; its numbers say nothing about a GPU).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import time
import warnings

import common  # puts the repository on sys.path; imports no TensorFlow

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
SECONDS_PER_CASE = 10.0    # timed training per network and policy, after the warm-up
WARMUP_STEPS = 2           # untimed steps first (the first one builds the step function)
SEED = 0
# (name, study script, builder, input (H, W, C), batch, classes, training images x epochs of
# the study's full default run, or None when the study trains a varying set).
# Training images: the real data sets' training parts under the default split (ALL-IDB2: 260
# images, 5 tested and 20 % of the rest validating per fold; Kaggle: 6,830 of the 9,957 TRAIN
# images train, the rest validates (shared/NOTES.md); C-NMC: 10,661 cells in fold_0..2, about
# 20 % of the training patients validate); epochs: the script's EPOCHS, an upper bound.
CASES = [
    ("linear_cnn_binary", "linear_cnn_binary_lpocv.py", "linear_cnn", (257, 257, 3), 5, 2,
     52 * 204 * 500),   # ALL-IDB2 leave-5-out: 52 folds x ~204 training images x 500 epochs
    ("linear_cnn_multiclass", "linear_cnn_multiclass_lpocv.py", "linear_cnn", (257, 257, 3),
     15, 7, None),      # trains on each fold's class-balanced augmented set (linear_cnn_da.py)
    ("paper_cnn", "all_idb1_paper_cnn.py", "paper_cnn", (100, 100, 3), 100, 2,
     1 * 69 * 11 * 150),  # held-out fold 0: ~69 training crops x (1 + 10 rotations) x 150
    ("elu_cnn", "elu_cnn_optimizers.py", "elu_cnn", (120, 160, 3), 32, 4,
     4 * 3 * 6830 * 40),  # 4 models x 3 seeds x 6,830 Kaggle TRAIN images x 40 epochs
    ("copenhagen_cnn", "scaling_masks_cnn_fcn.py", "copenhagen_cnn", (120, 160, 3), 128, 4,
     4 * 3 * 10 * 6830 * 60),  # 4 scalings x 3 masks x 10 trials x 6,830 x 60 epochs
    ("copenhagen_fcn", "scaling_masks_cnn_fcn.py", "copenhagen_fcn", (120, 160, 3), 128, 4,
     4 * 3 * 10 * 6830 * 60),
    ("unet", "unet_masks.py", "unet", (120, 160, 1), 32, 1, 6830 * 30),
    ("resnext29", "resnext_from_scratch.py", "resnext29", (96, 96, 3), 32, 7,
     5 * 1050 * 100),  # 5 folds x 7 classes balanced to 150 images x 100 epochs
    ("resnext50_32x4d", "resnext_from_scratch.py --variant resnext50_32x4d", "resnext50_32x4d",
     (224, 224, 3), 32, 7, 5 * 1050 * 100),
    ("resnet50", "resnet50_training_depth.py", "resnet50", (120, 160, 3), 32, 4,
     3 * 3 * 6830 * 30),  # 3 depths x 3 seeds x 6,830 x 30 epochs
    ("efficientnetb3", "cnmc_transfer.py", "EfficientNetB3", (224, 224, 3), 40, 2,
     (3 * 5700 + 8500) * 40),  # 3 folds x ~5,700 + final ~8,500 training cells x 40 epochs
    ("inceptionresnetv2", "cnmc_transfer.py --backbone InceptionResNetV2", "InceptionResNetV2",
     (224, 224, 3), 40, 2, (3 * 5700 + 8500) * 40),
]
# --quick: every network at a tiny input and batch, one step, timed (on TensorFlow run eagerly:
# no step function to build, so its "1st step" is no compile time); keras.applications
# backbones at their smallest sizes (InceptionResNetV2 needs 75 px); the mixed policies only
# for the networks under 5 M parameters (the big ones take minutes in emulated float16)
QUICK = dict(SECONDS_PER_CASE=0.0, WARMUP_STEPS=0, BATCH=2, MIXED_MAX_PARAMS=5_000_000,
             SIZES={"linear_cnn": (32, 32), "paper_cnn": (24, 24), "elu_cnn": (32, 32),
                    "copenhagen_cnn": (48, 64), "copenhagen_fcn": (48, 64), "unet": (32, 32),
                    "resnext29": (32, 32), "resnext50_32x4d": (32, 32), "resnet50": (32, 32),
                    "EfficientNetB3": (32, 32), "InceptionResNetV2": (75, 75)})


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs and batches, one timed step per case (a smoke run)")
    parser.add_argument("--only", default=None,
                        help="comma-separated network names, e.g. elu_cnn,resnext29")
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help=f"comma-separated precision policies (default {','.join(POLICIES)})")
    parser.add_argument("--no-augment", action="store_true",
                        help="time the network alone (no in-step augmentation, float32 input)")
    parser.add_argument("--seconds", type=float, default=None,
                        help=f"timed seconds per case (default {SECONDS_PER_CASE})")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- the machine


def machine_line() -> str:
    """Backend, accelerators, CPU and load: without importing TensorFlow under JAX."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
        accelerators = f"JAX {jax.__version__} devices: {devices} x{len(jax.devices())}"
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                 for g in gpus]
        accelerators = (f"TensorFlow {tf.__version__}, "
                        + (", ".join(names) if names else "no GPU"))
    else:
        accelerators = backend
    return (f"machine: {common.cpu_model()}, {os.cpu_count()} cores; Keras {keras.__version__} "
            f"on {backend}; {accelerators}; Python {platform.python_version()}; "
            f"{_dt.datetime.now().isoformat(timespec='minutes')}; load {common.load_average()}")


# --------------------------------------------------------------------------- networks


def build(builder: str, shape: tuple[int, int, int], classes: int):
    """A fresh, uncompiled network as its study builds it (random weights)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "only n of 6 conv blocks fit" at small sizes
        return common.study_network(builder, shape, classes)


def random_batch(model, batch: int, classes: int, rng, as_uint8: bool = False):
    """Pixels in [0, 255] (uint8 for a step that augments and casts) and labels (a binary
    mask for the U-Net)."""

    x = rng.uniform(0, 255, (batch, *model.input_shape[1:])).astype(
        "uint8" if as_uint8 else "float32")
    out = model.output_shape
    if len(out) == 4:  # U-Net: one mask per image
        y = (rng.uniform(size=(batch, *out[1:])) > 0.5).astype("float32")
    elif out[-1] == 1:
        y = rng.integers(0, 2, (batch, 1)).astype("float32")
    else:
        y = rng.integers(0, classes, (batch,)).astype("int32")
    return x, y


def measure(builder: str, shape, batch: int, classes: int, policy: str, *, seconds: float,
            warmup: int, eager: bool = False, augment: bool = True) -> dict:
    """images/s, first-step seconds and a finite-loss check of one network under ``policy``,
    trained behind the in-step augmentation unless ``augment`` is false (or a U-Net)."""
    import keras
    import numpy as np

    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(SEED)
        network = model = build(builder, shape, classes)
        out = network.output_shape
        augment = augment and len(out) != 4  # a U-Net's masks would need the same transform
        if augment:
            from leukocyte_cnn.inputs.step_augment import AugmentedTrainer, StepAugmentation

            model = AugmentedTrainer(network, StepAugmentation(
                rotation_degrees=359, horizontal_flip=True, vertical_flip=True, seed=SEED))
        loss = ("binary_crossentropy" if len(out) == 4 or out[-1] == 1
                else "sparse_categorical_crossentropy")
        model.compile(optimizer="adam", loss=loss, run_eagerly=eager)
        x, y = random_batch(network, batch, classes, np.random.default_rng(SEED), augment)
        losses = []
        start = time.perf_counter()
        losses.append(model.train_on_batch(x, y))
        first = time.perf_counter() - start
        for _ in range(warmup - 1):
            losses.append(model.train_on_batch(x, y))
        steps, start = 0, time.perf_counter()
        while warmup and (steps < 1 or time.perf_counter() - start < seconds):
            losses.append(model.train_on_batch(x, y))
            steps += 1
        # no warm-up (--quick, eager steps: nothing to build): the first step is the timed one
        rate = steps * batch / (time.perf_counter() - start) if steps else batch / first
        finite = all(math.isfinite(float(np.asarray(v).ravel()[0])) for v in losses)
        return {"img_s": rate, "first_s": first, "finite": finite,
                "params": network.count_params(), "augmented": augment}
    except Exception as exc:  # noqa: BLE001 - e.g. a kernel this device lacks for a dtype
        text = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return {"error": f"{type(exc).__name__}: {(text[-1] if text else '')[:100]}"}
    finally:
        keras.mixed_precision.set_global_policy("float32")


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# --------------------------------------------------------------------------- main


def main(args: argparse.Namespace) -> int:
    import keras

    seconds = args.seconds if args.seconds is not None else (
        QUICK["SECONDS_PER_CASE"] if args.quick else SECONDS_PER_CASE)
    warmup = QUICK["WARMUP_STEPS"] if args.quick else WARMUP_STEPS
    # --quick on TensorFlow: eager steps (tracing a big model costs more than a tiny step);
    # on JAX eager compiles every op on its own, so the step is jit-compiled there too
    eager = args.quick and keras.backend.backend() == "tensorflow"
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if keras.backend.backend() == "tensorflow":
        from leukocyte_cnn.base.grouped_conv import use_cpu_convolution_fixes

        use_cpu_convolution_fixes()  # as every training script on a CPU; nothing on a GPU
    cases = CASES
    if args.only:
        wanted = {w.strip() for w in args.only.split(",")}
        cases = [case for case in CASES if case[0] in wanted]
    print("== training throughput per precision policy (random batches in memory, "
          f"{'QUICK: tiny inputs' if args.quick else 'study input sizes and batches'}; "
          + ("the network alone)" if args.no_augment else
             "whole steps: uint8 in, any-angle turn + flips on the device, the network; "
             "U-Net not augmented)"))
    print(machine_line(), flush=True)
    head = f"{'network':22s} {'input':>11s} {'batch':>5s} {'params':>11s}"
    for policy in policies:
        head += f" | {policy:>14s} img/s  1st step"
    print(head + " | finite | wall", flush=True)
    rows, started = [], time.perf_counter()
    for name, _, builder, shape, batch, classes, work in cases:
        if args.quick:
            shape = (*QUICK["SIZES"][builder], shape[2])
            batch = QUICK["BATCH"]
        case_start = time.perf_counter()
        results = {}
        for policy in policies:
            big = results.get("float32", {}).get("params", 0) > QUICK["MIXED_MAX_PARAMS"]
            if args.quick and policy != "float32" and big:
                results[policy] = {"skipped": True}
                continue
            results[policy] = measure(builder, shape, batch, classes, policy, seconds=seconds,
                                      warmup=warmup, eager=eager, augment=not args.no_augment)
        params = next((r["params"] for r in results.values() if "params" in r), 0)
        line = f"{name:22s} {'x'.join(map(str, shape[:2])):>11s} {batch:5d} {params:11,d}"
        for policy in policies:
            r = results[policy]
            line += (f" | {'failed':>14s}" + " " * 16 if "error" in r else
                     f" | {'(--quick)':>14s}" + " " * 16 if "skipped" in r else
                     f" | {r['img_s']:14.1f}       {r['first_s']:6.1f} s")
        finite = all(r.get("finite") for r in results.values() if "skipped" not in r)
        print(line + f" | {'yes' if finite else 'NO':>6s} | "
              f"{time.perf_counter() - case_start:.0f} s", flush=True)
        rows.append((name, results, work))

    print("\nratios to float32 (images/s, > 1 = faster):")
    for name, results, _ in rows:
        base = results.get("float32", {}).get("img_s")
        parts = []
        for policy in policies[1:] if policies[0] == "float32" else policies:
            r = results[policy]
            if "skipped" in r:
                continue
            parts.append(f"{policy} " + (r["error"] if "error" in r else
                                         f"{r['img_s'] / base:.2f}x" if base else "n/a"))
        print(f"  {name:22s} " + ("; ".join(parts) or "float32 only (--quick)"))

    if not args.quick:
        print("\nfull default run of each study on this device (training images x epochs / "
              "images/s; an upper bound: early stopping usually ends sooner):")
        for name, results, work in rows:
            rates = {p: r["img_s"] for p, r in results.items() if "img_s" in r}
            if not work or not rates:
                print(f"  {name:22s} n/a (the study's training set varies)")
                continue
            print(f"  {name:22s} {work:,} images: " + ", ".join(
                f"{p} {duration(work / rate)}" for p, rate in rates.items()))
    for name, results, _ in rows:
        for policy, r in results.items():
            if "error" in r:
                print(f"{name} {policy}: {r['error']}")
    print(f"\n{len(rows)} networks in {time.perf_counter() - started:.0f} s; load average at "
          f"the end: {common.load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
