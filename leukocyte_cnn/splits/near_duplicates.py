"""Copies of one cell on pixels: a rotation-invariant screen and a pixel-level verification.

Augmented datasets (the Kaggle blood-cell TRAIN folder above all) hold copies of one source
cell rotated by arbitrary angles (black corners), shifted, sheared, flipped, with their
brightness changed and re-encoded. A 64-bit perceptual hash cannot tell those copies from
look-alike cells (on the full Kaggle set both lie at 6-10 bits), so copies are found in two
stages:

1. **Screen** (cheap, loose): a pair is a candidate when its dihedral pHashes are within the
   hash threshold (:mod:`leukocyte_cnn.splits.leakage`), or when one image is among the
   ``SCREEN_NEIGHBOURS`` nearest of the other by a rotation- and flip-invariant signature:
   the image's luma sampled on rings around its nucleus (the centroid of the darkest blob),
   summarised by the magnitudes of the low angular Fourier harmonics of each ring. Turning
   an image about that point only shifts each ring's samples, which leaves those magnitudes
   unchanged; a mirror reverses them, which does too.
2. **Verify** (on pixels): the rotation between the two images is read from the circular
   cross-correlation of their ring samples (both mirror senses, many pairs in one FFT); B is
   turned by it about its nucleus onto A's (or, where that matches poorly, shifted by an
   FFT cross-correlation) and the alignment is refined as an affine map with a gain and bias
   (the Kaggle copies are sheared too) by Gauss-Newton steps (inverse-compositional
   Lucas-Kanade) on the blurred luma at half of 64 pixels on the short side. A copy's luma
   NCC climbs towards 1 with each step, two different cells' stays low, so a pair stops at
   the first step whose NCC falls short of a gate rising from REJECT_BELOW to HALF_GATE.
   Rotation fill is left out: near-black regions touching the border are masked in both
   images. The similarity is the normalised cross-correlation (NCC) of the aligned pixels
   over the part both images show at 64 pixels (refined there too when the half-resolution
   map falls short); a pair is a copy when it reaches ``SIMILARITY_THRESHOLD``.

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
from PIL import Image
import scipy.fft
from scipy import ndimage
from scipy.linalg import lapack

WORK_SIDE = 64             # pixels on the short side of the image that is verified
PADDING_LEVEL = 24         # pixels darker than this in every channel may be augmentation fill
RINGS = 16                 # rings of the polar signature
ANGLES = 64                # samples per ring (5.6° apart; the rotation is refined after)
RING_REACH = 0.42          # outermost ring, as a share of the short side
HARMONICS = 6              # angular harmonics 1..HARMONICS per ring in the signature
NUCLEUS_SHARE = 15         # percent of darkest (green) pixels that locate the nucleus
NUCLEUS_REACH = 0.2        # radius (share of the short side) of the dark-pixel centroid
NUCLEUS_STEPS = 3          # mean-shift steps from the darkest peak to the nucleus centroid
RADIAL_BLUR = 1.0          # rings: the signature's harmonics are blurred across rings by this
SCREEN_NEIGHBOURS = 4      # each image's nearest images by signature are candidates
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
PAD = 2                    # zero border of the sampled arrays (no bounds checks per point)

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MIRROR = (ANGLES // 2 - np.arange(ANGLES)) % ANGLES  # ring sample order of the mirrored image


# ----------------------------------------------------------------------------- per image

def padding_mask(rgb: np.ndarray) -> np.ndarray:
    """Near-black regions touching the border: the fill of rotations and shifts.

    Left out only when they cover less than half the image (cells segmented on a black
    background, as in C-NMC, keep their background).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim == 3:  # channel by channel: 10x faster than rgb.max(axis=2)
        dark = (rgb[..., 0] < PADDING_LEVEL) & (rgb[..., 1] < PADDING_LEVEL) & (
            rgb[..., 2] < PADDING_LEVEL)
    else:
        dark = rgb < PADDING_LEVEL
    if not (dark[0].any() or dark[-1].any() or dark[:, 0].any() or dark[:, -1].any()):
        return np.zeros_like(dark)  # nothing dark touches the border
    labels, count = ndimage.label(dark)
    touching = np.zeros(count + 1, dtype=bool)
    touching[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    touching[0] = False
    padding = touching[labels]
    return padding if padding.mean() < 0.5 else np.zeros_like(padding)


@dataclasses.dataclass
class Fingerprint:
    """What verification needs of one image, at WORK_SIDE pixels on its short side."""

    luma: np.ndarray       # float16 (h, w): blurred luma, zero mean and unit sd over `valid`
    valid: np.ndarray      # bool (h, w): pixels of the picture (not rotation fill)
    centre: tuple          # (row, col) of the nucleus: the origin of the rings
    rings: np.ndarray      # float32 (RINGS, ANGLES): luma sampled on rings around `centre`
    signature: np.ndarray  # float32: rotation/flip-invariant summary of `rings`, unit length


def working_image(rgb: "np.ndarray | Image.Image") -> np.ndarray:
    """The RGB image (an array, or a Pillow RGB image) box-averaged to WORK_SIDE pixels on
    its short side (float32)."""
    if isinstance(rgb, Image.Image):
        image = rgb
        w, h = image.size
    else:
        h, w = rgb.shape[:2]
        image = Image.fromarray(np.ascontiguousarray(rgb))
    scale = WORK_SIDE / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if image.size != size:
        image = image.resize(size, Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32)


def fingerprint(rgb: np.ndarray) -> Fingerprint:
    """The verification data of one decoded image (``uint8`` H×W×3 or H×W)."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    small = working_image(rgb[..., :3])
    return fingerprint_of_working_image(small, padding_mask(small))


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """``ndimage.gaussian_filter(image, sigma)`` (float32; edges mirrored, as its default
    "reflect" mode) as two matrix products, ``rows @ image @ columns.T``: at 64 px these cost
    a quarter of ``ndimage.correlate1d``'s passes at sigma 3 and half at sigma 1, and
    ``image`` may hold a stack of images (..., h, w)."""
    sigma = float(sigma)
    return _blur_matrix(image.shape[-2], sigma) @ image @ _blur_matrix(image.shape[-1], sigma).T


@functools.lru_cache(maxsize=64)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """The (n, n) float32 matrix of ``ndimage.correlate1d(x, kernel)`` along one axis: the
    filter applied to each unit vector."""
    return ndimage.correlate1d(np.eye(n), _gaussian_kernel(sigma), axis=0).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _gaussian_kernel(sigma: float) -> np.ndarray:
    offsets = np.arange(-int(4.0 * sigma + 0.5), int(4.0 * sigma + 0.5) + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def _blur_within(image: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution: a blur of the picture that never mixes in rotation fill."""
    if valid.all():
        return _blur(image, sigma)
    weight = valid.astype(np.float32)
    picture, weights = _blur(np.stack([image * weight, weight]), sigma)  # one product each side
    return picture / np.maximum(weights, 1e-3)


def _erode(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_erosion(mask, border_value=1)`` (4-neighbour cross), by slicing."""
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def fingerprint_of_working_image(small: np.ndarray, padding: np.ndarray,
                                 luma: np.ndarray | None = None) -> Fingerprint:
    """:func:`fingerprint` from :func:`working_image` and its :func:`padding_mask` (callers
    that hash the same small image compute them once; ``luma``: ``small @ _LUMA``, if they
    have it too)."""
    valid = ~padding
    if valid.sum() < 16:
        valid[:] = True
    luma = _blur_within(small @ _LUMA if luma is None else luma, valid, 1.0)
    valid = _erode(valid)
    if valid.sum() < 16:
        valid[:] = True
    values = luma[valid]
    luma = np.where(valid, (luma - values.mean()) / (values.std() + 1e-6), 0.0).astype(np.float32)
    centre = _nucleus_centre(small[..., 1], valid)
    rings = _rings(luma, centre)
    return Fingerprint(luma=luma.astype(np.float16), valid=valid, centre=centre, rings=rings,
                       signature=_signature(rings))


def _nucleus_centre(green: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """The centre of the darkest blob (the nucleus) in green light.

    The peak of the blurred share of dark pixels finds the nucleus (a peak, not a mean, stays
    on it when platelets or a cut neighbour are dark too); the centre is then the centroid of
    the dark pixels within NUCLEUS_REACH of it, moved there a few times (mean shift). A lobed
    nucleus (monocytes, band cells) has several peaks, and which lobe wins changes with the
    turn; the centroid of the whole nucleus does not (planted copies: the centre lands within
    1.2 px of its true place at 64 px, against up to 11 px at the peak).
    """
    values = green[valid]
    ranks = [int(0.01 * (len(values) - 1)), int(NUCLEUS_SHARE / 100 * (len(values) - 1))]
    low, high = np.partition(values, ranks)[ranks].tolist()
    weight = np.maximum(np.minimum((high - green) / max(high - low, 1e-3), 1.0), 0.0) * valid
    # the peak at half resolution (2x2 blocks summed; the mean shift refines it)
    h, w = weight.shape[0] // 2 * 2, weight.shape[1] // 2 * 2
    coarse = (weight[0:h:2, 0:w:2] + weight[1:h:2, 0:w:2] + weight[0:h:2, 1:w:2]
              + weight[1:h:2, 1:w:2])
    y, x = divmod(int(np.argmax(_blur(coarse, WORK_SIDE / 42))), coarse.shape[1])
    y, x = 2 * y + 0.5, 2 * x + 0.5
    h, w = weight.shape
    radius = NUCLEUS_REACH * min(h, w)
    cy, cx = float(y), float(x)
    count = _count(max(h, w))
    for _ in range(NUCLEUS_STEPS):
        top, left = max(0, int(cy - radius)), max(0, int(cx - radius))
        window = weight[top:int(cy + radius) + 2, left:int(cx + radius) + 2]
        rows = count[top:top + window.shape[0]]
        cols = count[left:left + window.shape[1]]
        window = window * (((rows - cy) ** 2)[:, None] + ((cols - cx) ** 2)[None, :]
                           <= radius ** 2)
        by_row = window.sum(axis=1)
        total = float(by_row.sum())
        if total <= 0:
            break
        cy = float(by_row @ rows) / total
        cx = float(window.sum(axis=0) @ cols) / total
    return cy, cx


@functools.lru_cache(maxsize=16)
def _count(n: int) -> np.ndarray:
    """0, 1, ..., n - 1 as float32 (pixel indices)."""
    return np.arange(n, dtype=np.float32)


_RADII = np.linspace(1.5, RING_REACH * WORK_SIDE, RINGS)[:, None]
_PHI = np.arange(ANGLES)[None, :] * 2 * np.pi / ANGLES


_CIRCLES = np.stack([(_RADII * np.sin(_PHI)).ravel(),
                     (_RADII * np.cos(_PHI)).ravel()]).astype(np.float32)


def _rings(luma: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """``luma`` sampled (bilinear, 0 outside) on RINGS circles of ANGLES points."""
    points = _CIRCLES + np.array([[centre[0] + PAD], [centre[1] + PAD]], dtype=np.float32)
    return _sample(_padded(luma, 0.0), points).reshape(RINGS, ANGLES)


def _signature(rings: np.ndarray) -> np.ndarray:
    """Magnitudes of the angular harmonics 1..HARMONICS of each ring (rings blurred across
    radii by RADIAL_BLUR, so a zoom that moves structure by a ring changes little), unit
    length. The rings' means are left out: they move with brightness and contrast and with
    the luma normalisation over the part of the picture a shifted copy keeps, and with them
    in, the ring-signature neighbours missed 16 of 360 planted copy pairs (0 without)."""
    # the radial blur (edges: nearest ring) and the harmonics' DFT are linear: two products
    parts = _RADIAL_BLUR @ rings @ _HARMONIC_BASIS  # (RINGS, 2 HARMONICS): cosines, sines
    vector = np.hypot(parts[:, :HARMONICS], parts[:, HARMONICS:]).ravel()
    return (vector / (np.linalg.norm(vector) + 1e-9)).astype(np.float32)


# ``ndimage.correlate1d(rings, kernel, axis=0, mode="nearest")`` as a matrix, and the real and
# imaginary parts of ``np.fft.rfft(rings, axis=1)[:, 1:HARMONICS + 1]`` (up to sign) as one
_RADIAL_BLUR = ndimage.correlate1d(np.eye(RINGS), _gaussian_kernel(RADIAL_BLUR), axis=0,
                                   mode="nearest")
_HARMONIC_BASIS = np.concatenate([np.cos(2 * np.pi * np.arange(ANGLES)[:, None]
                                         * np.arange(1, HARMONICS + 1)[None, :] / ANGLES),
                                  np.sin(2 * np.pi * np.arange(ANGLES)[:, None]
                                         * np.arange(1, HARMONICS + 1)[None, :] / ANGLES)], axis=1)


# ----------------------------------------------------------------------------- screen

def signature_neighbours(signatures: np.ndarray, k: int = SCREEN_NEIGHBOURS,
                         allowed: np.ndarray | None = None,
                         block_rows: int = 1024) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, where one image is among the ``k`` nearest of the other.

    ``allowed`` (one value per image, optional) restricts pairs to images with equal values
    (e.g. one owner split). Distances in blocks of rows: memory ``block_rows × n`` floats.
    """
    signatures = np.asarray(signatures, dtype=np.float32)
    n = len(signatures)
    if n < 2 or k <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    norms = (signatures ** 2).sum(axis=1)
    found = []
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        dist = norms[start:stop, None] + norms[None, :] - 2 * signatures[start:stop] @ signatures.T
        dist[np.arange(stop - start), np.arange(start, stop)] = np.inf
        if allowed is not None:
            dist[allowed[start:stop, None] != allowed[None, :]] = np.inf
        kk = min(k, n - 1)
        nearest = np.argpartition(dist, kk - 1, axis=1)[:, :kk]
        rows = np.repeat(np.arange(start, stop), kk)
        cols = nearest.ravel()
        keep = np.isfinite(dist[rows - start, cols])
        found.append(np.stack([rows[keep], cols[keep]], axis=1))
    pairs = np.concatenate(found)
    pairs = np.sort(pairs, axis=1)
    return np.unique(pairs, axis=0)


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
            self.detail = _Bilinear(_padded(np.where(valid, detail, np.nan), np.nan))
            self.details = detail[valid]

    @functools.cached_property
    def stack(self) -> "_Bilinear":
        return _Bilinear(_padded(np.where(self.valid, self.luma, np.nan), np.nan))

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
    return ((luma - _blur_within(luma, valid, DETAIL_SIGMA)) * valid).astype(np.float32)


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


def _sample(stack: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``stack`` (h, w) at ``points`` (2, n: rows, columns).

    ``stack`` is a :func:`_padded` one: points beyond its border are moved onto it. Where B
    has no picture its pixels are NaN, so a sample that touches one is NaN: one array says
    both what B shows and where. A hand-written gather: ``ndimage.map_coordinates`` costs
    more at this size, and every numpy call counts here.
    """
    h, w = stack.shape
    frac, whole = np.modf(np.maximum(np.minimum(points, _limit(h, w)), 0.0))
    index = (whole[0] * w + whole[1]).astype(np.intp)
    corners = np.take(stack, index + np.array([[0], [1], [w], [w + 1]]))  # (4, n)
    top = corners[0] + (corners[1] - corners[0]) * frac[1]
    bottom = corners[2] + (corners[3] - corners[2]) * frac[1]
    return top + (bottom - top) * frac[0]


class _Bilinear:
    """A :func:`_padded` image ready for many :func:`_sample` calls: each cell's bilinear
    coefficients (value, step along the row, step down, twist), so a sample gathers one
    column of 4 instead of 4 corners. Same values as :func:`_sample` up to rounding, NaN
    where any corner is NaN."""

    def __init__(self, stack: np.ndarray):
        h, w = stack.shape
        top_left, top_right = stack[:-1, :-1], stack[:-1, 1:]
        bottom_left, bottom_right = stack[1:, :-1], stack[1:, 1:]
        coefficients = np.full((4, h, w), np.nan, dtype=np.float32)
        coefficients[0, :-1, :-1] = top_left
        np.subtract(top_right, top_left, out=coefficients[1, :-1, :-1])
        np.subtract(bottom_left, top_left, out=coefficients[2, :-1, :-1])
        coefficients[3, :-1, :-1] = bottom_right - bottom_left - coefficients[1, :-1, :-1]
        self.coefficients = coefficients.reshape(4, h * w)
        self.strides, self.limit = np.array([w, 1], dtype=np.float32), _limit(h, w)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Bilinear samples at ``points`` (2, n: rows, columns; float32), as :func:`_sample`.
        ``points`` is overwritten (callers pass a fresh product); the arithmetic runs in
        place, in the order of ``value + right * x + (down + twist * x) * y``."""
        where = np.maximum(np.minimum(points, self.limit, out=points), 0.0, out=points)
        whole = np.floor(where)
        frac = np.subtract(where, whole, out=where)  # float32 throughout, as the points
        index = (self.strides @ whole).astype(np.intp)  # row * width + column (exact)
        value, right, down, twist = np.take(self.coefficients, index, axis=1)
        right *= frac[1]
        right += value
        twist *= frac[1]
        twist += down
        twist *= frac[0]
        right += twist
        return right


def _gradient(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.gradient(image)`` (central differences, one-sided at the edges), without its
    overhead."""
    gy, gx = np.empty_like(image), np.empty_like(image)
    gy[1:-1] = (image[2:] - image[:-2]) / 2.0
    gy[0], gy[-1] = image[1] - image[0], image[-1] - image[-2]
    gx[:, 1:-1] = (image[:, 2:] - image[:, :-2]) / 2.0
    gx[:, 0], gx[:, -1] = image[:, 1] - image[:, 0], image[:, -1] - image[:, -2]
    return gy, gx


@functools.lru_cache(maxsize=16)
def _limit(h: int, w: int) -> np.ndarray:
    return np.array([[h - 1.001], [w - 1.001]], dtype=np.float32)


def _padded(image: np.ndarray, fill: float) -> np.ndarray:
    """``image`` (float32) with a border of PAD pixels of ``fill`` (see :func:`_sample`)."""
    h, w = image.shape
    out = np.full((h + 2 * PAD, w + 2 * PAD), fill, dtype=np.float32)
    out[PAD:PAD + h, PAD:PAD + w] = image
    return out


def _warp_points(stack, matrix, translation, points):
    """``stack`` (a :class:`_Bilinear`) sampled at ``matrix @ (p - c) + translation`` for the points
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


def verify(fa: Fingerprint, fb: Fingerprint, cache: "WorkingCache | None" = None,
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
                 joined: "UnionFind | None" = None) -> np.ndarray:
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


# ----------------------------------------------------------------------------- contact sheet

SHEET_THUMB = (160, 120)  # (width, height) of each image in a panel
SHEET_COLUMNS = 3         # panels (pairs) per row
SHEET_MAX_PAIRS = 60      # pairs drawn at most (the most similar of each role pair first)


def contact_sheet(pairs, path, max_pairs: int = SHEET_MAX_PAIRS, title: str = "") -> int:
    """Draw flagged pairs side by side, grouped by role pair, the most similar first.

    ``pairs``: a DataFrame with ``roles``, ``image_a``, ``image_b``, ``path_a``, ``path_b``,
    ``distance`` and ``similarity`` (as :attr:`leakage.LeakageReport.copies`). Under each
    pair: both image names, the hash distance in bits and the pixel similarity (or "joined
    via copies" where it is NaN: joined through verified copies, not compared). At most
    ``max_pairs`` panels, shared out over the role pairs in order. Writes a PNG at ``path``
    and returns the number of panels drawn.
    """
    from PIL import ImageDraw

    from leukocyte_cnn.data.images import load_rgb
    from leukocyte_cnn.base.io import atomic_path

    tw, th = SHEET_THUMB
    pad, text_h, head_h = 6, 30, 22
    chars = tw // 6  # the default font is ~6 px a character
    panel_w = 2 * tw + 3 * pad
    width = SHEET_COLUMNS * panel_w + pad
    order = {"train-test": 0, "train-val": 1, "val-test": 2}
    groups = sorted(((str(roles), rows.sort_values(["similarity", "distance"],
                                                   ascending=[False, True]))
                     for roles, rows in (pairs.groupby("roles", sort=False) if len(pairs)
                                         else [])),
                    key=lambda item: order.get(item[0], 3))
    # an even share of the cap for each role pair; what one leaves unused goes to the others
    quota = [min(len(rows), max_pairs // max(1, len(groups))) for _, rows in groups]
    for k, (_, rows) in enumerate(groups):
        extra = min(len(rows) - quota[k], max(0, max_pairs - sum(quota)))
        quota[k] += extra
    sections = [(roles, len(rows), rows.head(n)) for (roles, rows), n in zip(groups, quota)]
    height = head_h + pad
    for _, _, shown in sections:
        height += head_h + -(-len(shown) // SHEET_COLUMNS) * (th + text_h + pad)
    sheet = Image.new("RGB", (width, max(height, 2 * head_h)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, pad), title or f"{len(pairs)} flagged pair(s)", fill="black")
    y = head_h + pad
    drawn = 0
    for roles, total, shown in sections:
        draw.text((pad, y + 4), f"{roles}: {total} pair(s), {len(shown)} shown, most similar "
                                "first", fill="black")
        y += head_h
        for k, row in enumerate(shown.itertuples()):
            x0 = pad + (k % SHEET_COLUMNS) * panel_w
            y0 = y + (k // SHEET_COLUMNS) * (th + text_h + pad)
            for n, image_path in enumerate((row.path_a, row.path_b)):
                thumb = Image.fromarray(load_rgb(image_path))
                thumb.thumbnail((tw, th))
                sheet.paste(thumb, (x0 + n * (tw + pad), y0))
            for n, name in enumerate((str(row.image_a), str(row.image_b))):
                draw.text((x0 + n * (tw + pad), y0 + th + 2), name[-chars:], fill="black")
            similarity = float(row.similarity)
            draw.text((x0, y0 + th + 15), f"distance {int(row.distance)} bits, " + (
                f"similarity {similarity:.3f}" if similarity == similarity
                else "joined via copies"), fill="black")
            drawn += 1
        y += -(-len(shown) // SHEET_COLUMNS) * (th + text_h + pad)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return drawn
