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
import functools
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import pandas as pd

from leukocyte_cnn.splits import near_duplicates as nd
from leukocyte_cnn.data.images import load_rgb, load_rgb_image
from leukocyte_cnn.splits.near_duplicates import PADDING_LEVEL, padding_mask  # noqa: F401 (re-exported)

HASH_SIDE = 8            # the hash uses the HASH_SIDE × HASH_SIDE lowest DCT frequencies: 64 bits
RESIZE_SIDE = 32         # the image is resized to this square before the DCT (pHash: 4 × 8)
DEFAULT_THRESHOLD = 10   # bits; pairs at this Hamming distance or less are near-duplicates
BLOCK_ROWS = 512         # rows per comparison block (memory: BLOCK_ROWS × n bytes per pass)
# Version of the copy grouping (screen, verification and their constants here and in
# near_duplicates.py), part of every split's fingerprint: bump it whenever a change can join
# other images, so split files made by the older logic are made again, never reused.
# 1: pHash only; 2: screened pairs verified on pixels, weak links broken; 3: cut-off 0.9,
# cheaper gates, 4 signature neighbours; 4: nucleus centre by mean shift, signature without
# ring means, JPEGs decoded at reduced scale, rising gates along the refinement.
NEAR_DUPLICATE_VERSION = 4
FALSE_POSITIVE_WARNING = 0.01  # warn when the estimated share of false copies exceeds this
KINDS = ("same_image", "same_content", "same_group", "near_duplicate")
ROLE_PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))
_ROLE_CODE = {"train": 0, "val": 1, "test": 2}
_ROLE_NAME = {code: name for name, code in _ROLE_CODE.items()}
# Luma weights (ITU-R BT.601, as Pillow's "L" conversion) applied in float, without rounding.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
# The pair table the audit works on: two images (indices into the image list), their hash
# distance, their pixel similarity after alignment (NaN: not compared) and whether they were
# joined without being compared, as copies of copies (see verify_candidates).
_PAIR_DTYPE = [("i", np.int64), ("j", np.int64), ("distance", np.int16),
               ("similarity", np.float32), ("luma", np.float32), ("joined", np.bool_)]


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
# Signs of the block's coefficients under no mirror, a horizontal, a vertical and both.
_MIRROR_SIGNS = np.stack([np.outer(_ODD if vertical else np.ones(HASH_SIDE),
                                   _ODD if horizontal else np.ones(HASH_SIDE))
                          for vertical in (False, True) for horizontal in (False, True)])
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
    padding = padding_mask(rgb)
    if padding.any():
        luma[padding] = luma[~padding].mean()
    return luma


def low_frequencies(rgb: np.ndarray) -> np.ndarray:
    """The HASH_SIDE × HASH_SIDE lowest 2-D DCT-II coefficients of an image's luma at 32×32."""
    return _low_frequencies_of_luma(luma_with_padding_filled(rgb))


def _low_frequencies_of_luma(luma: np.ndarray) -> np.ndarray:
    # the box resize to RESIZE_SIDE² and the DCT as one matrix per axis: two small products
    rows, cols = _resize_dct(luma.shape[0]), _resize_dct(luma.shape[1])
    return rows @ luma.astype(np.float64) @ cols.T  # rows: vertical, columns: horizontal


@functools.lru_cache(maxsize=32)
def _resize_dct(n: int) -> np.ndarray:
    """``_DCT @ B`` where ``B`` (RESIZE_SIDE × n) is Pillow's BOX resize along one axis: output
    pixel j averages the input pixels whose centres lie in its box (as ``Image.resize``)."""
    scale = n / RESIZE_SIDE
    support = max(scale, 1.0)  # Pillow widens the box to one input pixel when enlarging
    box = np.zeros((RESIZE_SIDE, n))
    for j in range(RESIZE_SIDE):
        centre = (j + 0.5) * scale
        low = max(int(centre - support / 2 + 0.5), 0)
        high = min(int(centre + support / 2 + 0.5), n)
        offset = (np.arange(low, high) - centre + 0.5) / support
        weights = (offset > -0.5) & (offset <= 0.5)  # Pillow's box filter
        box[j, low:high] = weights / max(weights.sum(), 1)
    return _DCT @ box


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
    return _dihedral_hashes_of_luma(luma_with_padding_filled(rgb))


def _dihedral_hashes_of_luma(luma: np.ndarray) -> np.ndarray:
    block = _low_frequencies_of_luma(luma)
    signed = (np.stack([block, block.T])[:, None] * _MIRROR_SIGNS).reshape(8, -1)
    # each row's median (as phash_from_coefficients), by partition: np.median costs 5x more
    middle = HASH_SIDE * HASH_SIDE // 2
    median = np.partition(signed, [middle - 1, middle], axis=1)[:, middle - 1:middle + 1]
    bits = signed > median.mean(axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bitwise Hamming distance of uint64 hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, dtype=np.uint64),
                                           np.asarray(b, dtype=np.uint64)))


