"""Class balancing by offline augmentation of a fold's training images (the thesis' DA step).

Only the ``train`` rows of a fold are ever read here: validation and test images are never
augmented, so no transformed copy of a test cell can reach training. Each fold's images go
to ``<out>/fold_XX/<class>/`` with a ``manifest.csv`` (source image, transform parameters)
written last; a fold with a manifest is complete and is skipped on re-runs.

``<out>`` is keyed by what made it (:func:`open_balanced_root`): the split file's SHA-256,
the target per class, seed, image size, shift/zoom/stain jitter and this code's version give
its fingerprint, which ends its name and sits in its ``fingerprint.json``. Balanced folds made
with other settings lie in another folder and are never reused by mistake.
"""
from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import write_csv

MANIFEST = "manifest.csv"
BALANCING_CODE_VERSION = 1  # bump when the same settings would write other images


@dataclasses.dataclass(frozen=True)
class Balancing:
    """How a fold's training images are balanced: images per class, seed, the size written
    (``None``: each image's own) and the jitter of shifts, zoom and stain."""

    target_per_class: int
    seed: int
    image_size: tuple[int, int] | None
    shifts: float
    zoom: float
    stain: float

    @classmethod
    def from_settings(cls, settings, seed: int, image_size) -> Balancing:
        """From a script's balancing knobs (``TARGET_PER_CLASS``, ``SHIFT_FRACTION``,
        ``ZOOM_FRACTION``, ``STAIN_JITTER``), the run's seed and the size written (the
        script's own knob: ``None`` keeps each image's size)."""
        return cls(target_per_class=int(settings["TARGET_PER_CLASS"]), seed=int(seed),
                   image_size=tuple(image_size) if image_size is not None else None,
                   shifts=settings["SHIFT_FRACTION"], zoom=settings["ZOOM_FRACTION"],
                   stain=settings["STAIN_JITTER"])

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def balancing_inputs(split, *, target_per_class: int, seed: int,
                     image_size: tuple[int, int] | None = None, shifts: float = 0.0,
                     zoom: float = 0.0, stain: float = 0.0) -> dict:
    """What determines the balanced folds of ``split``: the fingerprint's inputs."""
    return {"artifact": "balanced_folds", "split": split.name,
            "split_sha256": split.settings.get("split_sha256"),
            "target_per_class": int(target_per_class), "seed": int(seed),
            "image_size": list(image_size) if image_size is not None else None,
            "shifts": float(shifts), "zoom": float(zoom), "stain": float(stain),
            "code": BALANCING_CODE_VERSION}


def open_balanced_root(out_dir: str | os.PathLike, split, **settings) -> Path:
    """The folder of ``split``'s balanced folds made with ``settings`` (see
    :func:`balancing_inputs`): ``<out_dir>/<split>_balanced_<fingerprint>``, created with its
    ``fingerprint.json`` if new, refused with one line if what lies there was made otherwise."""
    from leukocyte_cnn.base.artifacts import keyed_folder

    return keyed_folder(out_dir, f"{split.name}_balanced", balancing_inputs(split, **settings),
                        "balanced_folds", "balanced-fold folder")


def augmented_fold_dir(out_root: str | os.PathLike, fold: int) -> Path:
    return Path(out_root) / f"fold_{fold:02d}"


def balance_fold(train: pd.DataFrame, fold: int, out_root: str | os.PathLike, *,
                 target_per_class: int, seed: int, image_size: tuple[int, int] | None = None,
                 shifts: float = 0.0, zoom: float = 0.0, stain: float = 0.0,
                 workers: int = 4) -> pd.DataFrame:
    """Write the balanced training set of one fold; return its manifest.

    ``train`` has the split columns (``image``, ``path``, ``label``, ``class_name``). The
    manifest has one row per written image: ``image`` (path relative to ``out_root``),
    ``source_image``, ``label``, ``class_name``, ``params`` (JSON of the transform).
    """
    from leukocyte_cnn.base.locks import artifact_lock

    if "role" in train and (train["role"] != "train").any():
        raise ValueError("balance_fold was given non-training images")
    fold_root = augmented_fold_dir(out_root, fold)
    manifest_path = fold_root / MANIFEST
    if manifest_path.exists():
        return pd.read_csv(manifest_path, dtype={"image": str, "source_image": str})
    # Two jobs on one fold (linear_cnn_da.py and a training script, or a repeated --folds)
    # balance it once: the second waits, then reads the first one's manifest.
    with artifact_lock(fold_root, f"fold {fold}'s balanced images {fold_root}"):
        if manifest_path.exists():
            return pd.read_csv(manifest_path, dtype={"image": str, "source_image": str})
        return _write_balanced_fold(train, fold, out_root, target_per_class=target_per_class,
                                    seed=seed, image_size=image_size, shifts=shifts,
                                    zoom=zoom, stain=stain, workers=workers)


