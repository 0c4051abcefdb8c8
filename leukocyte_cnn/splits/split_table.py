"""The long split table: its columns and roles, its canonical form, and its checks.

A split is a long table with one row per (fold, image) and a role (``train``, ``val``,
``test``; ``excluded`` with fold -1 for images set aside). This module holds that contract
(:data:`SPLIT_COLUMNS`, :data:`ROLES`, :data:`EXCLUDED_FOLD`), the fixed column and row
order that makes equal splits equal bytes (:func:`canonical_split`), and the checks that a
split neither leaks an image or group between roles of a fold nor loses images
(:func:`check_split`, :func:`assert_no_leakage`).
"""
from __future__ import annotations

import pandas as pd

from leukocyte_cnn.base.errors import InputError

ROLES = ("train", "val", "test", "excluded")
SPLIT_COLUMNS = ["fold", "image", "label", "class_name", "group", "role"]
EXCLUDED_FOLD = -1


def class_names_by_label(table: pd.DataFrame) -> list[str]:
    """The table's class names, one per label, in label order."""
    pairs = table[["label", "class_name"]].drop_duplicates().sort_values("label")
    return [str(name) for name in pairs["class_name"]]


def canonical_split(split: pd.DataFrame) -> pd.DataFrame:
    """Fixed column order, types and row order, so equal splits give equal bytes on disk."""
    split = split[SPLIT_COLUMNS].copy()
    split["fold"] = split["fold"].astype(int)
    split["label"] = split["label"].astype(int)
    for column in ("image", "class_name", "group", "role"):
        split[column] = split[column].astype(str)
    return split.sort_values(["fold", "image"], kind="stable").reset_index(drop=True)


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
