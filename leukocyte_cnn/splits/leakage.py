"""Leakage audit of a split: does any test (or validation) image also sit, in some form, in
training?

A split can be disjoint by image key and still leak: the same file saved under two names, two
images of one patient, or an augmented copy (rotated, flipped, slightly shifted) of a training
cell in the test set, which is how the Kaggle blood-cell TRAIN folder was made. This module
finds all four kinds, per fold and per pair of roles (train–val, train–test, val–test):

- ``same_image``: one image key in two roles of a fold (counted per image);
- ``same_group``: one patient/source group in two roles of a fold (counted per group);
- ``same_content``: two different keys whose files are byte-identical (SHA-256; per pair);
- ``near_duplicate``: two different files whose perceptual hashes are within a Hamming
  distance of ``threshold`` bits (per pair), after trying the eight rotations/flips.

Copies are found by :mod:`leukocyte_cnn.splits.perceptual_hash` (the screen) and
:mod:`leukocyte_cnn.splits.copies` (pixel verification); this module holds the audit's
report (:class:`LeakageReport`), :func:`audit` and the per-fold table :func:`wide_table`.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from leukocyte_cnn.splits.copies import find_copies
from leukocyte_cnn.splits.near_duplicate_screen import SCREEN_NEIGHBOURS
from leukocyte_cnn.splits.near_duplicate_verify import SIMILARITY_THRESHOLD, false_positive_estimate
from leukocyte_cnn.splits.perceptual_hash import DEFAULT_THRESHOLD

FALSE_POSITIVE_WARNING = 0.01  # warn when the estimated share of false copies exceeds this
KINDS = ("same_image", "same_content", "same_group", "near_duplicate")
ROLE_PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))
_ROLE_CODE = {"train": 0, "val": 1, "test": 2}
_ROLE_NAME = {code: name for name, code in _ROLE_CODE.items()}


# ----------------------------------------------------------------------------- the audit

@dataclasses.dataclass
class LeakageReport:
    """The audit's result: one row per (fold, role pair, kind) plus what was compared."""

    table: pd.DataFrame          # fold, roles, kind, count, example
    n_images: int                # distinct images hashed
    threshold: int
    seconds: float
    duplicates_within_data: dict  # identical / near-duplicate (verified) pairs among all images
    # screen and verification: pairs_screened, verified_pairs (compared on pixels and found
    # copies), joined_pairs (copies of copies, reported too but not compared),
    # cross_class_pairs (among the verified ones), false_positive_rate (estimated from
    # them), similarity, neighbours
    calibration: dict = dataclasses.field(default_factory=dict)
    # one row per near-duplicate pair: roles (the first role pair it straddles in some fold,
    # or "same role"), image_a, image_b, path_a, path_b, class_a, class_b, distance (hash
    # bits), similarity (NCC after alignment; NaN if joined), joined (through verified
    # copies, not compared), folds (how many it leaks in)
    copies: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)

    @property
    def false_positive_warning(self) -> bool:
        """More than FALSE_POSITIVE_WARNING of the verified pairs look like false positives."""
        rate = self.calibration.get("false_positive_rate", 0.0)
        return bool(rate == rate and rate > FALSE_POSITIVE_WARNING)

    @property
    def n_leaks(self) -> int:
        return int(self.table["count"].sum())

    @property
    def clean(self) -> bool:
        return self.n_leaks == 0

    def totals(self) -> pd.DataFrame:
        """Counts summed over folds, one row per role pair, one column per kind."""
        wide = self.table.pivot_table(index="roles", columns="kind", values="count",
                                      aggfunc="sum", fill_value=0)
        order = ["-".join(pair) for pair in ROLE_PAIRS]
        return wide.reindex(index=order, columns=list(KINDS), fill_value=0).reset_index()


