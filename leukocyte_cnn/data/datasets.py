"""Dataset readers: every public white-cell collection as one table of files and labels.

Each reader only lists files (fast, no decoding; :func:`leukocyte_cnn.data.images.check_images`
decodes) and returns a ``pandas.DataFrame`` sorted by ``image`` with the columns of
docs/architecture.md::

    image  path  label  class_name  group  source_split

``image`` is the file's path relative to the dataset's own layout folder (POSIX separators),
so the same files give the same keys whichever level of the layout the user points at
(e.g. Kaggle keys are ``TRAIN/EOSINOPHIL/_0_123.jpeg`` for a root at ``dataset2-master``,
at ``images`` or above). Listings are sorted, so they do not depend on the file system's
order. The class list travels in ``table.attrs["class_names"]``; :func:`class_names`
reads it. Bad layouts raise :class:`~leukocyte_cnn.base.errors.InputError` with one line that
starts with the offending path.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.data.images import image_mode_info, load_rgb, save_rgb
from leukocyte_cnn.base.io import ensure_writable_dir, read_json, write_csv, write_json, write_text

COLUMNS = ["image", "path", "label", "class_name", "group", "source_split"]

# Suffixes a reader treats as images (lower case). Files with other suffixes (LICENSE,
# Thumbs.db, .xyc, .csv) are not images and are ignored without comment.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})

ALL_IDB2_CLASSES = ["other", "lymphoblast"]
# ALL-IDB1 names a whole smear Y=1 when it shows blast cells (images from ALL patients).
ALL_IDB1_CLASSES = ["no_blasts", "blasts"]
# Single-cell crops cut from ALL-IDB1 are ALL-IDB2-like, so they share its class names.
CROP_CLASSES = ALL_IDB2_CLASSES
KAGGLE_CLASSES = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]
KAGGLE_SPLITS = ("TRAIN", "TEST", "TEST_SIMPLE")
CNMC_CLASSES = ["hem", "all"]
BLOODMNIST_CLASSES = ["basophil", "eosinophil", "erythroblast", "immature granulocytes",
                      "lymphocyte", "monocyte", "neutrophil", "platelet"]
BLOODMNIST_SPLITS = ("train", "val", "test")
# Zheng et al. 2018 label CSVs number the classes 1..5 in this order.
ZHENG_CLASSES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]

_IDB2_PATTERN = re.compile(r"Im(?P<n>\d+)_(?P<y>[01])\.(?:tif|tiff|jpg|jpeg)", re.IGNORECASE)
_IDB1_PATTERN = _IDB2_PATTERN  # same naming; ALL-IDB1 ships JPEG, copies may be TIFF
_IDB_EXPECTED = "ImNNN_Y.tif/.jpg (NNN a number, Y=1 blast, Y=0 not)"
_CNMC_PATTERN = re.compile(r"UID_(?P<patient>H?\d+)_(?P<n>\d+)_(?P<c>\d+)_(?P<kind>all|hem)\.bmp",
                           re.IGNORECASE)
_CNMC_EXPECTED = "UID_<P>_<N>_<C>_all.bmp or UID_H<P>_<N>_<C>_hem.bmp"
_FOLD_PATTERN = re.compile(r"fold_\d+")
_IGNORED_DIRS = frozenset({"__MACOSX"})


# --------------------------------------------------------------------------- table helpers

def class_names(table: pd.DataFrame) -> list[str]:
    """The dataset's class list, ordered by label.

    Readers store the full list in ``table.attrs``; a table that lost it (rebuilt from a
    CSV, say) is answered from its rows, which needs every label 0..K-1 present.
    """
    stored = table.attrs.get("class_names")
    pairs = sorted({(int(label), str(name)) for label, name in
                    zip(table["label"], table["class_name"])})
    if stored is not None and all(label < len(stored) and stored[label] == name
                                  for label, name in pairs):
        return list(stored)
    names: dict[int, str] = {}
    for label, name in pairs:
        if names.setdefault(label, name) != name:
            raise ValueError(f"label {label} has two class names: {names[label]!r} and {name!r}")
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"labels {sorted(names)} are not 0..K-1 and the table carries no "
                         "class list (attrs['class_names'])")
    return [names[label] for label in range(len(names))]


def dataset_hash(table: pd.DataFrame) -> str:
    """SHA-256 over the sorted lines ``image<TAB>label<TAB>file size<NEWLINE>``.

    Split files store it to refuse being applied to a different copy of a dataset; file
    sizes catch re-encoded or truncated files without reading them.
    """
    lines = []
    for image, label, path in zip(table["image"], table["label"], table["path"]):
        try:
            size = os.path.getsize(path)
        except OSError:
            raise InputError(f"{path}: file not found (listed as {image})") from None
        lines.append(f"{image}\t{int(label)}\t{size}\n")
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode("utf-8"))
    return digest.hexdigest()


def _make_table(rows: list[dict], classes: Sequence[str],
                extra: Sequence[str] = ()) -> pd.DataFrame:
    """Build the reader table: fixed columns, sorted by ``image``, class list in attrs."""
    table = pd.DataFrame(rows, columns=COLUMNS + list(extra))
    table["label"] = table["label"].astype("int64")
    table = table.sort_values("image", kind="stable").reset_index(drop=True)
    table.attrs["class_names"] = list(classes)
    return table


def _row(image: str, path: Path, label: int, classes: Sequence[str], group: str,
         source_split: str = "", **extra) -> dict:
    return {"image": image, "path": str(path.absolute()), "label": int(label),
            "class_name": classes[label], "group": group, "source_split": source_split, **extra}


# --------------------------------------------------------------------------- folder helpers

def _require_root(root: str | os.PathLike | None) -> Path:
    """The dataset folder as a Path, or a one-line error when it is missing."""
    if root is None or str(root) == "":
        raise InputError("<root>: no dataset folder given")
    root = Path(root).expanduser()
    if not root.exists():
        raise InputError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (expected a dataset folder)")
    return root


def _visible(name: str) -> bool:
    """Hidden files and macOS archive debris (``._x.jpg``, ``__MACOSX``) are never data."""
    return not name.startswith(".") and name not in _IGNORED_DIRS


def _subdirs(folder: Path) -> list[Path]:
    """Visible subfolders, sorted by name."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    return sorted(Path(e.path) for e in entries if e.is_dir() and _visible(e.name))


