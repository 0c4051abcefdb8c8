"""Cell masks: Otsu thresholds per colour channel, mask files, and IoU/Dice against ground truth.

**Otsu masks (the Copenhagen deck's "segmentation").** For each RGB channel separately,
``skimage.filters.threshold_otsu`` finds the threshold between the two modes of that
channel's histogram. Stained cells are darker than the pale background in every channel (the
white cell's purple nucleus most of all, red cells less so), so a channel votes "cell" for a
pixel at or below its threshold. **Combination: a pixel is in the mask when at least two of the
three channels vote for it** (``min_votes=2``; 3 = all channels agree, 1 = any channel). The
deck does not say how its three channel masks were merged; a majority vote keeps a pixel that
one noisy channel misses and drops one that a single channel alone calls dark. Like the deck's
masks, these keep red cells as well as the white cell.

What we fixed: many Kaggle images are rotated copies with black corners. Those fill pixels
(brightest channel at or below ``fill_max``) would form a third, darkest mode and pull every
threshold down to the border/content split, so they are left out of the histograms and out
of the mask.

**Mask files** follow the Zheng 2018 convention the pipeline reads (single-channel PNG, >0 =
foreground; written as 0/255). A mask set mirrors the image tree: the mask of image key
``TRAIN/EOSINOPHIL/_0_1.jpeg`` is ``<mask_root>/TRAIN/EOSINOPHIL/_0_1.png``, so
``pipeline.make_dataset(..., masks=...)`` blanks the background before resizing.

**Overlap scores**: IoU = |A∩B| / |A∪B|, Dice = 2|A∩B| / (|A| + |B|); both are 1.0 when
both masks are empty (perfect agreement on "no cell"), and 0.0 when only one is.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError

FILL_MAX = 20  # pixels whose brightest channel is <= this are rotation fill, not background
COMPLETE_MARKER = ".complete"


# --------------------------------------------------------------------------- Otsu


def content_pixels(image: np.ndarray, fill_max: int | None = FILL_MAX) -> np.ndarray:
    """Boolean (H, W): pixels that are image content, not black rotation fill."""
    image = np.asarray(image)
    if fill_max is None:
        return np.ones(image.shape[:2], dtype=bool)
    return image.max(axis=2) > fill_max


def otsu_thresholds(image: np.ndarray, fill_max: int | None = FILL_MAX) -> np.ndarray:
    """Otsu threshold of each channel of an RGB image, computed on its content pixels."""
    from skimage.filters import threshold_otsu

    image = _check_rgb(image)
    content = content_pixels(image, fill_max)
    if not content.any():
        content = np.ones_like(content)  # an all-black image: use every pixel
    thresholds = []
    for channel in range(3):
        values = image[..., channel][content]
        if values.min() == values.max():  # one grey level: nothing to separate
            thresholds.append(float(values.min()))
        else:
            thresholds.append(float(threshold_otsu(values)))
    return np.array(thresholds)


def otsu_mask(image: np.ndarray, min_votes: int,
              fill_max: int | None = FILL_MAX) -> np.ndarray:
    """Boolean (H, W) cell mask: dark (<= the channel's Otsu threshold) in >= ``min_votes``
    channels, and not rotation fill."""
    if not 1 <= min_votes <= 3:
        raise ValueError(f"min_votes must be 1, 2 or 3, got {min_votes}")
    image = _check_rgb(image)
    thresholds = otsu_thresholds(image, fill_max)
    votes = (image <= thresholds.reshape(1, 1, 3)).sum(axis=2)
    return (votes >= min_votes) & content_pixels(image, fill_max)


def _check_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    return image


# --------------------------------------------------------------------------- overlap scores


def _pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    return pred, truth


def iou(pred, truth) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    pred, truth = _pair(pred, truth)
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


def dice(pred, truth) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two boolean masks (1.0 when both are empty)."""
    pred, truth = _pair(pred, truth)
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, truth).sum() / total)


# --------------------------------------------------------------------------- mask files


