"""Perceptual hashes of images and the screen that proposes candidate copies.

This module holds the 64-bit DCT pHash and its eight dihedral variants
(:func:`dihedral_hashes`), Hamming distances between them, the reading of image files (one
read and one decode per file giving its SHA-256, its hashes and, optionally, its
:class:`~leukocyte_cnn.splits.near_duplicate_screen.Fingerprint`: :func:`hash_images`,
:func:`fingerprint_images`), pairs within a hash distance (:func:`near_pairs`) and the
screen :func:`candidate_pairs` (hash pairs plus ring-signature neighbours) whose pairs
:mod:`leukocyte_cnn.splits.copies` verifies on pixels.

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

import functools
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from leukocyte_cnn.data.images import load_rgb, load_rgb_image
from leukocyte_cnn.splits.near_duplicate_screen import (
    SCREEN_NEIGHBOURS,
    WORK_SIDE,
    fingerprint_of_working_image,
    padding_mask,
    signature_neighbours,
    working_image,
)

HASH_SIDE = 8            # the hash uses the HASH_SIDE × HASH_SIDE lowest DCT frequencies: 64 bits
RESIZE_SIDE = 32         # the image is resized to this square before the DCT (pHash: 4 × 8)
DEFAULT_THRESHOLD = 10   # bits; pairs at this Hamming distance or less are near-duplicates
BLOCK_ROWS = 512         # rows per comparison block (memory: BLOCK_ROWS × n bytes per pass)
# Luma weights (ITU-R BT.601, as Pillow's "L" conversion) applied in float, without rounding.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
# The pair table the audit works on: two images (indices into the image list), their hash
# distance, their pixel similarity after alignment (NaN: not compared) and whether they were
# joined without being compared, as copies of copies (see copies.verify_candidates).
PAIR_DTYPE = [("i", np.int64), ("j", np.int64), ("distance", np.int16),
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
    small = working_image(load_rgb_image(path, reduce_to=WORK_SIDE, data=data))
    padding = padding_mask(small)
    luma = small @ _LUMA.astype(np.float32)
    fingerprint = fingerprint_of_working_image(small, padding, luma)
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


def fingerprint_images(paths: Sequence[str], workers: int | None = None,
                       cache: dict | None = None) -> tuple[list[str], np.ndarray, list]:
    """As :func:`hash_images`, plus each image's
    :class:`~leukocyte_cnn.splits.near_duplicate_screen.Fingerprint` for pixel verification
    (from the same decode).

    ``cache`` (a dict the caller keeps for one task, keyed by path) holds what was read
    before: a split that joins copies and then checks them across the owner's parts decodes
    each file once."""
    if cache is None:
        return _read_images(paths, workers, with_fingerprint=True)
    paths = [str(p) for p in paths]
    missing = list(dict.fromkeys(p for p in paths if p not in cache))
    if missing:
        digests, hashes, prints = _read_images(missing, workers, with_fingerprint=True)
        cache.update(zip(missing, zip(digests, hashes, prints, strict=True), strict=True))
    found = [cache[p] for p in paths]
    hashes = (np.stack([f[1] for f in found]) if found else np.zeros((0, 8), dtype=np.uint64))
    return [f[0] for f in found], hashes, [f[2] for f in found]


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
        pairs = np.empty(len(i), dtype=PAIR_DTYPE)
        pairs["i"], pairs["j"] = i, j
        pairs["distance"] = best[local_i[keep], local_j[keep]]
        pairs["similarity"] = np.nan
        pairs["luma"] = np.nan
        pairs["joined"] = False
        found.append(pairs)
    return np.concatenate(found) if found else np.empty(0, dtype=PAIR_DTYPE)


def pair_distances(hashes: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The dihedral hash distance (as in :func:`near_pairs`) of the given pairs."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    a, b = hashes[np.asarray(i, dtype=np.int64)], hashes[np.asarray(j, dtype=np.int64)]
    one = np.bitwise_count(a ^ b[:, :1]).min(axis=1)
    other = np.bitwise_count(a[:, :1] ^ b).min(axis=1)
    return np.minimum(one, other).astype(np.int16)


def candidate_pairs(hashes: np.ndarray, signatures: np.ndarray, threshold: int,
                    neighbours: int = SCREEN_NEIGHBOURS,
                    part: np.ndarray | None = None) -> np.ndarray:
    """The screen: pairs within ``threshold`` hash bits, plus pairs where one image is among
    the ``neighbours`` nearest of the other by the rotation-invariant ring signature (which
    catches copies turned by any angle). ``part`` restricts pairs to equal values."""
    by_hash = near_pairs(hashes, threshold)
    if part is not None and len(by_hash):
        by_hash = by_hash[part[by_hash["i"]] == part[by_hash["j"]]]
    near = signature_neighbours(signatures, neighbours, allowed=part)
    found = np.empty(len(near), dtype=PAIR_DTYPE)
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

