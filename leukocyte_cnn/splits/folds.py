"""Cross-validation folds: which images train, validate and test in each fold.

A split is a long table with one row per (fold, image) and a role (``train``, ``val``,
``test``; ``excluded`` with fold -1 for images set aside), written to
``data/splits/<name>.csv`` with its settings in ``<name>.json`` (see docs/architecture.md).
Every training script reads the same file, so two experiments on one split see exactly the
same test images, and a split made for another copy of the dataset is refused on load.

Methods:

- ``kfold``: stratified k-fold (scikit-learn ``StratifiedKFold``); on grouped data stratified
  *group* k-fold (``StratifiedGroupKFold``).
- ``lpo``: the thesis' leave-P-out: the images are dealt into ceil(N/P) folds of at most P
  test images, class by class, so every class is spread evenly over the folds; on grouped
  data the *groups* are dealt (each fold tests at most P groups).
- ``group_kfold``: stratified k-fold disjoint by ``group``, whatever the groups look like.
- ``predefined``: the owner's split: ``source_split`` values in ``test_sources`` are the test
  set (one fold, 0); or, when every value is ``fold_<k>`` (C-NMC), fold k tests ``fold_<k>``.
- ``random``: one stratified random train/val/test split by image that ignores groups and the
  owner's split. Leaky when the data has patients or augmented copies; offered only to
  reproduce published numbers that were made this way.

Group-safe by default: when some ``group`` (patient, smear, source cell, cluster of copies)
holds two or more images, every method except ``random`` keeps each group on one side of
every fold: test sets and validation sets are drawn by group. Only ``groups=None``
(``--ignore-groups``) or ``random`` split grouped data by image, and such a split is
``leaky`` (:func:`split_is_leaky`); its runs are labelled LEAKY. Data whose groups are the
images' own names (ALL-IDB2, Zheng 2018) splits exactly as by image.

Validation rule (all methods): in each fold a class with ``n`` images available for training
gets ``min(n - 2, max(1, round(val_fraction * n)))`` validation images when ``n >= 3`` and
none otherwise, so every class that can spare one has a validation image and keeps at least two
training images. With groups, whole groups are moved to validation (rarest class first) until
each class reaches its quota; a group is never moved if that would leave a class without
training images, and a class whose images sit in a single group gets no validation images.
``val_fraction=0`` means no validation set.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import (ensure_writable_dir, file_sha256, read_json, write_csv, write_json)

METHODS = ("kfold", "lpo", "group_kfold", "predefined", "random")
ROLES = ("train", "val", "test", "excluded")
SPLIT_COLUMNS = ["fold", "image", "label", "class_name", "group", "role"]
TABLE_COLUMNS = ("image", "label", "class_name", "group")
EXCLUDED_FOLD = -1
# Version of the fold-making code, part of every split file's fingerprint: bump it when a
# change moves images between roles, so splits made by the old code are not reused.
SPLIT_CODE_VERSION = 2
_SOURCE_FOLD = re.compile(r"^fold_(\d+)$")


# ----------------------------------------------------------------------------- exclusion

def apply_exclusion(table: pd.DataFrame, min_images: int = 5,
                    exclude_classes: Iterable[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``table`` into (kept, excluded) by the thesis rule.

    Classes with fewer than ``min_images`` images cannot be spread over folds or learnt
    from, and classes named in ``exclude_classes`` (matched case-insensitively, e.g.
    ``thrombocyte``: not a leukocyte) are set aside; their images are never trained,
    validated or tested. An unknown name is an error, because a typo would otherwise
    silently train on the class the user meant to drop.
    """
    counts = table.groupby("class_name", sort=False).size()
    known = _class_names_by_label(table)
    by_lower = {name.lower(): name for name in known}
    named = []
    for wanted in exclude_classes:
        match = by_lower.get(str(wanted).strip().lower())
        if match is None:
            raise InputError(f"--exclude {wanted}: unknown class; known classes: "
                             f"{', '.join(known)}")
        named.append(match)
    too_small = [name for name in known if counts[name] < min_images]
    dropped = set(named) | set(too_small)
    mask = table["class_name"].isin(dropped).to_numpy()
    return (table[~mask].reset_index(drop=True), table[mask].reset_index(drop=True))


