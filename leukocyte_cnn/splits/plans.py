"""Making cross-validation folds: which images train, validate and test in each fold.

:func:`make_split` turns a reader table into the long split table (see
:mod:`leukocyte_cnn.splits.split_table`): it sets classes aside (:func:`apply_exclusion`),
makes one plan per fold with the chosen method, carves validation sets
(:func:`choose_validation`) and checks the result for leaks.

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

Whether a method splits by group is decided in :mod:`leukocyte_cnn.splits.policy`: on data
with real groups every method except ``random`` draws test and validation sets by group.

Validation rule (all methods): in each fold a class with ``n`` images available for training
gets ``min(n - 2, max(1, round(val_fraction * n)))`` validation images when ``n >= 3`` and
none otherwise, so every class that can spare one has a validation image and keeps at least two
training images. With groups, whole groups are moved to validation (rarest class first) until
each class reaches its quota; a group is never moved if that would leave a class without
training images, and a class whose images sit in a single group gets no validation images.
``val_fraction=0`` means no validation set.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.splits.policy import (
    SOURCE_FOLD,
    method_tests_every_image,
    predefined_variant,
    split_is_grouped,
)
from leukocyte_cnn.splits.split_table import (
    EXCLUDED_FOLD,
    assert_no_leakage,
    canonical_split,
    class_names_by_label,
)

METHODS = ("kfold", "lpo", "group_kfold", "predefined", "random")
TABLE_COLUMNS = ("image", "label", "class_name", "group")
# Version of the fold-making code, part of every split file's fingerprint: bump it when a
# change moves images between roles, so splits made by the old code are not reused.
SPLIT_CODE_VERSION = 2


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
    known = class_names_by_label(table)
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


# ----------------------------------------------------------------------------- making splits

def make_split(table: pd.DataFrame, method: str, *, k: int = 5, p: int = 5, seed: int = 0,
               val_fraction: float = 0.2, test_fraction: float = 0.2, min_images: int = 5,
               exclude_classes: Iterable[str] = (), groups: str | None = "auto",
               test_sources: Sequence[str] = ("TEST",), val_sources: Sequence[str] = (),
               train_sources: Sequence[str] | None = None,
               set_aside: Iterable[str] = (), where: str = "dataset") -> pd.DataFrame:
    """Assign every image of a reader table a role in every fold; return the long split table.

    ``table`` has the reader columns (``image, label, class_name, group`` and, for
    ``predefined``, ``source_split``). ``groups``: ``"auto"`` (default) splits by group when
    the table has real groups (a group holding two or more images): ``kfold`` becomes
    stratified group k-fold, ``lpo`` leaves out P groups, and validation is drawn by group;
    ``None`` splits by image (leaky on grouped data). ``group_kfold`` is always grouped and
    ``random`` never is (it splits by image by definition). ``test_fraction``
    is used by ``random`` only; ``test_sources``/``val_sources``/``train_sources`` by
    ``predefined`` only (``train_sources=None``: every value that is not test or val).
    ``set_aside``: image keys that take no part (role ``excluded``), e.g. training copies of
    test images (:func:`leukocyte_cnn.splits.copies.copies_of_test`). ``where`` names the
    data in error messages. The result has passed :func:`check_split`.
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
    aside = kept["image"].isin(set(set_aside)).to_numpy()
    if aside.any():
        excluded = pd.concat([excluded, kept[aside]], ignore_index=True)
        kept = kept[~aside].reset_index(drop=True)
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
    split = canonical_split(pd.concat([split, _excluded_rows(excluded)], ignore_index=True))
    variant = predefined_variant(kept, test_sources) if method == "predefined" else None
    assert_no_leakage(split, grouped=grouped,
                      complete=method_tests_every_image(method, variant=variant), where=where)
    return split


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
        matches = [SOURCE_FOLD.match(v.lower()) for v in source]
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
    for key, label in zip(cand_keys, cand_labels, strict=True):
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
