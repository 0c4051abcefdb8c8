"""Resuming one training from its last finished epoch, to the weights of an unbroken run.

A long training (pretraining a source model on ten thousand images takes an hour on two CPU
cores) can be killed at any moment. After every epoch :class:`EpochState` writes
``training_state/`` beside the fold's files: every variable of the model (weights, batch-norm
statistics and the random state of the in-step augmentation), of the optimizer (step count,
learning rate, moments), the early-stopping state (epochs without improvement, best value,
best epoch and best weights), that of the learning-rate schedule when there is one, and the
epoch log so far. The same command then calls
:func:`cross_validation.fit` with ``resume=True`` again: the state is loaded, training goes on
from the next epoch, and the feed skips the batches already seen. The feed is one seeded stream
over all epochs (the training set repeated, reshuffled each pass), so skipping ``epoch x
steps`` batches puts it exactly where the unbroken run was; with op determinism on, the final
weights are the same bytes (``tests/test_training_state.py`` kills a run mid-epoch).

The state is written atomically (each epoch's arrays in their own file first, then
``state.json``, which names that file and its digest; older arrays are removed after), so a
kill at any moment leaves one consistent state; it is removed once the fold's checkpoint is
written. A state whose variables do not
match the model being trained (another architecture or optimizer) is refused in one line.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import read_json, read_npz, write_json, write_npz

STATE_DIR = "training_state"
_MANIFEST = "state.json"


def state_dir(fold_directory: str | os.PathLike) -> Path:
    return Path(fold_directory) / STATE_DIR


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _variables(trainer) -> list:
    """Every variable a resumed training needs, in a fixed order: the model's (trainable,
    non-trainable, seed-generator states) and the optimizer's."""
    return [*trainer.variables, *trainer.optimizer.variables]


def load_state(fold_directory) -> dict | None:
    """The saved state of a killed training (``None`` when there is none)."""
    folder = state_dir(fold_directory)
    manifest = folder / _MANIFEST
    if not manifest.is_file():
        return None
    state = read_json(manifest)
    arrays = folder / state["arrays"]
    if not arrays.is_file() or _digest(arrays) != state["arrays_sha256"]:
        raise InputError(f"{arrays}: missing or does not match {manifest} (a write was cut "
                         "short); delete the folder to train this fold from the start")
    state["arrays"] = read_npz(arrays)
    return state


def restore(trainer, state: dict, where) -> None:
    """Put a saved state's variables into ``trainer`` (compiled, optimizer not yet used)."""
    trainer.optimizer.build(trainer.trainable_variables)
    variables = _variables(trainer)
    saved = [state["arrays"][f"v{i}"] for i in range(state["n_variables"])]
    shapes = [tuple(v.shape) for v in variables]
    if len(saved) != len(variables) or any(tuple(a.shape) != s for a, s in zip(saved, shapes,
                                                                                strict=False)):
        raise InputError(f"{state_dir(where)}: saved by a training of another network or "
                         f"optimizer ({len(saved)} variables, this one has {len(variables)}); "
                         "delete the folder to train this fold from the start")
    for variable, value in zip(variables, saved, strict=True):
        variable.assign(value)


def clear_state(fold_directory) -> None:
    """Remove the state once the fold's own files are written (nothing left to resume)."""
    shutil.rmtree(state_dir(fold_directory), ignore_errors=True)


def resumable_early_stopping(state: dict | None, **options):
    """Keras' ``EarlyStopping`` that starts from a saved state's wait, best value and weights."""
    import keras

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if state is None:
                return
            stopping = state["early_stopping"]
            self.wait, self.best_epoch = stopping["wait"], stopping["best_epoch"]
            self.best = stopping["best"]
            if stopping["n_best_weights"]:
                self.best_weights = [state["arrays"][f"b{i}"]
                                     for i in range(stopping["n_best_weights"])]

    return ResumableEarlyStopping(**options)


def resumable_reduce_lr(state: dict | None, **options):
    """Keras' ``ReduceLROnPlateau`` that starts from a saved state's wait, best value and
    cooldown (the reduced rate itself is an optimizer variable, restored with the others)."""
    import keras

    class ResumableReduceLR(keras.callbacks.ReduceLROnPlateau):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            saved = (state or {}).get("reduce_lr")
            if saved:
                self.wait, self.best = saved["wait"], saved["best"]
                self.cooldown_counter = saved["cooldown_counter"]

    return ResumableReduceLR(**options)


def _columns(rows: list[dict]) -> dict:
    """The epoch log as columns in their order (a JSON object's keys are written sorted)."""
    names = list(dict.fromkeys(key for row in rows for key in row))
    return {"columns": names, "rows": [[row.get(key) for key in names] for row in rows]}


def saved_rows(state: dict) -> list[dict]:
    """The epoch log of a saved state, each row's columns in the order they were logged."""
    log = state["log"]
    return [dict(zip(log["columns"], values, strict=True)) for values in log["rows"]]


def _plain(value):
    return None if value is None else float(value)


def epoch_state(fold_directory, early_stopping, rows: list[dict], reduce_lr=None):
    """A callback saving the training state after every epoch (place it after the early
    stopping and the learning-rate schedule, whose states it records); ``rows`` is the epoch
    log so far, extended here."""
    import keras

    folder = state_dir(fold_directory)

    class EpochState(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
            folder.mkdir(parents=True, exist_ok=True)
            arrays = {f"v{i}": np.asarray(v.numpy() if hasattr(v, "numpy") else v)
                      for i, v in enumerate(_variables(self.model))}
            best = early_stopping.best_weights or []
            arrays.update({f"b{i}": np.asarray(w) for i, w in enumerate(best)})
            name = f"state_epoch{epoch + 1:04d}.npz"
            write_npz(folder / name, **arrays)
            best_value = early_stopping.best
            manifest = {"epoch": epoch + 1, "stopped": bool(self.model.stop_training),
                        "n_variables": len(_variables(self.model)),
                        "early_stopping": {"wait": int(early_stopping.wait),
                                           "best": None if best_value is None
                                           else float(best_value),
                                           "best_epoch": int(early_stopping.best_epoch),
                                           "n_best_weights": len(best)},
                        "log": _columns(rows), "arrays": name,
                        "arrays_sha256": _digest(folder / name)}
            if reduce_lr is not None:
                manifest["reduce_lr"] = {"wait": int(reduce_lr.wait),
                                         "best": _plain(reduce_lr.best),
                                         "cooldown_counter": int(reduce_lr.cooldown_counter)}
            write_json(folder / _MANIFEST, manifest)
            for old in folder.glob("state_epoch*.npz"):
                if old.name != name:
                    old.unlink()

    return EpochState()
