"""U-Net cell masks of one fold: trained on its training images only, written for all of it.

The Copenhagen study blanks each image's background with a mask; its U-Net (Ronneberger et
al. 2015, ``models.networks.unet``) sees grayscale images and learns from ground-truth masks
where the dataset has them for every training image, else from Otsu masks. A fold's masks are
an artifact keyed by what made them (:class:`UNetSettings`, the split file's SHA-256 and the
fold: ``inputs.masks.unet_mask_root``), so ``unet_masks.py`` and ``scaling_masks_cnn_fcn.py``
(each with its own knobs) share a mask set exactly when they would make the same one, and a
set made otherwise is never overwritten in place.

Test images are only ever predicted, never trained on, so their masks carry no information
from test images into the classifier study.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from leukocyte_cnn.base.errors import InputError

UNET_MASK_CODE_VERSION = 2  # bump when the same settings would give other masks
TARGETS = ("auto", "truth", "otsu")


@dataclasses.dataclass(frozen=True)
class UNetSettings:
    """Everything that decides a fold's U-Net masks besides the split and the fold."""

    image_size: tuple[int, int]
    start_filters: int
    first_dropout: float
    dropout: float
    optimizer: str
    learning_rate: float
    batch_size: int
    epochs: int
    patience: int
    shuffle_buffer: int
    mask_threshold: float
    otsu_min_votes: int
    max_images_per_class: int | None
    targets: str
    seed: int

    @classmethod
    def from_knobs(cls, unet: Mapping, *, otsu_min_votes: int, max_images_per_class,
                   seed: int) -> UNetSettings:
        """From a script's U-Net knobs (``IMAGE_SIZE``, ``START_FILTERS``, ``FIRST_DROPOUT``,
        ``DROPOUT``, ``OPTIMIZER``, ``LEARNING_RATE``, ``BATCH_SIZE``, ``EPOCHS``,
        ``PATIENCE``, ``SHUFFLE_BUFFER``, ``MASK_THRESHOLD``, ``TARGETS``: ``unet_masks.py``'s
        block, or ``scaling_masks_cnn_fcn.py``'s ``UNET``), the Otsu vote rule, the per-class
        cap of quick runs and the seed."""
        targets = unet["TARGETS"]
        if targets not in TARGETS:
            raise InputError(f"TARGETS {targets!r}: choose from {', '.join(TARGETS)}")
        return cls(image_size=tuple(unet["IMAGE_SIZE"]), start_filters=int(unet["START_FILTERS"]),
                   first_dropout=float(unet["FIRST_DROPOUT"]), dropout=float(unet["DROPOUT"]),
                   optimizer=unet["OPTIMIZER"], learning_rate=float(unet["LEARNING_RATE"]),
                   batch_size=int(unet["BATCH_SIZE"]), epochs=int(unet["EPOCHS"]),
                   patience=int(unet["PATIENCE"]), shuffle_buffer=int(unet["SHUFFLE_BUFFER"]),
                   mask_threshold=float(unet["MASK_THRESHOLD"]),
                   otsu_min_votes=int(otsu_min_votes), max_images_per_class=max_images_per_class,
                   targets=targets, seed=int(seed))

    def fingerprint_inputs(self) -> dict:
        """The mask set's fingerprint inputs (with the split's SHA-256 and the fold)."""
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "seed"},
                "image_size": list(self.image_size), "seed": self.seed,
                "code": UNET_MASK_CODE_VERSION}


def mask_root(data_dir: str | Path, split, fold: int, unet: UNetSettings,
              mask_dir: str | Path | None = None) -> Path:
    """The mask folder of ``fold``: ``<mask_dir>/fold_XX`` when given, else the fingerprinted
    ``<data_dir>/masks/unet/<split>_<fingerprint>/fold_XX``."""
    from leukocyte_cnn.inputs.masks import unet_mask_root

    if mask_dir:
        return Path(mask_dir) / f"fold_{fold:02d}"
    return unet_mask_root(data_dir, split, fold, unet.fingerprint_inputs())


