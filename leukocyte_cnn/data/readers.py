"""Readers of the dataset layouts their owners distribute, one function per layout.

ALL-IDB2, ALL-IDB1, Kaggle blood cells, C-NMC 2019, PBC, Zheng et al. 2018, a generic
folder-per-class layout and a labels CSV. Each reader only lists files (fast, no decoding;
:func:`leukocyte_cnn.data.images.check_images` decodes) and returns the table of
:mod:`leukocyte_cnn.data.tables`. ``image`` is the file's path relative to the dataset's own
layout folder (POSIX separators), so the same files give the same keys whichever level of the
layout the user points at (e.g. Kaggle keys are ``TRAIN/EOSINOPHIL/_0_123.jpeg`` for a root at
``dataset2-master``, at ``images`` or above).
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.data.all_idb1_crops import CROP_CLASSES, crop_cells, smear_centroids
from leukocyte_cnn.data.tables import (check_unique_stems, csv_head, csv_records, find_dir,
                                       has_matching_file, is_image_name, is_visible,
                                       list_files, list_image_files, list_subdirs, make_table,
                                       reject_name, require_root, table_row)

# ALL-IDB2 and the single-cell crops cut from ALL-IDB1 share one class list.
ALL_IDB2_CLASSES = CROP_CLASSES
# ALL-IDB1 names a whole smear Y=1 when it shows blast cells (images from ALL patients).
ALL_IDB1_CLASSES = ["no_blasts", "blasts"]
KAGGLE_CLASSES = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]
KAGGLE_SPLITS = ("TRAIN", "TEST", "TEST_SIMPLE")
CNMC_CLASSES = ["hem", "all"]
# Zheng et al. 2018 label CSVs number the classes 1..5 in this order.
ZHENG_CLASSES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]

_IDB2_PATTERN = re.compile(r"Im(?P<n>\d+)_(?P<y>[01])\.(?:tif|tiff|jpg|jpeg)", re.IGNORECASE)
_IDB1_PATTERN = _IDB2_PATTERN  # same naming; ALL-IDB1 ships JPEG, copies may be TIFF
_IDB_EXPECTED = "ImNNN_Y.tif/.jpg (NNN a number, Y=1 blast, Y=0 not)"
_CNMC_PATTERN = re.compile(r"UID_(?P<patient>H?\d+)_(?P<n>\d+)_(?P<c>\d+)_(?P<kind>all|hem)\.bmp",
                           re.IGNORECASE)
_CNMC_EXPECTED = "UID_<P>_<N>_<C>_all.bmp or UID_H<P>_<N>_<C>_hem.bmp"
_FOLD_PATTERN = re.compile(r"fold_\d+")


# --------------------------------------------------------------------------- ALL-IDB

def read_all_idb2(root: str | os.PathLike, strict: bool = True) -> pd.DataFrame:
    """ALL-IDB2 single-cell images ``ImNNN_Y.(tif|jpg|jpeg)``: Y=1 lymphoblast, Y=0 other.

    ``root`` is the folder with the images or one above it (the archive's ``ALL_IDB2/img``).
    Image-like files with other names raise ``InputError`` (``strict=False``: a warning and
    they are ignored). ALL-IDB2 has no patient ids, so each image is its own group.
    """
    root = require_root(root)
    folder = find_dir(root, has_matching_file(_IDB2_PATTERN), max_depth=2)
    if folder is None:
        raise InputError(f"{root}: no ALL-IDB2 images found (expected files {_IDB_EXPECTED})")
    rows = []
    for path in list_files(folder):
        match = _IDB2_PATTERN.fullmatch(path.name)
        if match is None:
            if is_image_name(path):
                reject_name(path, _IDB_EXPECTED, strict)
            continue
        rows.append(table_row(path.name, path, int(match["y"]), ALL_IDB2_CLASSES, group=path.stem))
    check_unique_stems(rows)
    return make_table(rows, ALL_IDB2_CLASSES)


def read_all_idb1(root: str | os.PathLike, crops: bool = False, crop_size: int = 257,
                  out_dir: str | os.PathLike | None = None, crop_seed: int = 0,
                  strict: bool = True) -> pd.DataFrame:
    """ALL-IDB1 smears ``ImNNN_Y.jpg`` with blast centroids in ``ImNNN_Y.xyc``.

    The ``.xyc`` file sits next to the image or in a sibling ``xyc`` folder (the archive has
    ``im/`` and ``xyc/``); it holds one ``x y`` integer pair a line and may be empty.
    Full-image mode returns one row per smear (label Y) with a ``centroids`` column (list of
    ``(x, y)``). ``crops=True`` cuts single cells instead (see :func:`~leukocyte_cnn.data.all_idb1_crops.crop_cells`) into
    ``out_dir`` (default: ``<root>_crops<size>`` next to ``root``) and returns their table.
    """
    root = require_root(root)
    folder = find_dir(root, has_matching_file(_IDB1_PATTERN), max_depth=2)
    if folder is None:
        raise InputError(f"{root}: no ALL-IDB1 images found (expected files {_IDB_EXPECTED} "
                         "with ImNNN_Y.xyc centroid files)")
    rows = []
    for path in list_files(folder):
        match = _IDB1_PATTERN.fullmatch(path.name)
        if match is None:
            if is_image_name(path):
                reject_name(path, _IDB_EXPECTED, strict)
            continue
        label = int(match["y"])
        rows.append(table_row(path.name, path, label, ALL_IDB1_CLASSES, group=path.stem,
                              centroids=smear_centroids(path, label)))
    check_unique_stems(rows)
    table = make_table(rows, ALL_IDB1_CLASSES, extra=["centroids"])
    if not crops:
        return table
    if out_dir is None:
        out_dir = root.parent / f"{root.name}_crops{int(crop_size)}"
    return crop_cells(table, out_dir, size=crop_size, seed=crop_seed)


# --------------------------------------------------------------------------- Kaggle

def read_kaggle(root: str | os.PathLike, splits: Sequence[str] = ("TRAIN", "TEST")) -> pd.DataFrame:
    """Kaggle "blood cells" (P. Mooney) ``dataset2-master/images/<SPLIT>/<CLASS>/*.jpeg``.

    ``root`` may be ``dataset2-master``, its ``images`` folder or the folder above. Keys are
    relative to ``images`` (``TRAIN/EOSINOPHIL/_0_1234.jpeg``); ``source_split`` is the split
    folder. Each file is its own group: the number in ``_<copy>_<cell>.jpeg`` looks like a
    source-cell id but is not trustworthy: the same number turns up under different classes
    and splits (``3632`` in both TRAIN/LYMPHOCYTE and TRAIN/NEUTROPHIL), so grouping by it
    would join unrelated cells. TRAIN holds augmented copies of few cells; evaluate on TEST.
    """
    root = require_root(root)
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    unknown = [s for s in splits if s not in KAGGLE_SPLITS]
    if unknown:
        raise InputError(f"{root}: unknown Kaggle split(s) {unknown} "
                         f"(choose from {list(KAGGLE_SPLITS)})")
    images_dir = find_dir(root, _is_kaggle_images_dir, max_depth=3)
    if images_dir is None:
        raise InputError(f"{root}: no Kaggle blood-cell images found (expected "
                         "dataset2-master/images/{TRAIN,TEST}/<CLASS>/*.jpeg)")
    rows = []
    for split in splits:
        split_dir = images_dir / split
        if not split_dir.is_dir():
            raise InputError(f"{split_dir}: split folder not found")
        for class_dir in list_subdirs(split_dir):
            if class_dir.name not in KAGGLE_CLASSES:
                raise InputError(f"{class_dir}: unknown class folder (expected {KAGGLE_CLASSES})")
            label = KAGGLE_CLASSES.index(class_dir.name)
            for path in list_image_files(class_dir):
                key = f"{split}/{class_dir.name}/{path.name}"
                rows.append(table_row(key, path, label, KAGGLE_CLASSES, group=key,
                                      source_split=split))
    if not rows:
        raise InputError(f"{images_dir}: no images in {list(splits)} (expected "
                         "<SPLIT>/<CLASS>/*.jpeg)")
    return make_table(rows, KAGGLE_CLASSES)


def _is_kaggle_images_dir(folder: Path) -> bool:
    return any((folder / split / name).is_dir() for split in KAGGLE_SPLITS
               for name in KAGGLE_CLASSES)


# --------------------------------------------------------------------------- C-NMC

def read_cnmc(root: str | os.PathLike, include_validation: bool = True) -> pd.DataFrame:
    """C-NMC 2019 (ISBI) ``fold_<k>/{all,hem}/UID_*.bmp``; label 1 = all (blast), 0 = hem.

    ``root`` may hold the ``fold_*`` folders, be ``training_data`` or the folder above.
    ``group`` is the subject id from the name (``11`` for ``UID_11_…_all``, ``H10`` for
    ``UID_H10_…_hem``: healthy subjects are numbered separately), so group-aware splits keep
    every cell of a subject together; ``source_split`` is ``fold_k``. A ``validation_data``
    folder beside ``training_data`` (or beside the folds) with a labels CSV
    (``Patient_ID,new_names,labels``) adds its rows with ``source_split`` ``validation``.
    """
    root = require_root(root)
    folds_dir = find_dir(root, _has_fold_dirs, max_depth=2)
    if folds_dir is None:
        raise InputError(f"{root}: no C-NMC folds found (expected fold_<k>/all/*.bmp and "
                         "fold_<k>/hem/*.bmp, optionally under training_data/)")
    base = folds_dir.parent if folds_dir.name == "training_data" else folds_dir
    rows = []
    for fold_dir in list_subdirs(folds_dir):
        if not _FOLD_PATTERN.fullmatch(fold_dir.name):
            continue
        for class_dir in list_subdirs(fold_dir):
            if class_dir.name not in CNMC_CLASSES:
                continue
            rows.extend(_cnmc_rows(class_dir, base, fold_dir.name))
    if include_validation:
        for candidate in (base / "validation_data", folds_dir / "validation_data"):
            if candidate.is_dir():
                rows.extend(_cnmc_validation_rows(candidate, base))
                break
    if not rows:
        raise InputError(f"{folds_dir}: no C-NMC images found (expected fold_<k>/{{all,hem}}/"
                         f"{_CNMC_EXPECTED})")
    return make_table(rows, CNMC_CLASSES)


def _has_fold_dirs(folder: Path) -> bool:
    return any(_FOLD_PATTERN.fullmatch(sub.name) for sub in list_subdirs(folder))


def _cnmc_rows(class_dir: Path, base: Path, fold: str) -> list[dict]:
    rows = []
    for path in list_files(class_dir):
        if not is_image_name(path):
            continue
        patient, kind = _parse_cnmc_name(path.name, path)
        if kind != class_dir.name:
            raise InputError(f"{path}: a '{kind}' file in the '{class_dir.name}' folder")
        label = CNMC_CLASSES.index(kind)
        rows.append(table_row(path.relative_to(base).as_posix(), path, label, CNMC_CLASSES,
                              group=patient, source_split=fold))
    return rows


def _parse_cnmc_name(name: str, where: Path) -> tuple[str, str]:
    """``(subject id, 'all' | 'hem')`` from a C-NMC file name; the ``H`` prefix is kept."""
    match = _CNMC_PATTERN.fullmatch(name)
    if match is None:
        raise InputError(f"{where}: file name does not match {_CNMC_EXPECTED}")
    return match["patient"].upper(), match["kind"].lower()


def _cnmc_validation_rows(folder: Path, base: Path) -> list[dict]:
    """Rows of C-NMC's preliminary-test ("validation") set, labelled by its CSV."""
    csv_paths = [p for p in sorted(folder.rglob("*.csv")) if is_visible(p.name)]
    if not csv_paths:
        warnings.warn(f"{folder}: no labels CSV (Patient_ID,new_names,labels); validation "
                      "images left out", stacklevel=3)
        return []
    csv_path = csv_paths[0]
    images = {p.name: p for p in sorted(folder.rglob("*"))
              if p.is_file() and is_image_name(p) and is_visible(p.name)}
    rows = []
    for line, record in csv_records(csv_path, ["Patient_ID", "new_names", "labels"]):
        name, original, value = record["new_names"], record["Patient_ID"], record["labels"]
        if name not in images:
            raise InputError(f"{csv_path}: line {line}: image {name} not found under {folder}")
        if value not in ("0", "1"):
            raise InputError(f"{csv_path}: line {line}: label {value!r} is not 1 (all) or 0 (hem)")
        patient, kind = _parse_cnmc_name(original, csv_path)
        label = int(value)
        if CNMC_CLASSES[label] != kind:
            raise InputError(f"{csv_path}: line {line}: label {value} contradicts {original}")
        path = images[name]
        rows.append(table_row(path.relative_to(base).as_posix(), path, label, CNMC_CLASSES,
                              group=patient, source_split="validation"))
    return rows


# --------------------------------------------------------------------------- PBC, folders

def read_pbc(root: str | os.PathLike) -> pd.DataFrame:
    """PBC (Acevedo et al. 2020) ``PBC_dataset_normal_DIB/<class>/*.jpg``; classes sorted.

    ``root`` may be the ``PBC_dataset_normal_DIB`` folder or the one above. PBC names carry
    no patient id, so each image is its own group.
    """
    root = require_root(root)
    folder = find_dir(root, lambda d: d.name.lower() == "pbc_dataset_normal_dib"
                      and not (d / d.name).is_dir(), max_depth=2) or root
    return _read_class_folders(folder, "PBC_dataset_normal_DIB/<class>/*.jpg")


def read_folder(root: str | os.PathLike, group_regex: str | None = None) -> pd.DataFrame:
    """Generic folder-per-class layout ``<root>/<class>/<image>``; classes sorted by name.

    ``group_regex`` (optional) takes the group from the file stem: the first capture group
    of a match at the start of the stem (e.g. ``r"(BloodImage_\\d+)"`` groups BCCD crops by
    smear); stems that do not match are their own group.
    """
    root = require_root(root)
    return _read_class_folders(root, "<root>/<class>/<image files>", group_regex)


def _read_class_folders(folder: Path, layout: str, group_regex: str | None = None) -> pd.DataFrame:
    class_dirs = list_subdirs(folder)
    if not class_dirs:
        raise InputError(f"{folder}: no class folders found (expected {layout})")
    classes = [d.name for d in class_dirs]
    pattern = re.compile(group_regex) if group_regex else None
    rows = []
    for label, class_dir in enumerate(class_dirs):
        files = list_image_files(class_dir)
        if not files:
            raise InputError(f"{class_dir}: empty class folder (no images)")
        for path in files:
            key = f"{class_dir.name}/{path.name}"
            rows.append(table_row(key, path, label, classes,
                                  group=_group_of(path.stem, pattern, key)))
    return make_table(rows, classes)


def _group_of(stem: str, pattern: re.Pattern | None, key: str) -> str:
    """The group named by ``pattern`` in the stem, else the image's own key.

    Not the bare stem: ``blast/1.png`` and ``other/1.png`` are different cells, and a shared
    group would make group-aware splits treat them as one patient.
    """
    match = pattern.match(stem) if pattern else None
    if match is None:
        return key
    return match.group(1) if match.groups() else match.group(0)


# --------------------------------------------------------------------------- CSV labels

def read_csv_labels(csv_path: str | os.PathLike, root: str | os.PathLike | None = None,
                    image_col: str = "image", label_col: str = "class_name",
                    group_col: str | None = None, split_col: str | None = None,
                    classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Images listed in a CSV with a class-name column.

    Paths are relative to ``root`` (default: the CSV's folder) and become the ``image``
    keys. Classes are ``classes`` when given (fixing the label order), else the sorted class
    names. ``group_col``/``split_col`` fill ``group``/``source_split`` (default: the stem,
    ``""``). A row naming a missing file raises ``InputError`` with CSV, line and file.
    """
    csv_path = Path(csv_path)
    base = Path(root) if root is not None else csv_path.parent
    if root is not None:
        require_root(base)
    wanted = [image_col, label_col] + [c for c in (group_col, split_col) if c]
    records = list(csv_records(csv_path, wanted))
    if not records:
        raise InputError(f"{csv_path}: no rows (expected columns {wanted})")
    names = sorted({r[label_col] for _, r in records}) if classes is None else list(classes)
    rows, seen = [], {}
    for line, record in records:
        name = record[label_col]
        if name not in names:
            raise InputError(f"{csv_path}: line {line}: class {name!r} not in {names}")
        path = base / record[image_col]
        if not path.is_file():
            raise InputError(f"{csv_path}: line {line}: {record[image_col]}: file not found "
                             f"under {base}")
        key = _relative_key(path, base)
        if key in seen:
            raise InputError(f"{csv_path}: line {line}: {key} already listed on line {seen[key]}")
        seen[key] = line
        rows.append(table_row(key, path, names.index(name), names,
                              group=record[group_col] if group_col else key,
                              source_split=record[split_col] if split_col else ""))
    return make_table(rows, names)


def _relative_key(path: Path, base: Path) -> str:
    """POSIX path of ``path`` relative to ``base`` (absolute when it lies outside)."""
    try:
        return Path(os.path.normpath(path)).relative_to(os.path.normpath(base)).as_posix()
    except ValueError:
        return Path(os.path.normpath(path.absolute())).as_posix()



# --------------------------------------------------------------------------- Zheng 2018

def read_zheng2018(root: str | os.PathLike, dataset: int | str = 1) -> pd.DataFrame:
    """Zheng et al. 2018 ``Dataset N/NNN.bmp`` with masks ``NNN.png`` and a labels CSV.

    Labels come from ``Class Labels of Dataset N.csv`` (``image ID,class label``, 1
    neutrophil … 5 basophil). ``dataset`` is 1, 2 or ``"both"``; keys keep the folder
    (``Dataset 1/001.bmp``) and so does ``group`` (``Dataset 1/001``), so the two sets never
    collide. Extra column ``mask_path`` (``""`` when a mask is missing). A CSV row naming a
    missing image raises ``InputError``; an image without a label is warned about and left out.
    """
    root = require_root(root)
    numbers = [1, 2] if str(dataset).lower() == "both" else [int(dataset)]
    if any(n not in (1, 2) for n in numbers):
        raise InputError(f"{root}: Zheng 2018 has datasets 1 and 2, not {dataset!r}")
    if root.name.startswith("Dataset ") and not (root / f"Dataset {numbers[0]}").is_dir():
        root = root.parent  # pointed at "Dataset N" itself
    rows = []
    for number in numbers:
        rows.extend(_zheng_rows(root, number))
    return make_table(rows, ZHENG_CLASSES, extra=["mask_path"])


def _zheng_rows(root: Path, number: int) -> list[dict]:
    folder = root / f"Dataset {number}"
    csv_path = root / f"Class Labels of Dataset {number}.csv"
    if not folder.is_dir() or not csv_path.is_file():
        raise InputError(f"{root}: Zheng 2018 layout not found (expected "
                         f"'Dataset {number}/NNN.bmp' and 'Class Labels of Dataset {number}.csv')")
    images = {p.stem: p for p in list_files(folder) if p.suffix.lower() == ".bmp"}
    rows, labelled = [], set()
    # Dataset 1's CSV calls the label column "class label", Dataset 2's just "class".
    header, _ = csv_head(csv_path)
    label_col = next((c for c in ("class label", "class") if c in header), "class label")
    for line, record in csv_records(csv_path, ["image ID", label_col]):
        try:
            image_id, value = int(record["image ID"]), int(record[label_col])
        except ValueError:
            raise InputError(f"{csv_path}: line {line}: expected integers, got "
                             f"{record['image ID']!r},{record[label_col]!r}") from None
        stem = f"{image_id:03d}"
        if stem not in images:
            raise InputError(f"{csv_path}: line {line}: image {folder.name}/{stem}.bmp not found")
        if not 1 <= value <= len(ZHENG_CLASSES):
            raise InputError(f"{csv_path}: line {line}: class label {value} not in 1..5")
        if stem in labelled:
            raise InputError(f"{csv_path}: line {line}: image ID {image_id} listed twice")
        labelled.add(stem)
        path = images[stem]
        mask = path.with_suffix(".png")
        rows.append(table_row(f"{folder.name}/{path.name}", path, value - 1, ZHENG_CLASSES,
                              group=f"{folder.name}/{stem}",
                              mask_path=str(mask.absolute()) if mask.is_file() else ""))
    for stem in sorted(set(images) - labelled):
        warnings.warn(f"{images[stem]}: no label in {csv_path.name}; left out", stacklevel=3)
    return rows