def image_distance(hashes_a: np.ndarray, hashes_b: np.ndarray) -> int:
    """Distance of two images from their :func:`dihedral_hashes` (see :func:`near_pairs`)."""
    return int(min(hamming(hashes_a, hashes_b[0]).min(), hamming(hashes_a[0], hashes_b).min()))


def _read_image(path: str, with_fingerprint: bool) -> tuple:
    """SHA-256 of the file's bytes, the dihedral pHashes of its pixels and (optionally) the
    fingerprint that pixel verification needs: one read and one decode."""
    with open(path, "rb") as handle:
        data = handle.read()
    digest = hashlib.sha256(data).hexdigest()
    if not with_fingerprint:
        return digest, dihedral_hashes(load_rgb(path, data=data)), None
    # One small image (WORK_SIDE px on the short side) serves both the hash and the
    # fingerprint: box-resizing it to 32x32 gives (nearly) the full image's pHash. A JPEG is
    # decoded straight at a reduced scale (DCT scaling) that keeps WORK_SIDE pixels, from the
    # bytes just hashed, and resized as a Pillow image (no array round trip).
    small = nd.working_image(load_rgb_image(path, reduce_to=nd.WORK_SIDE, data=data))
    padding = padding_mask(small)
    luma = small @ _LUMA.astype(np.float32)
    fingerprint = nd.fingerprint_of_working_image(small, padding, luma)
    if padding.any():
        luma[padding] = luma[~padding].mean()
    return digest, _dihedral_hashes_of_luma(luma), fingerprint


def _read_images(paths: Sequence[str], workers: int | None, with_fingerprint: bool):
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    from leukocyte_cnn.base.progress import counted

    paths = [str(p) for p in paths]
    if workers <= 1:  # in this thread: no hand-over per image
        results = list(counted((_read_image(p, with_fingerprint) for p in paths),
                               "hashing images for near-duplicates", total=len(paths)))
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # a line every 10 s
            results = list(counted(pool.map(lambda p: _read_image(p, with_fingerprint), paths),
                                   "hashing images for near-duplicates", total=len(paths)))
    digests = [r[0] for r in results]
    hashes = (np.stack([r[1] for r in results]) if results
              else np.zeros((0, 8), dtype=np.uint64))
    return digests, hashes, [r[2] for r in results]


def hash_images(paths: Sequence[str], workers: int | None = None) -> tuple[list[str], np.ndarray]:
    """SHA-256 digests and ``uint64[n, 8]`` dihedral pHashes of ``paths``, in order.

    Decoding runs in a thread pool (Pillow releases the GIL while decoding). A file that
    cannot be decoded raises :class:`~leukocyte_cnn.base.errors.InputError` naming it.
    """
    digests, hashes, _ = _read_images(paths, workers, with_fingerprint=False)
    return digests, hashes


def fingerprint_images(paths: Sequence[str], workers: int | None = None
                       ) -> tuple[list[str], np.ndarray, list]:
    """As :func:`hash_images`, plus each image's :class:`~leukocyte_cnn.splits.near_duplicates.
    Fingerprint` for pixel verification (from the same decode)."""
    return _read_images(paths, workers, with_fingerprint=True)


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
        pairs["similarity"] = np.nan
        pairs["luma"] = np.nan
        pairs["joined"] = False
        found.append(pairs)
    return np.concatenate(found) if found else np.empty(0, dtype=_PAIR_DTYPE)


