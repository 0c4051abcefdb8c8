"""Copies of one cell joined into groups, so that a split keeps them on one side.

This module holds :func:`verify_candidates` (screened pairs compared on pixels, copies of
copies joined without a comparison) and :func:`near_duplicate_groups`, which turns verified
copies of one class within one owner split into a shared ``group`` for the split code, and
``NEAR_DUPLICATE_VERSION``, the version of that grouping that every split's fingerprint
records. The screen lives in :mod:`leukocyte_cnn.splits.perceptual_hash`, the pixel
verification in :mod:`leukocyte_cnn.splits.near_duplicate_verify`.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from leukocyte_cnn.splits.near_duplicate_screen import SCREEN_NEIGHBOURS
from leukocyte_cnn.splits.near_duplicate_verify import SIMILARITY_THRESHOLD, UnionFind, verify_pairs
from leukocyte_cnn.splits.perceptual_hash import (
    DEFAULT_THRESHOLD,
    candidate_pairs,
    fingerprint_images,
)

# Version of the copy grouping (screen, verification and their constants here and in
# perceptual_hash.py, near_duplicate_screen.py and near_duplicate_verify.py), part of every
# split's fingerprint: bump it whenever a change can join other images, so split files made
# by the older logic are made again, never reused.
# 1: pHash only; 2: screened pairs verified on pixels, weak links broken; 3: cut-off 0.9,
# cheaper gates, 4 signature neighbours; 4: nucleus centre by mean shift, signature without
# ring means, JPEGs decoded at reduced scale, rising gates along the refinement.
NEAR_DUPLICATE_VERSION = 4


def verify_candidates(pairs: np.ndarray, fingerprints: Sequence, skip=None,
                      join_at: float | None = None) -> np.ndarray:
    """``pairs`` with their ``similarity`` filled in by pixel verification (NaN where
    ``skip(i, j)`` said the answer is already known).

    ``join_at``: a pair whose two images are already joined through pairs verified at this
    similarity or more (copies of one cell are copies of each other) is not compared again:
    its ``similarity`` stays NaN and ``joined`` is set. Pairs are taken by first image, so
    of three copies a, b, c the pairs (a, b) and (a, c) are compared and (b, c) joined.
    """
    pairs = pairs.copy()
    order = np.lexsort((pairs["j"], pairs["i"]))  # by first image: the cache stays warm
    scores = verify_pairs(fingerprints, np.stack([pairs["i"][order], pairs["j"][order]],
                                                 axis=1), skip=skip, join_at=join_at)
    pairs["similarity"][order], pairs["luma"][order] = scores[:, 0], scores[:, 1]
    pairs["joined"][order] = scores[:, 2] > 0
    return pairs


def near_duplicate_groups(table: pd.DataFrame, threshold: int = DEFAULT_THRESHOLD,
                          within: str | None = "source_split", max_class_share: float = 0.5,
                          workers: int | None = None,
                          similarity: float = SIMILARITY_THRESHOLD,
                          neighbours: int = SCREEN_NEIGHBOURS) -> tuple[pd.DataFrame, dict]:
    """Join images that are copies of one another (identical bytes, or pixels that match
    after alignment) into one ``group``, so that a split drawn by group keeps copies together.

    For datasets that ship augmented copies of each source cell without saying which file
    came from which cell (Kaggle blood cells): validation carved from TRAIN by group then
    holds no copy of a training cell. Copies are only joined inside one value of ``within``
    (the owner's TRAIN/TEST), so the owner's own split is never questioned here;
    ``check_leakage.py`` audits it. Only images of one class are joined (copies of a cell
    share its label).

    Candidates come from the screen (:func:`candidate_pairs`: hash distance at most
    ``threshold`` bits, or ring-signature neighbours) and count only when pixel verification
    reaches ``similarity`` (:func:`leukocyte_cnn.splits.near_duplicate_verify.verify`); a
    pair whose two images are already joined through verified pairs is not verified again.
    Groups are then built from the verified links, strongest first, and a link that would
    make a group hold more than ``max_class_share`` of its class in that part is not made: a
    chain of look-alike images is broken at its weakest links instead of swallowing the class
    (or being dissolved whole). Groups are named ``<within value>:<first image key>``.

    Returns the new table and ``{"threshold", "similarity", "images_joined",
    "groups_joined", "largest_group", "links_broken", "groups_dissolved" (always 0; kept
    for older callers), "pairs_screened", "pairs_verified", "seconds"}``.
    """
    start = time.perf_counter()
    out = table.copy()
    stats = {"threshold": int(threshold), "similarity": float(similarity), "images_joined": 0,
             "groups_joined": 0, "largest_group": 1 if len(out) else 0, "links_broken": 0,
             "groups_dissolved": 0, "pairs_screened": 0, "pairs_verified": 0, "seconds": 0.0}
    if not len(out):
        return out, stats
    digests, hashes, prints = fingerprint_images(out["path"].tolist(), workers=workers)
    part = out[within].astype(str).to_numpy() if within in out else np.full(len(out), "")
    labels = out["label"].to_numpy()
    pairs = candidate_pairs(hashes, np.stack([f.signature for f in prints]), threshold,
                            neighbours, part=part)
    pairs = pairs[labels[pairs["i"]] == labels[pairs["j"]]]  # copies share their label
    links = [(1.0, i, j) for i, j in _identical_pairs_within(digests, part, labels)]

    joined = UnionFind(len(out))
    for _, i, j in links:
        joined.union(i, j)
    # Closest hashes first: the likeliest copies are linked before look-alikes can chain; a
    # pair already joined through verified links (one cell's copies) is not compared.
    order = np.lexsort((pairs["j"], pairs["i"], pairs["distance"]))
    ordered = np.stack([pairs["i"][order], pairs["j"][order]], axis=1)
    scores = verify_pairs(prints, ordered, join_at=similarity, joined=joined)
    stats["pairs_verified"] = int((scores[:, 2] == 0).sum())
    copy = scores[:, 0] >= similarity
    links += [(float(score), i, j) for score, (i, j) in zip(scores[copy, 0].tolist(),
                                                            ordered[copy].tolist(), strict=True)]

    # Strongest links first; a link that would overfill a group is broken.
    class_size = pd.Series(labels).groupby([part, labels]).transform("size").to_numpy()
    cap = np.maximum(2, max_class_share * class_size)
    groups = UnionFind(len(out))
    for _score, i, j in sorted(links, key=lambda link: -link[0]):
        a, b = groups.find(i), groups.find(j)
        if a == b:
            continue
        if groups.size[a] + groups.size[b] > cap[i]:
            stats["links_broken"] += 1
            continue
        groups.union(a, b)
    roots = np.array([groups.find(i) for i in range(len(out))])
    sizes = np.bincount(roots, minlength=len(out))
    members = sizes[roots] > 1
    keys = out["image"].astype(str).to_numpy()
    first = {}
    for r in np.flatnonzero(members):  # name a group after its first image in table order
        first.setdefault(roots[r], r)
    names = out["group"].astype(str).to_numpy().copy()
    names[members] = [f"{part[first[g]]}:{keys[first[g]]}" for g in roots[members]]
    out["group"] = names
    stats.update(images_joined=int(members.sum()), groups_joined=int(len(set(roots[members]))),
                 largest_group=int(sizes.max()), pairs_screened=int(len(pairs)),
                 seconds=round(time.perf_counter() - start, 1))
    return out, stats


def _identical_pairs_within(digests: Sequence[str], part: np.ndarray,
                            labels: np.ndarray) -> list[tuple[int, int]]:
    """Byte-identical files of one part and one label, as links to each first copy."""
    first: dict[tuple, int] = {}
    links = []
    for r, digest in enumerate(digests):
        key = (part[r], labels[r], digest)
        if key in first:
            links.append((first[key], r))
        else:
            first[key] = r
    return links
