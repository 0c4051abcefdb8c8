"""A training killed mid-epoch and run again ends with the weights of an unbroken one."""
from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukocyte_cnn.base.errors import InputError

pytestmark = pytest.mark.reliability
EPOCHS = 5
KILL_AT = (2, 1)  # (epoch index, batch index): mid-way through the third epoch


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("cells")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(28):
        label = i % 2
        pixels = rng.integers(0, 90, (16, 16, 3), dtype=np.uint8)
        pixels[4:12, 4:12, label] = 220  # a red or green square: learnable
        path = root / f"cell{i:02d}.png"
        Image.fromarray(pixels).save(path)
        rows.append({"image": path.name, "path": str(path), "label": label,
                     "class_name": "ab"[label], "group": path.name})
    return pd.DataFrame(rows)


def _network():
    import keras

    return keras.Sequential([
        keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(4, 3, padding="same"), keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dropout(0.2),
        keras.layers.Dense(2, activation="softmax")])


def _train(images, directory, *, network=_network, kill=False, monkeypatch=None,
           wrong_val=False):
    """One fold of the fold body; ``wrong_val``: validation labels swapped, so the validation
    loss rises as the network learns and the learning rate drops every epoch."""
    from leukocyte_cnn.base.seeding import set_seed
    from leukocyte_cnn.inputs.augment import online_augmentation
    from leukocyte_cnn.runs import training_state
    from leukocyte_cnn.runs.cross_validation import train_classifier_fold

    directory.mkdir(parents=True, exist_ok=True)
    if kill:
        original = training_state.epoch_state

        def killing(*args, **kwargs):
            callback = original(*args, **kwargs)
            callback.on_epoch_begin = lambda epoch, logs=None: setattr(callback, "now", epoch)
            callback.on_train_batch_end = lambda batch, logs=None: _kill(callback.now, batch)
            return callback

        monkeypatch.setattr(training_state, "epoch_state", killing)
    else:
        monkeypatch.undo()
    val = images.iloc[20:24]
    if wrong_val:
        val = val.assign(label=1 - val["label"])
    fold = types.SimpleNamespace(train=images.iloc[:20].reset_index(drop=True),
                                 val=val.reset_index(drop=True),
                                 test=images.iloc[24:].reset_index(drop=True),
                                 seed=3, directory=directory, fold=0, started=None,
                                 artifacts={}, split_sha256="x")
    set_seed(3, deterministic_ops=True)
    return train_classifier_fold(
        fold, network, class_names=["a", "b"], image_size=(16, 16), batch_size=8,
        epochs=EPOCHS, patience=EPOCHS, optimizer="adam", learning_rate=1e-2,
        color_mode="rgb", cache_mb=64, resume=True, reduce_lr={"patience": 1, "factor": 0.5},
        augment=online_augmentation(rotation_degrees=40, horizontal_flip=True,
                                    vertical_flip=True, seed=3, where="step"))


def _kill(epoch, batch):
    if (epoch, batch) == KILL_AT:
        raise Killed


def _weights(directory):
    import keras

    return keras.models.load_model(directory / "model.keras", compile=False,
                                   safe_mode=True).get_weights()


def test_killed_mid_epoch_then_rerun_gives_the_unbroken_weights(images, tmp_path, monkeypatch):
    from leukocyte_cnn.runs.training_state import load_state

    unbroken = _train(images, tmp_path / "unbroken", monkeypatch=monkeypatch)
    with pytest.raises(Killed):
        _train(images, tmp_path / "killed", kill=True, monkeypatch=monkeypatch)
    state = load_state(tmp_path / "killed")
    assert state["epoch"] == KILL_AT[0]  # two finished epochs saved, the third lost
    assert not (tmp_path / "killed" / "model.keras").exists()
    resumed = _train(images, tmp_path / "killed", monkeypatch=monkeypatch)

    for a, b in zip(_weights(tmp_path / "unbroken"), _weights(tmp_path / "killed"), strict=True):
        np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(unbroken, resumed)
    logs = [pd.read_csv(tmp_path / name / "epochs.csv").drop(columns="seconds")
            for name in ("unbroken", "killed")]
    pd.testing.assert_frame_equal(*logs)
    assert len(logs[0]) == EPOCHS
    assert not (tmp_path / "killed" / "training_state").exists()  # done: nothing to resume


def test_the_resumed_run_differs_without_the_saved_random_state(images, tmp_path, monkeypatch):
    """The check above can fail: a rerun that restarted the feed's stream (or dropped the
    augmentation's seed state) would end elsewhere."""
    from leukocyte_cnn.runs import training_state

    _train(images, tmp_path / "unbroken", monkeypatch=monkeypatch)
    with pytest.raises(Killed):
        _train(images, tmp_path / "killed", kill=True, monkeypatch=monkeypatch)
    monkeypatch.undo()
    original = training_state.load_state

    def without_seed_state(directory):
        state = original(directory)
        for key, value in state["arrays"].items():  # the seed generator: an int state of 2
            if value.dtype.kind in "iu" and value.shape == (2,):
                state["arrays"][key] = np.zeros_like(value)
        return state

    monkeypatch.setattr(training_state, "load_state", without_seed_state)
    _train_keep(images, tmp_path / "killed")
    differs = any(not np.array_equal(a, b) for a, b in zip(
        _weights(tmp_path / "unbroken"), _weights(tmp_path / "killed"), strict=True))
    assert differs


def _train_keep(images, directory):
    """:func:`_train` without undoing the test's patches."""
    class Keep:
        def undo(self):
            pass

    return _train(images, directory, monkeypatch=Keep())


def test_a_state_of_another_network_is_refused(images, tmp_path, monkeypatch):
    import keras

    with pytest.raises(Killed):
        _train(images, tmp_path / "fold", kill=True, monkeypatch=monkeypatch)

    def wider():
        return keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(6, 3),
                                 keras.layers.GlobalAveragePooling2D(),
                                 keras.layers.Dense(2, activation="softmax")])

    with pytest.raises(InputError, match="training_state: saved by a training of another"):
        _train(images, tmp_path / "fold", network=wider, monkeypatch=monkeypatch)


def test_the_learning_rate_schedule_resumes_where_it_was(images, tmp_path, monkeypatch):
    """With the rate dropping every epoch, the resumed run's epochs (rates and validation
    losses after the kill) are those of the unbroken run."""
    _train(images, tmp_path / "unbroken", monkeypatch=monkeypatch, wrong_val=True)
    with pytest.raises(Killed):
        _train(images, tmp_path / "killed", kill=True, monkeypatch=monkeypatch,
               wrong_val=True)
    _train(images, tmp_path / "killed", monkeypatch=monkeypatch, wrong_val=True)
    logs = [pd.read_csv(tmp_path / name / "epochs.csv").drop(columns="seconds")
            for name in ("unbroken", "killed")]
    pd.testing.assert_frame_equal(*logs)
    rates = logs[0]["learning_rate"].to_numpy()
    assert rates[-1] < rates[KILL_AT[0]] < rates[0]  # drops before and after the kill