def _files(folder: Path) -> list[Path]:
    """Visible plain files directly in ``folder``, sorted by name."""
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise InputError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    return sorted(Path(e.path) for e in entries if e.is_file() and _visible(e.name))


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _image_files(folder: Path) -> list[Path]:
    return [f for f in _files(folder) if _is_image_name(f)]


def _find_dir(root: Path, accept: Callable[[Path], bool], max_depth: int) -> Path | None:
    """Breadth-first, name-sorted search for the first folder that ``accept`` takes.

    Lets a reader take the folder a user happens to point at (the archive's top folder, the
    layout folder, one in between) and still find the same layout folder.
    """
    level = [root]
    for _ in range(max_depth + 1):
        for folder in level:
            if accept(folder):
                return folder
        level = [sub for folder in level for sub in _subdirs(folder)]
    return None


def _has_matching_file(pattern: re.Pattern) -> Callable[[Path], bool]:
    def accept(folder: Path) -> bool:
        try:
            return any(pattern.fullmatch(e.name) for e in os.scandir(folder) if e.is_file())
        except OSError:
            return False
    return accept


def _reject_name(path: Path, expected: str, strict: bool) -> None:
    """An image-like file with an unexpected name: an error, or a warning when not strict."""
    message = f"{path}: file name does not match the expected pattern {expected}"
    if strict:
        raise InputError(message + " (rename it, or skip such files with "
                         "--reader-option strict=false)")
    warnings.warn(message + "; ignored", stacklevel=3)


def _check_unique_stems(rows: list[dict]) -> None:
    """The same image saved twice (``Im001_1.tif`` and ``Im001_1.jpg``) would count twice."""
    seen: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r["image"]):
        stem = Path(row["image"]).with_suffix("").as_posix().lower()
        if stem in seen:
            raise InputError(f"{row['path']}: same image as {seen[stem]} (two files, one name)")
        seen[stem] = row["path"]


# --------------------------------------------------------------------------- ALL-IDB

def read_all_idb2(root: str | os.PathLike, strict: bool = True) -> pd.DataFrame:
    """ALL-IDB2 single-cell images ``ImNNN_Y.(tif|jpg|jpeg)``: Y=1 lymphoblast, Y=0 other.

    ``root`` is the folder with the images or one above it (the archive's ``ALL_IDB2/img``).
    Image-like files with other names raise ``InputError`` (``strict=False``: a warning and
    they are ignored). ALL-IDB2 has no patient ids, so each image is its own group.
    """
    root = _require_root(root)
    folder = _find_dir(root, _has_matching_file(_IDB2_PATTERN), max_depth=2)
    if folder is None:
        raise InputError(f"{root}: no ALL-IDB2 images found (expected files {_IDB_EXPECTED})")
    rows = []
    for path in _files(folder):
        match = _IDB2_PATTERN.fullmatch(path.name)
        if match is None:
            if _is_image_name(path):
                _reject_name(path, _IDB_EXPECTED, strict)
            continue
        rows.append(_row(path.name, path, int(match["y"]), ALL_IDB2_CLASSES, group=path.stem))
    _check_unique_stems(rows)
    return _make_table(rows, ALL_IDB2_CLASSES)


