"""Copies of one cell joined into groups, so that a split keeps them on one side.

This module holds :func:`verify_candidates` (screened pairs compared on pixels, copies of
copies joined without a comparison), :func:`near_duplicate_groups`, which turns verified
copies of one class within one owner split into a shared ``group`` for the split code,
:func:`find_copies` (every copy among a list of images, as the leakage audit counts them),
:func:`copies_of_test` (training images to set aside as copies of test images), and
``NEAR_DUPLICATE_VERSION``, the version of that grouping that every split's fingerprint
records. The screen lives in :mod:`leukocyte_cnn.splits.perceptual_hash`, the pixel
verification in :mod:`leukocyte_cnn.splits.near_duplicate_verify`.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from leukocyte_cnn.splits.near_duplicate_screen import SCREEN_NEIGHBOURS
from leukocyte_cnn.splits.near_duplicate_verify import SIMILARITY_THRESHOLD, UnionFind, verify_pairs
from leukocyte_cnn.splits.perceptual_hash import (
    DEFAULT_THRESHOLD,
    PAIR_DTYPE,
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
# Version of the check for copies across the owner's parts (:func:`copies_of_test`), part of
# the fingerprint of every ``predefined`` split that joins copies.
COPIES_OF_TEST_VERSION = 1


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
                          neighbours: int = SCREEN_NEIGHBOURS,
                          cache: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """Join images that are copies of one another (identical bytes, or pixels that match
    after alignment) into one ``group``, so that a split drawn by group keeps copies together.

    For datasets that ship augmented copies of each source cell without saying which file
    came from which cell (Kaggle blood cells): validation carved from TRAIN by group then
    holds no copy of a training cell. Copies are only joined inside one value of ``within``
    (the owner's TRAIN/TEST), so the owner's own split is never redrawn here;
    copies across it are found by :func:`copies_of_test` and set aside. Only images of one
    class are joined (copies of a cell share its label).

    Candidates come from the screen (:func:`candidate_pairs`: hash distance at most
    ``threshold`` bits, or ring-signature neighbours) and count only when pixel verification
    reaches ``similarity`` (:func:`leukocyte_cnn.splits.near_duplicate_verify.verify`); a
    pair whose two images are already joined through verified pairs is not verified again.
    Groups are then built from the verified links, strongest first, and a link that would
    make a group hold more than ``max_class_share`` of its class in that part is not made: a
    chain of look-alike images is broken at its weakest links instead of swallowing the class
    (or being dissolved whole). Groups are named ``<within value>:<first image key>``.
    ``cache``: as :func:`fingerprint_images`.

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
    digests, hashes, prints = fingerprint_images(out["path"].tolist(), workers=workers,
                                                 cache=cache)
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


# ----------------------------------------------------------------------------- all copies

@dataclasses.dataclass
class Copies:
    """Copies among a list of images (pairs ``i < j`` index it, :data:`PAIR_DTYPE`)."""

    identical: np.ndarray  # byte-identical files
    screened: np.ndarray   # screened pairs (identical ones left out), similarity filled in
    near: np.ndarray       # of those: verified at the cut-off, or joined through such pairs
    compared: np.ndarray   # bool per screened pair: verified on pixels at the cut-off

    def straddling(self, side: np.ndarray) -> np.ndarray:
        """Identical and near pairs whose two images lie on different sides (bool per image)."""
        pairs = np.concatenate([self.identical, self.near])
        return pairs[side[pairs["i"]] != side[pairs["j"]]]


def find_copies(paths: Sequence[str], threshold: int = DEFAULT_THRESHOLD,
                similarity: float = SIMILARITY_THRESHOLD, neighbours: int = SCREEN_NEIGHBOURS,
                workers: int | None = None, cache: dict | None = None) -> Copies:
    """Every copy among ``paths``, whatever their class or part: byte-identical files, and
    screened pairs (:func:`candidate_pairs`) that verify on pixels at ``similarity`` or are
    joined through verified pairs. The leakage audit and the split's check across the
    owner's parts (:func:`copies_of_test`) both find copies this way, so a split that sets
    aside what this finds is clean to the audit."""
    digests, hashes, prints = fingerprint_images(paths, workers=workers, cache=cache)
    identical = identical_pairs(digests)
    screened = candidate_pairs(hashes, np.stack([f.signature for f in prints])
                               if prints else np.zeros((0, 1)), threshold, neighbours)
    screened = screened[~pair_in(screened, identical)]  # identical files: counted apart
    screened = verify_candidates(screened, prints, join_at=similarity)
    compared = screened["similarity"] >= similarity
    return Copies(identical=identical, screened=screened,
                  near=screened[compared | screened["joined"]], compared=compared)


def copies_of_test(images: pd.DataFrame, threshold: int = DEFAULT_THRESHOLD,
                   similarity: float = SIMILARITY_THRESHOLD, neighbours: int = SCREEN_NEIGHBOURS,
                   workers: int | None = None, cache: dict | None = None) -> dict[str, str]:
    """The images to set aside because they are copies of a test image, with the reason.

    ``images`` has ``image``, ``path`` and ``role`` (one fold: ``train``, ``val``, ``test``).
    A training or validation image that :func:`find_copies` pairs with a test image is set
    aside; the screen then runs again on what is left (other neighbours move up when copies
    leave), until no pair crosses. The test images all stay. Returns ``{image: reason}``.
    """
    images = images.sort_values("image").reset_index(drop=True)
    names = images["image"].astype(str).to_numpy()
    paths = images["path"].astype(str).to_numpy()
    is_test = (images["role"] == "test").to_numpy()
    aside: dict[str, str] = {}
    left = np.ones(len(images), dtype=bool)
    while True:
        rows = np.flatnonzero(left)
        found = find_copies(paths[rows], threshold, similarity, neighbours, workers, cache)
        crossing = found.straddling(is_test[rows])
        if not len(crossing):
            return aside
        # most similar first, so each image's reason names its closest test copy
        order = np.argsort(-np.nan_to_num(crossing["similarity"], nan=-2.0), kind="stable")
        for pair in crossing[order]:
            a, b = rows[pair["i"]], rows[pair["j"]]
            other, test = (a, b) if is_test[b] else (b, a)
            if names[other] in aside:
                continue
            score = float(pair["similarity"])
            how = ("identical bytes" if score == 1.0 and pair["distance"] == 0 and
                   not pair["joined"] else "joined through verified copies" if score != score
                   else f"similarity {score:.3f}")
            aside[names[other]] = f"verified copy of test image {names[test]} ({how})"
            left[other] = False


def identical_pairs(digests: Sequence[str]) -> np.ndarray:
    """Pairs ``i < j`` of byte-identical files (distance 0, similarity 1)."""
    by_digest: dict[str, list[int]] = {}
    for i, digest in enumerate(digests):
        by_digest.setdefault(digest, []).append(i)
    pairs = [(a, b) for members in by_digest.values() if len(members) > 1
             for x, a in enumerate(members) for b in members[x + 1:]]
    out = np.empty(len(pairs), dtype=PAIR_DTYPE)
    if pairs:
        out["i"], out["j"] = np.array(pairs).T
        out["distance"] = 0
        out["similarity"] = 1.0
        out["luma"] = 1.0
        out["joined"] = False
    return out


def pair_in(pairs: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Bool per pair of ``pairs``: is it among ``others``?"""
    if not len(others) or not len(pairs):
        return np.zeros(len(pairs), dtype=bool)
    known = set(zip(others["i"].tolist(), others["j"].tolist(), strict=True))
    return np.array([(i, j) in known
                     for i, j in zip(pairs["i"].tolist(), pairs["j"].tolist(), strict=True)])
