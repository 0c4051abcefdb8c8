"""Near-duplicate verification: whether a screened pair is a copy, on aligned pixels.

This module holds the second stage of the copy detector: the alignment of image B onto image
A from their :class:`~leukocyte_cnn.splits.near_duplicate_screen.Fingerprint` s
(:func:`ring_senses`, shift search, affine refinement), :func:`verify` and its
:class:`Verification`, :func:`verify_pairs` over many pairs with a :class:`WorkingCache`,
the :class:`UnionFind` that joins verified copies, and :func:`false_positive_estimate`, the
calibration from pairs that cross classes.

The rotation between the two images is read from the circular cross-correlation of their
ring samples (both mirror senses, many pairs in one FFT); B is turned by it about its nucleus
onto A's (or, where that matches poorly, shifted by an FFT cross-correlation) and the
alignment is refined as an affine map with a gain and bias (the Kaggle copies are sheared
too) by Gauss-Newton steps (inverse-compositional Lucas-Kanade) on the blurred luma at half
of 64 pixels on the short side. A copy's luma NCC climbs towards 1 with each step, two
different cells' stays low, so a pair stops at the first step whose NCC falls short of a gate
rising from REJECT_BELOW to HALF_GATE. Rotation fill is left out: near-black regions touching
the border are masked in both images. The similarity is the normalised cross-correlation
(NCC) of the aligned pixels over the part both images show at 64 pixels (refined there too
when the half-resolution map falls short); a pair is a copy when it reaches
``SIMILARITY_THRESHOLD``.

The similarity is the NCC of the aligned *detail* (luma minus its blur at DETAIL_SIGMA):
after an affine fit the smooth luma of two different cells often correlates at 0.9 or more,
their fine structure does not.

Calibration (version 4; real data, ../shared/data, each image's 4 signature neighbours plus
pHash pairs within 10 bits): on the Kaggle sample (356 images, ~980 screened pairs) the only
verified pairs across classes are copies of one field of view filed three times as
LYMPHOCYTE and five times as MONOCYTE (0.92 when compared: a label conflict, the red cells
coincide); copies seen by eye lie at 0.6-0.999, nearly all above 0.9. Sets of round cells
that fill a small frame are harder: in Zheng 2018 (120 px) different small lymphocytes reach
0.85-0.92 (three pairs above 0.9, all with Dataset 1/062.bmp, against two in version 3)
while one copy (167/169, slightly zoomed) reaches only 0.88 (0.93 in version 3), hence
SIMILARITY_THRESHOLD = 0.9; its only cross-class pair is one cell shipped under two labels
(060/090, 0.99). BCCD crops: 12 pairs, all copies by eye (0.92-0.99); PBC: none.
benchmarks/bench_near_duplicates.py measures precision and recall on planted copies, and
check_leakage.py reports the false-positive rate estimated from pairs that cross classes
(copies share their label).
"""
from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict

import numpy as np
import scipy.fft
from scipy.linalg import lapack

from leukocyte_cnn.splits.near_duplicate_screen import ANGLES, Fingerprint
from leukocyte_cnn.splits.pixel_ops import PAD, Bilinear, blur_within, padded

SIMILARITY_THRESHOLD = 0.9  # detail NCC after alignment at or above which a pair is a copy
RING_GATE = 0.75           # ring-sample NCC below which a pair is no copy (no pixel work)
SENSE_MARGIN = 0.05        # the other mirror sense is tried when its rings match this nearly
REJECT_BELOW = 0.55        # luma NCC (half resolution) of the turned pair: below, no copy
HALF_GATE = 0.85           # luma NCC after the half-resolution refinement: below, no copy
MIN_OVERLAP = 0.3          # share of the image both members must show to be compared
MAX_SHIFT = 0.3            # largest shift searched, as a share of the short side
MAX_DISTORTION = 0.3       # the refined map may scale/shear each axis by at most this much
DETAIL_SIGMA = 3.0         # pixels: detail = luma minus its blur at this scale
LK_STEPS = (4, 2)          # Gauss-Newton steps at half and at full working resolution
# (real Kaggle copies need all 4 at half resolution: their NCC after 0-4 steps is at least
# 0.60, 0.72, 0.80, 0.86, 0.93, above the rising gates 0.55, 0.625, 0.70, 0.775, 0.85)


