"""The CPU convolution fixes (leukocyte_cnn.base.grouped_conv) keep Keras' results.

Grouped convolutions must equal a per-group reference (outputs and gradients), and a strided
1x1 convolution must equal the plain strided convolution's output and train on a shape whose
weight gradient crashes oneDNN without the fix (batch 32 of 64x64x8 inputs: the process
would die here, failing the run).
"""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from leukocyte_cnn.base.grouped_conv import use_cpu_convolution_fixes  # noqa: E402


@pytest.fixture(scope="module")
def fixes() -> dict:
    active = use_cpu_convolution_fixes()
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the fixes are for CPUs; a GPU is present")
    return active


def test_fixes_are_active_and_idempotent(fixes):
    assert fixes == {"grouped": True, "strided_1x1": True}
    assert use_cpu_convolution_fixes() == fixes


def test_grouped_conv_layer_equals_one_convolution_per_group(fixes):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(3, 12, 12, 8)).astype("float32"))
    layer = keras.layers.Conv2D(8, 3, strides=2, padding="same", groups=4, use_bias=False)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x)
        loss = tf.reduce_sum(out * tf.range(1.0, 9.0))
    grad_x, grad_k = tape.gradient(loss, [x, layer.kernel.value])
    kernel = tf.constant(layer.kernel.numpy())
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        ref = tf.concat([tf.nn.conv2d(xs, ks, 2, "SAME")
                         for xs, ks in zip(tf.split(x, 4, -1), tf.split(kernel, 4, -1),
                                           strict=True)], -1)
        ref_loss = tf.reduce_sum(ref * tf.range(1.0, 9.0))
    ref_x, ref_k = tape.gradient(ref_loss, [x, kernel])
    np.testing.assert_allclose(out, ref, atol=1e-4)
    np.testing.assert_allclose(grad_x, ref_x, atol=1e-3)
    np.testing.assert_allclose(grad_k, ref_k, atol=1e-3)


def test_grouped_conv_trains_under_mixed_precision(fixes):
    """TF's CPU grouped kernel has no float16 version; under mixed_float16 it must still
    run (in float32) and match the per-group reference within float16 rounding."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 10, 10, 8)).astype("float32")
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = keras.layers.Conv2D(8, 3, padding="same", groups=4, use_bias=False)
        out = layer(x)
        assert out.dtype == tf.float16
        model = keras.Sequential([keras.Input((10, 10, 8)), layer, keras.layers.Flatten(),
                                  keras.layers.Dense(2, dtype="float32")])
        model.compile(optimizer="sgd", loss="mse")
        model.train_on_batch(x, np.zeros((4, 2), "float32"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    kernel = layer.kernel.numpy()
    ref = tf.concat([tf.nn.conv2d(xs, ks, 1, "SAME")
                     for xs, ks in zip(tf.split(tf.constant(x, tf.float16), 4, -1),
                                       tf.split(tf.constant(kernel, tf.float16), 4, -1),
                                       strict=True)], -1)
    np.testing.assert_allclose(layer(x).numpy().astype("float32"),
                               ref.numpy().astype("float32"), atol=0.05)


@pytest.mark.parametrize("side,padding", [(64, "same"), (63, "same"), (63, "valid")])
def test_strided_1x1_conv_keeps_its_output_and_trains_on_the_crashing_shape(fixes, side, padding):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(32, side, side, 8)).astype("float32"))
    layer = keras.layers.Conv2D(16, 1, strides=2, padding=padding, use_bias=False)
    with tf.GradientTape() as tape:
        out = layer(x)
        loss = tf.reduce_mean(out ** 2)
    grad = tape.gradient(loss, layer.kernel.value)  # oneDNN's kernel aborts here without the fix
    plain = tf.nn.conv2d(x, layer.kernel, 2, padding.upper())  # the forward pass is safe
    np.testing.assert_allclose(out, plain, atol=1e-4)
    # dL/dk by hand: every output pixel is k applied to one input pixel (every second one)
    sampled = x[:, ::2, ::2, :].numpy().reshape(-1, 8)
    expected = sampled.T @ (2 * out.numpy().reshape(-1, 16) / out.numpy().size)
    np.testing.assert_allclose(grad.numpy()[0, 0], expected, rtol=1e-3, atol=1e-6)


def test_configure_devices_switches_the_fixes_on_without_a_gpu(monkeypatch):
    """Every training script calls configure_devices; on a CPU that must bring the fixes."""
    from leukocyte_cnn.base import devices as gpu
    from leukocyte_cnn.base import grouped_conv

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the fixes are for CPUs; a GPU is present")
    calls = []
    real = grouped_conv.use_cpu_convolution_fixes
    monkeypatch.setattr(grouped_conv, "use_cpu_convolution_fixes",
                        lambda: calls.append(1) or real())
    gpu.configure_devices()
    gpu.configure_devices()  # idempotent: a second call patches nothing twice
    assert len(calls) == 2
    assert grouped_conv._STATE["patched"]
    assert real() == {"grouped": True, "strided_1x1": True}


def test_configure_devices_leaves_convolutions_alone_with_a_gpu(monkeypatch):
    from leukocyte_cnn.base import devices as gpu
    from leukocyte_cnn.base import grouped_conv

    calls = []
    monkeypatch.setattr(gpu, "_gpus", lambda: ["fake GPU"])
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda *a: None)
    monkeypatch.setattr(grouped_conv, "use_cpu_convolution_fixes", lambda: calls.append(1))
    gpu.configure_devices()
    assert calls == []


def test_importing_the_package_switches_on_onednn_so_grouped_gradients_exist_on_any_cpu():
    """On AMD CPUs TensorFlow leaves oneDNN off, has no grouped-convolution gradient, and the
    fix above would silently fall back to XLA's ~150x slower path (seen on an AMD EPYC)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    code = ("import os, leukocyte_cnn\nfrom leukocyte_cnn.base import grouped_conv\n"
            "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], grouped_conv._grouped_matches_reference())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         timeout=300)
    assert out.stdout.split() == ["1", "True"], out.stderr[-2000:]
