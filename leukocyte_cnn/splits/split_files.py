"""Split files: writing, reading and loading ``data/splits/<name>.csv`` and its JSON.

A split is written to ``data/splits/<name>.csv`` (the long split table) with its settings in
``<name>.json`` (see docs/architecture.md). Every training script reads the same file, so two
experiments on one split see exactly the same test images, and a split made for another copy
of the dataset is refused on load (:func:`load_split`, :class:`SplitDatasetMismatch`).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import ensure_writable_dir, file_sha256, read_json, write_csv, write_json
from leukocyte_cnn.splits.policy import method_tests_every_image, split_is_grouped, split_is_leaky
from leukocyte_cnn.splits.split_table import (
    SPLIT_COLUMNS,
    assert_no_leakage,
    canonical_split,
    class_names_by_label,
)


def describe_split(split: pd.DataFrame) -> dict[str, Any]:
    """Counts that go into the settings JSON: folds, images per role, excluded classes (those
    with no image in any fold; single images set aside count in ``n_excluded`` only)."""
    in_folds = split[split["role"] != "excluded"]
    excluded = split[split["role"] == "excluded"]
    whole = excluded[~excluded["class_name"].isin(set(in_folds["class_name"]))]
    role_counts = []
    for fold, rows in in_folds.groupby("fold"):
        counts = rows["role"].value_counts()
        role_counts.append({"fold": int(fold), **{r: int(counts.get(r, 0))
                                                  for r in ("train", "val", "test")}})
    return {
        "n_folds": int(in_folds["fold"].nunique()),
        "n_images": int(in_folds["image"].nunique()),
        "n_excluded": int(len(excluded)),
        "excluded_classes": {str(k): int(v) for k, v in
                             whole.groupby("class_name").size().items()},
        "trained_class_names": class_names_by_label(in_folds),
        "role_counts": role_counts,
    }


def write_split(split: pd.DataFrame, settings: dict[str, Any], out_dir: str | os.PathLike,
                name: str, table: pd.DataFrame | None = None) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.csv`` and ``<name>.json`` atomically; return both paths.

    ``settings`` must hold ``dataset`` and ``method``, and ``dataset_hash`` unless the full
    reader ``table`` is given to compute it from. Added: the counts of
    :func:`describe_split`, ``grouped``, ``leaky`` and ``variant`` where not given, and
    ``split_sha256`` (the CSV's bytes, so a CSV that does not belong to its JSON is caught on
    load). Nothing time-dependent is stored: the same inputs give byte-identical files.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise InputError(f"--name {name}: must be a plain file name")
    meta = dict(settings)
    if table is not None:
        _, dataset_hash = dataset_api()
        meta.setdefault("dataset_hash", dataset_hash(table))
        meta.setdefault("class_names", class_names_by_label(table))
    for key in ("dataset", "method", "dataset_hash"):
        if key not in meta:
            raise ValueError(f"settings lack {key!r}")
    out = ensure_writable_dir(out_dir)
    split = canonical_split(split)
    meta.update(_derived_settings(split, meta))
    meta.setdefault("class_names", class_names_by_label(split))
    meta.update(describe_split(split))
    csv_path, json_path = out / f"{name}.csv", out / f"{name}.json"
    write_csv(csv_path, split)
    meta["split_sha256"] = file_sha256(csv_path)
    write_json(json_path, meta)  # written last: it vouches for the CSV beside it
    return csv_path, json_path


def _derived_settings(split: pd.DataFrame, settings: dict[str, Any]) -> dict[str, Any]:
    """``grouped``/``leaky``/``variant`` from the split itself when the caller left them out;
    :func:`load_split` needs them to re-check the file."""
    method = settings["method"]
    kept = split[split["role"] != "excluded"].drop_duplicates("image")
    derived = {}
    if "grouped" not in settings:
        derived["grouped"] = split_is_grouped(method, settings.get("groups", "auto"), kept)
    if "leaky" not in settings:
        derived["leaky"] = split_is_leaky(method, settings.get("groups", "auto"), kept)
    if "variant" not in settings and method == "predefined":
        n_folds = split.loc[split["fold"] >= 0, "fold"].nunique()
        derived["variant"] = "source_folds" if n_folds > 1 else "test_sources"
    return derived


@dataclasses.dataclass(eq=False)
class Split:
    """A split file loaded against the dataset on this machine.

    ``table`` is the long split table plus ``path`` (absolute) and ``dataset_label`` (the
    reader's label); its ``label`` is re-numbered to index ``class_names``, the classes that
    are trained (excluded classes removed, label order kept; -1 on excluded rows). Without
    exclusions both numberings agree.
    """

    name: str
    csv_path: Path
    table: pd.DataFrame
    settings: dict[str, Any]
    class_names: list[str]
    all_class_names: list[str]

    @property
    def path(self) -> Path:
        """The split CSV (what run folders record as their split file)."""
        return self.csv_path

    @property
    def folds(self) -> list[int]:
        return sorted(int(f) for f in self.table["fold"].unique() if f >= 0)

    def fold(self, k: int) -> pd.DataFrame:
        """Rows of fold ``k`` (roles train, val, test)."""
        if k not in self.folds:
            raise InputError(f"{self.csv_path}: fold {k} not in the split (it has folds "
                             f"{self.folds[0]}..{self.folds[-1]})")
        return self.table[self.table["fold"] == k].reset_index(drop=True)

    @property
    def excluded(self) -> pd.DataFrame:
        return self.table[self.table["role"] == "excluded"].reset_index(drop=True)


def dataset_api() -> tuple[Callable[..., pd.DataFrame], Callable[[pd.DataFrame], str]]:
    """The reader functions ``(read_dataset, dataset_hash)``, imported late: they pull in
    image libraries. Tests replace this function to fake a dataset."""
    from leukocyte_cnn.data.datasets import dataset_hash, read_dataset

    return read_dataset, dataset_hash


def read_split_csv(csv_path: str | os.PathLike) -> pd.DataFrame:
    """Read a split CSV with the contract's column types."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: split file not found; run cross_validation_splits.py "
                         "first")
    try:
        split = pd.read_csv(csv_path, dtype={"image": str, "class_name": str, "group": str,
                                              "role": str}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{csv_path}: not a readable split CSV ({exc})") from None
    missing = [c for c in SPLIT_COLUMNS if c not in split.columns]
    if missing:
        raise InputError(f"{csv_path}: not a split file (lacks columns {', '.join(missing)})")
    try:
        split["fold"] = split["fold"].astype(int)
        split["label"] = split["label"].astype(int)
    except (ValueError, TypeError):
        raise InputError(f"{csv_path}: fold and label must be whole numbers") from None
    return split[SPLIT_COLUMNS]


class SplitDatasetMismatch(InputError):
    """A split file whose recorded dataset hash differs from the images on disk now."""

    def __init__(self, message: str, current_hash: str):
        super().__init__(message)
        self.current_hash = current_hash


def load_split(csv_path: str | os.PathLike, data_root: str | os.PathLike | None = None,
               verify_hash: bool = True) -> Split:
    """Load a split and bind it to the dataset on disk.

    The dataset is re-read with the reader and options recorded in the JSON (``data_root``
    overrides the recorded root, for a copy on another machine). A dataset whose
    ``dataset_hash`` differs from the recorded one is refused: test images would no longer
    be the ones the split promised.
    """
    csv_path = Path(csv_path)
    split = read_split_csv(csv_path)
    json_path = csv_path.with_suffix(".json")
    if not json_path.is_file():
        raise InputError(f"{json_path}: split settings not found beside {csv_path.name}; "
                         "re-run cross_validation_splits.py")
    settings = read_json(json_path)
    recorded_csv = settings.get("split_sha256")
    if recorded_csv and recorded_csv != file_sha256(csv_path):
        raise InputError(f"{csv_path}: does not match its settings {json_path.name} (edited or "
                         "half-rewritten); re-run cross_validation_splits.py")
    read_dataset, dataset_hash = dataset_api()
    root = data_root if data_root is not None else settings.get("data_root")
    table = read_dataset(settings["dataset"], root, **settings.get("reader_options", {}))
    if verify_hash:
        now, then = dataset_hash(table), settings.get("dataset_hash")
        if now != then:
            raise SplitDatasetMismatch(
                f"{csv_path}: split was made for a different dataset (hash {str(now)[:12]} != "
                f"{str(then)[:12]}); re-run cross_validation_splits.py", current_hash=str(now))
    assert_no_leakage(split, grouped=bool(settings.get("grouped", False)),
                      complete=method_tests_every_image(settings.get("method", ""),
                                                        variant=settings.get("variant")),
                      where=str(csv_path))
    split["path"] = _paths_on_disk(split, table, csv_path, root)
    all_names = [str(n) for n in settings.get("class_names") or class_names_by_label(table)]
    trained = [str(n) for n in settings.get("trained_class_names")
               or class_names_by_label(split[split["role"] != "excluded"])]
    split["dataset_label"] = split["label"]
    index = {name: i for i, name in enumerate(trained)}
    split["label"] = [index.get(name, -1) if role != "excluded" else -1
                      for name, role in zip(split["class_name"], split["role"], strict=True)]
    return Split(name=csv_path.stem, csv_path=csv_path, table=split, settings=settings,
                 class_names=trained, all_class_names=all_names)


def _paths_on_disk(split: pd.DataFrame, table: pd.DataFrame, csv_path: Path,
                   root: str | os.PathLike | None) -> list[str]:
    where = dict(zip(table["image"].astype(str), table["path"].astype(str), strict=True))
    paths = []
    for image in split["image"]:
        path = where.get(image)
        if path is None or not os.path.exists(path):
            shown = path or (Path(root) / image if root else image)
            raise InputError(f"{shown}: image listed in split {csv_path} is missing")
        paths.append(str(Path(path).resolve()))
    return paths
