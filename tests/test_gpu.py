"""The GPU switches do what they say, checked on a CPU (leukocyte_cnn.base.devices, issue 15).

* ``--xla`` really compiles the training step (Keras drops ``jit_compile=True`` under
  TensorFlow's op determinism, which every fold used to switch on) and ``settings.json`` says
  what took effect;
* ``--cpu-replicas 2`` trains a fold under a two-replica ``MirroredStrategy`` on two logical
  CPU devices, with mirrored variables, and writes the same files as a one-device run;
* every training script sets its devices up before TensorFlow's runtime starts;
* a failure to set GPU memory growth is one warning line;
* one ``mixed_float16`` training step per network family: finite loss, float32 outputs and
  weights, loss scaling.

Process-wide TensorFlow state (logical devices, op determinism) is tested in subprocesses on
a 32-pixel, 30-image data set (a few seconds of training each).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import reference_networks as ref
from test_scaleout import _tiny_dataset  # two classes x 15 PNGs of 32x32

from leukocyte_cnn.base import devices as gpu
from leukocyte_cnn.base.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPTS = sorted(p.stem for p in REPO_ROOT.glob("*.py")
                       if "add_gpu_arguments(" in p.read_text(encoding="utf-8"))

# Runs a training script's main() in a fresh process, keeps the first model that reaches
# training.fit and prints what it was compiled to as one JSON line.
RUN_AND_REPORT = r"""
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
import leukocyte_cnn.runs.cross_validation as training

models = []
real_fit = training.fit
def fit(model, *args, **kwargs):
    models.append(model)
    return real_fit(model, *args, **kwargs)
training.fit = fit

def tf_functions(fn, seen):
    if id(fn) in seen:
        return []
    seen.add(id(fn))
    found = []
    if hasattr(fn, "_list_all_concrete_functions"):
        found.append(fn)
        fn = getattr(fn, "_python_function", None)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if callable(value):
            found += tf_functions(value, seen)
    return found

module = importlib.import_module(sys.argv[2])
for knob, value in json.loads(sys.argv[3]).items():  # as an inline edit of the script would
    setattr(module, knob, value)
module.main(module.parse_args(sys.argv[4:]))
model = models[0]
xla = []  # graph functions TensorFlow must compile with XLA (tf.function(jit_compile=True))
for function in tf_functions(model.train_function, set()):
    for concrete in function._list_all_concrete_functions():
        for f in concrete.graph.as_graph_def().library.function:
            if f.attr["_XlaMustCompile"].b:
                xla.append(f.signature.name)
print("REPORT " + json.dumps({
    "jit_compile": bool(model.jit_compile), "xla_functions": sorted(set(xla)),
    "replicas": int(model.distribute_strategy.num_replicas_in_sync),
    "weights": sorted({type(w.value).__name__ for w in model.weights}),
    "optimizer_variables": sorted({type(v.value).__name__ for v in model.optimizer.variables}),
}))
"""

# Every training script's main(), stopped where it sets up its devices; TensorFlow's runtime
# (eager context) must not have started before that.
IMPORT_ORDER = r"""
import importlib, json, sys, traceback
sys.path.insert(0, sys.argv[1])
from tensorflow.python.eager import context
import leukocyte_cnn.base.devices as gpu

class Reached(Exception):
    pass

class TooEarly(Exception):
    pass

real_init = context.Context.ensure_initialized
def guarded(self):
    if not self._initialized:
        raise TooEarly()
    return real_init(self)
context.Context.ensure_initialized = guarded

def stop(*args, **kwargs):
    raise Reached()
gpu.setup_devices = gpu.configure_devices = stop

results = {}
options = json.loads(sys.argv[2])
for name, argv in options.items():
    module = importlib.import_module(name)
    try:
        module.main(module.parse_args(argv))
        results[name] = "ran without setting up its devices"
    except Reached:
        results[name] = "ok"
    except TooEarly:
        here = [f for f in traceback.extract_tb(sys.exc_info()[2])
                if f.filename.startswith(sys.argv[1]) and "/.venv/" not in f.filename]
        results[name] = "TensorFlow started before the device set-up, at " + (
            f"{here[-1].filename}:{here[-1].lineno}" if here else "?")
        break  # the runtime is up now: later scripts cannot be judged in this process
    except BaseException as exc:
        results[name] = f"stopped before the device set-up: {type(exc).__name__}: {exc}"