# ----------------------------------------------------------------------------- verification

class _Level:
    """One resolution of an image: as template A (its valid pixels, and the Jacobian of the
    alignment at them) and as the image B sampled (``stack``: luma, ``detail``: detail, each
    padded and NaN where there is no picture)."""

    def __init__(self, luma: np.ndarray, valid: np.ndarray, centre: np.ndarray,
                 with_detail: bool):
        self.luma, self.valid, self.centre = luma, valid, centre
        rows, cols = np.nonzero(valid)  # row-major, as luma[valid]
        # valid pixels minus the centre, homogeneous: an affine map is one matrix product
        self.points = np.stack([rows - centre[0], cols - centre[1],
                                np.ones(len(rows))]).astype(np.float32)
        self.values = luma[valid]
        if with_detail:
            detail = _detail(luma, valid)
            self.detail = Bilinear(padded(np.where(valid, detail, np.nan), np.nan))
            self.details = detail[valid]

    @functools.cached_property
    def stack(self) -> Bilinear:
        return Bilinear(padded(np.where(self.valid, self.luma, np.nan), np.nan))

    @functools.cached_property
    def jacobian(self) -> np.ndarray:
        """(n, 9) at the valid pixels: d luma / d (affine map about the centre), luma, 1, and
        a column that :func:`_refine` fills with B's samples (one product then gives the
        normal equations and every sum of the NCC)."""
        gy, gx = _gradient(self.luma)
        gy, gx = gy[self.valid], gx[self.valid]
        y, x = self.points[0], self.points[1]
        return np.stack([gy * y, gy * x, gx * y, gx * x, gy, gx, self.values,
                         np.ones_like(self.values), np.zeros_like(self.values)],
                        axis=1).astype(np.float32)


