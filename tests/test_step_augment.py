"""Augmentation inside the training step (issue 26): training batches are augmented and
evaluation batches are not, one seed gives identical weights, the resampling is the pipeline
path's exactly, and the draws are distributed as the pipeline path's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from leukocyte_cnn.inputs.augment import online_augmentation
from leukocyte_cnn.inputs.step_augment import (
    AugmentedTrainer,
    StepAugmentation,
    affine_transforms,
)

REPO = Path(__file__).resolve().parents[1]


def _images(n: int = 24, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


class Probe(keras.layers.Layer):
    """Records each batch the network receives and whether it trained (eager runs only)."""

    def __init__(self, seen, **kwargs):
        super().__init__(**kwargs)
        self.record = seen.append  # a list attribute would be copied by Keras' tracking

    def call(self, images, training=None):
        if tf.executing_eagerly():  # not while Keras traces the model's shapes
            self.record((bool(training), np.asarray(images)))
        return images

    def compute_output_shape(self, input_shape):
        return input_shape


def _network(size: int, seen=None, seed: int = 0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = Probe(seen)(inputs) if seen is not None else inputs
    x = keras.layers.Rescaling(1 / 255)(x)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def test_training_batches_are_augmented_and_evaluation_batches_are_not():
    images, labels = _images(), np.arange(24) % 2
    seen: list = []
    network = _network(16, seen)
    trainer = AugmentedTrainer(network, online_augmentation(
        rotation_degrees=359, horizontal_flip=True, vertical_flip=True, seed=1, where="step"))
    trainer.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    train = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)  # uint8, unshuffled
    trainer.fit(train, validation_data=train, epochs=1, verbose=0)
    trained = [batch for training, batch in seen if training]
    evaluated = [batch for training, batch in seen if not training]
    assert len(trained) == 3 and len(evaluated) == 3
    raw = [images[i:i + 8].astype(np.float32) for i in (0, 8, 16)]
    for batch, original in zip(trained, raw, strict=True):
        assert batch.dtype == np.float32 and batch.min() >= 0 and batch.max() <= 255
        assert np.abs(batch - original).mean() > 20  # every training batch is turned
    for batch, original in zip(evaluated, raw, strict=True):
        assert np.array_equal(batch, original)  # validation: the pixels as fed
    seen.clear()
    network(images.astype(np.float32), training=False)  # as predict_eagerly: never augmented
    assert all(not training for training, _ in seen)
    assert np.array_equal(np.concatenate([b for _, b in seen]), images.astype(np.float32))
    assert not any("augment" in layer.name for layer in network.layers)  # what is saved


def _train(augment_seed: int, steps: int = 4) -> list[np.ndarray]:
    images, labels = _images(32, seed=3), np.arange(32) % 2
    network = _network(16, seed=7)
    trainer = AugmentedTrainer(network, StepAugmentation(
        rotation_degrees=359, horizontal_flip=True, vertical_flip=True, brightness=0.1,
        saturation=0.1, stain=0.05, seed=augment_seed))
    trainer.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    train = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    trainer.fit(train, epochs=1, steps_per_epoch=steps, verbose=0)
    return network.get_weights()


def test_one_seed_gives_identical_weights_after_a_few_steps():
    first, again, other = _train(5), _train(5), _train(6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_the_step_resamples_exactly_as_the_pipeline_given_the_same_draws():
    """On TensorFlow both paths compose the same matrix and call the same kernel."""
    from leukocyte_cnn.inputs.keras_augment import affine_matrices, apply_affine

    rng = np.random.default_rng(0)
    n, height, width = 6, 20, 28
    params = dict(angle_deg=rng.uniform(-180, 180, n).astype(np.float32),
                  hflip=rng.random(n) < 0.5, vflip=rng.random(n) < 0.5,
                  zoom=rng.uniform(0.8, 1.2, n).astype(np.float32),
                  shear_deg=rng.uniform(-10, 10, n).astype(np.float32),
                  dx=rng.uniform(-3, 3, n).astype(np.float32),
                  dy=rng.uniform(-3, 3, n).astype(np.float32))
    old = affine_matrices(**params, height=height, width=width).numpy()
    new = keras.ops.convert_to_numpy(affine_transforms(**params, height=height, width=width))
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-5)
    images = _images(n, seed=2)[:, :height, :].astype(np.float32)
    images = np.concatenate([images, images[:, :, :12]], axis=2)[:, :, :width]
    pipeline = apply_affine(tf.constant(images), tf.constant(old)).numpy()
    step = keras.ops.convert_to_numpy(keras.ops.image.affine_transform(
        images, old, interpolation="bilinear", fill_mode="reflect"))
    assert np.array_equal(step, pipeline)


def _asymmetry(batch: np.ndarray) -> np.ndarray:
    """Per image: (left minus right mean, top minus bottom mean) of the red channel."""
    half = batch.shape[2] // 2
    red = batch[..., 0]
    return np.stack([red[:, :, :half].mean((1, 2)) - red[:, :, half:].mean((1, 2)),
                     red[:, :half].mean((1, 2)) - red[:, half:].mean((1, 2))], axis=1)


def test_the_step_draws_what_the_pipeline_draws():
    """Exact equality with the old path is impossible: the pipeline drew one seed per batch
    from tf.data's random stream, the step draws from the layer's SeedGenerator, once per
    step. The distributions match: the step's angles are uniform over the range and half of
    the images are flipped each way, and a picture with a bright corner comes out of both
    paths with the same distribution of where that corner went and the same pixel
    statistics."""
    layer = StepAugmentation(rotation_degrees=359, horizontal_flip=True, vertical_flip=True,
                             seed=0)
    draws = keras.ops.convert_to_numpy(layer.draws(4000))
    angles = (2 * draws[2] - 1) * 180
    assert stats.kstest(angles, stats.uniform(-180, 360).cdf).pvalue > 0.01
    assert abs((draws[0] < 0.5).mean() - 0.5) < 0.03 and abs((draws[1] < 0.5).mean() - 0.5) < 0.03

    picture = np.full((1, 24, 24, 3), 40, np.uint8)
    picture[:, :8, :8] = 250  # a bright top-left corner: where it goes shows the transform
    batch = np.repeat(picture, 64, axis=0)
    old_layer = online_augmentation(rotation_degrees=359, horizontal_flip=True,
                                    vertical_flip=True, seed=0, where="pipeline").layers[0]
    old, new = [], []
    for step in range(40):
        old.append(old_layer.augment_with_seed(tf.constant(batch, tf.float32),
                                               tf.constant([step, 1])).numpy())
        new.append(keras.ops.convert_to_numpy(layer(batch, training=True)))
    old, new = np.concatenate(old), np.concatenate(new)
    for column in range(2):
        assert stats.ks_2samp(_asymmetry(old)[:, column],
                              _asymmetry(new)[:, column]).pvalue > 0.001
    assert abs(old.mean() - new.mean()) < 0.01 * old.mean()
    assert abs(old.std() - new.std()) < 0.02 * old.std()


def test_colour_jitter_stays_in_range_and_only_when_training():
    layer = StepAugmentation(brightness=0.3, saturation=0.3, stain=0.1, seed=2)
    images = _images(16, seed=4)
    jittered = keras.ops.convert_to_numpy(layer(images, training=True))
    assert jittered.min() >= 0 and jittered.max() <= 255
    assert np.abs(jittered - images).mean() > 5
    assert np.array_equal(keras.ops.convert_to_numpy(layer(images, training=False)),
                          images.astype(np.float32))
    with pytest.raises(Exception, match="step"):
        online_augmentation(brightness=0.2, where="pipeline")  # no colour jitter in tf.data


def test_the_step_layers_are_pure_keras():
    source = (REPO / "leukocyte_cnn/inputs/step_augment.py").read_text()
    assert "tensorflow" not in source.replace("tensorflow as well", "")
    python = os.environ.get("LEUKOCYTE_JAX_PYTHON")  # an interpreter with Keras and JAX
    if python is None:
        try:
            import jax  # noqa: F401
        except ImportError:
            pytest.skip("JAX is not installed here (set LEUKOCYTE_JAX_PYTHON to a Python with "
                        "Keras and JAX): the layers were checked for TensorFlow imports only")
        python = sys.executable
    code = ("import numpy as np; from leukocyte_cnn.inputs.step_augment import StepAugmentation;"
            "x = np.zeros((2, 8, 8, 3), 'uint8'); x[:, :2] = 200;"
            "y = StepAugmentation(rotation_degrees=90, horizontal_flip=True, seed=0)(x, "
            "training=True); assert y.shape == (2, 8, 8, 3)")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(REPO))
    subprocess.run([python, "-c", code], check=True, env=env, cwd=REPO, timeout=300)