def pair_distances(hashes: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The dihedral hash distance (as in :func:`near_pairs`) of the given pairs."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    a, b = hashes[np.asarray(i, dtype=np.int64)], hashes[np.asarray(j, dtype=np.int64)]
    one = np.bitwise_count(a ^ b[:, :1]).min(axis=1)
    other = np.bitwise_count(a[:, :1] ^ b).min(axis=1)
    return np.minimum(one, other).astype(np.int16)


def candidate_pairs(hashes: np.ndarray, signatures: np.ndarray, threshold: int,
                    neighbours: int = nd.SCREEN_NEIGHBOURS,
                    part: np.ndarray | None = None) -> np.ndarray:
    """The screen: pairs within ``threshold`` hash bits, plus pairs where one image is among
    the ``neighbours`` nearest of the other by the rotation-invariant ring signature (which
    catches copies turned by any angle). ``part`` restricts pairs to equal values."""
    by_hash = near_pairs(hashes, threshold)
    if part is not None and len(by_hash):
        by_hash = by_hash[part[by_hash["i"]] == part[by_hash["j"]]]
    near = nd.signature_neighbours(signatures, neighbours, allowed=part)
    found = np.empty(len(near), dtype=_PAIR_DTYPE)
    found["i"], found["j"] = near[:, 0], near[:, 1]
    found["distance"] = pair_distances(hashes, near[:, 0], near[:, 1])
    found["similarity"] = np.nan
    found["luma"] = np.nan
    found["joined"] = False
    pairs = np.concatenate([by_hash, found])
    if not len(pairs):
        return pairs
    _, first = np.unique(pairs["i"] * (len(hashes) + 1) + pairs["j"], return_index=True)
    return pairs[np.sort(first)]


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
    scores = nd.verify_pairs(fingerprints, np.stack([pairs["i"][order], pairs["j"][order]],
                                                    axis=1), skip=skip, join_at=join_at)
    pairs["similarity"][order], pairs["luma"][order] = scores[:, 0], scores[:, 1]
    pairs["joined"][order] = scores[:, 2] > 0
    return pairs


def near_duplicate_groups(table: pd.DataFrame, threshold: int = DEFAULT_THRESHOLD,
                          within: str | None = "source_split", max_class_share: float = 0.5,
                          workers: int | None = None,
                          similarity: float = nd.SIMILARITY_THRESHOLD,
                          neighbours: int = nd.SCREEN_NEIGHBOURS) -> tuple[pd.DataFrame, dict]:
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
    reaches ``similarity`` (:func:`leukocyte_cnn.splits.near_duplicates.verify`); a pair whose two
    images are already joined through verified pairs is not verified again. Groups are then
    built from the verified links, strongest first, and a link that would make a group hold
    more than ``max_class_share`` of its class in that part is not made: a chain of
    look-alike images is broken at its weakest links instead of swallowing the class (or
    being dissolved whole). Groups are named ``<within value>:<first image key>``.

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

    joined = nd.UnionFind(len(out))
    for _, i, j in links:
        joined.union(i, j)
    # Closest hashes first: the likeliest copies are linked before look-alikes can chain; a
    # pair already joined through verified links (one cell's copies) is not compared.
    order = np.lexsort((pairs["j"], pairs["i"], pairs["distance"]))
    ordered = np.stack([pairs["i"][order], pairs["j"][order]], axis=1)
    scores = nd.verify_pairs(prints, ordered, join_at=similarity, joined=joined)
    stats["pairs_verified"] = int((scores[:, 2] == 0).sum())
    copy = scores[:, 0] >= similarity
    links += [(float(score), i, j) for score, (i, j) in zip(scores[copy, 0].tolist(),
                                                            ordered[copy].tolist())]

    # Strongest links first; a link that would overfill a group is broken.
    class_size = pd.Series(labels).groupby([part, labels]).transform("size").to_numpy()
    cap = np.maximum(2, max_class_share * class_size)
    groups = nd.UnionFind(len(out))
    for score, i, j in sorted(links, key=lambda link: -link[0]):
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
          workers: int | None = None, similarity: float = nd.SIMILARITY_THRESHOLD,
          neighbours: int = nd.SCREEN_NEIGHBOURS) -> LeakageReport:
    """Find every overlap between the roles of each fold of a split table.

    ``split`` is the long split table with an absolute ``path`` column (``load_split(...).table``);
    excluded rows are ignored. Each file is read once; byte-identical files and near-duplicate
    pairs are found once over all images and then looked up per fold. A near-duplicate is a
    screened pair (:func:`candidate_pairs`) whose pixels match at ``similarity`` or more after
    alignment, or whose two images are already joined through such pairs (copies of one cell
    are copies of each other: ``joined`` in :attr:`LeakageReport.copies`, similarity NaN,
    not compared again); pairs of two classes among those compared estimate the
    false-positive rate (:func:`leukocyte_cnn.splits.near_duplicates.false_positive_estimate`).
    """
    start = time.perf_counter()
    if threshold < 0 or threshold > 64:
        raise ValueError(f"threshold must be 0..64 bits, not {threshold}")
    rows = split[split["role"].isin(list(_ROLE_CODE))].copy()
    rows["image"] = rows["image"].astype(str)
    rows["group"] = rows["group"].astype(str)
    images = rows.drop_duplicates("image").sort_values("image").reset_index(drop=True)
    index = {key: i for i, key in enumerate(images["image"])}
    digests, hashes, prints = fingerprint_images(images["path"].tolist(), workers=workers)

    same_content = _identical_pairs(digests)
    screened = candidate_pairs(hashes, np.stack([f.signature for f in prints])
                               if prints else np.zeros((0, 1)), threshold, neighbours)
    screened = screened[~_pair_in(screened, same_content)]  # identical files: same_content
    screened = verify_candidates(screened, prints, join_at=similarity)
    compared = screened["similarity"] >= similarity
    near = screened[compared | screened["joined"]]
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
                   **nd.false_positive_estimate(classes[verified["i"]], classes[verified["j"]],
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
        out["similarity"] = 1.0
        out["luma"] = 1.0
        out["joined"] = False
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
                                   rows.sort_values("rank")["example"]))
                for key, rows in found.groupby(["fold", "roles"])}
    wide["examples"] = [examples.get((f, r), "") for f, r in zip(wide["fold"], wide["roles"])]
    if only_leaks:
        wide = wide[wide[list(KINDS)].sum(axis=1) > 0].reset_index(drop=True)
    return wide