def _class_names_by_label(table: pd.DataFrame) -> list[str]:
    pairs = table[["label", "class_name"]].drop_duplicates().sort_values("label")
    return [str(name) for name in pairs["class_name"]]


# ----------------------------------------------------------------------------- making splits

def make_split(table: pd.DataFrame, method: str, *, k: int = 5, p: int = 5, seed: int = 0,
               val_fraction: float = 0.2, test_fraction: float = 0.2, min_images: int = 5,
               exclude_classes: Iterable[str] = (), groups: str | None = "auto",
               test_sources: Sequence[str] = ("TEST",), val_sources: Sequence[str] = (),
               train_sources: Sequence[str] | None = None,
               where: str = "dataset") -> pd.DataFrame:
    """Assign every image of a reader table a role in every fold; return the long split table.

    ``table`` has the reader columns (``image, label, class_name, group`` and, for
    ``predefined``, ``source_split``). ``groups``: ``"auto"`` (default) splits by group when
    the table has real groups (a group holding two or more images): ``kfold`` becomes
    stratified group k-fold, ``lpo`` leaves out P groups, and validation is drawn by group;
    ``None`` splits by image (leaky on grouped data). ``group_kfold`` is always grouped and
    ``random`` never is (it splits by image by definition). ``test_fraction``
    is used by ``random`` only; ``test_sources``/``val_sources``/``train_sources`` by
    ``predefined`` only (``train_sources=None``: every value that is not test or val).
    ``where`` names the data in error messages. The result has passed :func:`check_split`.
    """
    _check_table(table, where, need_source=(method == "predefined"))
    _check_fraction("--val-fraction", val_fraction, allow_zero=True)
    if method not in METHODS:
        raise InputError(f"--method {method}: unknown method; choose one of {', '.join(METHODS)}")
    if groups not in ("auto", None):
        raise ValueError(f"groups must be 'auto' or None, not {groups!r}")
    if groups is None and method == "group_kfold":
        raise InputError("--ignore-groups: contradicts --method group_kfold, which always "
                         "splits by group; use --method kfold to split by image")
    kept, excluded = apply_exclusion(table, min_images, exclude_classes)
    if kept["class_name"].nunique() < 2:
        raise InputError(f"{where}: fewer than two classes left after setting aside classes "
                         f"with fewer than {min_images} images and excluded classes")
    kept = kept.sort_values("image").reset_index(drop=True)
    grouped = split_is_grouped(method, groups, kept)
    labels = kept["label"].to_numpy()
    group_keys = kept["group"].astype(str).to_numpy()
    if method == "group_kfold" or (method == "kfold" and grouped):
        plans = _group_kfold_plans(labels, group_keys, k, seed, where)
    elif method == "kfold":
        plans = _kfold_plans(labels, k, seed)
    elif method == "lpo" and grouped:
        plans = _group_lpo_plans(labels, group_keys, p, seed, where)
    elif method == "lpo":
        plans = _lpo_plans(labels, p, seed)
    elif method == "random":
        _check_fraction("--test-fraction", test_fraction, allow_zero=False)
        plans = _random_plans(labels, test_fraction, seed, where)
    else:
        plans = _predefined_plans(kept, test_sources, val_sources, train_sources, grouped, where)
    split = _assemble(kept, plans, val_fraction, seed, grouped)
    split = _canonical(pd.concat([split, _excluded_rows(excluded)], ignore_index=True))
    variant = predefined_variant(kept, test_sources) if method == "predefined" else None
    assert_no_leakage(split, grouped=grouped,
                      complete=method_tests_every_image(method, variant=variant), where=where)
    return split


def split_is_grouped(method: str, groups: str | None, table: pd.DataFrame) -> bool:
    """Whether ``method`` keeps groups out of two roles of one fold for this table: always for
    ``group_kfold``, never for ``random``, else when ``groups="auto"`` and the table has
    real groups."""
    if method == "group_kfold":
        return True
    if method == "random":
        return False
    return groups == "auto" and has_real_groups(table)


