"""MedMNIST BloodMNIST: the reader of ``bloodmnist.npz``, whose arrays it writes once as PNGs.

:func:`read_bloodmnist` writes the archive's images as ``<split>/<index>.png`` files (first
call only) and returns them as the reader table of :mod:`leukocyte_cnn.data.tables`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import ensure_writable_dir, write_text
from leukocyte_cnn.data.images import save_rgb
from leukocyte_cnn.data.tables import make_table, table_row

BLOODMNIST_CLASSES = ["basophil", "eosinophil", "erythroblast", "immature granulocytes",
                      "lymphocyte", "monocyte", "neutrophil", "platelet"]
BLOODMNIST_SPLITS = ("train", "val", "test")


def read_bloodmnist(npz_path: str | os.PathLike, size: int | None = None,
                    out_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """MedMNIST BloodMNIST: the arrays of ``bloodmnist.npz`` written once as PNG files.

    ``npz_path`` is the ``.npz`` or its folder (then ``bloodmnist.npz``, or
    ``bloodmnist_<size>.npz`` for MedMNIST+ sizes). The images live inside the archive, so
    they are written to ``out_dir`` (default ``<npz stem>_png`` next to it) as
    ``<split>/<index>.png``, with a marker written last; later calls only read the labels.
    ``source_split`` is MedMNIST's ``train``/``val``/``test``; each image is its own group.
    """
    npz_path = _bloodmnist_file(npz_path, size)
    out_dir = Path(out_dir) if out_dir is not None else npz_path.parent / f"{npz_path.stem}_png"
    marker = out_dir / ".complete"
    stamp = f"{npz_path.name}\t{npz_path.stat().st_size}\t{npz_path.stat().st_mtime_ns}\n"
    rows = []
    try:
        archive = np.load(npz_path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{npz_path}: not a readable NPZ archive ({exc})") from None
    with archive:
        labels = {split: _bloodmnist_labels(archive, npz_path, split)
                  for split in BLOODMNIST_SPLITS}
        keys = {split: [f"{split}/{index:05d}.png" for index in range(len(labels[split]))]
                for split in BLOODMNIST_SPLITS}
        # Reuse the PNGs only when they came from this very archive and are all still there.
        reuse = (marker.is_file() and marker.read_text(encoding="utf-8") == stamp
                 and all((out_dir / key).is_file() for split in keys for key in keys[split]))
        for split in BLOODMNIST_SPLITS:
            if not reuse:
                _write_bloodmnist_split(archive, npz_path, split, labels[split], out_dir, size)
            for key, label in zip(keys[split], labels[split]):
                rows.append(table_row(key, out_dir / key, int(label), BLOODMNIST_CLASSES,
                                      group=key.removesuffix(".png"), source_split=split))
    if not reuse:
        write_text(marker, stamp)
    return make_table(rows, BLOODMNIST_CLASSES)


def _bloodmnist_file(npz_path: str | os.PathLike, size: int | None) -> Path:
    npz_path = Path(npz_path)
    if npz_path.is_dir():
        name = "bloodmnist.npz" if size in (None, 28) else f"bloodmnist_{int(size)}.npz"
        npz_path = npz_path / name
    if not npz_path.is_file():
        raise InputError(f"{npz_path}: dataset file not found (expected MedMNIST bloodmnist.npz)")
    return npz_path


def _bloodmnist_labels(archive, npz_path: Path, split: str) -> np.ndarray:
    key = f"{split}_labels"
    if key not in archive.files or f"{split}_images" not in archive.files:
        raise InputError(f"{npz_path}: missing arrays {split}_images/{split}_labels "
                         f"(has {sorted(archive.files)})")
    labels = np.asarray(archive[key]).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= len(BLOODMNIST_CLASSES)):
        raise InputError(f"{npz_path}: {key} outside 0..{len(BLOODMNIST_CLASSES) - 1}")
    return labels.astype(np.int64)


def _write_bloodmnist_split(archive, npz_path: Path, split: str, labels: np.ndarray,
                            out_dir: Path, size: int | None) -> None:
    images = np.asarray(archive[f"{split}_images"])
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise InputError(f"{npz_path}: {split}_images must be uint8 N×H×W(×3) with one label "
                         f"each (got {images.dtype} {images.shape}, {len(labels)} labels)")
    if size is not None and images.shape[1] != int(size):
        raise InputError(f"{npz_path}: images are {images.shape[1]} px, size={size} requested")
    ensure_writable_dir(out_dir)
    for index, pixels in enumerate(images):
        save_rgb(out_dir / split / f"{index:05d}.png", pixels)
