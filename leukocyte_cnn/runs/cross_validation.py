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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import save_model, write_csv, write_json
from leukocyte_cnn.base.knobs import Settings
from leukocyte_cnn.base.provenance import provenance
from leukocyte_cnn.base.run_folder import (
    CHECKPOINT,
    EPOCHS,
    PREDICTIONS,
    fold_dir,
    fold_is_done,
    write_fold_inputs,
)
from leukocyte_cnn.base.seeding import set_seed
from leukocyte_cnn.reporting.metrics import (
    predictions_metrics,
    prob_columns,
    probabilities_from_output,
)

TENSORBOARD = "tensorboard"  # a fold's TensorBoard logs: fold_XX/tensorboard/


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


def first_folds(folds: Sequence[int], max_folds: int | None, chosen: str | None
                ) -> list[int]:
    """The first ``max_folds`` of ``folds`` (a script's ``MAX_FOLDS`` knob, e.g. 3 under
    ``--quick``), unless the folds were chosen with ``--folds`` (``chosen``)."""
    if chosen or not max_folds:
        return list(folds)
    return list(folds)[:max_folds]


def run_folds(split, run_dir: str | os.PathLike, folds: Sequence[int], seed: int,
              train_fold: Callable[[Fold], pd.DataFrame], *, quiet: bool = False,
              settings: Settings | None = None) -> list[int]:
    """Train every fold in ``folds`` that is not finished yet; return the folds trained now.

    ``train_fold`` builds a fresh model, trains it on ``fold.train``, stops early on
    ``fold.val`` and returns the predictions of ``fold.test`` (usually through
    :func:`train_classifier_fold`, the fold body). One line per fold says where the run is;
    :func:`fit` adds one per epoch with the ETA of the fold and of the run
    (:mod:`leukocyte_cnn.base.progress`, silent under ``--quiet``). With the run's
    ``settings``, a knob set from outside the script that no fold read is named in one line
    at the end (it reached nothing in this run).
    """
    from leukocyte_cnn.base import progress
    from leukocyte_cnn.base.knobs import unused_lines

    todo = [k for k in folds if not fold_is_done(run_dir, k)]
    done = f" ({len(folds) - len(todo)} finished earlier)" if len(todo) < len(folds) else ""
    with progress.tracking(len(todo), f"{len(todo)} fold(s){done}"):
        trained = _run_folds(split, run_dir, folds, seed, train_fold, quiet=quiet)
    if trained and settings is not None:
        for line in unused_lines(settings):
            print(line, flush=True)
    return trained


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
        monitor: str = "val_loss", extra_callbacks: Sequence = (), verbose: int = 0,
        saved=None, resume: bool = False, reduce_lr: dict | None = None):
    """Train with early stopping on the validation images and keep the best weights.

    Writes ``epochs.csv`` (one row per epoch), TensorBoard logs (``tensorboard/``: train and
    validation scalars per epoch and the learning rate; unless ``--no-tensorboard``) and the
    best checkpoint ``model.keras`` (of
    ``saved``, default ``model``: the network inside an ``AugmentedTrainer``), both
    atomically. Without validation images the training loss is monitored instead, and the
    epochs file says so in its ``monitor`` column. ``resume``: save the whole training state
    after every epoch and, when a killed run left one, go on from it
    (:mod:`leukocyte_cnn.runs.training_state`; the feed is then one stream over all epochs,
    ``train_ds`` repeated, so a resumed run sees the batches an unbroken one would).
    ``reduce_lr``: ``{"patience": p, "factor": f}``: the learning rate is multiplied by ``f``
    after ``p`` epochs without improvement of the monitored loss (Keras' ReduceLROnPlateau).
    Returns the epoch log (a DataFrame, one row per epoch of the whole training).
    """

    if val_ds is None and monitor.startswith("val_"):
        monitor = monitor[4:]
    from leukocyte_cnn.base.progress import epoch_callback, tensorboard
    from leukocyte_cnn.runs import training_state

    state = training_state.load_state(fold_directory) if resume else None
    stopping = training_state.resumable_early_stopping(
        state, monitor=monitor, patience=patience, restore_best_weights=True, verbose=0)
    callbacks = [_EpochTimer(), stopping, *extra_callbacks]
    schedule = None
    if reduce_lr:
        schedule = training_state.resumable_reduce_lr(
            state, monitor=monitor, patience=int(reduce_lr["patience"]),
            factor=float(reduce_lr["factor"]), verbose=0)
        callbacks.insert(2, schedule)
    rows = training_state.saved_rows(state) if state else []
    feed, options, done = train_ds, {}, 0
    if resume:
        steps = int(train_ds.cardinality())
        if steps <= 0:
            raise ValueError("resume needs a training feed of known, finite length")
        if state is not None:
            training_state.restore(model, state, fold_directory)
            done = state["epoch"]
            print(f"{fold_directory}: resuming after epoch {done} of {epochs} (saved state)",
                  flush=True)
        feed = train_ds.repeat().skip(done * steps)
        options = {"steps_per_epoch": steps, "initial_epoch": done}
        callbacks.append(training_state.epoch_state(fold_directory, stopping, rows, schedule))
    if tensorboard():  # the epoch scalars and the learning rate; --no-tensorboard: none
        from leukocyte_cnn.runs.tensorboard_logs import EpochScalars

        callbacks.append(EpochScalars(fold_directory / TENSORBOARD))
    if not verbose:  # Keras' own per-epoch output replaces ours when asked for
        callbacks.append(epoch_callback(epochs))
    if state is not None and (state["stopped"] or done >= epochs):
        stopping.on_train_begin()  # killed after its last epoch: restore its best weights
        if stopping.best_weights is not None:
            model.set_weights(stopping.best_weights)
    else:
        history = model.fit(feed, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
                            verbose=verbose, shuffle=False, **options)  # tf.data shuffles
        if not resume:
            rows = [{"epoch": i + 1, **{k: v[i] for k, v in history.history.items()}}
                    for i in range(len(history.history.get("loss", [])))]
    log = pd.DataFrame(rows)
    log["monitor"] = monitor
    write_csv(fold_directory / EPOCHS, log)
    save_model(model if saved is None else saved, fold_directory / CHECKPOINT)
    if resume:
        training_state.clear_state(fold_directory)
    return log


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
    for column, values in zip(prob_columns(class_names), prob.T, strict=True):
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