def mask_file(mask_root: str | os.PathLike, image_key: str) -> Path:
    """Where the mask of ``image_key`` lives in a mask set (same tree, ``.png``)."""
    return Path(mask_root) / Path(image_key).with_suffix(".png")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as boolean (H, W): any non-zero value is foreground (Zheng: 128 and 255)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L")) > 0
    except FileNotFoundError:
        raise InputError(f"{path}: mask file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: unreadable mask ({exc})") from None


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write a boolean mask as an 8-bit single-channel PNG (0 / 255), atomically."""
    from PIL import Image

    from leukocyte_cnn.base.io import atomic_path

    mask = np.asarray(mask, dtype=bool)
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")
    return Path(path)


def mask_set_is_complete(mask_root: str | os.PathLike) -> bool:
    return (Path(mask_root) / COMPLETE_MARKER).is_file()


def mark_complete(mask_root: str | os.PathLike, manifest: pd.DataFrame,
                  inputs: dict | None = None, made_by: dict | None = None) -> None:
    """Write ``masks.csv`` (image key -> mask file), the fingerprint sidecar of ``inputs``
    (with ``made_by``: the run and checkpoint that made the masks) and then the marker."""
    from leukocyte_cnn.base.artifacts import write_sidecar
    from leukocyte_cnn.base.io import write_csv, write_text

    write_csv(Path(mask_root) / "masks.csv", manifest)
    if inputs is not None:
        write_sidecar(mask_root, "unet_masks", inputs, made_by=made_by)
    write_text(Path(mask_root) / COMPLETE_MARKER, f"{len(manifest)} masks\n")


OTSU_CODE_VERSION = 1  # bump when the same settings would give other Otsu masks


def otsu_mask_root(data_dir: str | os.PathLike, dataset: str, dataset_hash: str | None,
                   min_votes: int) -> Path:
    """``<data_dir>/masks/otsu/<dataset>_<fingerprint>``: Otsu masks depend on each image
    alone, so one set serves every split of one copy of a dataset; the fingerprint covers the
    dataset hash, the vote rule, the fill cut-off and this code's version."""
    from leukocyte_cnn.base.artifacts import keyed_path, write_sidecar

    inputs = {"artifact": "otsu_masks", "dataset": dataset, "dataset_hash": dataset_hash,
              "min_votes": int(min_votes), "fill_max": FILL_MAX, "code": OTSU_CODE_VERSION}
    root = keyed_path(Path(data_dir) / "masks" / "otsu", dataset, inputs)
    if not (root / "fingerprint.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        write_sidecar(root, "otsu_masks", inputs)
    return root


def unet_mask_root(data_dir: str | os.PathLike, split, fold: int, unet_inputs: dict) -> Path:
    """``<data_dir>/masks/unet/<split>_<fingerprint>/fold_XX``: a U-Net is trained on one
    fold's training images, so its masks belong to that fold of that split file (by its
    SHA-256) and to the U-Net settings in ``unet_inputs``; other settings, another seed or a
    changed split never reuse the set."""
    from leukocyte_cnn.base.artifacts import keyed_path

    inputs = unet_mask_inputs(split, fold, unet_inputs)
    return keyed_path(Path(data_dir) / "masks" / "unet", split.name, inputs) / f"fold_{fold:02d}"


def unet_mask_inputs(split, fold: int, unet_inputs: dict) -> dict:
    """The fingerprint inputs of one fold's U-Net mask set."""
    return {"artifact": "unet_masks", "split": split.name,
            "split_sha256": split.settings.get("split_sha256"), "fold": int(fold),
            **unet_inputs}


def unet_mask_set_is_current(mask_root: str | os.PathLike, inputs: dict) -> bool:
    """A complete mask set made from exactly ``inputs`` (its ``fingerprint.json`` agrees)."""
    from leukocyte_cnn.base.artifacts import matches

    return mask_set_is_complete(mask_root) and matches(mask_root, inputs)


def ensure_otsu_masks(table: pd.DataFrame, mask_root: str | os.PathLike, *,
                      min_votes: int, fill_max: int | None = FILL_MAX) -> list[str]:
    """The Otsu mask file of every image in ``table`` (written where missing), in table order.

    Each mask depends on its own image only (nothing is fitted), so masks of test images are
    as legitimate as those of training images, and existing files are simply reused.
    """
    from leukocyte_cnn.base.locks import artifact_lock
    from leukocyte_cnn.base.progress import counted
    from leukocyte_cnn.data.images import load_rgb

    pairs = list(zip(table["image"], table["path"], strict=True))
    if not all(mask_file(mask_root, key).is_file() for key, _ in pairs):
        # Jobs started together write each mask once: the others wait, then find them.
        with artifact_lock(mask_root, f"Otsu masks {mask_root}"):
            for image_key, path in counted(pairs, "Otsu masks"):
                target = mask_file(mask_root, image_key)
                if not target.is_file():
                    write_mask(target, otsu_mask(load_rgb(path), min_votes=min_votes,
                                                 fill_max=fill_max))
    return [str(mask_file(mask_root, key).resolve()) for key, _ in pairs]


def truth_mask_column(table: pd.DataFrame, dataset: str, data_root, reader_options: dict
                      ) -> pd.Series:
    """Ground-truth mask file of each row of a split table (``""`` where the dataset has none).

    Split tables do not carry ``mask_path``; the dataset's reader table does (synthetic sets,
    Zheng 2018), so it is read again and matched by image key.
    """
    from leukocyte_cnn.data.datasets import read_dataset

    reader_table = read_dataset(dataset, data_root, **(reader_options or {}))
    if "mask_path" not in reader_table.columns:
        return pd.Series([""] * len(table), index=table.index, dtype=str)
    lookup = dict(zip(reader_table["image"].astype(str), reader_table["mask_path"].fillna(""),
                      strict=True))
    return table["image"].astype(str).map(lambda key: lookup.get(key, "") or "")


def mask_paths(mask_root: str | os.PathLike, image_keys: Iterable[str],
               hint: str = "") -> list[str]:
    """Absolute mask file of every image key; one-line ``InputError`` for the first missing."""
    paths = []
    for key in image_keys:
        path = mask_file(mask_root, key)
        if not path.is_file():
            raise InputError(f"{path}: mask of {key} not found" + (f"; {hint}" if hint else ""))
        paths.append(str(path.resolve()))
    return paths


def overlap_table(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One row per (image, predicted mask, reference mask): IoU, Dice and mask areas."""
    rows = [{"image": key, "iou": iou(pred, ref), "dice": dice(pred, ref),
             "pred_fraction": float(np.mean(pred)), "ref_fraction": float(np.mean(ref))}
            for key, pred, ref in pairs]
    return pd.DataFrame(rows, columns=["image", "iou", "dice", "pred_fraction", "ref_fraction"])