print("REPORT " + json.dumps(results))
"""


def _python(code: str, args: list[str], cwd: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg",
           "CUDA_VISIBLE_DEVICES": ""}
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    line = [x for x in proc.stdout.splitlines() if x.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


def _train_fold(tmp_path: Path, name: str, *options: str,
                knobs: dict | None = None) -> tuple[dict, Path]:
    """``linear_cnn_binary_lpocv.py`` fold 0 of a 3-fold split of the tiny set, 2 epochs, with
    ``BATCH_SIZE = 4`` (two replicas need an even global batch; the thesis' 5 is refused)."""
    data_root = tmp_path / "data_root"
    if not data_root.exists():
        _tiny_dataset(data_root)
    report = _python(RUN_AND_REPORT, [
        "linear_cnn_binary_lpocv", json.dumps({"BATCH_SIZE": 4, **(knobs or {})}), "--dataset",
        "folder",
        "--data-root", str(data_root), "--image-size", "32", "--epochs", "2", "--k", "3",
        "--folds", "0", "--results-dir", "results", "--run-name", name, *options],
        tmp_path / f"work_{name}")  # a folder per process: runs may go side by side
    return report, tmp_path / f"work_{name}" / "results" / name


# --------------------------------------------------------------------------- XLA


def test_xla_with_the_augmentation_in_the_step_is_refused_in_one_line(tmp_path):
    """On TensorFlow XLA cannot compile ImageProjectiveTransformV3: --xla with AUGMENT_IN
    "step" (the default) stops with one line saying what to do, not a tf2xla traceback."""
    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.inputs.augment import online_augmentation
    from leukocyte_cnn.runs.cross_validation import train_classifier_fold

    fold = types.SimpleNamespace(train=None, val=None, test=None, seed=0, fold=0,
                                 directory=tmp_path)
    with pytest.raises(InputError, match=r"--xla: .*AUGMENT_IN.*'pipeline'"):
        train_classifier_fold(fold, None, class_names=["a", "b"], image_size=(8, 8),
                              batch_size=2, epochs=1, patience=1, optimizer="adam",
                              learning_rate=1e-3, color_mode="rgb", cache_mb=1,
                              augment=online_augmentation(where="step"), xla=True)


def test_xla_compiles_the_training_step_and_settings_tell_the_truth(tmp_path):
    # The in-step augmentation's resampling has no XLA kernel on TensorFlow (refused, below):
    # with --xla the augmentation runs in tf.data.
    report, run_dir = _train_fold(tmp_path, "xla", "--xla", knobs={"AUGMENT_IN": "pipeline"})
    assert report["jit_compile"] is True
    assert any("one_step_on_data" in name for name in report["xla_functions"]), report
    config = json.loads((run_dir / "settings.json").read_text())["config"]
    assert config["xla"] == {"requested": True, "compiled": True}
    assert config["deterministic"]["on"] is False  # op determinism would make Keras drop XLA
    assert config["deterministic"]["chosen"] == "default"
    assert (run_dir / "fold_00" / "predictions.csv").is_file()


def test_determinism_is_decided_explicitly():
    assert gpu.decide_determinism(None, xla=False, on_gpu=False)[0] is True
    assert gpu.decide_determinism(None, xla=False, on_gpu=True)[0] is True
    assert gpu.decide_determinism(None, xla=True, on_gpu=True)[0] is False
    assert gpu.decide_determinism(False, xla=False, on_gpu=False)[0] is False
    on, how = gpu.decide_determinism(True, xla=True, on_gpu=True)
    assert on and "--xla_gpu_deterministic_ops=true" in how
    with pytest.raises(InputError, match="--xla --deterministic"):
        gpu.decide_determinism(True, xla=True, on_gpu=False)


def test_set_seed_follows_the_configured_choice(monkeypatch):
    from tensorflow.python.framework import config as tf_config

    from leukocyte_cnn.base.seeding import set_seed

    was_on = tf_config.is_op_determinism_enabled()
    try:
        monkeypatch.setattr(gpu, "_CURRENT", None)
        set_seed(0)
        assert tf_config.is_op_determinism_enabled()  # nothing configured: deterministic
        monkeypatch.setattr(gpu, "deterministic_ops", lambda: False)  # e.g. under --xla
        set_seed(0)
        assert not tf_config.is_op_determinism_enabled()
    finally:
        (tf_config.enable_op_determinism if was_on else tf_config.disable_op_determinism)()


def test_gpu_options(monkeypatch):
    import argparse

    args = gpu.add_gpu_arguments(argparse.ArgumentParser()).parse_args(
        ["--xla", "--no-deterministic", "--gpus", "0,1"])
    assert (args.xla, args.deterministic, args.gpus, args.cpu_replicas) == (True, False, "0,1", 0)
    assert gpu._parse_gpu_list("1,0", 2) == [0, 1]
    assert gpu._parse_gpu_list("none", 2) == []
    with pytest.raises(InputError, match="not on this machine"):
        gpu._parse_gpu_list("2", 2)


# --------------------------------------------------------------------------- replicas


def test_a_fold_trains_under_two_replicas_and_writes_what_one_device_writes(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    _tiny_dataset(tmp_path / "data_root")
    with ThreadPoolExecutor(max_workers=2) as pool:  # two processes side by side
        jobs = [pool.submit(_train_fold, tmp_path, "two_replicas", "--cpu-replicas", "2"),
                pool.submit(_train_fold, tmp_path, "one_device")]
        (mirrored, two), (single, one) = (job.result() for job in jobs)
    assert mirrored["replicas"] == 2 and single["replicas"] == 1
    assert mirrored["weights"] == ["MirroredVariable"], mirrored
    assert "MirroredVariable" in mirrored["optimizer_variables"], mirrored
    assert "MirroredVariable" not in single["weights"]
    config = json.loads((two / "settings.json").read_text())["config"]
    assert config["replicas"]["count"] == 2
    assert config["replicas"]["batch_size"].startswith("global")
    assert json.loads((one / "settings.json").read_text())["config"]["replicas"]["count"] == 1

    def written(run):  # TensorBoard event files are named by time and process: their folders
        return sorted(p.parent.relative_to(run).as_posix() if "tfevents" in p.name
                      else p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())

    assert written(one) == written(two)
    a = pd.read_csv(one / "fold_00" / "predictions.csv")
    b = pd.read_csv(two / "fold_00" / "predictions.csv")
    assert list(a.columns) == list(b.columns)
    assert a[["image", "label", "group"]].equals(b[["image", "label", "group"]])
    prob = [c for c in a.columns if c.startswith("prob_")]
    # Same global batches of the same images. Only the reduction order differs, and the
    # epoch's partial last batch: its two replicas' unequal halves count equally (measured:
    # probabilities 0.006 apart after 2 epochs).
    np.testing.assert_allclose(a[prob].to_numpy(), b[prob].to_numpy(), atol=0.02)
    epochs_a = pd.read_csv(one / "fold_00" / "epochs.csv")
    epochs_b = pd.read_csv(two / "fold_00" / "epochs.csv")
    assert list(epochs_a.columns) == list(epochs_b.columns) and len(epochs_a) == len(epochs_b)


def test_a_global_batch_the_replicas_cannot_share_is_refused(monkeypatch):
    import types

    monkeypatch.setattr(gpu, "_CURRENT", types.SimpleNamespace(replicas=2))
    gpu.check_global_batch(4)
    with pytest.raises(InputError, match="BATCH_SIZE 5 over 2 replicas"):
        gpu.check_global_batch(5)
    monkeypatch.setattr(gpu, "_CURRENT", types.SimpleNamespace(replicas=1))
    gpu.check_global_batch(5)


# --------------------------------------------------------------------------- set-up order


def test_every_training_script_sets_up_devices_before_tensorflow_starts(tmp_path):
    assert len(TRAIN_SCRIPTS) >= 10, TRAIN_SCRIPTS
    data_root = _tiny_dataset(tmp_path / "data_root")
    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"not read: the check stops at the device set-up")
    common = ["--dataset", "folder", "--data-root", str(data_root), "--results-dir",
              str(tmp_path / "results")]
    options = {name: common + (["--weights", str(weights)] if name == "cnmc_transfer" else [])
               for name in TRAIN_SCRIPTS}
    results = _python(IMPORT_ORDER, [json.dumps(options)], tmp_path / "work")
    assert results == {name: "ok" for name in TRAIN_SCRIPTS}


def test_a_failure_to_set_memory_growth_is_one_warning_line(monkeypatch):
    import tensorflow as tf

    def refuse(*args):
        raise RuntimeError("Physical devices cannot be modified after being initialized")

    monkeypatch.setattr(gpu, "_CURRENT", None)
    monkeypatch.setattr(gpu, "_gpus", lambda: ["fake GPU"])
    monkeypatch.setattr(tf.config.experimental, "get_memory_growth", lambda gpu: False)
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup = gpu.configure_devices()
    lines = [str(w.message) for w in caught if "memory growth" in str(w.message)]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "whole GPU" in lines[0]
    assert setup.memory_growth is False


# --------------------------------------------------------------------------- precision


def _families():
    """One small instance per network family, as (name, builder) at tiny input sizes."""
    return [
        ("linear_cnn", lambda: ref.linear_cnn(input_shape=(32, 32, 3))),
        ("elu_cnn", lambda: ref.elu_cnn(input_shape=(32, 32, 3), filters=(4, 8, 8, 8, 8),
                                             convs_per_block=1, dense_units=8)),
        ("paper_cnn", lambda: ref.paper_cnn(input_shape=(24, 24, 3), filters=4)),
        ("copenhagen_cnn", lambda: ref.copenhagen_cnn(input_shape=(48, 64, 3))),
        ("copenhagen_fcn", lambda: ref.copenhagen_fcn(input_shape=(48, 64, 3), last_pool=2)),
        ("unet", lambda: ref.unet(input_shape=(32, 32, 1), start_filters=4)),
        ("resnext", lambda: ref.resnext14(input_shape=(32, 32, 3), num_classes=3, cardinality=4,
                                          first_stage_channels=16, stem_filters=8)),
        ("cnmc_head", _cnmc_head),
        ("resnet50", lambda: ref.resnet50_model(input_shape=(32, 32, 3), num_classes=3)),
        ("efficientnetb3", lambda: ref.cnmc_model(input_shape=(32, 32, 3))),
    ]


def _cnmc_head():
    """The C-NMC model's regularised head (cnmc_model) on 16 pooled features: its L1 activity
    penalty must not meet the float32 loss in float16."""
    import keras

    features = keras.Input((16,))
    return keras.Model(features, ref.transfer_head(features, 2, dense_units=(8, 4),
                                                   dropouts=(0.5, 0.1)))


SLOW_FAMILIES = {"resnet50", "efficientnetb3"}  # 25 M / 11 M parameters in emulated float16


@pytest.mark.parametrize("family", [
    pytest.param(name, marks=[pytest.mark.slow] if name in SLOW_FAMILIES else [])
    for name, _ in _families()])
def test_one_mixed_float16_training_step_per_network_family(family):
    import keras

    build = dict(_families())[family]
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "only n of 6 conv blocks fit": expected
            model = build()
        outputs = model.output_shape
        binary = outputs[-1] == 1
        loss = "binary_crossentropy" if binary else "sparse_categorical_crossentropy"
        model.compile(optimizer="adam", loss=loss)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (4, *model.input_shape[1:])).astype("float32")
        if family == "unet":
            y = (rng.uniform(size=(4, *outputs[1:])) > 0.5).astype("float32")
        else:
            y = rng.integers(0, 2 if binary else outputs[-1], (4, 1) if binary else (4,))
        before = [w.numpy().copy() for w in model.trainable_weights]
        value = float(np.asarray(model.train_on_batch(x, y)).ravel()[0])
        # A step whose float16 gradients overflow is skipped and the loss scale halved (from
        # 2^15): a few more steps must then update the weights.
        for _ in range(12):
            if any(not np.array_equal(a, w.numpy()) for a, w in
                   zip(before, model.trainable_weights, strict=True)):
                break
            model.train_on_batch(x, y)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(value)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # loss scaling
    assert model.output.dtype == "float32"  # float32 output layer: softmax/sigmoid and loss
    assert all(w.dtype == "float32" for w in model.weights)
    assert any(layer.compute_dtype == "float16" for layer in model.layers)
    assert any(not np.array_equal(a, w.numpy()) for a, w in
               zip(before, model.trainable_weights, strict=True))  # the loss-scaled steps trained
    assert all(np.isfinite(w.numpy()).all() for w in model.trainable_weights)