def read_all_idb1(root: str | os.PathLike, crops: bool = False, crop_size: int = 257,
                  out_dir: str | os.PathLike | None = None, crop_seed: int = 0,
                  strict: bool = True) -> pd.DataFrame:
    """ALL-IDB1 smears ``ImNNN_Y.jpg`` with blast centroids in ``ImNNN_Y.xyc``.

    The ``.xyc`` file sits next to the image or in a sibling ``xyc`` folder (the archive has
    ``im/`` and ``xyc/``); it holds one ``x y`` integer pair a line and may be empty.
    Full-image mode returns one row per smear (label Y) with a ``centroids`` column (list of
    ``(x, y)``). ``crops=True`` cuts single cells instead (see :func:`crop_cells`) into
    ``out_dir`` (default: ``<root>_crops<size>`` next to ``root``) and returns their table.
    """
    root = _require_root(root)
    folder = _find_dir(root, _has_matching_file(_IDB1_PATTERN), max_depth=2)
    if folder is None:
        raise InputError(f"{root}: no ALL-IDB1 images found (expected files {_IDB_EXPECTED} "
                         "with ImNNN_Y.xyc centroid files)")
    rows = []
    for path in _files(folder):
        match = _IDB1_PATTERN.fullmatch(path.name)
        if match is None:
            if _is_image_name(path):
                _reject_name(path, _IDB_EXPECTED, strict)
            continue
        label = int(match["y"])
        rows.append(_row(path.name, path, label, ALL_IDB1_CLASSES, group=path.stem,
                         centroids=_read_centroids(path, label)))
    _check_unique_stems(rows)
    table = _make_table(rows, ALL_IDB1_CLASSES, extra=["centroids"])
    if not crops:
        return table
    if out_dir is None:
        out_dir = root.parent / f"{root.name}_crops{int(crop_size)}"
    return crop_cells(table, out_dir, size=crop_size, seed=crop_seed)


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


def _read_centroids(image_path: Path, label: int) -> list[tuple[int, int]]:
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
            rows.append(_row(pick["image"], path, pick["label"], CROP_CLASSES, group=row.group,
                             source_image=row.image, x=pick["x"], y=pick["y"]))
    crops = _make_table(rows, CROP_CLASSES, extra=["source_image", "x", "y"])
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
    return _make_table(frame.to_dict("records"), CROP_CLASSES, extra=["source_image", "x", "y"])


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
    root = _require_root(root)
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    unknown = [s for s in splits if s not in KAGGLE_SPLITS]
    if unknown:
        raise InputError(f"{root}: unknown Kaggle split(s) {unknown} "
                         f"(choose from {list(KAGGLE_SPLITS)})")
    images_dir = _find_dir(root, _is_kaggle_images_dir, max_depth=3)
    if images_dir is None:
        raise InputError(f"{root}: no Kaggle blood-cell images found (expected "
                         "dataset2-master/images/{TRAIN,TEST}/<CLASS>/*.jpeg)")
    rows = []
    for split in splits:
        split_dir = images_dir / split
        if not split_dir.is_dir():
            raise InputError(f"{split_dir}: split folder not found")
        for class_dir in _subdirs(split_dir):
            if class_dir.name not in KAGGLE_CLASSES:
                raise InputError(f"{class_dir}: unknown class folder (expected {KAGGLE_CLASSES})")
            label = KAGGLE_CLASSES.index(class_dir.name)
            for path in _image_files(class_dir):
                key = f"{split}/{class_dir.name}/{path.name}"
                rows.append(_row(key, path, label, KAGGLE_CLASSES, group=key, source_split=split))
    if not rows:
        raise InputError(f"{images_dir}: no images in {list(splits)} (expected "
                         "<SPLIT>/<CLASS>/*.jpeg)")
    return _make_table(rows, KAGGLE_CLASSES)


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
    root = _require_root(root)
    folds_dir = _find_dir(root, _has_fold_dirs, max_depth=2)
    if folds_dir is None:
        raise InputError(f"{root}: no C-NMC folds found (expected fold_<k>/all/*.bmp and "
                         "fold_<k>/hem/*.bmp, optionally under training_data/)")
    base = folds_dir.parent if folds_dir.name == "training_data" else folds_dir
    rows = []
    for fold_dir in _subdirs(folds_dir):
        if not _FOLD_PATTERN.fullmatch(fold_dir.name):
            continue
        for class_dir in _subdirs(fold_dir):
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
    return _make_table(rows, CNMC_CLASSES)


