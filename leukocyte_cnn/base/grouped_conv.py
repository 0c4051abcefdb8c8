"""Grouped and strided 1x1 convolutions on a CPU: two fixes for Keras 3.15 on TensorFlow 2.21.

1. Speed of grouped convolutions. Keras compiles every grouped convolution (``Conv2D(groups >
   1)``) with XLA, because TensorFlow once had no CPU kernel for it. TensorFlow 2.21 has one,
   and XLA's CPU grouped convolution is about 150 times slower: a ResNeXt-14 training step on
   32 px images took 16 s instead of about 0.1 s on this project's 2-core machines.
2. A crash in strided 1x1 convolutions. oneDNN's CPU kernel for the weight gradient of a 1x1
   convolution with stride 2 kills the process (segmentation fault or abort) for some shapes,
   e.g. batch 32 of 64x64x8 inputs, or any odd batch of 32x32x8 inputs. Such convolutions are
   the projection shortcuts of ResNeXt and ResNet. A 1x1 convolution with stride s reads only
   every s-th pixel, so it equals subsampling the input ``[:, ::s, ::s]`` followed by the same
   convolution at stride 1, which is what runs instead (same weights, same result, for "same"
   and "valid" padding alike).

:func:`use_cpu_convolution_fixes` (or :func:`use_native_grouped_conv`) switches both on for
this process, after checking on small examples that the replacements give the same outputs
(and, for grouped convolutions, the same gradients) as a reference; whatever fails its check is
left as Keras does it. Nothing changes on a GPU, with another Keras backend or for
``channels_first``.
Models, weights and checkpoints are untouched: a checkpoint trained with the fixes loads and
predicts the same without them.
"""
from __future__ import annotations

_STATE: dict = {"patched": False, "checks": None}


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def _grouped_matches_reference() -> bool:
    """TF's grouped kernel: forward pass and gradients equal a per-group reference."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 9, 9, 8)).astype("float32"))
    k = tf.constant(rng.normal(size=(3, 3, 2, 8)).astype("float32"))
    weights = tf.range(1.0, 9.0)

    def native(x, k):
        return tf.nn.convolution(x, k, 2, "SAME")

    def reference(x, k):
        return tf.concat([tf.nn.convolution(xs, ks, 2, "SAME")
                          for xs, ks in zip(tf.split(x, 4, -1), tf.split(k, 4, -1),
                                            strict=True)], -1)

    try:
        results = []
        for conv in (native, reference):
            with tf.GradientTape() as tape:
                tape.watch([x, k])
                loss = tf.reduce_sum(conv(x, k) * weights)
            results.append([conv(x, k), *tape.gradient(loss, [x, k])])
        return all(np.allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-3)
                   for a, b in zip(*results, strict=True))
    except Exception:  # no CPU kernel in this TensorFlow build: keep Keras' XLA path
        return False


def _subsampling_matches_strided() -> bool:
    """A strided 1x1 convolution equals subsampling + stride 1 (odd/even sizes, both paddings)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(1)
    k = tf.constant(rng.normal(size=(1, 1, 3, 5)).astype("float32"))
    try:
        for side in (8, 9):
            x = tf.constant(rng.normal(size=(2, side, side, 3)).astype("float32"))
            for padding in ("SAME", "VALID"):
                strided = tf.nn.convolution(x, k, 2, padding)  # forward pass is safe
                subsampled = tf.nn.convolution(x[:, ::2, ::2, :], k, 1, padding)
                if strided.shape != subsampled.shape or not np.allclose(strided, subsampled,
                                                                         atol=1e-5):
                    return False
        return True
    except Exception:
        return False


def use_cpu_convolution_fixes() -> dict[str, bool]:
    """Switch the fixes on for this process; return which are active.

    Safe to call many times. ``{"grouped": ..., "strided_1x1": ...}``, both False on a GPU
    machine or with a non-TensorFlow Keras backend.
    """
    import keras
    import tensorflow as tf

    off = {"grouped": False, "strided_1x1": False}
    if keras.backend.backend() != "tensorflow" or tf.config.list_physical_devices("GPU"):
        return off
    if _STATE["checks"] is None:
        _STATE["checks"] = {"grouped": _grouped_matches_reference(),
                            "strided_1x1": _subsampling_matches_strided()}
    checks = _STATE["checks"]
    if _STATE["patched"] or not any(checks.values()):
        return dict(checks) if _STATE["patched"] else off
    from keras.src.backend import standardize_data_format
    from keras.src.backend.tensorflow import nn as tf_nn

    keras_conv = tf_nn.conv

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        data_format = standardize_data_format(data_format)
        if len(inputs.shape) != 4 or data_format != "channels_last":
            return keras_conv(inputs, kernel, strides, padding, data_format, dilation_rate)
        step = _pair(strides)
        if (checks["strided_1x1"] and tuple(kernel.shape[:2]) == (1, 1) and step != (1, 1)
                and _pair(dilation_rate) == (1, 1)):
            inputs, strides = inputs[:, ::step[0], ::step[1], :], 1  # the pixels it reads
        if checks["grouped"] and inputs.shape[-1] != kernel.shape[-2]:
            if inputs.dtype in (tf.float16, tf.bfloat16):
                # TF's CPU grouped kernel is float32-only (float16 fails with "filter_size
                # does not have enough elements"): compute in float32 under mixed precision.
                out = tf.nn.convolution(tf.cast(inputs, tf.float32), tf.cast(kernel, tf.float32),
                                        strides, padding.upper(), data_format="NHWC",
                                        dilations=dilation_rate)
                return tf.cast(out, inputs.dtype)
            return tf.nn.convolution(inputs, kernel, strides, padding.upper(),
                                     data_format="NHWC", dilations=dilation_rate)
        return keras_conv(inputs, kernel, strides, padding, data_format, dilation_rate)

    tf_nn.conv = conv
    _STATE["patched"] = True
    return dict(checks)


def use_native_grouped_conv() -> bool:
    """:func:`use_cpu_convolution_fixes`; return whether the grouped-convolution fix is active."""
    return use_cpu_convolution_fixes()["grouped"]
