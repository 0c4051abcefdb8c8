"""TensorBoard logs (issue 24): every fold writes its epoch scalars and the learning rate
with Keras' callback, read back here from the event files with TensorFlow alone; off with
``--no-tensorboard``."""
from __future__ import annotations

import argparse

import keras
import numpy as np
import pytest
import tensorflow as tf

from leukocyte_cnn.base.progress import set_console, tensorboard
from leukocyte_cnn.runs.cross_validation import TENSORBOARD, fit


def _scalars(folder) -> dict[str, list[float]]:
    """{tag: values in step order} of every event file under ``folder``."""
    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                          else float(value.simple_value))
                found.setdefault(f"{path.parent.name}/{value.tag}", []).append(
                    (event.step, number))
    return {tag: [v for _, v in sorted(pairs)] for tag, pairs in found.items()}


def _fit(directory, epochs: int = 3):
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).uniform(0, 255, (16, 8, 8, 3)).astype("float32")
    labels = np.arange(16) % 2
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    return fit(model, data, data, epochs=epochs, patience=10, fold_directory=directory)


@pytest.fixture
def restore_console():
    yield
    set_console(tensorboard=True)


def test_folds_write_tensorboard_scalars_read_back_with_tensorflow(tmp_path, restore_console):
    assert tensorboard()  # on by default
    log = _fit(tmp_path)  # the epoch log fit returns (what epochs.csv holds)
    scalars = _scalars(tmp_path / TENSORBOARD)
    assert len(scalars["train/epoch_loss"]) == 3 and len(scalars["validation/epoch_loss"]) == 3
    np.testing.assert_allclose(scalars["train/epoch_loss"], log["loss"], rtol=1e-5)
    np.testing.assert_allclose(scalars["validation/epoch_accuracy"], log["val_accuracy"],
                               rtol=1e-5)
    np.testing.assert_allclose(scalars["train/epoch_learning_rate"], [0.01] * 3, rtol=1e-6)


def test_no_tensorboard_writes_no_logs(tmp_path, restore_console):
    from leukocyte_cnn.runs.experiment import RunOptions, add_common_arguments

    parser = add_common_arguments(argparse.ArgumentParser(), default_dataset="synthetic_all_idb2")
    run = RunOptions.from_args(parser.parse_args(["--no-tensorboard"]))
    assert run.tensorboard is False
    assert RunOptions.from_args(parser.parse_args([])).tensorboard is True
    set_console(tensorboard=run.tensorboard)  # as start_run does
    _fit(tmp_path, epochs=1)
    assert not (tmp_path / TENSORBOARD).exists()
    assert (tmp_path / "epochs.csv").exists()
