"""Device set-up for training scripts: mixed precision, XLA, multi-GPU, and what ran where.

Every script calls :func:`configure_devices` once, before it builds a model, and passes
:func:`compile_kwargs` to ``model.compile``. On a CPU-only machine it also switches on the
convolution fixes of :mod:`leukocyte_cnn.grouped_conv`. Both switches are off by default because the
default machine here is a 2-core CPU, where they cost speed (see ``shared/NOTES.md``).
"""
from __future__ import annotations

import argparse
import warnings
from typing import Any


def _gpus() -> list:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def configure_devices(mixed_precision: bool = False, xla: bool = False):
    """Apply the device switches and return the ``tf.distribute.Strategy`` to build models in.

    * ``mixed_precision``: sets the Keras global policy ``mixed_float16`` (float16 compute,
      float32 weights) on a GPU. Ignored with a warning on CPU-only machines, where float16
      is emulated and slower. Models should keep their last activation in float32.
    * ``xla``: only checked here (a warning on CPU, where it was slower); the switch itself is
      ``compile_kwargs(xla)`` in ``model.compile``.
    * Several visible GPUs give a ``MirroredStrategy`` (build and compile the model inside
      ``strategy.scope()``); otherwise the default strategy, whose scope is a no-op.

    GPU memory growth is switched on so that two runs can share one GPU instead of the first
    taking all its memory. With no GPU visible, the CPU convolution fixes of
    :mod:`leukocyte_cnn.grouped_conv` are switched on (TensorFlow's own kernel for grouped
    convolutions, and a crash-free strided 1x1 convolution for ResNeXt/ResNet/EfficientNet
    shortcuts), so every training script gets them; calling this again is harmless.
    """
    import keras
    import tensorflow as tf

    gpus = _gpus()
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):  # GPUs already initialised: keep their setting
            pass
    if mixed_precision:
        if gpus:
            keras.mixed_precision.set_global_policy("mixed_float16")
            _warn_if_old_gpu(gpus)
        else:
            warnings.warn("--mixed-precision ignored: no GPU visible, and float16 on a CPU is "
                          "slower than float32", stacklevel=2)
    if not gpus:
        from . import grouped_conv

        grouped_conv.use_cpu_convolution_fixes()  # idempotent; checked against Keras first
    if xla and not gpus:
        warnings.warn("--xla on a CPU-only machine: XLA compilation was slower than plain "
                      "float32 here (see shared/NOTES.md)", stacklevel=2)
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _warn_if_old_gpu(gpus: list) -> None:
    """Mixed float16 only pays on GPUs with tensor cores (compute capability 7.0, Volta+)."""
    import tensorflow as tf

    for gpu in gpus:
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and tuple(capability) < (7, 0):
            warnings.warn(f"{gpu.name}: compute capability {capability[0]}.{capability[1]} has "
                          "no tensor cores; mixed precision may be slower", stacklevel=3)


def compile_kwargs(xla: bool) -> dict[str, Any]:
    """Keyword arguments for ``model.compile``: ``{"jit_compile": True}`` with XLA, else ``{}``.

    ``{}`` (not ``jit_compile=False``) leaves Keras' own default untouched.
    """
    return {"jit_compile": True} if xla else {}


def add_gpu_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--mixed-precision`` and ``--xla`` to a script's argument parser."""
    parser.add_argument(
        "--mixed-precision", action="store_true",
        help="compute in float16 with float32 weights (mixed_float16). Use on NVIDIA GPUs "
             "with tensor cores (Volta or newer: V100, T4, A100, H100, RTX 20xx+) for ~2x "
             "speed; ignored with a warning on CPU, where it is slower")
    parser.add_argument(
        "--xla", action="store_true",
        help="compile the training step with XLA (jit_compile=True). Use on a GPU; on CPU "
             "it was slower (~230 vs ~390 images/s, shared/NOTES.md), so leave it off there")
    return parser


def describe_devices() -> dict[str, Any]:
    """What the run used, for ``settings.json``: TF/Keras versions, GPUs, precision policy."""
    import keras
    import tensorflow as tf

    gpus = []
    for gpu in _gpus():
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        gpus.append({"name": details.get("device_name", gpu.name),
                     "compute_capability": ".".join(map(str, capability)) if capability else None})
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "built_with_cuda": bool(tf.test.is_built_with_cuda()),
        "gpus": gpus,
        "gpu_count": len(gpus),
        "precision_policy": keras.mixed_precision.global_policy().name,
    }