def _write_balanced_fold(train: pd.DataFrame, fold: int, out_root: str | os.PathLike, *,
                         target_per_class: int, seed: int, image_size: tuple[int, int] | None,
                         shifts: float, zoom: float, stain: float, workers: int
                         ) -> pd.DataFrame:
    """The writing part of :func:`balance_fold` (under the fold's lock)."""
    from leukocyte_cnn.data.images import load_rgb, save_rgb
    from leukocyte_cnn.inputs.augment import apply_transform, plan_balancing

    manifest_path = augmented_fold_dir(out_root, fold) / MANIFEST
    rng = np.random.default_rng([seed, fold])
    plan = plan_balancing(train, target_per_class, rng, shifts=shifts, zoom=zoom, stain=stain)
    sources = dict(zip(train["image"], train["path"], strict=True))

    def write(row) -> str:
        image = load_rgb(sources[row.source_image])
        image = apply_transform(image, json.loads(row.params))
        if image_size is not None:
            image = _resize(image, image_size)
        rel = Path(f"fold_{fold:02d}") / _safe(row.class_name) / row.out_name
        save_rgb(Path(out_root) / rel, image)
        return rel.as_posix()

    from leukocyte_cnn.base.progress import counted

    with ThreadPoolExecutor(max_workers=workers) as pool:
        written = list(counted(pool.map(write, plan.itertuples(index=False)),
                               f"fold {fold}: balancing images written", total=len(plan)))
    manifest = pd.DataFrame({"image": written, "source_image": plan["source_image"].to_numpy(),
                             "label": plan["label"].astype(int).to_numpy(),
                             "class_name": plan["class_name"].to_numpy(),
                             "params": plan["params"].to_numpy()})
    write_csv(manifest_path, manifest)  # last: marks the fold complete
    return manifest


def read_augmented_fold(out_root: str | os.PathLike, fold: int,
                        split_train: pd.DataFrame) -> pd.DataFrame:
    """The augmented training table of a fold, checked against the split's training images.

    Refuses a manifest whose sources are not exactly this fold's training images (an
    augmented folder made from another split would leak test cells into training).
    """
    manifest_path = augmented_fold_dir(out_root, fold) / MANIFEST
    if not manifest_path.exists():
        raise InputError(f"{manifest_path}: augmented fold not found; run linear_cnn_da.py "
                         "with the same split first")
    manifest = pd.read_csv(manifest_path, dtype={"image": str, "source_image": str})
    unknown = set(manifest["source_image"]) - set(split_train["image"])
    if unknown:
        raise InputError(f"{manifest_path}: augmented from images that are not this fold's "
                         f"training images (e.g. {sorted(unknown)[0]}); it was made from "
                         "another split — delete the folder and re-run linear_cnn_da.py")
    groups = dict(zip(split_train["image"], split_train["group"].astype(str), strict=True))
    table = manifest.assign(path=[str(Path(out_root) / p) for p in manifest["image"]],
                            group=[groups[s] for s in manifest["source_image"]],
                            role="train", fold=fold)
    return table


def balanced_training_table(train: pd.DataFrame, fold: int, out_root: str | os.PathLike, *,
                            target_per_class: int, seed: int,
                            image_size: tuple[int, int] | None = None, shifts: float = 0.0,
                            zoom: float = 0.0, stain: float = 0.0) -> pd.DataFrame:
    """A fold's class-balanced training table: ``linear_cnn_da.py``'s images, made here if missing.

    The step every script that trains on balanced folds starts with (linear CNN multiclass,
    ResNeXt): reuse the fold's augmented folder when its manifest exists (``out_root`` comes
    from :func:`open_balanced_root`, so it was made with these settings), else write it first
    with :func:`balance_fold`, then read it back checked against ``train``
    (:func:`read_augmented_fold`).
    """
    if not (augmented_fold_dir(out_root, fold) / MANIFEST).exists():
        print(f"fold {fold}: no augmented images yet, balancing now", flush=True)
        balance_fold(train, fold, out_root, target_per_class=target_per_class, seed=seed,
                     image_size=image_size, shifts=shifts, zoom=zoom, stain=stain)
    return read_augmented_fold(out_root, fold, train)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def balanced_fold_images(fold, split, out_dir: str | os.PathLike,
                         balancing: Balancing) -> pd.DataFrame:
    """The fold's class-balanced training table for a script that trains on balanced folds:
    the folder of ``split`` balanced with ``balancing`` under ``out_dir`` (what
    ``linear_cnn_da.py`` writes with the same knobs, made here when missing), recorded in
    ``fold.artifacts`` and so in the fold's ``timing.json``."""
    from leukocyte_cnn.base.artifacts import record_of

    root = open_balanced_root(out_dir, split, **balancing.as_dict())
    fold.artifacts["balanced_folds"] = record_of(root)
    return balanced_training_table(fold.train, fold.fold, root, **balancing.as_dict())
