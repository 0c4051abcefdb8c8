"""Leakage audit of a split: does any test (or validation) image also sit, in some form, in training?

A split can be disjoint by image key and still leak: the same file saved under two names, two
images of one patient, or an augmented copy (rotated, flipped, slightly shifted) of a training
cell in the test set, which is how the Kaggle blood-cell TRAIN folder was made. This module
finds all four kinds, per fold and per pair of roles (train–val, train–test, val–test):

- ``same_image``: one image key in two roles of a fold (counted per image);
- ``same_group``: one patient/source group in two roles of a fold (counted per group);
- ``same_content``: two different keys whose files are byte-identical (SHA-256; per pair);
- ``near_duplicate``: two different files whose perceptual hashes are within a Hamming
  distance of ``threshold`` bits (per pair), after trying the eight rotations/flips.

The perceptual hash is the 64-bit DCT pHash (Zauner 2010, as in the ``imagehash`` package, here
in NumPy/SciPy so no extra dependency is needed): the image is turned to luma, resized to 32×32,
transformed with a 2-D DCT-II, and the 8×8 lowest frequencies are compared with their median.
Mirroring an image only flips the signs of its odd DCT frequencies and a transpose transposes
the coefficient block, so the hashes of all eight dihedral transforms (90° rotations × flips)
come from one decode and one DCT. The distance of two images is the smallest Hamming distance
between one image's eight hashes and the other's plain hash, in both directions: a copy
rotated by 90° or mirrored is at (near) distance 0, small shifts and re-encoding move a few
bits. Every file is decoded and hashed once (~3 ms CPU for a 320×240 JPEG); pairs are
compared in blocks with ``numpy.bitwise_count`` on ``uint64`` arrays (10,000 images: 50 M
pairs × 16 comparisons, ~3 s CPU).

Calibration (Kaggle blood-cell sample, 356 images): copies of one cell (mirrored, rotated,
shifted) lie at 6-10 bits, while the closest pair of different cells across its TRAIN/TEST
split lies at 12, hence ``DEFAULT_THRESHOLD = 10``. Copies rotated by arbitrary angles (not
multiples of 90°) can lie further apart and be missed; lower thresholds miss more, higher ones
flag look-alike cells. The threshold is the user's knob (``check_leakage.py --hash-threshold``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from .images import load_rgb

HASH_SIDE = 8            # the hash uses the HASH_SIDE × HASH_SIDE lowest DCT frequencies: 64 bits
RESIZE_SIDE = 32         # the image is resized to this square before the DCT (pHash: 4 × 8)
DEFAULT_THRESHOLD = 10   # bits; pairs at this Hamming distance or less are near-duplicates
PADDING_LEVEL = 24       # pixels darker than this in every channel may be augmentation fill
BLOCK_ROWS = 512         # rows per comparison block (memory: BLOCK_ROWS × n bytes per pass)
KINDS = ("same_image", "same_content", "same_group", "near_duplicate")
ROLE_PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))
_ROLE_CODE = {"train": 0, "val": 1, "test": 2}
# Luma weights (ITU-R BT.601, as Pillow's "L" conversion) applied in float, without rounding.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
# The pair table the audit works on: two images (indices into the image list) and a distance.
_PAIR_DTYPE = [("i", np.int64), ("j", np.int64), ("distance", np.int16)]


# ----------------------------------------------------------------------------- hashing

def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``C`` so that ``C @ x`` is the DCT of a length-``n`` signal."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(RESIZE_SIDE)[:HASH_SIDE]  # only the rows of the low frequencies are needed
_ODD = np.where(np.arange(HASH_SIDE) % 2 == 1, -1.0, 1.0)  # sign change of a mirrored signal
_BIT_WEIGHTS = (np.uint64(1) << np.arange(HASH_SIDE * HASH_SIDE, dtype=np.uint64)[::-1])


def luma_with_padding_filled(rgb: np.ndarray) -> np.ndarray:
    """Float luma of an image whose black fill from rotations/shifts is replaced by its mean.

    Augmentation tools fill the corners of a rotated or shifted image with black. Left alone,
    those wedges dominate the low frequencies, so two different cells rotated alike look like
    copies (on the Kaggle sample: unrelated cells at 4 bits) and two copies rotated
    differently look unrelated. Near-black regions touching the border are therefore set to
    the mean luma of the rest, unless they cover half the image or more (cells segmented on a
    black background, as in C-NMC, keep their background).
    """
    rgb = np.asarray(rgb)
    luma = (rgb[..., :3].astype(np.float32) @ _LUMA.astype(np.float32)
            if rgb.ndim == 3 else rgb.astype(np.float32))
    if rgb.ndim == 3:  # channel by channel: 10x faster than rgb.max(axis=2)
        dark = (rgb[..., 0] < PADDING_LEVEL) & (rgb[..., 1] < PADDING_LEVEL) & (
            rgb[..., 2] < PADDING_LEVEL)
    else:
        dark = rgb < PADDING_LEVEL
    if dark.any():
        labels, _ = ndimage.label(dark)
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        padding = np.isin(labels, edge[edge > 0])
        if 0 < padding.mean() < 0.5:
            luma[padding] = luma[~padding].mean()
    return luma


def low_frequencies(rgb: np.ndarray) -> np.ndarray:
    """The HASH_SIDE × HASH_SIDE lowest 2-D DCT-II coefficients of an image's luma at 32×32."""
    luma = luma_with_padding_filled(rgb)
    small = Image.fromarray(luma).resize((RESIZE_SIDE, RESIZE_SIDE), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float64)
    return _DCT @ pixels @ _DCT.T  # rows: vertical frequency, columns: horizontal frequency