def split_is_leaky(method: str, groups: str | None, table: pd.DataFrame,
                   copies_expected: bool = False) -> bool:
    """Whether a split puts images of one group (or, ``copies_expected``, copies of one cell
    that were not joined into groups first) on two sides: every ``random`` split, and an
    image-level split of grouped data (``groups=None``, ``--ignore-groups``)."""
    if method == "random":
        return True
    if split_is_grouped(method, groups, table):
        return False
    return has_real_groups(table) or bool(copies_expected)


# Readers whose images are augmented copies of source cells the files do not name (Kaggle
# blood cells; its synthetic twin): their copies are joined into groups before any split.
COPY_DATASETS = ("kaggle",)


def ships_copies(dataset: str) -> bool:
    """Whether ``dataset`` (a reader name) is known to hold unnamed copies of one cell."""
    return str(dataset).lower().removeprefix("synthetic_") in COPY_DATASETS


def joins_copies(near_duplicates: str, method: str, dataset: str, table: pd.DataFrame,
                 ignore_groups: bool = False) -> bool:
    """Whether a split first joins near-duplicate copies into groups
    (``leakage.near_duplicate_groups``).

    ``near_duplicates``: ``"group"`` always (unless ``ignore_groups``), ``"off"`` never,
    ``"auto"`` when the data has no groups of its own and either holds copies by nature
    (:func:`ships_copies`, for every method but ``random``) or is split by its owner's
    TRAIN/TEST (``predefined``). Data such as ALL-IDB2 is not hashed: look-alike cells there
    lie within the copy threshold and would be joined for nothing.
    """
    if ignore_groups or near_duplicates == "off":
        return False
    if near_duplicates == "group":
        return True
    if method == "random" or has_real_groups(table):
        return False
    return method == "predefined" or ships_copies(dataset)


def default_method(dataset: str, table: pd.DataFrame) -> tuple[str, str]:
    """The method a dataset is usually split with, and why. Groups come first: crops of one
    ALL-IDB1 smear, cells of one C-NMC patient never go by name."""
    name = str(dataset).lower()
    if has_real_groups(table):
        return "group_kfold", "images share patients/smears/source cells, so folds are split " \
                              "by group"
    if "all_idb" in name or "multiclass" in name:
        return "lpo", "leave-P-out as in the thesis on ALL-IDB"
    if predefined_variant(table) == "test_sources":
        return "predefined", "the dataset ships its own TEST split"
    return "kfold", "stratified k-fold"


def has_real_groups(table: pd.DataFrame) -> bool:
    """True when some group holds two or more images (patients, augmented copies of a cell).
    A long split table (one row per fold and image) is counted once per image."""
    if "fold" in table.columns:
        table = table.drop_duplicates("image")
    return bool(len(table)) and bool(table["group"].duplicated().any())


def method_tests_every_image(method: str, variant: str | None = None) -> bool:
    """Whether every kept image must be tested exactly once (k-fold style methods and
    the owner's folds, ``variant="source_folds"`` of ``predefined``)."""
    return method in ("kfold", "lpo", "group_kfold") or (
        method == "predefined" and variant == "source_folds")


def predefined_variant(table: pd.DataFrame, test_sources: Sequence[str] = ("TEST",)) -> str:
    """``"test_sources"`` when the owner's TEST split is there, ``"source_folds"`` when there
    are ``fold_<k>`` source splits (C-NMC; images of other source splits, such as C-NMC's
    ``validation``, are then left out of the split), else ``"none"``."""
    values = set(table["source_split"].astype(str))
    wanted = {s.upper() for s in test_sources}
    if any(v.upper() in wanted for v in values):
        return "test_sources"
    if any(_SOURCE_FOLD.match(v) for v in values):
        return "source_folds"
    return "none"


# A fold plan: (fold id, test positions, val positions or None = carve, train candidates).
_Plan = tuple[int, np.ndarray, "np.ndarray | None", np.ndarray]


def _kfold_plans(labels: np.ndarray, k: int, seed: int) -> list[_Plan]:
    from sklearn.model_selection import StratifiedKFold

    _check_k(k, len(labels))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has only 3 members": expected
        warnings.simplefilter("ignore", UserWarning)
        parts = list(splitter.split(np.zeros(len(labels)), labels))
    return [(fold, np.sort(test), None, np.sort(rest)) for fold, (rest, test) in enumerate(parts)]


