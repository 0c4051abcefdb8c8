"""Training-step speed of the repository's networks on this machine, with FLOPs and GFLOP/s.

For each network (the thesis' linear CNN at 257 and 64 px, the ELU CNN of the 4-class study
at 64 px and at its 120x160, the CPU-sized ResNeXt-29 at 64 px) one Keras training step
(forward, backward, optimizer update) is timed on a batch of random float32 pixels held
in memory: no input pipeline, warm-up steps (graph tracing, oneDNN kernel selection)
excluded. Figures:

* images/s of training;
* forward FLOPs per image, counted analytically per layer: a convolution costs
  2·H_out·W_out·k_h·k_w·C_in/groups·C_out, a dense layer 2·in·out (one multiply-add = 2
  FLOPs; biases, BatchNorm, activations and pooling are left out: a few per cent, see the
  ``profiler`` column, TensorFlow's own count of every forward op, printed as a check);
* training FLOPs per image taken as 3 × forward (forward + two backward products: the
  usual convention; the first layer's input gradient, which Keras skips, is included);
* achieved GFLOP/s = images/s × training FLOPs per image;
* CPU milliseconds per image (all threads of the process) and GFLOP per CPU-second: unlike
  the wall time they hardly change when other processes share the machine, so they (and
  ratios of them) are the robust figures on a busy machine.

Grouped convolutions (ResNeXt) run on TensorFlow's own CPU kernel via
``leukocyte_cnn.base.grouped_conv.use_native_grouped_conv``, as the ResNeXt scripts do (Keras'
default XLA path for them is ~150x slower on a CPU).

``--xla`` also times each network compiled with ``jit_compile=True`` and ``--mixed-precision``
under the ``mixed_float16`` policy, each printed as a ratio to float32 measured in the same
run (not for the 120x160 ELU CNN, too slow in float16 on a CPU; no XLA for ResNeXt). Both are
GPU switches: on a CPU XLA was slower and float16 is emulated (slow). Shown here to say so
with numbers, not to recommend them for a CPU. TensorFlow's op determinism is left off here:
with it on, Keras silently turns ``jit_compile=True`` off (see ``docs/gpu_and_cluster.md``).

Run: ``.venv/bin/python benchmarks/bench_training_step.py [--quick] [--xla] [--mixed-precision]``
"""
from __future__ import annotations

import argparse
import time
import warnings

import common

BATCH_SIZE = 32            # images per training step
WARMUP_STEPS = 2           # untimed steps first (tracing, kernel selection)
MIN_STEPS = 2              # timed steps at least ...
SECONDS_PER_CASE = 15.0    # ... and more until this much time is spent
REPEATS = 3                # timed rounds per case; the fastest counts (least disturbed)
SEED = 0
# (name, builder, input (H, W), classes, time --xla/--mixed-precision too?): the networks as
# the studies use them. The switches are skipped for the ELU CNN at 120x160 (a float16 step
# there takes minutes on a CPU) and --xla for ResNeXt (XLA's CPU grouped convolution is
# ~150x slower, see leukocyte_cnn/grouped_conv.py).
CASES = [
    ("linear_cnn 257px", "linear_cnn", (257, 257), 2, {"xla", "mixed"}),
    ("linear_cnn 64px", "linear_cnn", (64, 64), 2, {"xla", "mixed"}),
    ("elu_cnn 64px", "elu_cnn", (64, 64), 4, {"xla", "mixed"}),
    ("elu_cnn 120x160", "elu_cnn", (120, 160), 4, set()),
    ("resnext29 64px", "resnext29", (64, 64), 7, {"mixed"}),
]
# --quick: shorter timing, one round, no 120x160 ELU CNN
QUICK = dict(SECONDS_PER_CASE=4.0, REPEATS=1)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="~4 s per case, one round, no ELU CNN at 120x160 (a smoke run)")
    parser.add_argument("--xla", action="store_true",
                        help="also time each network with jit_compile=True (ratio to fp32)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="also time each network under mixed_float16 (ratio to fp32)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help=f"images per step (default {BATCH_SIZE})")
    parser.add_argument("--only", default=None,
                        help="comma-separated case names to run, e.g. 'resnext29 64px'")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- models