def record_fold_inputs(fold: Fold, train: pd.DataFrame | None = None) -> Path:
    """:func:`write_fold_inputs` for a fold: ``train`` replaces ``fold.train`` when the fold
    trains on other images (class-balanced, offline-augmented); validation and test images
    are the fold's own."""
    return write_fold_inputs(fold.directory, fold.train if train is None else train,
                             fold.val, fold.test)


def make_optimizer(name: str, learning_rate: float, **options):
    """A fresh Keras optimizer by name (``adam``, ``rmsprop``, ``sgd``, ``adamax``, …).

    ``options`` go to the optimizer's constructor (e.g. ``momentum=0.9`` for SGD).
    """
    import keras

    try:
        return keras.optimizers.get({"class_name": name,
                                     "config": {"learning_rate": learning_rate, **options}})
    except (ValueError, TypeError) as exc:
        raise InputError(f"optimizer {name!r} with {options or 'default options'}: "
                         f"not accepted by Keras ({exc})") from None


def memory_cache(n_images: int, image_size: tuple[int, int], limit_mb: float) -> str | None:
    """``"memory"`` when a set's decoded images fit ``limit_mb`` (a script's ``CACHE_MB``
    knob), else ``None``: stream from disk.

    The pipeline caches after decoding and resizing, before shuffling and augmentation, so
    caching changes speed only: epochs after the first skip the decode. Large sets (the full
    Kaggle or C-NMC data at high resolution) stream, keeping memory bounded.
    """
    height, width = image_size
    return "memory" if n_images * height * width * 3 <= limit_mb * 2**20 else None