def to_gray(images):
    """RGB batch (B, H, W, 3) in [0, 255] -> luminance (B, H, W, 1), as the deck's U-Net saw."""
    import tensorflow as tf

    return tf.image.rgb_to_grayscale(images)


def pair_dataset(table, target_column: str, size, batch_size: int, *, shuffle: bool, seed: int,
                 shuffle_buffer: int):
    """Batches of (grayscale image, 0/1 mask) at ``size``; masks resized nearest-neighbour.

    Images and masks come from two unshuffled pipelines zipped image by image, so a pair can
    never be mismatched; shuffling then happens on the pairs (at most ``shuffle_buffer`` at a
    time: bounded memory).
    """
    import tensorflow as tf

    from leukocyte_cnn.inputs.pipeline import make_dataset

    images = make_dataset(table["path"].tolist(), None, size, 1).unbatch()
    masks = make_dataset(table[target_column].tolist(), None, size, 1,
                         resize_method="nearest").unbatch()
    pairs = tf.data.Dataset.zip((images, masks)).map(
        lambda image, mask: (to_gray(image[None])[0], tf.cast(mask[..., :1] > 0, tf.float32)))
    pairs = pairs.apply(tf.data.experimental.assert_cardinality(len(table)))  # epoch length
    if shuffle:
        pairs = pairs.shuffle(min(shuffle_buffer, max(len(table), 1)), seed=seed,
                              reshuffle_each_iteration=True)
    return pairs.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict_masks(model, table, size, batch_size: int, threshold: float):
    """Yield (row, boolean mask at the image's own size) for every row of ``table``."""
    import numpy as np
    import tensorflow as tf

    from leukocyte_cnn.data.images import image_mode_info
    from leukocyte_cnn.inputs.pipeline import make_dataset

    rows = table.itertuples(index=False)
    for batch in make_dataset(table["path"].tolist(), None, size, batch_size):
        probabilities = model(to_gray(batch), training=False)
        for probability in probabilities:
            row = next(rows)
            width, height = image_mode_info(row.path)[:2]
            full = tf.image.resize(probability, (height, width), method="bilinear")
            yield row, np.asarray(full)[..., 0] >= threshold


def score_rows(role: str, key: str, unet_mask, otsu_path: str, truth_path: str) -> dict:
    """IoU/Dice of the U-Net mask against ground truth and Otsu, and of Otsu against truth."""
    from leukocyte_cnn.inputs.masks import dice, iou, read_mask

    otsu = read_mask(otsu_path)
    row = {"role": role, "image": key, "unet_vs_otsu_iou": iou(unet_mask, otsu),
           "unet_vs_otsu_dice": dice(unet_mask, otsu)}
    if truth_path:
        truth = read_mask(truth_path)
        if truth.shape != unet_mask.shape:
            raise InputError(f"{truth_path}: mask size {truth.shape} differs from its image "
                             f"{unet_mask.shape}")
        row.update(unet_vs_truth_iou=iou(unet_mask, truth),
                   unet_vs_truth_dice=dice(unet_mask, truth),
                   otsu_vs_truth_iou=iou(otsu, truth), otsu_vs_truth_dice=dice(otsu, truth))
    return row


def fold_rows(split, fold: int, unet: UNetSettings, otsu_root: Path, data_root) -> pd.DataFrame:
    """The fold's images with their ground-truth (``truth``, ``""`` when none) and Otsu mask
    files; with ``max_images_per_class`` (quick runs) every role is capped the way the
    classifier scripts cap it (same function, same seed), so masks exist for their images."""
    from leukocyte_cnn.inputs.masks import ensure_otsu_masks, truth_mask_column
    from leukocyte_cnn.runs.trials import limit_per_class

    rows = split.fold(fold)
    rows = pd.concat([limit_per_class(rows[rows.role == role], unet.max_images_per_class,
                                      unet.seed) for role in ("train", "val", "test")],
                     ignore_index=True)
    rows["truth"] = truth_mask_column(rows, split.settings["dataset"],
                                      data_root or split.settings.get("data_root"),
                                      split.settings.get("reader_options", {})).to_numpy()
    rows["otsu"] = ensure_otsu_masks(rows, otsu_root, min_votes=unet.otsu_min_votes)
    return rows


