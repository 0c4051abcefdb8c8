"""The ALL-IDB1 detector's offline augmentation: a fixed set of variants of every training image.

The source detector (Peter Moss ALL-IDB1 classifier after "Acute Leukemia Classification
Using Convolution Neural Network in Clinical Decision Support System") wrote, for every
smear, a grayscale copy, a histogram-equalised copy, horizontal and vertical mirrors, a
Gaussian blur, a translation, a shear and N randomly rotated copies, and drew its
validation images from that augmented pool afterwards (its table: 1,180 training and 404
validation images from 88 smears, 18 a smear with N = 10), so copies of one smear sat on
both sides. Here only one fold's ``train`` rows are ever read; validation and test images
are chosen by the split file beforehand and are never augmented.

Every written file is a row of ``manifest.csv`` (source image + JSON transform parameters
for :func:`leukocyte_cnn.inputs.augment.apply_transform`), so any image can be rebuilt and every
copy traced to its source. Sources are first decoded and resized to the working size by
:func:`leukocyte_cnn.inputs.pipeline.load_image`, i.e. exactly as the training pipeline treats
test images, and written as lossless PNG at that size: the ``original`` variant is then
pixel-identical to what the model sees of an unaugmented image.

Layout: ``<out_root>/fold_XX/<class>/<stem>__<variant>.png``, ``fold_XX/manifest.csv``
(written last: a fold with a manifest is complete and is reused) and
``<out_root>/augmentation.json`` (the settings; ``out_root`` normally carries their hash,
see :func:`augmentation_root`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import read_json, write_csv, write_json

MANIFEST = "manifest.csv"
SETTINGS = "augmentation.json"
# The fixed variants of the source, in the order they are written; then rot01..rotNN.
FIXED_VARIANTS = ("original", "grayscale", "equalized", "flip_h", "flip_v", "blur", "shift",
                  "shear")


PAPER_AUGMENTATION_CODE_VERSION = 1  # bump when the same settings would write other images


def augmentation_root(base: str | os.PathLike, split, settings: dict) -> Path:
    """``<base>/<split>/paper_cnn_<fingerprint>``: the fingerprint covers the split file's
    SHA-256, ``settings`` and this code's version, so other settings or a changed split never
    reuse a folder, and other scripts' augmented folders of the same split are never touched.
    The folder's ``fingerprint.json`` records those inputs."""
    from leukocyte_cnn.base.artifacts import keyed_folder

    inputs = {"artifact": "paper_augmentation", "split": split.name,
              "split_sha256": split.settings.get("split_sha256"), "settings": settings,
              "code": PAPER_AUGMENTATION_CODE_VERSION}
    return keyed_folder(Path(base) / split.name, "paper_cnn", inputs, "paper_augmentation",
                        "paper-augmentation folder")


def plan_variants(train: pd.DataFrame, n_rotations: int, rng: np.random.Generator | int, *,
                  image_size: Sequence[int], blur_sigma: float, max_shift: float,
                  max_shear: float) -> pd.DataFrame:
    """One row per image to write: ``source_image, source_path, label, class_name, variant,
    params`` (JSON). Sources are visited in sorted order, so the same ``rng`` seed gives the
    same plan.

    Per source: the identity, grayscale, luma-equalised, left-right and top-bottom mirrors,
    a blur of ``blur_sigma``, a shift of up to ``max_shift`` of the side in x and y (never
    (0, 0)), a shear of ``max_shear/2 .. max_shear`` degrees of random sign, and
    ``n_rotations`` rotations by distinct whole-degree angles in 1..359 (seeded).
    """
    from leukocyte_cnn.inputs.augment import sample_distinct_angles

    rng = np.random.default_rng(rng)
    if n_rotations < 0 or n_rotations > 359:
        raise ValueError(f"n_rotations must be in 0..359, got {n_rotations}")
    height, width = int(image_size[0]), int(image_size[1])
    if round(max_shift * width) < 1 and round(max_shift * height) < 1:
        raise ValueError(f"max_shift {max_shift} gives no shift of a whole pixel at "
                         f"{height}x{width}; the shift variant would repeat the original")
    if max_shear <= 0 or blur_sigma <= 0:
        raise ValueError(f"max_shear ({max_shear}) and blur_sigma ({blur_sigma}) must be "
                         "positive, or those variants repeat the original")
    rows = []
    for source in train.sort_values("image").itertuples(index=False):
        dx = dy = 0
        while dx == 0 and dy == 0:  # a zero shift would repeat the original
            dx = int(rng.integers(-round(max_shift * width), round(max_shift * width) + 1))
            dy = int(rng.integers(-round(max_shift * height), round(max_shift * height) + 1))
        shear = float(rng.uniform(max_shear / 2, max_shear) * rng.choice((-1, 1)))
        variants: list[tuple[str, dict[str, Any]]] = [
            ("original", {}), ("grayscale", {"grayscale": True}),
            ("equalized", {"equalize": True}), ("flip_h", {"flip_h": True}),
            ("flip_v", {"flip_v": True}), ("blur", {"blur_sigma": float(blur_sigma)}),
            ("shift", {"dx": dx, "dy": dy}), ("shear", {"shear": round(shear, 3)})]
        angles = sample_distinct_angles(n_rotations, rng, include_zero=False)
        variants += [(f"rot{i + 1:02d}", {"angle": angle}) for i, angle in enumerate(angles)]
        for variant, params in variants:
            rows.append({"source_image": str(source.image), "source_path": str(source.path),
                         "label": int(source.label), "class_name": str(source.class_name),
                         "variant": variant, "params": json.dumps(params, sort_keys=True)})
    return pd.DataFrame(rows, columns=["source_image", "source_path", "label", "class_name",
                                       "variant", "params"])