def _bits_to_uint64(bits: np.ndarray) -> np.uint64:
    return np.uint64(np.sum(_BIT_WEIGHTS[bits.reshape(-1)], dtype=np.uint64))


def phash_from_coefficients(coefficients: np.ndarray) -> np.uint64:
    """64-bit pHash: bit set where a coefficient exceeds the block's median (row-major)."""
    return _bits_to_uint64(coefficients > np.median(coefficients))


def dihedral_hashes(rgb: np.ndarray) -> np.ndarray:
    """The pHashes of the eight rotations/flips of an image, ``uint64[8]``; index 0 is the image.

    A horizontal mirror multiplies odd horizontal frequencies by -1, a vertical mirror odd
    vertical ones, and a transpose transposes the block; together they give the dihedral group
    (transpose ∘ mirror is a 90° rotation), so no transformed image has to be resized again.
    """
    block = low_frequencies(rgb)
    hashes = []
    for base in (block, block.T):
        for vertical in (False, True):
            for horizontal in (False, True):
                signed = base * (_ODD[:, None] if vertical else 1.0) * (
                    _ODD[None, :] if horizontal else 1.0)
                hashes.append(phash_from_coefficients(signed))
    return np.array(hashes, dtype=np.uint64)


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bitwise Hamming distance of uint64 hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, dtype=np.uint64),
                                           np.asarray(b, dtype=np.uint64)))


def image_distance(hashes_a: np.ndarray, hashes_b: np.ndarray) -> int:
    """Distance of two images from their :func:`dihedral_hashes` (see :func:`near_pairs`)."""
    return int(min(hamming(hashes_a, hashes_b[0]).min(), hamming(hashes_a[0], hashes_b).min()))


def _file_digest_and_hashes(path: str) -> tuple[str, np.ndarray]:
    """SHA-256 of the file's bytes and the dihedral pHashes of its pixels (one read each)."""
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return digest, dihedral_hashes(load_rgb(path))


def hash_images(paths: Sequence[str], workers: int | None = None) -> tuple[list[str], np.ndarray]:
    """SHA-256 digests and ``uint64[n, 8]`` dihedral pHashes of ``paths``, in order.

    Decoding runs in a thread pool (Pillow releases the GIL while decoding). A file that
    cannot be decoded raises :class:`~leukocyte_cnn.errors.InputError` naming it.
    """
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    from .progress import counted

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(counted(pool.map(_file_digest_and_hashes, [str(p) for p in paths]),
                               "hashing images (SHA-256 and perceptual hash)",
                               total=len(paths)))
    digests = [digest for digest, _ in results]
    hashes = (np.stack([h for _, h in results]) if results
              else np.zeros((0, 8), dtype=np.uint64))
    return digests, hashes