def _has_fold_dirs(folder: Path) -> bool:
    return any(_FOLD_PATTERN.fullmatch(sub.name) for sub in _subdirs(folder))


def _cnmc_rows(class_dir: Path, base: Path, fold: str) -> list[dict]:
    rows = []
    for path in _files(class_dir):
        if not _is_image_name(path):
            continue
        patient, kind = _parse_cnmc_name(path.name, path)
        if kind != class_dir.name:
            raise InputError(f"{path}: a '{kind}' file in the '{class_dir.name}' folder")
        label = CNMC_CLASSES.index(kind)
        rows.append(_row(path.relative_to(base).as_posix(), path, label, CNMC_CLASSES,
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
    csv_paths = [p for p in sorted(folder.rglob("*.csv")) if _visible(p.name)]
    if not csv_paths:
        warnings.warn(f"{folder}: no labels CSV (Patient_ID,new_names,labels); validation "
                      "images left out", stacklevel=3)
        return []
    csv_path = csv_paths[0]
    images = {p.name: p for p in sorted(folder.rglob("*"))
              if p.is_file() and _is_image_name(p) and _visible(p.name)}
    rows = []
    for line, record in _csv_records(csv_path, ["Patient_ID", "new_names", "labels"]):
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
        rows.append(_row(path.relative_to(base).as_posix(), path, label, CNMC_CLASSES,
                         group=patient, source_split="validation"))
    return rows


# --------------------------------------------------------------------------- PBC, folders

def read_pbc(root: str | os.PathLike) -> pd.DataFrame:
    """PBC (Acevedo et al. 2020) ``PBC_dataset_normal_DIB/<class>/*.jpg``; classes sorted.

    ``root`` may be the ``PBC_dataset_normal_DIB`` folder or the one above. PBC names carry
    no patient id, so each image is its own group.
    """
    root = _require_root(root)
    folder = _find_dir(root, lambda d: d.name.lower() == "pbc_dataset_normal_dib"
                       and not (d / d.name).is_dir(), max_depth=2) or root
    return _read_class_folders(folder, "PBC_dataset_normal_DIB/<class>/*.jpg")


def read_folder(root: str | os.PathLike, group_regex: str | None = None) -> pd.DataFrame:
    """Generic folder-per-class layout ``<root>/<class>/<image>``; classes sorted by name.

    ``group_regex`` (optional) takes the group from the file stem: the first capture group
    of a match at the start of the stem (e.g. ``r"(BloodImage_\\d+)"`` groups BCCD crops by
    smear); stems that do not match are their own group.
    """
    root = _require_root(root)
    return _read_class_folders(root, "<root>/<class>/<image files>", group_regex)


def _read_class_folders(folder: Path, layout: str, group_regex: str | None = None) -> pd.DataFrame:
    class_dirs = _subdirs(folder)
    if not class_dirs:
        raise InputError(f"{folder}: no class folders found (expected {layout})")
    classes = [d.name for d in class_dirs]
    pattern = re.compile(group_regex) if group_regex else None
    rows = []
    for label, class_dir in enumerate(class_dirs):
        files = _image_files(class_dir)
        if not files:
            raise InputError(f"{class_dir}: empty class folder (no images)")
        for path in files:
            key = f"{class_dir.name}/{path.name}"
            rows.append(_row(key, path, label, classes, group=_group_of(path.stem, pattern, key)))
    return _make_table(rows, classes)


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
        _require_root(base)
    wanted = [image_col, label_col] + [c for c in (group_col, split_col) if c]
    records = list(_csv_records(csv_path, wanted))
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
        rows.append(_row(key, path, names.index(name), names,
                         group=record[group_col] if group_col else key,
                         source_split=record[split_col] if split_col else ""))
    return _make_table(rows, names)


def _relative_key(path: Path, base: Path) -> str:
    """POSIX path of ``path`` relative to ``base`` (absolute when it lies outside)."""
    try:
        return Path(os.path.normpath(path)).relative_to(os.path.normpath(base)).as_posix()
    except ValueError:
        return Path(os.path.normpath(path.absolute())).as_posix()


def _csv_records(csv_path: Path, required: Sequence[str]) -> Iterable[tuple[int, dict]]:
    """``(line number, row)`` pairs of a CSV with stripped values; checks required columns."""
    try:
        handle = open(csv_path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{csv_path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{csv_path}: is a folder, expected a CSV file") from None
    with handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise InputError(f"{csv_path}: missing column(s) {missing} (columns: {header})")
        records = []
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            record = dict(zip(header, (f.strip() for f in fields)))
            empty = [c for c in required if not record.get(c)]
            if empty:
                raise InputError(f"{csv_path}: line {reader.line_num}: empty {empty}")
            records.append((reader.line_num, record))
    return records


# --------------------------------------------------------------------------- BloodMNIST

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
                rows.append(_row(key, out_dir / key, int(label), BLOODMNIST_CLASSES,
                                 group=key.removesuffix(".png"), source_split=split))
    if not reuse:
        write_text(marker, stamp)
    return _make_table(rows, BLOODMNIST_CLASSES)


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


# --------------------------------------------------------------------------- Zheng 2018

def read_zheng2018(root: str | os.PathLike, dataset: int | str = 1) -> pd.DataFrame:
    """Zheng et al. 2018 ``Dataset N/NNN.bmp`` with masks ``NNN.png`` and a labels CSV.

    Labels come from ``Class Labels of Dataset N.csv`` (``image ID,class label``, 1
    neutrophil … 5 basophil). ``dataset`` is 1, 2 or ``"both"``; keys keep the folder
    (``Dataset 1/001.bmp``) and so does ``group`` (``Dataset 1/001``), so the two sets never
    collide. Extra column ``mask_path`` (``""`` when a mask is missing). A CSV row naming a
    missing image raises ``InputError``; an image without a label is warned about and left out.
    """
    root = _require_root(root)
    numbers = [1, 2] if str(dataset).lower() == "both" else [int(dataset)]
    if any(n not in (1, 2) for n in numbers):
        raise InputError(f"{root}: Zheng 2018 has datasets 1 and 2, not {dataset!r}")
    if root.name.startswith("Dataset ") and not (root / f"Dataset {numbers[0]}").is_dir():
        root = root.parent  # pointed at "Dataset N" itself
    rows = []
    for number in numbers:
        rows.extend(_zheng_rows(root, number))
    return _make_table(rows, ZHENG_CLASSES, extra=["mask_path"])


def _zheng_rows(root: Path, number: int) -> list[dict]:
    folder = root / f"Dataset {number}"
    csv_path = root / f"Class Labels of Dataset {number}.csv"
    if not folder.is_dir() or not csv_path.is_file():
        raise InputError(f"{root}: Zheng 2018 layout not found (expected "
                         f"'Dataset {number}/NNN.bmp' and 'Class Labels of Dataset {number}.csv')")
    images = {p.stem: p for p in _files(folder) if p.suffix.lower() == ".bmp"}
    rows, labelled = [], set()
    # Dataset 1's CSV calls the label column "class label", Dataset 2's just "class".
    header, _ = _csv_head(csv_path)
    label_col = next((c for c in ("class label", "class") if c in header), "class label")
    for line, record in _csv_records(csv_path, ["image ID", label_col]):
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
        rows.append(_row(f"{folder.name}/{path.name}", path, value - 1, ZHENG_CLASSES,
                         group=f"{folder.name}/{stem}",
                         mask_path=str(mask.absolute()) if mask.is_file() else ""))
    for stem in sorted(set(images) - labelled):
        warnings.warn(f"{images[stem]}: no label in {csv_path.name}; left out", stacklevel=3)
    return rows


# --------------------------------------------------------------------------- dispatcher

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
    header, first = _csv_head(csv_path)
    # labels.csv may list "images/0001.png" (relative to the set) or just "0001.png".
    images_root = set_root
    name = first.get("image", "")
    if name and not (set_root / name).is_file() and (set_root / "images" / name).is_file():
        images_root = set_root / "images"
    defaults = {"group_col": "group" if "group" in header else None,
                "split_col": "source_split" if "source_split" in header else None}
    return read_csv_labels(csv_path, root=images_root, **{**defaults, **options})


def _csv_head(csv_path: Path) -> tuple[list[str], dict]:
    """Header and first row of a CSV (empty when the file is missing or has no rows)."""
    if not csv_path.is_file():
        return [], {}
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        first = next(reader, [])
    return header, dict(zip(header, (f.strip() for f in first)))


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
