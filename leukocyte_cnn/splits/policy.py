"""Split policy: which method a dataset gets, and whether a split keeps groups together.

Group-safe by default: when some ``group`` (patient, smear, source cell, cluster of copies)
holds two or more images (:func:`has_real_groups`), every method except ``random`` keeps each
group on one side of every fold (:func:`split_is_grouped`). Only ``groups=None``
(``--ignore-groups``) or ``random`` split grouped data by image, and such a split is
``leaky`` (:func:`split_is_leaky`); its runs are labelled LEAKY. Data whose groups are the
images' own names (ALL-IDB2, Zheng 2018) splits exactly as by image. Also here: the usual
method of a dataset (:func:`default_method`), whether copies of one cell are joined into
groups first (:func:`ships_copies`, :func:`joins_copies`), and which form of the owner's
split a table has (:func:`predefined_variant`).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

# A C-NMC style source split naming one of the owner's folds: ``fold_<k>``.
SOURCE_FOLD = re.compile(r"^fold_(\d+)$")


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
    (``copies.near_duplicate_groups``).

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
    if any(SOURCE_FOLD.match(v) for v in values):
        return "source_folds"
    return "none"