def near_pairs(hashes: np.ndarray, threshold: int, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """All pairs ``i < j`` whose distance is at most ``threshold``, as a structured array.

    The distance of images A and B is ``min over t of min(|H_t(A) ^ H_0(B)|, |H_0(A) ^ H_t(B)|)``
    (popcount of the XOR), where ``H_t`` is the hash of the t-th rotation/flip: symmetric, and
    0 for a copy that is rotated by a multiple of 90° or mirrored. Rows are compared in blocks
    of ``block_rows`` against every later row, keeping the running minimum as ``uint8``.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    plain = hashes[:, 0]
    found = []
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        rows = hashes[start:stop]                   # (b, 8)
        cols = plain[start:]                        # compare with this row and every later one
        best = np.full((stop - start, n - start), 255, dtype=np.uint8)
        for t in range(hashes.shape[1]):
            np.minimum(best, np.bitwise_count(rows[:, t, None] ^ cols[None, :]), out=best)
            np.minimum(best, np.bitwise_count(plain[start:stop, None] ^ hashes[start:, t][None, :]),
                       out=best)
        local_i, local_j = np.nonzero(best <= threshold)
        keep = local_j > local_i                    # upper triangle: j after i
        i = local_i[keep] + start
        j = local_j[keep] + start
        pairs = np.empty(len(i), dtype=_PAIR_DTYPE)
        pairs["i"], pairs["j"] = i, j
        pairs["distance"] = best[local_i[keep], local_j[keep]]
        found.append(pairs)
    return np.concatenate(found) if found else np.empty(0, dtype=_PAIR_DTYPE)


def near_duplicate_groups(table: pd.DataFrame, threshold: int = DEFAULT_THRESHOLD,
                          within: str | None = "source_split", max_class_share: float = 0.5,
                          workers: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Join images that are copies of one another (identical bytes or near-duplicate pixels)
    into one ``group``, so that a split drawn by group keeps the copies together.

    For datasets that ship augmented copies of each source cell without saying which file
    came from which cell (Kaggle blood cells): validation carved from TRAIN by group then
    holds no copy of a training cell. Copies are only joined inside one value of ``within``
    (the owner's TRAIN/TEST), so the owner's own split is never questioned here;
    ``check_leakage.py`` audits it. Transitive: A~B and B~C put A, B, C in one group, named
    ``<within value>:<first image key>``. Only images of one class are joined (copies of a
    cell share its label). A chain that would swallow more than ``max_class_share`` of its
    class in that part is not a set of copies but look-alike images linked pair by pair (on
    plain synthetic pictures, or with too high a threshold): it is left ungrouped and
    counted as ``groups_dissolved``. Images with no copy keep their group. Returns the new
    table and ``{"threshold", "images_joined", "groups_joined", "groups_dissolved",
    "seconds"}``.
    """
    start = time.perf_counter()
    out = table.copy()
    if not len(out):
        return out, {"threshold": threshold, "images_joined": 0, "groups_joined": 0,
                     "groups_dissolved": 0, "seconds": 0.0}
    digests, hashes = hash_images(out["path"].tolist(), workers=workers)
    parent = np.arange(len(out))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    part = out[within].astype(str).to_numpy() if within in out else np.full(len(out), "")
    labels = out["label"].to_numpy()
    for value in np.unique(part):
        rows = np.flatnonzero(part == value)
        by_digest: dict[tuple, int] = {}
        for r in rows:  # byte-identical files are copies whatever their pixels hash to
            first = by_digest.setdefault((labels[r], digests[r]), r)
            if first != r:
                parent[root(r)] = root(first)
        pairs = near_pairs(hashes[rows], threshold)
        for i, j in zip(rows[pairs["i"]], rows[pairs["j"]]):
            if labels[i] != labels[j]:
                continue
            a, b = root(int(i)), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots = np.array([root(i) for i in range(len(out))])
    sizes = np.bincount(roots, minlength=len(out))
    class_size = pd.Series(labels).groupby([part, labels]).transform("size").to_numpy()
    too_big = sizes[roots] > np.maximum(2, max_class_share * class_size)
    dissolved = len(set(roots[too_big]))
    joined = (sizes[roots] > 1) & ~too_big
    keys = out["image"].astype(str).to_numpy()
    groups = out["group"].astype(str).to_numpy().copy()
    groups[joined] = [f"{part[r]}:{keys[r]}" for r in roots[joined]]
    out["group"] = groups
    stats = {"threshold": int(threshold), "images_joined": int(joined.sum()),
             "groups_joined": int(len(set(roots[joined]))), "groups_dissolved": int(dissolved),
             "seconds": round(time.perf_counter() - start, 1)}
    return out, stats


# ----------------------------------------------------------------------------- the audit

@dataclasses.dataclass
class LeakageReport:
    """The audit's result: one row per (fold, role pair, kind) plus what was compared."""

    table: pd.DataFrame          # fold, roles, kind, count, example
    n_images: int                # distinct images hashed
    threshold: int
    seconds: float
    duplicates_within_data: dict  # identical / near-duplicate pairs among all images

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
          workers: int | None = None) -> LeakageReport:
    """Find every overlap between the roles of each fold of a split table.

    ``split`` is the long split table with an absolute ``path`` column (``load_split(...).table``);
    excluded rows are ignored. Each file is read once; byte-identical files and near-duplicate
    pairs are found once over all images and then looked up per fold.
    """
    start = time.perf_counter()
    if threshold < 0 or threshold > 64:
        raise ValueError(f"threshold must be 0..64 bits, not {threshold}")
    rows = split[split["role"].isin(list(_ROLE_CODE))].copy()
    rows["image"] = rows["image"].astype(str)
    rows["group"] = rows["group"].astype(str)
    images = rows.drop_duplicates("image").sort_values("image").reset_index(drop=True)
    index = {key: i for i, key in enumerate(images["image"])}
    digests, hashes = hash_images(images["path"].tolist(), workers=workers)

    same_content = _identical_pairs(digests)
    near = near_pairs(hashes, threshold)
    near = near[~_pair_in(near, same_content)]  # identical files are reported as same_content
    names = images["image"].to_numpy()

    records = []
    for fold, fold_rows in rows.groupby("fold", sort=True):
        role = np.full(len(images), -1, dtype=np.int8)
        role[[index[k] for k in fold_rows["image"]]] = fold_rows["role"].map(_ROLE_CODE).to_numpy()
        records += _key_overlaps(int(fold), fold_rows, "image", "same_image")
        records += _key_overlaps(int(fold), fold_rows, "group", "same_group")
        records += _pair_overlaps(int(fold), role, same_content, names, "same_content")
        records += _pair_overlaps(int(fold), role, near, names, "near_duplicate")
    table = pd.DataFrame(records, columns=["fold", "roles", "kind", "count", "example"])
    within = {"identical_pairs": int(len(same_content)), "near_duplicate_pairs": int(len(near))}
    return LeakageReport(table=table, n_images=len(images), threshold=int(threshold),
                         seconds=time.perf_counter() - start, duplicates_within_data=within)