def _lpo_plans(labels: np.ndarray, p: int, seed: int) -> list[_Plan]:
    """Deal the images into ceil(N/P) test sets, class after class, like dealing cards.

    Each class is shuffled (seeded) and the classes are laid end to end; image i of that
    sequence goes to fold ``i mod n_folds``. A class's images therefore land in consecutive
    folds, so per-class counts differ by at most one between folds, every test set has at
    most P images, and test sets mix classes. (``StratifiedKFold`` refuses more folds than
    any class has images, which leave-5-out on small classes needs.)
    """
    if p < 1:
        raise InputError(f"--p {p}: must be at least 1")
    n_folds = math.ceil(len(labels) / p)
    if n_folds < 2:
        raise InputError(f"--p {p}: leaves no training images ({len(labels)} images in all)")
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == label))
                            for label in np.unique(labels)])
    fold_of = np.empty(len(labels), dtype=int)
    fold_of[order] = np.arange(len(labels)) % n_folds
    return [(fold, np.flatnonzero(fold_of == fold), None, np.flatnonzero(fold_of != fold))
            for fold in range(n_folds)]


def _group_lpo_plans(labels: np.ndarray, group_keys: np.ndarray, p: int, seed: int,
                     where: str) -> list[_Plan]:
    """Leave-P-groups-out: :func:`_lpo_plans` dealing whole groups instead of images.

    Each group counts for its most frequent class (ties: the lower label); the groups of
    each class are shuffled (seeded) and laid end to end, and group i goes to fold
    ``i mod ceil(G/P)``: every fold tests at most P groups, with the classes spread evenly.
    """
    if p < 1:
        raise InputError(f"--p {p}: must be at least 1")
    names = np.unique(group_keys)
    n_folds = math.ceil(len(names) / p)
    if n_folds < 2:
        raise InputError(f"{where}: only {len(names)} groups (patients/smears/source cells) for "
                         f"--p {p}: no group would be left to train on; lower --p")
    index = {name: i for i, name in enumerate(names)}
    group_of = np.array([index[g] for g in group_keys])
    counts = np.zeros((len(names), int(labels.max()) + 1), dtype=int)
    np.add.at(counts, (group_of, labels), 1)
    majority = counts.argmax(axis=1)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(majority == label))
                            for label in np.unique(majority)])
    fold_of_group = np.empty(len(names), dtype=int)
    fold_of_group[order] = np.arange(len(names)) % n_folds
    fold_of = fold_of_group[group_of]
    return [(fold, np.flatnonzero(fold_of == fold), None, np.flatnonzero(fold_of != fold))
            for fold in range(n_folds)]


def _group_kfold_plans(labels: np.ndarray, group_keys: np.ndarray, k: int, seed: int,
                       where: str) -> list[_Plan]:
    from sklearn.model_selection import StratifiedGroupKFold

    _check_k(k, len(labels))
    n_groups = len(set(group_keys))
    if n_groups < k:
        raise InputError(f"{where}: only {n_groups} groups (patients/smears/source cells) for "
                         f"--k {k} group folds; lower --k (or --ignore-groups: a LEAKY "
                         "image-level split)")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        parts = list(splitter.split(np.zeros(len(labels)), labels, group_keys))
    return [(fold, np.sort(test), None, np.sort(rest)) for fold, (rest, test) in enumerate(parts)]


def _random_plans(labels: np.ndarray, test_fraction: float, seed: int,
                  where: str) -> list[_Plan]:
    from sklearn.model_selection import train_test_split

    try:
        rest, test = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                      stratify=labels, random_state=seed)
    except ValueError as exc:  # too few images of a class for a stratified test set
        raise InputError(f"{where}: cannot draw a stratified random test set ({exc})") from None
    return [(0, np.sort(test), None, np.sort(rest))]


