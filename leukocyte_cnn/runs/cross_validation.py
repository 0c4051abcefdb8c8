"""The cross-validation loop: one fresh model per fold, early stopping, checkpoints, resume.

A fold is finished when ``fold_XX/predictions.csv`` exists; it is written last and atomically,
so a run killed at any moment resumes from its finished folds. Each fold seeds itself with
``seed + fold`` before building its model, so a resumed run gives the same predictions as an
uninterrupted one, and folds can run on different machines (``--folds``).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import save_model, write_csv, write_json
from leukocyte_cnn.reporting.metrics import (predictions_metrics, prob_columns,
                                             probabilities_from_output)
from leukocyte_cnn.base.provenance import provenance
from leukocyte_cnn.base.run_folder import (CHECKPOINT, EPOCHS, PREDICTIONS, fold_dir, fold_is_done,
                                           write_fold_inputs)
from leukocyte_cnn.base.seeding import set_seed


@dataclasses.dataclass
class Fold:
    """One fold's images by role, where it writes, and the seed it uses.

    ``split_sha256`` is the split file the fold comes from and ``artifacts`` the derived
    artifacts it used (``{kind: artifacts.record_of(path)}``, e.g. its balanced-fold folder,
    added by the fold body): both go into ``timing.json``, so resumes and merges can refuse
    folds made from other files (``runinfo.check_fold_chain``).
    """

    fold: int
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    directory: Path
    seed: int
    split_sha256: str | None = None
    artifacts: dict = dataclasses.field(default_factory=dict)
    started: tuple[float, float] | None = None  # (wall, CPU) clock when run_folds started it


def parse_fold_list(text: str | None, available: Sequence[int]) -> list[int]:
    """``"3,4"`` or ``"0-4,7"`` → fold numbers; ``None`` → all. Unknown folds are an error."""
    available = sorted(int(f) for f in available)
    if not text:
        return available
    chosen: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                chosen.extend(range(lo, hi + 1))
            else:
                chosen.append(int(part))
        except ValueError:
            raise InputError(f"--folds {text}: expected numbers like 3,4 or 0-4") from None
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise InputError(f"--folds {text}: folds {unknown} not in the split "
                         f"(it has folds {available[0]}..{available[-1]})")
    return sorted(set(chosen))


def run_folds(split, run_dir: str | os.PathLike, folds: Sequence[int], seed: int,
              train_fold: Callable[[Fold], pd.DataFrame], *, quiet: bool = False) -> list[int]:
    """Train every fold in ``folds`` that is not finished yet; return the folds trained now.

    ``train_fold`` builds a fresh model, trains it on ``fold.train``, stops early on
    ``fold.val`` and returns the predictions of ``fold.test`` (see :func:`fit_and_predict`).
    One line per fold says where the run is; :func:`fit` adds one per epoch with the ETA of
    the fold and of the run (:mod:`leukocyte_cnn.base.progress`, silent under ``--quiet``).
    """
    from leukocyte_cnn.base import progress

    todo = [k for k in folds if not fold_is_done(run_dir, k)]
    done = f" ({len(folds) - len(todo)} finished earlier)" if len(todo) < len(folds) else ""
    with progress.tracking(len(todo), f"{len(todo)} fold(s){done}"):
        return _run_folds(split, run_dir, folds, seed, train_fold, quiet=quiet)


def _run_folds(split, run_dir: str | os.PathLike, folds: Sequence[int], seed: int,
               train_fold: Callable[[Fold], pd.DataFrame], *, quiet: bool = False) -> list[int]:
    """The loop of :func:`run_folds`."""
    from leukocyte_cnn.base import progress

    from leukocyte_cnn.base.io import file_sha256
    from leukocyte_cnn.base.run_folder import check_fold_chain

    split_sha256 = file_sha256(split.csv_path) if getattr(split, "csv_path", None) else None
    check_fold_chain(run_dir, split_sha256)  # finished folds of another split: one line
    trained = []
    for i, k in enumerate(folds, 1):
        head = f"fold {k} ({i}/{len(folds)})"
        if fold_is_done(run_dir, k):
            if not quiet:
                print(f"{head}: finished earlier, kept", flush=True)
            continue
        rows = split.fold(k)
        fold = Fold(fold=k, train=rows[rows.role == "train"].reset_index(drop=True),
                    val=rows[rows.role == "val"].reset_index(drop=True),
                    test=rows[rows.role == "test"].reset_index(drop=True),
                    directory=fold_dir(run_dir, k), seed=seed + k, split_sha256=split_sha256)
        fold.directory.mkdir(parents=True, exist_ok=True)
        for leftover in fold.directory.glob(".*.tmp*"):  # a write cut short by a kill
            leftover.unlink()
        set_seed(fold.seed)
        start = time.perf_counter()
        fold.started = (start, time.process_time())
        try:
            with progress.unit(head if len(folds) > 1 or not quiet else ""):
                predictions = train_fold(fold)
        except Exception as exc:
            _name_unreadable_image(fold, exc)  # a decode error deep in tf.data: say which file
            raise
        trained.append(k)
        if not quiet:
            acc = float((predictions["pred"] == predictions["label"]).mean())
            print(f"{head}: train {len(fold.train)} val {len(fold.val)} test {len(fold.test)}"
                  f" | test accuracy {acc:.3f} | {time.perf_counter() - start:.1f} s", flush=True)
    return trained


def _name_unreadable_image(fold: Fold, exc: BaseException) -> None:
    """Turn a TensorFlow input-pipeline failure caused by a broken image into one line.

    A split made with ``--no-check-images``, or a file damaged later without changing its
    size (size changes are caught by the split's dataset hash), lets a broken image reach
    ``tf.data``, which reports it as a long ``UnknownError``/``InvalidArgumentError``
    traceback, without the file name for native JPEG/PNG decoding. Only then, the fold's files
    are decoded one by one and the first bad one raises ``InputError("<path>: <problem>;
    ...")``. Other errors pass through.
    """
    if isinstance(exc, InputError) or not type(exc).__module__.startswith("tensorflow"):
        return
    from leukocyte_cnn.data.images import check_images

    rows = pd.concat([fold.train, fold.val, fold.test], ignore_index=True)
    if "path" not in rows.columns:
        return
    try:
        check_images(rows.drop_duplicates("path"), skip_bad=False)
    except InputError as bad:
        raise InputError(f"{bad}; fold {fold.fold} stopped, finished folds are kept") from None


class _EpochTimer:
    """Adds the wall time of each epoch to the Keras logs (lazily built Keras callback)."""

    def __new__(cls):
        import keras

        class EpochTimer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                if logs is not None:
                    logs["seconds"] = time.perf_counter() - self._start

        return EpochTimer()


def fit(model, train_ds, val_ds, *, epochs: int, patience: int, fold_directory: Path,
        monitor: str = "val_loss", extra_callbacks: Sequence = (), verbose: int = 0):
    """Train with early stopping on the validation images and keep the best weights.

    Writes ``epochs.csv`` (one row per epoch) and the best checkpoint ``model.keras``, both
    atomically. Without validation images the training loss is monitored instead, and the
    epochs file says so in its ``monitor`` column.
    """
    import keras

    if val_ds is None and monitor.startswith("val_"):
        monitor = monitor[4:]
    from leukocyte_cnn.base.progress import epoch_callback

    callbacks = [_EpochTimer(),
                 keras.callbacks.EarlyStopping(monitor=monitor, patience=patience,
                                               restore_best_weights=True, verbose=0),
                 *extra_callbacks]
    if not verbose:  # Keras' own per-epoch output replaces ours when asked for
        callbacks.append(epoch_callback(epochs))
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
                        verbose=verbose, shuffle=False)  # tf.data shuffles, seeded
    log = pd.DataFrame(history.history)
    log.insert(0, "epoch", np.arange(1, len(log) + 1))
    log["monitor"] = monitor
    write_csv(fold_directory / EPOCHS, log)
    save_model(model, fold_directory / CHECKPOINT)
    return history


def predict_eagerly(model, dataset) -> np.ndarray:
    """The model's outputs for every batch of ``dataset`` (images, or (images, labels)).

    Called batch by batch without ``tf.function``: ``model.predict`` traces a new graph for
    every fresh fold model and again for each fold's last, smaller batch, and after a few folds
    TensorFlow warns about "excessive retracing"; a test set is predicted once per fold, so
    eager calls cost little and trace nothing.
    """
    outputs = []
    for batch in dataset:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        outputs.append(np.asarray(model(images, training=False), dtype=np.float64))
    if not outputs:
        return np.zeros((0, 1))
    return np.concatenate(outputs)


def dihedral_views(images):
    """The 8 rotations/flips of a batch ``(B, H, W, C)`` of square images: the symmetries of a
    cell on a slide, which has no up or left."""
    import tensorflow as tf

    views = []
    for flipped in (images, tf.reverse(images, axis=[2])):
        views += [tf.image.rot90(flipped, k) for k in range(4)]
    return views


def predict_probabilities(model, dataset, tta: bool = False) -> np.ndarray:
    """Class probabilities of every image of ``dataset``; with ``tta`` the mean over the 8
    rotations/flips of each image (test-time augmentation)."""
    if not tta:
        return probabilities_from_output(predict_eagerly(model, dataset))
    out = []
    for batch in dataset:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        out.append(np.mean([probabilities_from_output(
            np.asarray(model(view, training=False), dtype=np.float64))
            for view in dihedral_views(images)], axis=0))
    return np.concatenate(out) if out else np.zeros((0, 2))


def predict_table(model, test_ds, test: pd.DataFrame, class_names: Sequence[str],
                  fold: int, tta: bool = False) -> pd.DataFrame:
    """Per-image test probabilities as a predictions table (the run's raw result); ``tta``
    averages each image's 8 rotations/flips (:func:`predict_probabilities`)."""
    prob = predict_probabilities(model, test_ds, tta)
    if len(prob) != len(test):
        raise RuntimeError(f"model returned {len(prob)} predictions for {len(test)} images")
    table = pd.DataFrame({"fold": fold, "image": test["image"].to_numpy(),
                          "label": test["label"].astype(int).to_numpy(),
                          "class_name": test["class_name"].to_numpy(),
                          "group": test["group"].astype(str).to_numpy()})
    for column, values in zip(prob_columns(class_names), prob.T):
        table[column] = values
    table["pred"] = prob.argmax(axis=1)
    table["pred_class"] = [class_names[i] for i in table["pred"]]
    return table


def finish_fold(fold: Fold, predictions: pd.DataFrame, class_names: Sequence[str],
                timings: dict) -> pd.DataFrame:
    """Write the fold's timing/provenance, then its predictions (last: marks the fold done)."""
    metrics = predictions_metrics(predictions, class_names)
    if fold.started is not None:  # the whole fold: balancing, training, prediction
        timings = {"fold_wall_seconds": time.perf_counter() - fold.started[0],
                   "fold_cpu_seconds": time.process_time() - fold.started[1], **timings}
    write_json(fold.directory / "timing.json",
               {**timings, "fold": fold.fold, "seed": fold.seed,
                "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(fold.test),
                "test_accuracy": metrics["accuracy"], "split_sha256": fold.split_sha256,
                "artifacts": fold.artifacts, "provenance": provenance()})
    write_csv(fold.directory / PREDICTIONS, predictions)
    return predictions


def fit_and_predict(fold: Fold, model, *, train_ds, val_ds, test_ds,
                    class_names: Sequence[str], epochs: int, patience: int,
                    extra_callbacks: Sequence = (), verbose: int = 0) -> pd.DataFrame:
    """The usual fold body: :func:`fit`, then :func:`predict_table`, then :func:`finish_fold`."""
    start = time.perf_counter()
    history = fit(model, train_ds, val_ds, epochs=epochs, patience=patience,
                  fold_directory=fold.directory, extra_callbacks=extra_callbacks,
                  verbose=verbose)
    trained = time.perf_counter()
    predictions = predict_table(model, test_ds, fold.test, class_names, fold.fold)
    timings = {"train_seconds": trained - start,
               "predict_seconds": time.perf_counter() - trained,
               "epochs_run": len(history.history.get("loss", []))}
    return finish_fold(fold, predictions, class_names, timings)


def record_fold_inputs(fold: Fold, train: pd.DataFrame | None = None) -> Path:
    """:func:`write_fold_inputs` for a fold: ``train`` replaces ``fold.train`` when the fold
    trains on other images (class-balanced, offline-augmented); validation and test images
    are the fold's own."""
    return write_fold_inputs(fold.directory, fold.train if train is None else train,
                             fold.val, fold.test)