def _identical_pairs(digests: Sequence[str]) -> np.ndarray:
    """Pairs ``i < j`` of byte-identical files (distance 0)."""
    by_digest: dict[str, list[int]] = {}
    for i, digest in enumerate(digests):
        by_digest.setdefault(digest, []).append(i)
    pairs = [(a, b) for members in by_digest.values() if len(members) > 1
             for x, a in enumerate(members) for b in members[x + 1:]]
    out = np.empty(len(pairs), dtype=_PAIR_DTYPE)
    if pairs:
        out["i"], out["j"] = np.array(pairs).T
        out["distance"] = 0
    return out


def _pair_in(pairs: np.ndarray, others: np.ndarray) -> np.ndarray:
    if not len(others) or not len(pairs):
        return np.zeros(len(pairs), dtype=bool)
    known = set(zip(others["i"].tolist(), others["j"].tolist()))
    return np.array([(i, j) in known for i, j in zip(pairs["i"].tolist(), pairs["j"].tolist())])


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
            # closest pair first, then by name: a stable example across runs
            order = np.lexsort((names[chosen["j"]], names[chosen["i"]], chosen["distance"]))
            best = chosen[order[0]]
            a, b = names[best["i"]], names[best["j"]]
            if role[best["i"]] != _ROLE_CODE[first]:
                a, b = b, a
            example = f"{a} ~ {b}" + (f" (distance {int(best['distance'])})"
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
                                   rows.sort_values("rank")["example"]))
                for key, rows in found.groupby(["fold", "roles"])}
    wide["examples"] = [examples.get((f, r), "") for f, r in zip(wide["fold"], wide["roles"])]
    if only_leaks:
        wide = wide[wide[list(KINDS)].sum(axis=1) > 0].reset_index(drop=True)
    return wide