def train_fold_masks(split, fold: int, unet: UNetSettings, *, out: Path, root: Path,
                     otsu_root: Path, data_root, xla: bool = False) -> pd.DataFrame:
    """Train a fresh U-Net on the fold's training images (stopping early on its validation
    images), write a mask for every image of the fold into ``root`` (marked complete last)
    and the U-Net's files into ``out``; returns the per-image IoU/Dice scores."""
    import keras

    from leukocyte_cnn.base import progress
    from leukocyte_cnn.base.devices import compile_kwargs, model_scope, require_xla
    from leukocyte_cnn.base.io import file_sha256, write_csv
    from leukocyte_cnn.base.run_folder import write_fold_inputs
    from leukocyte_cnn.base.seeding import set_seed
    from leukocyte_cnn.inputs.masks import (
        COMPLETE_MARKER,
        mark_complete,
        mask_file,
        unet_mask_inputs,
        write_mask,
    )
    from leukocyte_cnn.models.networks import unet as unet_network
    from leukocyte_cnn.runs.cross_validation import fit, make_optimizer

    rows = fold_rows(split, fold, unet, otsu_root, data_root)
    train, val = rows[rows.role == "train"], rows[rows.role == "val"]
    has_truth = bool(len(train)) and bool((train["truth"] != "").all())
    if unet.targets == "truth" and not has_truth:
        raise InputError(f"{split.csv_path}: TARGETS truth, but not every training image has "
                         "a ground-truth mask in this dataset")
    target = "truth" if unet.targets == "truth" or (unet.targets == "auto" and has_truth) \
        else "otsu"
    if target == "truth" and len(val) and (val["truth"] == "").any():
        val = val[val["truth"] != ""]
    print(f"fold {fold}: U-Net on {len(train)} training images ({target} masks), "
          f"{len(val)} validation images", flush=True)

    size = unet.image_size
    set_seed(unet.seed + fold)
    with model_scope():  # several replicas: weights, optimizer state, metrics mirrored
        model = unet_network(input_shape=(*size, 1), start_filters=unet.start_filters,
                             first_dropout=unet.first_dropout, dropout=unet.dropout)
        model.compile(optimizer=make_optimizer(unet.optimizer, unet.learning_rate),
                      loss="binary_crossentropy",
                      metrics=["accuracy", keras.metrics.BinaryIoU(
                          target_class_ids=[1], threshold=unet.mask_threshold, name="iou")],
                      **compile_kwargs(xla))
    require_xla(model, xla)
    out.mkdir(parents=True, exist_ok=True)
    write_fold_inputs(out, train, val, rows[rows.role == "test"])  # what the U-Net fed

    def pairs(table, training: bool):
        return pair_dataset(table, target, size, unet.batch_size, shuffle=training,
                            seed=unet.seed + fold if training else 0,
                            shuffle_buffer=unet.shuffle_buffer)

    with progress.unit(f"U-Net fold {fold}"):  # epoch lines with the fold's ETA
        fit(model, pairs(train, True), pairs(val, False) if len(val) else None,
            epochs=unet.epochs, patience=unet.patience, fold_directory=out)

    # Masks for every image of the fold (test images are predicted, never trained on).
    # The set is marked incomplete while it is rewritten, so no study reads a mixture.
    (root / COMPLETE_MARKER).unlink(missing_ok=True)
    scores, manifest = [], []
    checkpoint_sha = file_sha256(out / "model.keras")
    for row, mask in progress.counted(
            predict_masks(model, rows, size, unet.batch_size, unet.mask_threshold),
            f"fold {fold}: U-Net masks written", total=len(rows)):
        path = write_mask(mask_file(root, row.image), mask)
        manifest.append({"image": row.image, "mask": str(path.relative_to(root)),
                         "unet_run": str(out), "unet_checkpoint_sha256": checkpoint_sha})
        scores.append(score_rows(row.role, row.image, mask, row.otsu, row.truth))
    scores = pd.DataFrame(scores).assign(fold=fold, target=target)
    write_csv(out / "mask_scores.csv", scores)
    mark_complete(root, pd.DataFrame(manifest),
                  unet_mask_inputs(split, fold, unet.fingerprint_inputs()),
                  made_by={"unet_run": str(out), "unet_checkpoint_sha256": checkpoint_sha})
    print(f"fold {fold}: {len(manifest)} masks in {root}", flush=True)
    return scores