def _detail(luma: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Band-pass luma: the image minus its blur at DETAIL_SIGMA (normalised convolution over
    the picture). Smooth shapes of different cells can be bent onto each other; their fine
    structure cannot, so the similarity is measured on this."""
    return ((luma - blur_within(luma, valid, DETAIL_SIGMA)) * valid).astype(np.float32)


class _Working:
    """Float arrays of one fingerprint that pairs reuse (cached), made when first needed:
    the ring spectra for every pair, the half-resolution level for pairs whose rings match,
    the full-resolution level only for pairs that pass the half-resolution fit."""

    def __init__(self, f: Fingerprint):
        self.fingerprint = f

    @functools.cached_property
    def half(self) -> _Level:
        """Each 2×2 block averaged (pixel p here is pixel 2 p + 0.5 at full resolution)."""
        luma, valid = self.fingerprint.luma, self.fingerprint.valid
        h, w = luma.shape[0] // 2 * 2, luma.shape[1] // 2 * 2
        luma = luma[:h, :w].astype(np.float32)
        half_luma = (luma[0::2, 0::2] + luma[1::2, 0::2] + luma[0::2, 1::2]
                     + luma[1::2, 1::2]) * 0.25
        half_valid = (valid[0:h:2, 0:w:2] & valid[1:h:2, 0:w:2] & valid[0:h:2, 1:w:2]
                      & valid[1:h:2, 1:w:2])
        if half_valid.sum() < 4:
            half_valid[:] = True
        centre = (np.asarray(self.fingerprint.centre, dtype=float) + 0.5) / 2 - 0.5
        return _Level(half_luma, half_valid, centre, with_detail=False)

    @functools.cached_property
    def full(self) -> _Level:
        f = self.fingerprint
        return _Level(f.luma.astype(np.float32), f.valid, np.asarray(f.centre, dtype=float),
                      with_detail=True)

    @functools.cached_property
    def template(self) -> np.ndarray:
        """The half-resolution luma's FFT, padded for shifts up to MAX_SHIFT."""
        return scipy.fft.rfft2(self.half.luma, _shift_size(self.half.luma.shape))


def _shift_size(shape) -> tuple[int, int]:
    """FFT size for shifts up to MAX_SHIFT without wrap-around (a size the FFT likes)."""
    return (scipy.fft.next_fast_len(int(shape[0] * (1 + MAX_SHIFT)) + 1, real=True),
            scipy.fft.next_fast_len(int(shape[1] * (1 + MAX_SHIFT)) + 1, real=True))


@functools.lru_cache(maxsize=16)
def _grid(shape: tuple[int, int]) -> np.ndarray:
    """Every pixel of an image of this shape, homogeneous (3, h w: row, column, 1)."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return np.stack([rows.ravel(), cols.ravel(), np.ones(rows.size)]).astype(np.float32)


@dataclasses.dataclass
class Verification:
    """How well image B, mapped onto image A, matches it."""

    similarity: float  # NCC of the aligned detail (band-pass) pixels (-1: nothing compared)
    luma: float        # NCC of the aligned (blurred) luma at half resolution
    mirrored: bool
    angle: float       # degrees, B onto A
    matrix: np.ndarray  # A pixel p -> B pixel matrix @ (p - centre_a) + translation
    translation: np.ndarray


def _rotation(mirrored: bool, theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    matrix = np.array([[c, -s], [s, c]])
    return np.array([[1.0, 0.0], [0.0, -1.0]]) @ matrix if mirrored else matrix


def _ncc(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return float(np.dot(x, y) / den) if den > 0 else -1.0


def _gradient(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.gradient(image)`` (central differences, one-sided at the edges), without its
    overhead."""
    gy, gx = np.empty_like(image), np.empty_like(image)
    gy[1:-1] = (image[2:] - image[:-2]) / 2.0
    gy[0], gy[-1] = image[1] - image[0], image[-1] - image[-2]
    gx[:, 1:-1] = (image[:, 2:] - image[:, :-2]) / 2.0
    gx[:, 0], gx[:, -1] = image[:, 1] - image[:, 0], image[:, -1] - image[:, -2]
    return gy, gx



def _warp_points(stack, matrix, translation, points):
    """``stack`` (a :class:`Bilinear`) sampled at ``matrix @ (p - c) + translation`` for the points
    ``points`` (3, n: p - c, homogeneous)."""
    affine = np.empty((2, 3), dtype=np.float32)
    affine[:, :2] = matrix
    affine[:, 2] = translation + PAD
    return stack(affine @ points)


def ring_senses(fingerprints, pairs: np.ndarray, block: int = 4096) -> np.ndarray:
    """For each pair ``(i, j)`` and B as it is and mirrored: the NCC of A's rings with B's at
    the best turn, that turn (radians) and the mirror flag, best sense first; shape
    (n, 2, 3). Many pairs at once (in blocks), each image's ring spectrum computed once."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = np.empty((len(pairs), 2, 3))
    for start in range(0, len(pairs), block):
        part = pairs[start:start + block]
        used, index = np.unique(part, return_inverse=True)
        rings = np.stack([fingerprints[k].rings for k in used.tolist()])
        out[start:start + len(part)] = _senses(rings, *index.reshape(-1, 2).T)
    return out


# The mirrored rings' spectrum (sample k -> ANGLES/2 - k) is the conjugate times (-1)^m.
_MIRROR_SIGN = (-1.0) ** np.arange(ANGLES // 2 + 1)


def _senses(rings: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`ring_senses` of pairs ``(a[k], b[k])`` of the stacked rings (n, RINGS, ANGLES)."""
    rings = rings - rings.mean(axis=(1, 2), keepdims=True)
    spectra = scipy.fft.rfft(rings, axis=2)
    norms = np.sqrt((rings ** 2).sum(axis=(1, 2)))
    cross = np.stack([np.einsum("prh,prh->ph", spectra[a], np.conj(spectra[b])),
                      np.einsum("prh,prh->ph", spectra[a], spectra[b]) * _MIRROR_SIGN], axis=1)
    corr = scipy.fft.irfft(cross, n=ANGLES, axis=2)  # (pairs, 2 senses, turns)
    peak = corr.argmax(axis=2)
    left, mid, right = (np.take_along_axis(corr, ((peak + k) % ANGLES)[..., None], axis=2)[..., 0]
                        for k in (-1, 0, 1))
    curve = left - 2 * mid + right
    step = np.where(curve < 0, 0.5 * (left - right) / np.where(curve < 0, curve, -1.0), 0.0)
    found = np.stack([mid / (norms[a] * norms[b] + 1e-9)[:, None],
                      (peak + step) * 2 * np.pi / ANGLES,
                      np.broadcast_to(np.array([0.0, 1.0]), peak.shape)], axis=2)
    flip = found[:, 1, 0] > found[:, 0, 0]  # best sense first
    found[flip] = found[flip, ::-1]
    return found


def _shift(a: _Working, b: _Working, matrix: np.ndarray) -> np.ndarray:
    """The translation (at half resolution) that best lays B, turned by ``matrix`` about its
    nucleus, onto A: the peak of their FFT cross-correlation within MAX_SHIFT. (The nuclei
    alone may disagree by a few pixels, more where a cell is cut by the border; the
    refinement that follows only finds the nearest optimum.)"""
    h, w = a.half.luma.shape
    size = _shift_size((h, w))
    reach = int(MAX_SHIFT * min(h, w))
    cb = b.half.centre
    # every pixel p of A (not centred: the centre goes into the translation)
    picture = np.nan_to_num(_warp_points(b.half.stack, matrix, cb - matrix @ a.half.centre,
                                         _grid((h, w))))  # 0 where B has no picture
    cross = scipy.fft.irfft2(a.template * np.conj(scipy.fft.rfft2(picture.reshape(h, w), size)),
                             size)
    cross[reach + 1:size[0] - reach] = -np.inf
    cross[:, reach + 1:size[1] - reach] = -np.inf
    dy, dx = divmod(int(np.argmax(cross)), size[1])
    dy = dy - size[0] if dy > size[0] // 2 else dy
    dx = dx - size[1] if dx > size[1] // 2 else dx
    # a[p + d] matches the turned B at p: A's pixel p lands at matrix @ (p - d - c) + cb
    return cb - matrix @ np.array([dy, dx], dtype=float)


def _score(a: _Level, b: _Level, matrix, translation, detail: bool = False) -> float:
    """NCC of A's valid pixels and B's mapped ones (luma, or detail), over the pixels both
    show."""
    warped = _warp_points(b.detail if detail else b.stack, matrix, translation, a.points)
    both = warped == warped  # not NaN: B shows its picture there
    if np.count_nonzero(both) < MIN_OVERLAP * a.luma.size:
        return -1.0
    return _ncc((a.details if detail else a.values)[both], warped[both])


_RIDGE = 1e-6 * np.eye(8)


def _refine(a: _Level, b: _Level, matrix, translation, updates: int, gated: bool = False):
    """Gauss-Newton on an affine map and a gain/bias (inverse-compositional Lucas-Kanade):
    fit B(M (p - c) + t) = g A(p + D p + d) + b over the overlap, then fold the small map
    (D, d) into (M, t) inverted. A's Jacobian is fixed, so a step samples only B's luma.

    Returns the map after ``updates`` steps (fewer once they become tiny), the NCC of A's
    and B's luma under it over the overlap (from the sums each step computes anyway; -1
    where they overlap too little) and the number of steps made. ``gated``: stop as soon as
    the NCC falls short of the gate for its step, which rises from REJECT_BELOW before the
    first step to HALF_GATE after the last (a copy's NCC climbs towards 1 as the map
    improves; two different cells' stays low).
    """
    columns = a.jacobian  # the last column takes B's samples
    (m00, m01), (m10, m11) = matrix.tolist()
    t0, t1 = translation.tolist()
    done = 0
    while True:
        affine = np.array([[m00, m01, t0 + PAD], [m10, m11, t1 + PAD]], dtype=np.float32)
        warped = b.stack(affine @ a.points)
        both = warped == warped  # not NaN: B shows its picture there
        count = np.count_nonzero(both)
        if count < MIN_OVERLAP * a.luma.size:
            ncc = -1.0
            break
        columns[:, 8] = warped
        # (np.compress: 3x faster than boolean indexing of rows)
        inside = columns if count == len(warped) else np.compress(both, columns, axis=0)
        sums = (inside.T @ inside).astype(float)  # normal equations, and the NCC's sums
        sum_a, sum_aa, sum_b, sum_ab, sum_bb = (sums[6, 7], sums[6, 6], sums[7, 8], sums[6, 8],
                                                sums[8, 8])
        var_a, var_b = sum_aa - sum_a ** 2 / count, sum_bb - sum_b ** 2 / count
        ncc = ((sum_ab - sum_a * sum_b / count) / (var_a * var_b) ** 0.5
               if var_a > 0 and var_b > 0 else -1.0)
        gate = REJECT_BELOW + (HALF_GATE - REJECT_BELOW) * done / max(updates, 1)
        if done == updates or (gated and ncc < gate):
            break
        _, beta, info = lapack.dposv(sums[:8, :8] + _RIDGE, sums[:8, 8])
        if info != 0 or beta[6] < 0.2:
            break  # singular, or B's luma does not follow A's: nothing to align
        # the columns of A's gradient were fitted as gain times (D, d); (I + D)^-1 by hand
        d00, d01, d10, d11, dy, dx = (beta[:6] / beta[6]).tolist()
        det = (1.0 + d00) * (1.0 + d11) - d01 * d10
        if abs(det) < 1e-3:
            break
        i00, i01, i10, i11 = (1.0 + d11) / det, -d01 / det, -d10 / det, (1.0 + d00) / det
        m00, m01, m10, m11 = (m00 * i00 + m01 * i10, m00 * i01 + m01 * i11,
                              m10 * i00 + m11 * i10, m10 * i01 + m11 * i11)
        t0, t1 = t0 - (m00 * dy + m01 * dx), t1 - (m10 * dy + m11 * dx)
        done += 1
        if max(abs(dy), abs(dx)) < 0.02 and max(abs(d00), abs(d01), abs(d10), abs(d11)) < 1e-3:
            updates = done  # converged: measure this map and stop
    return np.array([[m00, m01], [m10, m11]]), np.array([t0, t1]), float(ncc), done


def _plausible(matrix: np.ndarray) -> bool:
    """A copy's map is a rotation/mirror up to a modest scale and shear: both singular
    values within MAX_DISTORTION of 1 (from s1² + s2² and s1 s2, without an SVD)."""
    (m00, m01), (m10, m11) = matrix.tolist()
    total = m00 * m00 + m01 * m01 + m10 * m10 + m11 * m11
    product = abs(m00 * m11 - m01 * m10)
    root = max(total * total / 4 - product * product, 0.0) ** 0.5
    low, high = max(total / 2 - root, 0.0) ** 0.5, (total / 2 + root) ** 0.5
    return 1 - MAX_DISTORTION < low and high < 1 + MAX_DISTORTION


def verify(fa: Fingerprint, fb: Fingerprint, cache: WorkingCache | None = None,
           senses: np.ndarray | None = None) -> Verification:
    """Align B onto A (mirror, rotation, shift, then affine refinement) and compare pixels.

    ``senses``: the pair's row of :func:`ring_senses` (computed here when not given).
    Gates keep the cost of clear non-copies low: rings that match poorly in both mirror
    senses (``RING_GATE``), a turned pair far from a match (``REJECT_BELOW``, after a shift
    search) and a luma NCC that falls behind the gates rising to ``HALF_GATE`` along the
    half-resolution refinement end the comparison early with similarity -1 (``luma`` then
    holds the best luma NCC reached, if any). A pair whose detail already matches at
    SIMILARITY_THRESHOLD with the half-resolution map is a copy without the
    full-resolution refinement (which could only raise its similarity).
    """
    a = cache.get(fa) if cache is not None else _Working(fa)
    b = cache.get(fb) if cache is not None else _Working(fb)
    best = Verification(-1.0, -1.0, False, 0.0, np.eye(2), np.zeros(2))
    if senses is None:
        senses = _senses(np.stack([fa.rings, fb.rings]), np.array([0]), np.array([1]))[0]
    senses = [(float(ring), float(theta), bool(mirrored)) for ring, theta, mirrored in senses]
    for sense, (ring, theta, mirrored) in enumerate(senses):
        if ring < max(RING_GATE, senses[0][0] - SENSE_MARGIN):
            break  # rings too unlike, or much less alike than in the other mirror sense
        # B turned by the rings' angle about its nucleus onto A's nucleus, then refined
        turn = _rotation(mirrored, theta)
        matrix, translation, luma, steps = _refine(a.half, b.half, turn, b.half.centre.copy(),
                                                   LK_STEPS[0], gated=True)
        if steps == 0 and luma < REJECT_BELOW and sense == 0:
            # the nuclei laid on each other do not match (one may be cut by the border):
            # search the shift, and start again from there if it is elsewhere (in the
            # mirror sense the rings prefer: the search costs as much as the first steps)
            shifted = _shift(a, b, turn)
            if np.abs(shifted - b.half.centre).max() > 1.5:
                matrix, translation, luma, steps = _refine(a.half, b.half, turn, shifted,
                                                           LK_STEPS[0], gated=True)
        if luma < HALF_GATE:
            best.luma = max(best.luma, float(luma))
            if steps == 0:
                continue  # this mirror sense is far off from the start: try the other
            break  # no copy: the detail is not compared
        if not _plausible(matrix):
            continue  # bent too far to be a copy: the other sense may fit
        translation = (translation + 0.5) * 2 - 0.5  # half-resolution map to full resolution
        similarity = _score(a.full, b.full, matrix, translation, detail=True)
        if similarity < SIMILARITY_THRESHOLD:
            fine, shift, _, _ = _refine(a.full, b.full, matrix, translation, LK_STEPS[1])
            if _plausible(fine):
                refined = _score(a.full, b.full, fine, shift, detail=True)
                if refined > similarity:
                    similarity, matrix, translation = refined, fine, shift
        if similarity > best.similarity:
            angle = float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))
            best = Verification(float(similarity), float(luma), mirrored, angle, matrix,
                                translation)
        if similarity >= SIMILARITY_THRESHOLD:
            break  # a copy; otherwise the other sense, if its rings match nearly as well
    return best