def _predefined_plans(kept: pd.DataFrame, test_sources: Sequence[str],
                      val_sources: Sequence[str], train_sources: Sequence[str] | None,
                      grouped: bool, where: str) -> list[_Plan]:
    source = kept["source_split"].astype(str).str.upper().to_numpy()
    variant = predefined_variant(kept, test_sources)
    if variant == "source_folds":
        matches = [_SOURCE_FOLD.match(v.lower()) for v in source]
        fold_ids = np.array([int(m.group(1)) if m else -1 for m in matches])
        return [(int(fold), np.flatnonzero(fold_ids == fold), None,
                 np.flatnonzero((fold_ids != fold) & (fold_ids >= 0)))
                for fold in np.unique(fold_ids[fold_ids >= 0])]
    if variant == "none":
        values = sorted(set(kept["source_split"].astype(str)))
        raise InputError(f"{where}: no predefined test split (source splits: "
                         f"{', '.join(repr(v) for v in values)}); use --test-sources or "
                         "another --method")
    test_set = {s.upper() for s in test_sources}
    val_set = {s.upper() for s in val_sources}
    is_test = np.isin(source, list(test_set))
    is_val = np.isin(source, list(val_set)) & ~is_test
    if train_sources is None:
        is_train = ~is_test & ~is_val
    else:
        is_train = np.isin(source, [s.upper() for s in train_sources]) & ~is_test & ~is_val
    if grouped:  # the owner's own split must not share patients/cells between its parts
        _refuse_shared_groups(kept, is_test, is_train | is_val, where)
    val = np.flatnonzero(is_val) if val_set else None
    return [(0, np.flatnonzero(is_test), val, np.flatnonzero(is_train))]


def _refuse_shared_groups(kept: pd.DataFrame, is_test: np.ndarray, is_rest: np.ndarray,
                          where: str) -> None:
    shared = sorted(set(kept["group"][is_test]) & set(kept["group"][is_rest]))
    if shared:
        raise InputError(f"{where}: the owner's test split shares {len(shared)} groups with "
                         f"its training images (e.g. {shared[0]!r}); pass --ignore-groups to "
                         "use it anyway, or use --method group_kfold")


def _assemble(kept: pd.DataFrame, plans: list[_Plan], val_fraction: float, seed: int,
              grouped: bool) -> pd.DataFrame:
    """Turn fold plans into long rows, carving validation sets where a plan has none."""
    labels = kept["label"].to_numpy()
    keys = kept["group"].astype(str).to_numpy() if grouped else kept["image"].to_numpy()
    positions, fold_ids, roles = [], [], []
    for fold, test, val, candidates in plans:
        if val is None:
            rng = np.random.default_rng([seed, fold])  # one stream per fold: folds independent
            val = choose_validation(labels, keys, candidates, val_fraction, rng)
        train = np.setdiff1d(candidates, np.concatenate([val, test]))
        for role, chosen in (("train", train), ("val", val), ("test", test)):
            positions.append(np.asarray(chosen, dtype=int))
            fold_ids.append(np.full(len(chosen), fold))
            roles.append(np.full(len(chosen), role))
    rows = kept.iloc[np.concatenate(positions)][["image", "label", "class_name", "group"]]
    rows = rows.reset_index(drop=True)
    rows.insert(0, "fold", np.concatenate(fold_ids))
    rows["role"] = np.concatenate(roles)
    return rows


def validation_quota(n: int, val_fraction: float) -> int:
    """Validation images for a class with ``n`` images available for train+val in a fold."""
    if val_fraction <= 0 or n < 3:
        return 0
    return min(n - 2, max(1, math.floor(val_fraction * n + 0.5)))