def mask_set_state(root: Path, split, fold: int, unet: UNetSettings) -> str:
    """``current`` (made from exactly these inputs), ``missing`` (nothing complete there), or
    refused with one line when a complete set made otherwise lies there (never overwritten)."""
    from leukocyte_cnn.base.artifacts import describe_difference
    from leukocyte_cnn.inputs.masks import (
        mask_set_is_complete,
        unet_mask_inputs,
        unet_mask_set_is_current,
    )

    inputs = unet_mask_inputs(split, fold, unet.fingerprint_inputs())
    if unet_mask_set_is_current(root, inputs):
        return "current"
    if mask_set_is_complete(root):
        raise InputError(f"{root}: holds U-Net masks made otherwise "
                         f"({describe_difference(root, inputs)}); it is kept: choose another "
                         "mask folder or delete it")
    return "missing"


def ensure_unet_masks(split, fold: int, unet: UNetSettings, *, data_dir, work_dir: Path,
                      data_root, mask_dir=None, xla: bool = False) -> Path:
    """The mask folder of ``fold`` made with ``unet``: reused when current, else trained now
    (the U-Net's files go to ``work_dir/fold_XX``)."""
    from leukocyte_cnn.base.locks import artifact_lock
    from leukocyte_cnn.inputs.masks import otsu_mask_root

    root = mask_root(data_dir, split, fold, unet, mask_dir)
    if mask_set_state(root, split, fold, unet) == "current":
        return root
    # Jobs started together train this fold's U-Net once: the others wait, then reuse it.
    with artifact_lock(root, f"fold {fold}'s U-Net masks {root}"):
        if mask_set_state(root, split, fold, unet) == "current":
            return root
        print(f"no U-Net masks in {root} yet: training the U-Net of fold {fold}", flush=True)
        otsu_root = otsu_mask_root(data_dir, split.settings["dataset"],
                                   split.settings.get("dataset_hash"), unet.otsu_min_votes)
        train_fold_masks(split, fold, unet, out=Path(work_dir) / f"fold_{fold:02d}",
                         root=root, otsu_root=otsu_root, data_root=data_root, xla=xla)
    return root


def summary_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per role and comparison: images, IoU and Dice as mean ± sample std."""
    from leukocyte_cnn.reporting.comparisons import spread

    rows = []
    for comparison, label in (("unet_vs_truth", "U-Net vs ground truth"),
                              ("otsu_vs_truth", "Otsu vs ground truth"),
                              ("unet_vs_otsu", "U-Net vs Otsu (agreement)")):
        if f"{comparison}_iou" not in scores:
            continue
        for role in ("train", "val", "test"):
            part = scores[(scores["role"] == role) & scores[f"{comparison}_iou"].notna()]
            if len(part):
                rows.append({"comparison": label, "role": role, "images": len(part),
                             "iou_mean": part[f"{comparison}_iou"].mean(),
                             "dice_mean": part[f"{comparison}_dice"].mean(),
                             "IoU": spread(part[f"{comparison}_iou"], with_range=False),
                             "Dice": spread(part[f"{comparison}_dice"], with_range=False)})
    return pd.DataFrame(rows)