def write_training_set(train: pd.DataFrame, out_root: str | os.PathLike, fold: int, *,
                       settings: dict, seed: int, workers: int = 2) -> pd.DataFrame:
    """Write the augmented training images of one fold; return its manifest.

    ``train`` holds the fold's training rows of the split (``image, path, label,
    class_name``; a ``role`` column, when present, must say ``train`` everywhere).
    ``settings`` has ``image_size, n_rotations, blur_sigma, max_shift, max_shear`` and is
    stored in ``augmentation.json``. A fold whose manifest exists is reused after checking
    that its sources are exactly these training images.
    """
    if "role" in train and (train["role"] != "train").any():
        raise ValueError("write_training_set was given non-training images")
    out_root = Path(out_root)
    settings_path = out_root / SETTINGS
    if settings_path.exists() and read_json(settings_path) != json.loads(json.dumps(settings)):
        raise InputError(f"{settings_path}: written with other augmentation settings; "
                         "delete the folder or use another output folder")
    fold_root = out_root / f"fold_{fold:02d}"
    manifest_path = fold_root / MANIFEST
    if not manifest_path.exists():
        from leukocyte_cnn.base.locks import artifact_lock

        # Jobs on one fold at the same moment write it once: the others wait and reuse it.
        with artifact_lock(fold_root, f"fold {fold}'s augmented images {fold_root}"):
            if not manifest_path.exists():
                return _write_fold(train, out_root, fold, settings=settings, seed=seed,
                                   workers=workers)
    manifest = pd.read_csv(manifest_path, dtype={"image": str, "source_image": str})
    check_sources(manifest, train, manifest_path)
    return manifest


def _write_fold(train: pd.DataFrame, out_root: Path, fold: int, *, settings: dict, seed: int,
                workers: int) -> pd.DataFrame:
    """The writing part of :func:`write_training_set` (under the fold's lock)."""
    from leukocyte_cnn.data.images import save_rgb
    from leukocyte_cnn.inputs.augment import apply_transform
    from leukocyte_cnn.inputs.pipeline import load_image

    fold_root = out_root / f"fold_{fold:02d}"
    manifest_path = fold_root / MANIFEST
    write_json(out_root / SETTINGS, settings)
    size = tuple(settings["image_size"])
    plan = plan_variants(train, settings["n_rotations"], np.random.default_rng([seed, fold]),
                         image_size=size, blur_sigma=settings["blur_sigma"],
                         max_shift=settings["max_shift"], max_shear=settings["max_shear"])

    def write_source(rows: pd.DataFrame) -> list[str]:
        pixels = load_image(rows["source_path"].iloc[0], size).astype(np.uint8)
        written = []
        for row in rows.itertuples(index=False):
            stem = _safe(Path(row.source_image).with_suffix("").as_posix())
            rel = Path(f"fold_{fold:02d}") / _safe(row.class_name) / f"{stem}__{row.variant}.png"
            save_rgb(out_root / rel, apply_transform(pixels, row.params))
            written.append(rel.as_posix())
        return written

    groups = [rows for _, rows in plan.groupby("source_image", sort=True)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        written = dict(zip((g["source_image"].iloc[0] for g in groups),
                           pool.map(write_source, groups), strict=True))
    plan = plan.sort_values("source_image", kind="stable")
    manifest = pd.DataFrame({
        "image": [p for s in plan["source_image"].unique() for p in written[s]],
        "source_image": plan["source_image"].to_numpy(), "label": plan["label"].to_numpy(),
        "class_name": plan["class_name"].to_numpy(), "variant": plan["variant"].to_numpy(),
        "params": plan["params"].to_numpy()})
    if manifest["image"].duplicated().any():
        raise InputError(f"{fold_root}: two training images map to the same file name "
                         f"({manifest.loc[manifest['image'].duplicated(), 'image'].iloc[0]})")
    write_csv(manifest_path, manifest)  # last: marks the fold complete
    return manifest


def check_sources(manifest: pd.DataFrame, train: pd.DataFrame, where: str | os.PathLike) -> None:
    """Refuse a manifest whose sources are not exactly the fold's training images."""
    sources, wanted = set(manifest["source_image"]), set(train["image"])
    if sources != wanted:
        extra = sorted(sources - wanted)
        detail = (f"augmented from images that are not this fold's training images (e.g. "
                  f"{extra[0]})" if extra else
                  f"misses {len(wanted - sources)} of this fold's training images")
        raise InputError(f"{where}: {detail}; it was made from another split — delete the "
                         "folder and run again")


def training_table(manifest: pd.DataFrame, out_root: str | os.PathLike,
                   train: pd.DataFrame) -> pd.DataFrame:
    """The augmented images as a split-like table (``image, path, label, class_name, group,
    source_image, variant``) for the input pipeline; ``group`` is the source's group."""
    groups = dict(zip(train["image"], train["group"].astype(str), strict=True))
    return manifest.assign(path=[str(Path(out_root) / p) for p in manifest["image"]],
                           group=[groups[s] for s in manifest["source_image"]], role="train")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))
