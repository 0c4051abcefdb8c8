"""Fast grouped convolutions on a CPU: TensorFlow's own kernel instead of Keras' XLA detour.

Keras 3 (TensorFlow backend) compiles every grouped convolution (``Conv2D(groups > 1)``) with
XLA, because TensorFlow once had no CPU kernel for it. TensorFlow 2.21 has one, and XLA's CPU
grouped convolution is about 150 times slower: a ResNeXt-14 training step on 32 px images
took 16 s instead of about 0.1 s on this project's 2-core machines, which made the ResNeXt
experiments impossible on a CPU. :func:`use_native_grouped_conv` routes grouped 2-D
convolutions back to ``tf.nn.convolution`` for this process, after checking on a small
example that the result and both gradients equal a per-group reference; if they do not, or
a GPU is present (where XLA is fast), nothing changes. Models, weights and checkpoints are
untouched: a checkpoint trained with the switch loads and predicts the same without it.
"""
from __future__ import annotations

_STATE = {"patched": False, "checked": None}


def _is_grouped_2d(inputs, kernel, data_format: str) -> bool:
    channels = inputs.shape[-1] if data_format == "channels_last" else inputs.shape[1]
    return len(inputs.shape) == 4 and channels is not None and channels != kernel.shape[-2]


def _native_matches_reference() -> bool:
    """Forward pass and gradients of TF's grouped kernel equal a per-group reference."""
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
                          for xs, ks in zip(tf.split(x, 4, -1), tf.split(k, 4, -1))], -1)

    try:
        results = []
        for conv in (native, reference):
            with tf.GradientTape() as tape:
                tape.watch([x, k])
                out = conv(x, k)
                loss = tf.reduce_sum(out * weights)
            results.append([out, *tape.gradient(loss, [x, k])])
        return all(np.allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-3)
                   for a, b in zip(*results))
    except Exception:  # no CPU kernel in this TensorFlow build: keep Keras' XLA path
        return False


def use_native_grouped_conv() -> bool:
    """Make grouped 2-D convolutions use TensorFlow's kernel on a CPU; return whether active.

    Safe to call many times. Does nothing on a GPU machine, with a non-TensorFlow Keras
    backend, or when TensorFlow's kernel fails the self-check.
    """
    if _STATE["patched"]:
        return True
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow" or tf.config.list_physical_devices("GPU"):
        return False
    if _STATE["checked"] is None:
        _STATE["checked"] = _native_matches_reference()
    if not _STATE["checked"]:
        return False
    from keras.src.backend import standardize_data_format
    from keras.src.backend.tensorflow import nn as tf_nn

    keras_conv = tf_nn.conv

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        data_format = standardize_data_format(data_format)
        if not _is_grouped_2d(inputs, kernel, data_format):
            return keras_conv(inputs, kernel, strides, padding, data_format, dilation_rate)
        return tf.nn.convolution(inputs, kernel, strides, padding.upper(),
                                 data_format="NHWC" if data_format == "channels_last" else "NCHW",
                                 dilations=dilation_rate)

    tf_nn.conv = conv
    _STATE["patched"] = True
    return True