def build(builder: str, size: tuple[int, int], classes: int):
    """A fresh, uncompiled network as its training script builds it."""
    shape = (*size, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "only 4 of 6 conv blocks fit" at 64 px: expected
        if builder in ("linear_cnn", "elu_cnn", "resnext29"):
            return common.study_network(builder, shape, classes)
    raise ValueError(builder)


def forward_flops(model) -> int:
    """Forward FLOPs per image of the conv and dense layers (2 per multiply-add)."""
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D):  # Conv2DTranspose is not used here
            kh, kw = layer.kernel_size
            c_in = int(layer.input.shape[-1])
            _, h_out, w_out, c_out = layer.output.shape
            total += 2 * h_out * w_out * kh * kw * (c_in // layer.groups) * c_out
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(layer.input.shape[-1]) * layer.units
    return int(total)


def profiler_flops(model) -> int | None:
    """Forward FLOPs per image from ``tf.compat.v1.profiler`` as a cross-check, or ``None``."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # the v1 profiler warns about its own deprecated calls
    try:
        spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)
        graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
        opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        return int(tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops)
    except Exception:  # noqa: BLE001 - a cross-check only; the analytic count stands
        return None


# --------------------------------------------------------------------------- timing


def time_training(builder: str, size, classes: int, *, batch: int, xla: bool, mixed: bool,
                  seconds: float, repeats: int) -> tuple[float, float, bool]:
    """Best images/s and CPU ms per image of a training step over ``repeats`` rounds, and
    whether XLA was really on."""
    import keras
    import numpy as np

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        keras.utils.set_random_seed(SEED)
        model = build(builder, size, classes)
        binary = model.output_shape[-1] == 1
        model.compile(optimizer="adam",
                      loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                      jit_compile=bool(xla))
        rng = np.random.default_rng(SEED)
        x = rng.uniform(0, 255, (batch, *size, 3)).astype("float32")
        y = rng.integers(0, 2 if binary else classes, (batch, 1) if binary else (batch,))
        y = y.astype("float32" if binary else "int32")
        for _ in range(WARMUP_STEPS):
            model.train_on_batch(x, y)
        best, cpu = 0.0, float("inf")
        for _ in range(repeats):
            steps, start, start_cpu = 0, time.perf_counter(), time.process_time()
            while steps < MIN_STEPS or time.perf_counter() - start < seconds:
                model.train_on_batch(x, y)
                steps += 1
            best = max(best, steps * batch / (time.perf_counter() - start))
            cpu = min(cpu, 1e3 * (time.process_time() - start_cpu) / (steps * batch))
        return best, cpu, bool(model.jit_compile)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _error_line(exc: Exception) -> str:
    """The informative line of a TensorFlow error (not the traceback or node names)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    keep = [line for line in lines if line and not line.startswith(
        ("[[", "File", "Detected at node", "Graph execution error"))]
    return (keep[-1] if keep else lines[0])[:160]


def main(args: argparse.Namespace) -> int:
    settings = dict(SECONDS_PER_CASE=SECONDS_PER_CASE, REPEATS=REPEATS)
    if args.quick:
        settings.update(QUICK)
    from leukocyte_cnn.base.grouped_conv import use_native_grouped_conv

    native_grouped = use_native_grouped_conv()
    common.print_header(f"training step: images/s, FLOPs, GFLOP/s (batch {args.batch_size}, "
                        "random pixels in memory, warm-up excluded)")
    print("convention: FLOPs = 2 x multiply-adds of conv and dense layers; training = 3 x "
          "forward; 'profiler' = tf.compat.v1.profiler's forward count (all ops) as a check")
    print(f"grouped convolutions on TensorFlow's CPU kernel: {native_grouped}\n", flush=True)
    cases = [case for case in CASES if not (args.quick and case[2] == (120, 160))]
    if args.only:
        wanted = {w.strip() for w in args.only.split(",")}
        cases = [case for case in cases if case[0] in wanted]

    header = (f"{'network':18s} {'params':>10s} {'fwd MFLOP/img':>14s} {'profiler':>10s} "
              f"{'train img/s':>12s} {'GFLOP/s':>8s} {'CPU ms/img':>11s} {'GFLOP/CPU-s':>12s}")
    print(header, flush=True)
    rows = []
    for name, builder, size, classes, switches in cases:
        model = build(builder, size, classes)
        fwd = forward_flops(model)
        prof = profiler_flops(model)
        params = model.count_params()
        del model
        timing = dict(batch=args.batch_size, seconds=settings["SECONDS_PER_CASE"],
                      repeats=settings["REPEATS"])
        fp32, cpu, _ = time_training(builder, size, classes, xla=False, mixed=False, **timing)
        gflops = fp32 * 3 * fwd / 1e9
        prof_text = f"{prof / 1e6:10.1f}" if prof else f"{'n/a':>10s}"
        print(f"{name:18s} {params:10,d} {fwd / 1e6:14.1f} {prof_text} {fp32:12.1f} "
              f"{gflops:8.1f} {cpu:11.2f} {3 * fwd / cpu / 1e6:12.1f}", flush=True)
        row = {"name": name, "fp32": (fp32, cpu)}
        for key, wanted in (("xla", args.xla), ("mixed", args.mixed_precision)):
            if not wanted:
                continue
            if key not in switches:
                row[key] = "skipped (see CASES)"
                continue
            try:
                speed, cpu_ms, xla_on = time_training(
                    builder, size, classes, xla=key == "xla", mixed=key == "mixed", **timing)
                row[key] = (speed, cpu_ms, xla_on)
            except Exception as exc:  # noqa: BLE001 - e.g. a float16 kernel TF lacks on CPU
                row[key] = f"failed: {type(exc).__name__}: {_error_line(exc)}"
        rows.append(row)

    if args.xla or args.mixed_precision:
        print("\nswitches vs float32 measured just before: speed ratio of images/s (wall) and "
              "of CPU time per image (> 1 = faster). GPU switches, NOT for this CPU:")
        for row in rows:
            base, base_cpu = row["fp32"]
            parts = [f"fp32 {base:.1f} img/s"]
            for key, flag in (("xla", "--xla"), ("mixed", "--mixed-precision")):
                if key not in row:
                    continue
                if isinstance(row[key], str):
                    parts.append(f"{flag} {row[key]}")
                    continue
                speed, cpu, xla_on = row[key]
                note = " (XLA was NOT on)" if key == "xla" and not xla_on else ""
                parts.append(f"{flag} {speed:.1f} img/s = {speed / base:.2f}x "
                             f"(CPU {base_cpu / cpu:.2f}x){note}")
            print(f"  {row['name']:18s} " + "; ".join(parts))
    print(f"\nload average at the end: {common.load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