class WorkingCache:
    """The float arrays of recently verified images (pairs come sorted by first image)."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict[int, _Working] = OrderedDict()

    def get(self, f: Fingerprint) -> _Working:
        key = id(f)
        item = self._items.get(key)
        if item is None:
            item = _Working(f)
            self._items[key] = item
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return item


def verify_pairs(fingerprints, pairs: np.ndarray, skip=None, join_at: float | None = None,
                 joined: UnionFind | None = None) -> np.ndarray:
    """Similarity, luma NCC and a joined flag of each pair ``(i, j)``, shape (n, 3) (NaN where
    ``skip(i, j)`` said not to look). ``join_at``: pairs whose images are already joined
    through pairs verified at this similarity or more, in the order given, are not compared
    (similarity NaN, joined flag 1); ``joined`` (optional) holds links known beforehand
    (identical files) and receives the verified ones."""
    cache = WorkingCache()
    out = np.full((len(pairs), 3), np.nan, dtype=np.float32)
    out[:, 2] = 0.0
    senses = ring_senses(fingerprints, pairs)
    if join_at is not None and joined is None:
        joined = UnionFind(len(fingerprints))
    for k, (i, j) in enumerate(np.asarray(pairs).tolist()):
        if skip is not None and skip(i, j):
            continue
        if join_at is not None and joined.find(i) == joined.find(j):
            out[k, 2] = 1.0
            continue
        result = verify(fingerprints[i], fingerprints[j], cache, senses[k])
        out[k, :2] = result.similarity, result.luma
        if join_at is not None and result.similarity >= join_at:
            joined.union(i, j)
    return out


class UnionFind:
    """Disjoint sets with sizes (path halving, union by index)."""

    def __init__(self, n: int):
        self.parent = np.arange(n)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            a, b = min(a, b), max(a, b)
            self.parent[b] = a
            self.size[a] += self.size[b]


# ----------------------------------------------------------------------------- calibration

def false_positive_estimate(labels_i, labels_j, class_shares: dict) -> dict:
    """The share of verified pairs that are not copies, estimated from those that cross
    classes.

    Copies share their label, so a verified pair of two classes is a false positive. False
    positives that join random images cross classes with probability ``1 - sum(p_c^2)``
    (``p_c``: class shares), so the cross-class pairs are scaled up by its inverse to
    estimate all false positives, then divided by the verified pairs.
    """
    labels_i, labels_j = np.asarray(labels_i), np.asarray(labels_j)
    verified = len(labels_i)
    cross = int((labels_i != labels_j).sum())
    shares = np.asarray(list(class_shares.values()), dtype=float)
    shares = shares / shares.sum() if shares.sum() else shares
    crossing = 1.0 - float((shares ** 2).sum()) if len(shares) else 0.0
    if not verified:
        rate = 0.0
    elif crossing <= 0:
        rate = float("nan")  # one class: pairs cannot cross, nothing to estimate from
    else:
        rate = min(1.0, cross / crossing / verified)
    return {"verified_pairs": verified, "cross_class_pairs": cross,
            "false_positive_rate": rate}