def audit(split: pd.DataFrame, threshold: int = DEFAULT_THRESHOLD,
          workers: int | None = None, similarity: float = SIMILARITY_THRESHOLD,
          neighbours: int = SCREEN_NEIGHBOURS, cache: dict | None = None) -> LeakageReport:
    """Find every overlap between the roles of each fold of a split table.

    ``split`` is the long split table with an absolute ``path`` column (``load_split(...).table``);
    excluded rows are ignored. Each file is read once; byte-identical files and near-duplicate
    pairs are found once over all images (:func:`~leukocyte_cnn.splits.copies.find_copies`)
    and then looked up per fold. A near-duplicate is a screened pair whose pixels match at
    ``similarity`` or more after alignment, or whose two images are already joined through
    such pairs (copies of one cell are copies of each other: ``joined`` in
    :attr:`LeakageReport.copies`, similarity NaN, not compared again); pairs of two classes
    among those compared estimate the false-positive rate
    (:func:`leukocyte_cnn.splits.near_duplicate_verify.false_positive_estimate`).
    ``cache``: fingerprints read before (``perceptual_hash.fingerprint_images``).
    """
    start = time.perf_counter()
    if threshold < 0 or threshold > 64:
        raise ValueError(f"threshold must be 0..64 bits, not {threshold}")
    rows = split[split["role"].isin(list(_ROLE_CODE))].copy()
    rows["image"] = rows["image"].astype(str)
    rows["group"] = rows["group"].astype(str)
    images = rows.drop_duplicates("image").sort_values("image").reset_index(drop=True)
    index = {key: i for i, key in enumerate(images["image"])}
    found = find_copies(images["path"].tolist(), threshold, similarity, neighbours, workers,
                        cache)
    same_content, screened, compared, near = (found.identical, found.screened, found.compared,
                                              found.near)
    names = images["image"].to_numpy()
    classes = (images["class_name"].astype(str).to_numpy() if "class_name" in images
               else np.full(len(images), ""))

    records = []
    first_roles = np.full(len(near), "same role", dtype=object)
    leaking_folds = np.zeros(len(near), dtype=np.int64)
    for fold, fold_rows in rows.groupby("fold", sort=True):
        role = np.full(len(images), -1, dtype=np.int8)
        role[[index[k] for k in fold_rows["image"]]] = fold_rows["role"].map(_ROLE_CODE).to_numpy()
        records += _key_overlaps(int(fold), fold_rows, "image", "same_image")
        records += _key_overlaps(int(fold), fold_rows, "group", "same_group")
        records += _pair_overlaps(int(fold), role, same_content, names, "same_content")
        records += _pair_overlaps(int(fold), role, near, names, "near_duplicate")
        ri, rj = role[near["i"]], role[near["j"]]
        straddle = (ri >= 0) & (rj >= 0) & (ri != rj)
        leaking_folds += straddle
        for k in np.flatnonzero(straddle & (first_roles == "same role")):
            low, high = sorted((int(ri[k]), int(rj[k])))
            first_roles[k] = f"{_ROLE_NAME[low]}-{_ROLE_NAME[high]}"
    table = pd.DataFrame(records, columns=["fold", "roles", "kind", "count", "example"])
    within = {"identical_pairs": int(len(same_content)), "near_duplicate_pairs": int(len(near))}
    shares = pd.Series(classes).value_counts().to_dict()
    # the estimate is of the comparison's error rate, so it counts the pairs compared on
    # pixels (a pair joined through them crosses classes only where one of them does; one
    # cell filed under two labels would otherwise count once per copy of it)
    verified = screened[compared]
    calibration = {"pairs_screened": int(len(screened)), "similarity": float(similarity),
                   "neighbours": int(neighbours), "joined_pairs": int(near["joined"].sum()),
                   **false_positive_estimate(classes[verified["i"]], classes[verified["j"]],
                                             shares)}
    paths = images["path"].astype(str).to_numpy()
    copies = pd.DataFrame({
        "roles": first_roles, "image_a": names[near["i"]], "image_b": names[near["j"]],
        "path_a": paths[near["i"]], "path_b": paths[near["j"]],
        "class_a": classes[near["i"]], "class_b": classes[near["j"]],
        "distance": near["distance"].astype(int), "similarity": near["similarity"].astype(float),
        "joined": near["joined"], "folds": leaking_folds})
    return LeakageReport(table=table, n_images=len(images), threshold=int(threshold),
                         seconds=time.perf_counter() - start, duplicates_within_data=within,
                         calibration=calibration, copies=copies)


