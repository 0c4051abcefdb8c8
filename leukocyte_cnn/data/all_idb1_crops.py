"""ALL-IDB1 blast centroids and the single-cell crops cut from its smears.

:func:`read_centroids` parses an ``.xyc`` file and :func:`smear_centroids` finds the one of a
smear; :func:`crop_cells` cuts seeded, reproducible ALL-IDB2-like single-cell crops (blasts at
the centroids, as many non-blast cells away from them) and caches the finished crop set.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import ensure_writable_dir, read_json, write_csv, write_json
from leukocyte_cnn.data.images import image_mode_info, load_rgb, save_rgb
from leukocyte_cnn.data.tables import dataset_hash, make_table, table_row

# Single-cell crops cut from ALL-IDB1 are ALL-IDB2-like, so they carry ALL-IDB2's class names;
# readers.ALL_IDB2_CLASSES is this very list (defined here so that this module needs no reader).
CROP_CLASSES = ["other", "lymphoblast"]


def read_centroids(xyc_path: str | os.PathLike) -> list[tuple[int, int]]:
    """Parse an ALL-IDB ``.xyc`` file: whitespace-separated integer ``x y``, one pair a line."""
    xyc_path = Path(xyc_path)
    try:
        text = xyc_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise InputError(f"{xyc_path}: file not found") from None
    centroids = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            x, y = (int(field) for field in fields)
        except ValueError:
            raise InputError(f"{xyc_path}: line {number}: expected two integers 'x y', "
                             f"got {line.strip()!r}") from None
        centroids.append((x, y))
    return centroids


def smear_centroids(image_path: Path, label: int) -> list[tuple[int, int]]:
    """Centroids of one smear; a blast smear without ``.xyc`` gets a warning and none."""
    for candidate in (image_path.with_suffix(".xyc"),
                      image_path.parent.parent / "xyc" / (image_path.stem + ".xyc")):
        if candidate.is_file():
            return read_centroids(candidate)
    if label == 1:
        warnings.warn(f"{image_path}: no {image_path.stem}.xyc centroid file; no blast crops "
                      "from this image", stacklevel=3)
    return []


def crop_cells(table: pd.DataFrame, out_dir: str | os.PathLike, size: int = 257,
               seed: int = 0, min_distance: int | None = None) -> pd.DataFrame:
    """Cut ``size``×``size`` single-cell crops from ALL-IDB1-style smears into ``out_dir``.

    Each centroid gives a blast crop (label 1, ``lymphoblast``). As many non-blast crops
    (label 0, ``other``) come from seeded random positions, visiting the smears in turn,
    whose window is at least ``min_distance`` (default ``size``, Chebyshev distance: the
    windows do not overlap) from every centroid of that smear. Same table, size and seed
    give the same files. The crops keep their smear as ``group`` so that crops of one smear
    never end up on both sides of a split. A finished crop set is reused
    (``crops.csv`` plus ``crops.json`` with the settings are written last).
    """
    size = int(size)
    min_distance = size if min_distance is None else int(min_distance)
    out_dir = ensure_writable_dir(out_dir)
    settings = {"size": size, "seed": int(seed), "min_distance": min_distance,
                "source_hash": dataset_hash(table), "centroids_hash": _centroids_hash(table)}
    cached = _cached_crops(out_dir, settings)
    if cached is not None:
        return cached

    sizes = {row.image: image_mode_info(row.path)[:2] for row in table.itertuples()}
    plan = _plan_crops(table, sizes, size, seed, min_distance)
    rows = []
    for row in table.itertuples():
        picks = [p for p in plan if p["source_image"] == row.image]
        if not picks:
            continue
        pixels = load_rgb(row.path)
        for pick in picks:
            crop = _crop_window(pixels, pick["x"], pick["y"], size)
            path = out_dir / pick["image"]
            save_rgb(path, crop)
            rows.append(table_row(pick["image"], path, pick["label"], CROP_CLASSES, group=row.group,
                                  source_image=row.image, x=pick["x"], y=pick["y"]))
    crops = make_table(rows, CROP_CLASSES, extra=["source_image", "x", "y"])
    write_csv(out_dir / "crops.csv", crops.drop(columns=["path"]))
    write_json(out_dir / "crops.json", settings)
    return crops


def _plan_crops(table: pd.DataFrame, sizes: dict, size: int, seed: int,
                min_distance: int) -> list[dict]:
    """Positions of all crops: every centroid, then as many seeded non-blast positions."""
    plan = []
    for row in table.itertuples():
        stem = Path(row.image).stem
        for k, (x, y) in enumerate(row.centroids):
            plan.append({"source_image": row.image, "x": int(x), "y": int(y), "label": 1,
                         "image": f"{CROP_CLASSES[1]}/{stem}_blast{k:03d}.png"})
    wanted = len(plan)
    rng = np.random.default_rng(seed)
    rows = list(table.itertuples())
    counts = {row.image: 0 for row in rows}
    misses = 0
    turn = 0
    while wanted > 0 and rows and misses < len(rows):
        row = rows[turn % len(rows)]
        turn += 1
        position = _free_position(rng, sizes[row.image], row.centroids, size, min_distance)
        if position is None:
            misses += 1  # a smear crowded with blasts; after a full round of misses, stop
            continue
        misses = 0
        k = counts[row.image]
        counts[row.image] += 1
        plan.append({"source_image": row.image, "x": position[0], "y": position[1], "label": 0,
                     "image": f"{CROP_CLASSES[0]}/{Path(row.image).stem}_other{k:03d}.png"})
        wanted -= 1
    if wanted > 0:
        warnings.warn(f"crop_cells: no room far enough from the blasts for {wanted} of the "
                      "non-blast crops; the crop set is unbalanced", stacklevel=3)
    return plan


def _free_position(rng: np.random.Generator, image_size: tuple[int, int], centroids,
                   size: int, min_distance: int, tries: int = 200) -> tuple[int, int] | None:
    """A random window centre inside the image, far enough from every blast centroid."""
    width, height = image_size
    half = size // 2
    x_range = (half, max(half, width - (size - half)))
    y_range = (half, max(half, height - (size - half)))
    points = np.asarray(centroids, dtype=np.int64).reshape(-1, 2)
    for _ in range(tries):
        x = int(rng.integers(x_range[0], x_range[1] + 1))
        y = int(rng.integers(y_range[0], y_range[1] + 1))
        if points.size == 0 or np.min(np.max(np.abs(points - (x, y)), axis=1)) >= min_distance:
            return x, y
    return None


def _crop_window(pixels: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """The ``size``×``size`` window centred on (x, y), shifted to lie inside the image.

    Shifting (not padding) keeps border cells real pixels; images smaller than the window
    are edge-padded.
    """
    height, width = pixels.shape[:2]
    if height < size or width < size:
        pad = ((0, max(0, size - height)), (0, max(0, size - width)), (0, 0))
        pixels = np.pad(pixels, pad, mode="edge")
        height, width = pixels.shape[:2]
    top = min(max(0, y - size // 2), height - size)
    left = min(max(0, x - size // 2), width - size)
    return np.ascontiguousarray(pixels[top:top + size, left:left + size])


def _centroids_hash(table: pd.DataFrame) -> str:
    listing = [[image, [list(c) for c in cents]] for image, cents in
               sorted(zip(table["image"], table["centroids"]))]
    return hashlib.sha256(json.dumps(listing).encode("utf-8")).hexdigest()


def _cached_crops(out_dir: Path, settings: dict) -> pd.DataFrame | None:
    """The crop table of an earlier identical call, or None when anything differs."""
    manifest, stored = out_dir / "crops.csv", out_dir / "crops.json"
    if not (manifest.is_file() and stored.is_file()) or read_json(stored) != settings:
        return None
    frame = pd.read_csv(manifest, dtype={"image": str, "class_name": str, "group": str,
                                         "source_split": str, "source_image": str},
                        keep_default_na=False)
    paths = [out_dir / image for image in frame["image"]]
    if not all(p.is_file() for p in paths):
        return None
    frame.insert(1, "path", [str(p.absolute()) for p in paths])
    return make_table(frame.to_dict("records"), CROP_CLASSES, extra=["source_image", "x", "y"])
