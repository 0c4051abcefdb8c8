"""The data layer's front door: :func:`read_dataset` reads any dataset by name.

It dispatches to the readers of :mod:`leukocyte_cnn.data.readers` and
:mod:`leukocyte_cnn.data.bloodmnist`, reads a labels CSV, and generates (first use only) and
reads the ``synthetic_*`` sets, adding their masks with :func:`attach_masks`. It re-exports
:func:`class_names` and :func:`dataset_hash` of :mod:`leukocyte_cnn.data.tables`, so that
callers need only this module. Bad input raises
:class:`~leukocyte_cnn.base.errors.InputError` with one line that starts with the path.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.data.bloodmnist import read_bloodmnist
from leukocyte_cnn.data.readers import (read_all_idb1, read_all_idb2, read_cnmc, read_csv_labels,
                                        read_folder, read_kaggle, read_pbc, read_zheng2018)
from leukocyte_cnn.data.tables import class_names, csv_head, dataset_hash

__all__ = ["DATASET_NAMES", "attach_masks", "class_names", "dataset_hash", "read_dataset"]


_READERS: dict[str, Callable[..., pd.DataFrame]] = {
    "all_idb2": read_all_idb2,
    "all_idb1": read_all_idb1,
    "kaggle": read_kaggle,
    "cnmc": read_cnmc,
    "pbc": read_pbc,
    "bloodmnist": read_bloodmnist,
    "zheng2018": read_zheng2018,
    "folder": read_folder,
}
_SYNTHETIC_KINDS = ("all_idb2", "multiclass", "kaggle", "all_idb1", "cnmc")
DATASET_NAMES: tuple[str, ...] = tuple(_READERS) + ("csv",) + tuple(
    f"synthetic_{kind}" for kind in _SYNTHETIC_KINDS)


def read_dataset(name: str, root: str | os.PathLike | None = None, **options) -> pd.DataFrame:
    """Read dataset ``name`` (one of :data:`DATASET_NAMES`) from ``root``.

    ``csv``: ``root`` is the labels CSV (or a folder holding ``labels.csv``); ``images_root``
    overrides the folder the paths are relative to. ``synthetic_*``: ``root`` is the data
    folder (default ``data``); the set is generated on first use with ``seed`` (default 0)
    and ``synthetic_options`` and read with the matching reader; other options go to it.
    """
    if name.startswith("synthetic_") and name in DATASET_NAMES:
        return _read_synthetic(name.removeprefix("synthetic_"), root, **options)
    if name not in DATASET_NAMES:
        raise InputError(f"{name}: unknown dataset (choose from {', '.join(DATASET_NAMES)})")
    if root is None:
        raise InputError(f"{name}: no dataset folder given (root=None)")
    if name == "csv":
        csv_path = Path(root)
        if csv_path.is_dir():
            csv_path = csv_path / "labels.csv"
        return read_csv_labels(csv_path, root=options.pop("images_root", None), **options)
    return _READERS[name](root, **options)


def _read_synthetic(kind: str, data_dir: str | os.PathLike | None, seed: int = 0,
                    synthetic_options: dict | None = None, **options) -> pd.DataFrame:
    """Generate (first use only) and read a synthetic set; attach masks where it has them."""
    from leukocyte_cnn.data.synthetic import ensure_synthetic  # lazy: generation pulls in scikit-image

    set_root = Path(ensure_synthetic(kind, data_dir=data_dir or "data", seed=seed,
                                     **(synthetic_options or {})))
    if kind == "multiclass":
        table = _read_synthetic_multiclass(set_root, **options)
    else:
        reader = {"all_idb2": read_all_idb2, "kaggle": read_kaggle,
                  "all_idb1": read_all_idb1, "cnmc": read_cnmc}[kind]
        table = reader(set_root, **options)
    if (set_root / "masks").is_dir() and "mask_path" not in table.columns:
        table = attach_masks(table, set_root)
    return table


def _read_synthetic_multiclass(set_root: Path, **options) -> pd.DataFrame:
    """The synthetic multiclass set: ``labels.csv`` plus ``images/``, read as a CSV set."""
    csv_path = set_root / "labels.csv"
    header, first = csv_head(csv_path)
    # labels.csv may list "images/0001.png" (relative to the set) or just "0001.png".
    images_root = set_root
    name = first.get("image", "")
    if name and not (set_root / name).is_file() and (set_root / "images" / name).is_file():
        images_root = set_root / "images"
    defaults = {"group_col": "group" if "group" in header else None,
                "split_col": "source_split" if "source_split" in header else None}
    return read_csv_labels(csv_path, root=images_root, **{**defaults, **options})


def attach_masks(table: pd.DataFrame, set_root: str | os.PathLike) -> pd.DataFrame:
    """Add ``mask_path``: the ``masks/`` file mirroring each image as ``.png`` (``""`` if none).

    Tries the image's path relative to ``set_root`` (``masks/dataset2-master/images/…``),
    its key (``masks/TRAIN/…``) and its bare name (``masks/0001.png``), in that order.
    """
    set_root = Path(set_root)
    masks = set_root / "masks"
    found = []
    for image, path in zip(table["image"], table["path"]):
        candidates = []
        try:
            candidates.append(Path(path).relative_to(set_root.absolute()))
        except ValueError:
            pass
        candidates += [Path(image), Path(Path(image).name)]
        mask = next((masks / c.with_suffix(".png") for c in candidates
                     if (masks / c.with_suffix(".png")).is_file()), None)
        found.append(str(mask.absolute()) if mask is not None else "")
    table = table.copy()
    table["mask_path"] = found
    return table
