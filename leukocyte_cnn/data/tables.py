"""The reader table and the listing helpers every dataset reader shares.

Every reader returns a ``pandas.DataFrame`` sorted by ``image`` with the columns of
docs/architecture.md (:data:`COLUMNS`)::

    image  path  label  class_name  group  source_split

built with :func:`table_row` and :func:`make_table`; the class list travels in
``table.attrs["class_names"]`` and :func:`class_names` reads it; :func:`dataset_hash`
fingerprints a table for split files. The folder and CSV helpers list files without decoding
them, sorted, so listings do not depend on the file system's order, and skip hidden files and
archive debris; bad layouts raise :class:`~leukocyte_cnn.base.errors.InputError` with one line
that starts with the offending path.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd

from leukocyte_cnn.base.errors import InputError

COLUMNS = ["image", "path", "label", "class_name", "group", "source_split"]

# Suffixes a reader treats as images (lower case). Files with other suffixes (LICENSE,
# Thumbs.db, .xyc, .csv) are not images and are ignored without comment.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
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


def make_table(rows: list[dict], classes: Sequence[str],
               extra: Sequence[str] = ()) -> pd.DataFrame:
    """Build the reader table: fixed columns, sorted by ``image``, class list in attrs."""
    table = pd.DataFrame(rows, columns=COLUMNS + list(extra))
    table["label"] = table["label"].astype("int64")
    table = table.sort_values("image", kind="stable").reset_index(drop=True)
    table.attrs["class_names"] = list(classes)
    return table


def table_row(image: str, path: Path, label: int, classes: Sequence[str], group: str,
              source_split: str = "", **extra) -> dict:
    return {"image": image, "path": str(path.absolute()), "label": int(label),
            "class_name": classes[label], "group": group, "source_split": source_split, **extra}


# --------------------------------------------------------------------------- folder helpers

def require_root(root: str | os.PathLike | None) -> Path:
    """The dataset folder as a Path, or a one-line error when it is missing."""
    if root is None or str(root) == "":
        raise InputError("<root>: no dataset folder given")
    root = Path(root).expanduser()
    if not root.exists():
        raise InputError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (expected a dataset folder)")
    return root


def is_visible(name: str) -> bool:
    """Hidden files and macOS archive debris (``._x.jpg``, ``__MACOSX``) are never data."""
    return not name.startswith(".") and name not in _IGNORED_DIRS


def list_subdirs(folder: Path) -> list[Path]:
    """Visible subfolders, sorted by name."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    return sorted(Path(e.path) for e in entries if e.is_dir() and is_visible(e.name))


def list_files(folder: Path) -> list[Path]:
    """Visible plain files directly in ``folder``, sorted by name."""
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise InputError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    return sorted(Path(e.path) for e in entries if e.is_file() and is_visible(e.name))


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_image_files(folder: Path) -> list[Path]:
    return [f for f in list_files(folder) if is_image_name(f)]


def find_dir(root: Path, accept: Callable[[Path], bool], max_depth: int) -> Path | None:
    """Breadth-first, name-sorted search for the first folder that ``accept`` takes.

    Lets a reader take the folder a user happens to point at (the archive's top folder, the
    layout folder, one in between) and still find the same layout folder.
    """
    level = [root]
    for _ in range(max_depth + 1):
        for folder in level:
            if accept(folder):
                return folder
        level = [sub for folder in level for sub in list_subdirs(folder)]
    return None


def has_matching_file(pattern: re.Pattern) -> Callable[[Path], bool]:
    def accept(folder: Path) -> bool:
        try:
            return any(pattern.fullmatch(e.name) for e in os.scandir(folder) if e.is_file())
        except OSError:
            return False
    return accept


def reject_name(path: Path, expected: str, strict: bool) -> None:
    """An image-like file with an unexpected name: an error, or a warning when not strict."""
    message = f"{path}: file name does not match the expected pattern {expected}"
    if strict:
        raise InputError(message + " (rename it, or skip such files with "
                         "--reader-option strict=false)")
    warnings.warn(message + "; ignored", stacklevel=3)


def check_unique_stems(rows: list[dict]) -> None:
    """The same image saved twice (``Im001_1.tif`` and ``Im001_1.jpg``) would count twice."""
    seen: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r["image"]):
        stem = Path(row["image"]).with_suffix("").as_posix().lower()
        if stem in seen:
            raise InputError(f"{row['path']}: same image as {seen[stem]} (two files, one name)")
        seen[stem] = row["path"]



# --------------------------------------------------------------------------- CSV files

def csv_records(csv_path: Path, required: Sequence[str]) -> Iterable[tuple[int, dict]]:
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


def csv_head(csv_path: Path) -> tuple[list[str], dict]:
    """Header and first row of a CSV (empty when the file is missing or has no rows)."""
    if not csv_path.is_file():
        return [], {}
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        first = next(reader, [])
    return header, dict(zip(header, (f.strip() for f in first)))