def train_classifier_fold(fold: Fold, build_model: Callable, *, class_names: Sequence[str],
                          image_size: tuple[int, int], batch_size: int, epochs: int,
                          patience: int, optimizer: str, learning_rate: float, color_mode: str,
                          cache_mb: float, augment=None, train_table: pd.DataFrame | None = None,
                          binary: bool = False, xla: bool = False, verbose: int = 0,
                          optimizer_options: dict | None = None, mask_column: str | None = None,
                          extra_metrics: Sequence = (), timings: dict | None = None,
                          resume: bool = False, rate_factors: Callable | None = None,
                          reduce_lr: dict | None = None) -> pd.DataFrame:
    """The body of one fold: train a fresh classifier, keep its best checkpoint, predict the
    test images once and write the fold's files (the last one marks it finished).

    ``build_model()`` returns an uncompiled model taking [0, 255] pixels. ``augment`` (a Keras
    layer stack, ``augment.online_augmentation``) touches training batches only: inside the
    training step when it is ``in_step`` (the feed then hands over ``uint8`` batches; the
    checkpoint holds the network alone), else in the ``tf.data`` pipeline. ``train_table``
    replaces the fold's training rows (e.g. the class-balanced augmented images of that fold);
    validation and test rows always come from the split; ``fold_XX/inputs.csv`` lists what was
    fed, before training. ``optimizer_options`` go to the optimizer (e.g. SGD's ``momentum``).
    ``mask_column`` names a column of the tables holding one mask file per image; the pipeline
    then blanks every image's background (training, validation and test alike) before resizing.
    ``color_mode`` (``rgb`` or ``grayscale``) is applied by the pipeline to every image; sets
    whose decoded images fit ``cache_mb`` are cached in memory. ``extra_metrics`` are followed
    per epoch (``epochs.csv``); the checkpoint is then saved compiled with built-in metrics
    only, so ``keras.models.load_model(safe_mode=True)`` opens it anywhere. ``timings`` join the
    fold's ``timing.json``. ``batch_size`` is the global batch: under several replicas
    (:func:`devices.model_scope`) each step's ``batch_size`` images are split over them. The
    fold's temperature (``temperature.json`` beside the checkpoint, for calibrated
    probabilities) is fitted on its validation images' predictions, never on a test image.
    ``resume``: a killed training goes on from its last finished epoch (:func:`fit`).
    ``rate_factors(model)``: ``{variable path: factor}`` of variables that learn at a fraction
    of ``learning_rate`` (fine-tuning's pretrained layers, :mod:`models.fine_tuning`).
    ``reduce_lr``: a learning-rate drop on plateaus (:func:`fit`).
    """
    from leukocyte_cnn.base.devices import (
        check_global_batch,
        compile_kwargs,
        model_scope,
        require_xla,
    )
    from leukocyte_cnn.inputs.pipeline import make_dataset

    in_step = getattr(augment, "in_step", False)  # augmented in the training step, fed uint8
    if in_step and xla:
        import keras

        if keras.backend.backend() == "tensorflow":
            raise InputError("--xla: XLA cannot compile the in-step augmentation's resampling "
                             "on TensorFlow (ImageProjectiveTransformV3 has no XLA kernel); run "
                             "without --xla, or set the knob AUGMENT_IN to 'pipeline'")
    train = fold.train if train_table is None else train_table
    record_fold_inputs(fold, train)  # fold_XX/inputs.csv: what this fold feeds, before training
    label_mode = "binary" if binary else "int"
    loss = "binary_crossentropy" if binary else "sparse_categorical_crossentropy"

    def dataset(table, training: bool):
        return make_dataset(table["path"].tolist(), table["label"].astype(int).tolist(),
                            image_size, batch_size, shuffle=training,
                            augment=augment if training and not in_step else None,
                            seed=fold.seed, label_mode=label_mode,
                            cache=memory_cache(len(table), image_size, cache_mb),
                            masks=table[mask_column].tolist() if mask_column else None,
                            color_mode=color_mode, as_uint8=training and in_step)

    check_global_batch(batch_size)
    with model_scope():  # several replicas: weights, optimizer state and metrics mirrored
        model = build_model()
        trainer = model
        if in_step:
            from leukocyte_cnn.inputs.step_augment import AugmentedTrainer

            trainer = AugmentedTrainer(model, augment, name=f"{model.name}_augmented")
        chosen = make_optimizer(optimizer, learning_rate, **(optimizer_options or {}))
        if rate_factors is not None:
            from leukocyte_cnn.models.fine_tuning import layer_rate_optimizer

            chosen = layer_rate_optimizer(chosen, rate_factors(model))
        trainer.compile(optimizer=chosen, loss=loss, metrics=["accuracy", *extra_metrics],
                        **compile_kwargs(xla))
    require_xla(trainer, xla)
    start = time.perf_counter()
    log = fit(trainer, dataset(train, True),
              dataset(fold.val, False) if len(fold.val) else None, epochs=epochs,
              patience=patience, fold_directory=fold.directory, verbose=verbose,
              saved=model, resume=resume, reduce_lr=reduce_lr)
    if extra_metrics or in_step or rate_factors is not None:
        # The checkpoint is the network alone, compiled with built-in metrics and a built-in
        # optimizer only (layer rates are a training device, not part of the model).
        with model_scope():
            model.compile(optimizer=trainer.optimizer if rate_factors is None else
                          make_optimizer(optimizer, learning_rate, **(optimizer_options or {})),
                          loss=loss, metrics=["accuracy"])
        save_model(model, fold.directory / CHECKPOINT)
    trained = time.perf_counter()
    # Temperature scaling, fitted on this fold's validation images only; none where the
    # validation images are the test images (a source model's held-out part does both).
    if len(fold.val) and not fold.val["image"].isin(set(fold.test["image"])).any():
        from leukocyte_cnn.reporting.calibration import fit_fold_temperature, write_temperature

        val = predict_table(model, dataset(fold.val, False), fold.val, class_names, fold.fold)
        write_temperature(fold.directory, fit_fold_temperature(fold.test["image"], val,
                                                               class_names))
    predictions = predict_table(model, dataset(fold.test, False), fold.test, class_names,
                                fold.fold)
    return finish_fold(fold, predictions, class_names, {
        "train_seconds": trained - start, "predict_seconds": time.perf_counter() - trained,
        "epochs_run": len(log), **(timings or {})})