def choose_validation(labels: np.ndarray, keys: np.ndarray, candidates: np.ndarray,
                      val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Positions (from ``candidates``) of a stratified validation set drawn by ``keys``.

    ``keys`` are image keys (each image on its own) or group ids (whole groups move). Keys
    are visited in a seeded random order; the rarest class is served first, so a key that
    also carries images of a common class counts towards that class as well.
    """
    if len(candidates) == 0 or val_fraction <= 0:
        return np.array([], dtype=int)
    cand_labels, cand_keys = labels[candidates], keys[candidates]
    order = rng.permutation(np.unique(cand_keys))
    rank = {key: i for i, key in enumerate(order)}
    key_classes: dict[Any, Counter] = {}
    for key, label in zip(cand_keys, cand_labels):
        key_classes.setdefault(key, Counter())[label] += 1
    class_keys: dict[Any, list] = {}
    for key in sorted(key_classes, key=rank.__getitem__):
        for label in key_classes[key]:
            class_keys.setdefault(label, []).append(key)
    train_left = Counter(cand_labels.tolist())
    quota = {label: validation_quota(n, val_fraction) if len(class_keys[label]) >= 2 else 0
             for label, n in train_left.items()}
    in_val: Counter = Counter()
    chosen: set = set()
    for label in sorted(train_left, key=lambda c: (train_left[c], c)):
        for key in class_keys[label]:
            if in_val[label] >= quota[label]:
                break
            moved = key_classes[key]
            if key in chosen or any(train_left[c] - n < 1 for c, n in moved.items()):
                continue
            chosen.add(key)
            for c, n in moved.items():
                train_left[c] -= n
                in_val[c] += n
    return np.sort(candidates[np.isin(cand_keys, list(chosen))])


def _excluded_rows(excluded: pd.DataFrame) -> pd.DataFrame:
    rows = excluded[["image", "label", "class_name", "group"]].copy()
    rows.insert(0, "fold", EXCLUDED_FOLD)
    rows["role"] = "excluded"
    return rows


def _canonical(split: pd.DataFrame) -> pd.DataFrame:
    """Fixed column order, types and row order, so equal splits give equal bytes on disk."""
    split = split[SPLIT_COLUMNS].copy()
    split["fold"] = split["fold"].astype(int)
    split["label"] = split["label"].astype(int)
    for column in ("image", "class_name", "group", "role"):
        split[column] = split[column].astype(str)
    return split.sort_values(["fold", "image"], kind="stable").reset_index(drop=True)


def _check_table(table: pd.DataFrame, where: str, need_source: bool) -> None:
    needed = list(TABLE_COLUMNS) + (["source_split"] if need_source else [])
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise InputError(f"{where}: table lacks columns {', '.join(missing)}")
    if table.empty:
        raise InputError(f"{where}: no images")
    duplicated = table["image"][table["image"].duplicated()]
    if len(duplicated):
        raise InputError(f"{where}: image {duplicated.iloc[0]!r} is listed twice")
    per_label = table.groupby("label")["class_name"].nunique()
    if (per_label > 1).any():
        raise InputError(f"{where}: label {per_label[per_label > 1].index[0]} has several "
                         "class names")


def _check_fraction(option: str, value: float, allow_zero: bool) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        raise InputError(f"{option} {value}: must be in {'[0' if allow_zero else '(0'}, 1)")


def _check_k(k: int, n: int) -> None:
    if k < 2:
        raise InputError(f"--k {k}: needs at least 2 folds")
    if k > n:
        raise InputError(f"--k {k}: more folds than images ({n})")


# ----------------------------------------------------------------------------- checking

def check_split(split: pd.DataFrame, *, grouped: bool = False,
                complete: bool = True) -> list[str]:
    """Problems that would make a split leak or lose images; an empty list means clean.

    Checked: an image in two roles of one fold; (``grouped``) a group in two roles of one
    fold; an image tested in more than one fold; excluded images in a fold; unknown roles;
    and (``complete``: k-fold style methods) a kept image never tested.
    """
    missing = [c for c in SPLIT_COLUMNS if c not in split.columns]
    if missing:
        return [f"missing columns {', '.join(missing)}"]
    problems = []
    bad_roles = sorted(set(split["role"]) - set(ROLES))
    if bad_roles:
        problems.append(f"unknown roles {', '.join(map(repr, bad_roles))}")
    is_excluded = (split["role"] == "excluded").to_numpy()
    excluded, in_folds = split[is_excluded], split[~is_excluded]
    wrong_fold = excluded[excluded["fold"] != EXCLUDED_FOLD]
    problems += _examples(wrong_fold, "excluded row(s) with a fold other than -1",
                          lambda r: f"{r.image} in fold {r.fold}")
    negative = in_folds[in_folds["fold"] < 0]
    problems += _examples(negative, "row(s) with a negative fold but role other than excluded",
                          lambda r: f"{r.image} as {r.role}")
    leaked = in_folds[in_folds["image"].isin(set(excluded["image"]))]
    problems += _examples(leaked, "excluded image(s) appearing in a fold",
                          lambda r: f"{r.image} as {r.role} in fold {r.fold}")
    problems += _two_roles(in_folds, "image")
    if grouped:
        problems += _two_roles(in_folds, "group")
    tests = in_folds[in_folds["role"] == "test"]
    tested_folds = tests.groupby("image")["fold"].nunique()
    twice = tested_folds[tested_folds > 1]
    if len(twice):
        first = twice.index[0]
        folds = sorted(tests.loc[tests["image"] == first, "fold"].unique().tolist())
        problems.append(f"{len(twice)} image(s) tested in more than one fold, e.g. {first} "
                        f"in folds {folds}")
    if complete:
        never = sorted(set(in_folds["image"]) - set(tests["image"]))
        if never:
            problems.append(f"{len(never)} image(s) never tested, e.g. {never[0]}")
    return problems


def _two_roles(in_folds: pd.DataFrame, column: str) -> list[str]:
    n_roles = in_folds.groupby(["fold", column])["role"].nunique()
    several = n_roles[n_roles > 1]
    if not len(several):
        return []
    fold, key = several.index[0]
    names = sorted(set(in_folds.loc[(in_folds["fold"] == fold) & (in_folds[column] == key),
                                    "role"]))
    return [f"{len(several)} {column}(s) in two roles within a fold, e.g. {column} {key} "
            f"is {' and '.join(names)} in fold {fold}"]


def _examples(rows: pd.DataFrame, what: str, describe) -> list[str]:
    if not len(rows):
        return []
    return [f"{len(rows)} {what}, e.g. {describe(next(rows.itertuples()))}"]


def assert_no_leakage(split: pd.DataFrame, *, grouped: bool = False, complete: bool = True,
                      where: str = "split") -> None:
    """Raise :class:`InputError` naming every problem :func:`check_split` finds."""
    problems = check_split(split, grouped=grouped, complete=complete)
    if problems:
        raise InputError(f"{where}: leaky or inconsistent split: {'; '.join(problems)}")


# ----------------------------------------------------------------------------- files

def describe_split(split: pd.DataFrame) -> dict[str, Any]:
    """Counts that go into the settings JSON: folds, images per role, excluded classes."""
    in_folds = split[split["role"] != "excluded"]
    excluded = split[split["role"] == "excluded"]
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
                             excluded.groupby("class_name").size().items()},
        "trained_class_names": _class_names_by_label(in_folds),
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
        _, dataset_hash = _dataset_api()
        meta.setdefault("dataset_hash", dataset_hash(table))
        meta.setdefault("class_names", _class_names_by_label(table))
    for key in ("dataset", "method", "dataset_hash"):
        if key not in meta:
            raise ValueError(f"settings lack {key!r}")
    out = ensure_writable_dir(out_dir)
    split = _canonical(split)
    meta.update(_derived_settings(split, meta))
    meta.setdefault("class_names", _class_names_by_label(split))
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


def _dataset_api():
    """The reader functions (imported late: they pull in image libraries)."""
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
    read_dataset, dataset_hash = _dataset_api()
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
    all_names = [str(n) for n in settings.get("class_names") or _class_names_by_label(table)]
    trained = [str(n) for n in settings.get("trained_class_names")
               or _class_names_by_label(split[split["role"] != "excluded"])]
    split["dataset_label"] = split["label"]
    index = {name: i for i, name in enumerate(trained)}
    split["label"] = [index.get(name, -1) if role != "excluded" else -1
                      for name, role in zip(split["class_name"], split["role"])]
    return Split(name=csv_path.stem, csv_path=csv_path, table=split, settings=settings,
                 class_names=trained, all_class_names=all_names)


def _paths_on_disk(split: pd.DataFrame, table: pd.DataFrame, csv_path: Path,
                   root: str | os.PathLike | None) -> list[str]:
    where = dict(zip(table["image"].astype(str), table["path"].astype(str)))
    paths = []
    for image in split["image"]:
        path = where.get(image)
        if path is None or not os.path.exists(path):
            shown = path or (Path(root) / image if root else image)
            raise InputError(f"{shown}: image listed in split {csv_path} is missing")
        paths.append(str(Path(path).resolve()))
    return paths