def _key_overlaps(fold: int, fold_rows: pd.DataFrame, column: str, kind: str) -> list[dict]:
    """Keys (image or group) that hold two roles in one fold, counted per role pair."""
    roles_of = fold_rows.groupby(column)["role"].agg(lambda r: frozenset(r))
    out = []
    for first, second in ROLE_PAIRS:
        hits = sorted(key for key, roles in roles_of.items() if {first, second} <= roles)
        example = ""
        if hits:
            key = hits[0]
            if column == "image":
                example = key
            else:
                members = fold_rows[fold_rows[column] == key]
                a = members.loc[members["role"] == first, "image"].min()
                b = members.loc[members["role"] == second, "image"].min()
                example = f"{column} {key}: {a} ~ {b}"
        out.append({"fold": fold, "roles": f"{first}-{second}", "kind": kind,
                    "count": len(hits), "example": example})
    return out


def _pair_overlaps(fold: int, role: np.ndarray, pairs: np.ndarray, names: np.ndarray,
                   kind: str) -> list[dict]:
    """Pairs whose two images hold different roles of this fold, counted per role pair."""
    ri, rj = role[pairs["i"]], role[pairs["j"]]
    low, high = np.minimum(ri, rj), np.maximum(ri, rj)
    out = []
    for first, second in ROLE_PAIRS:
        hit = (low == _ROLE_CODE[first]) & (high == _ROLE_CODE[second])
        example = ""
        if hit.any():
            chosen = pairs[hit]
            # most similar (then closest) pair first, then by name: a stable example
            order = np.lexsort((names[chosen["j"]], names[chosen["i"]], chosen["distance"],
                                -np.nan_to_num(chosen["similarity"], nan=-2.0)))
            best = chosen[order[0]]
            a, b = names[best["i"]], names[best["j"]]
            if role[best["i"]] != _ROLE_CODE[first]:
                a, b = b, a
            example = f"{a} ~ {b}" + (
                f" (distance {int(best['distance'])}, similarity {best['similarity']:.3f})"
                if kind == "near_duplicate" else "")
        out.append({"fold": fold, "roles": f"{first}-{second}", "kind": kind,
                    "count": int(hit.sum()), "example": example})
    return out


# ----------------------------------------------------------------------------- output

def wide_table(report: LeakageReport, only_leaks: bool = False) -> pd.DataFrame:
    """One row per (fold, role pair): a count column per kind and one example of each kind."""
    table = report.table
    wide = table.pivot_table(index=["fold", "roles"], columns="kind", values="count",
                             aggfunc="sum", fill_value=0).reindex(columns=list(KINDS),
                                                                  fill_value=0).reset_index()
    order = {"-".join(pair): i for i, pair in enumerate(ROLE_PAIRS)}
    wide = wide.assign(_order=wide["roles"].map(order)).sort_values(["fold", "_order"])
    wide = wide.drop(columns="_order").reset_index(drop=True)
    wide.columns.name = None
    rank = {kind: i for i, kind in enumerate(KINDS)}
    found = table[table["example"] != ""].assign(rank=table["kind"].map(rank))
    examples = {key: "; ".join(f"{kind}: {example}" for kind, example in
                               zip(rows.sort_values("rank")["kind"],
                                   rows.sort_values("rank")["example"], strict=True))
                for key, rows in found.groupby(["fold", "roles"])}
    wide["examples"] = [examples.get((f, r), "")
                        for f, r in zip(wide["fold"], wide["roles"], strict=True)]
    if only_leaks:
        wide = wide[wide[list(KINDS)].sum(axis=1) > 0].reset_index(drop=True)
    return wide
