"""Copies of one cell on pixels: a rotation-invariant screen and a pixel-level verification.

Augmented datasets (the Kaggle blood-cell TRAIN folder above all) hold copies of one source
cell rotated by arbitrary angles (black corners), shifted, sheared, flipped, with their
brightness changed and re-encoded. A 64-bit perceptual hash cannot tell those copies from
look-alike cells (on the full Kaggle set both lie at 6-10 bits), so copies are found in two
stages:

1. **Screen** (cheap, loose): a pair is a candidate when its dihedral pHashes are within the
   hash threshold (:mod:`leukocyte_cnn.leakage`), or when one image is among the
   ``SCREEN_NEIGHBOURS`` nearest of the other by a rotation- and flip-invariant signature:
   the image's luma sampled on rings around its darkest blob (the nucleus), summarised by the
   ring means and the magnitudes of the low angular Fourier harmonics of each ring. Turning
   an image about that point only shifts each ring's samples, which leaves those magnitudes
   unchanged; a mirror reverses them, which does too.
2. **Verify** (on pixels): the rotation between the two images is read from the circular
   cross-correlation of their ring samples (both mirror senses), the shift from an FFT
   cross-correlation of the turned image, and the alignment is then refined as an affine map
   (the Kaggle copies are sheared too) by Gauss-Newton steps (Lucas-Kanade) on the blurred
   luma at 64 pixels on the short side. Rotation fill is left out: near-black regions
   touching the border are masked in both images. The similarity is the normalised
   cross-correlation (NCC) of the aligned pixels over the part both images show; a pair is a
   copy when it reaches ``SIMILARITY_THRESHOLD``.

The similarity is the NCC of the aligned *detail* (luma minus its blur at DETAIL_SIGMA):
after an affine fit the smooth luma of two different cells often correlates at 0.9 or more,
their fine structure does not.

Calibration (real data, ../shared/data, each image's 4 signature neighbours plus pHash pairs
within 10 bits): on the Kaggle sample (356 images, ~1,000 screened pairs) the pairs across
classes, which cannot be copies, reach at most 0.60, while copies seen by eye lie at 0.6-0.999,
nearly all above 0.9. Sets of round cells that fill a small frame are harder: in Zheng 2018
(120 px) different small lymphocytes reach 0.86-0.93, hence SIMILARITY_THRESHOLD = 0.9, which
still lets two such pairs through there. benchmarks/bench_near_duplicates.py measures
precision and recall on planted copies, and check_leakage.py reports the false-positive rate
estimated from pairs that cross classes (copies share their label).
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np
from PIL import Image
from scipy import ndimage

WORK_SIDE = 64             # pixels on the short side of the image that is verified
PADDING_LEVEL = 24         # pixels darker than this in every channel may be augmentation fill
RINGS = 16                 # rings of the polar signature
ANGLES = 64                # samples per ring (5.6° apart; the rotation is refined after)
RING_REACH = 0.42          # outermost ring, as a share of the short side
HARMONICS = 6              # angular harmonics 1..HARMONICS per ring in the signature
NUCLEUS_SHARE = 15         # percent of darkest (green) pixels that locate the nucleus
SCREEN_NEIGHBOURS = 4      # each image's nearest images by signature are candidates
SIMILARITY_THRESHOLD = 0.9  # detail NCC after alignment at or above which a pair is a copy
RING_GATE = 0.75           # ring-sample NCC below which a pair is no copy (no pixel work)
SENSE_MARGIN = 0.05        # the other mirror sense is tried when its rings match this nearly
REJECT_BELOW = 0.55        # rigid-alignment NCC below which no affine refinement is tried
HALF_GATE = 0.85           # luma NCC after the half-resolution refinement below which we stop
MIN_OVERLAP = 0.3          # share of the image both members must show to be compared
MAX_SHIFT = 0.3            # largest shift searched, as a share of the short side
MAX_DISTORTION = 0.3       # the refined map may scale/shear each axis by at most this much
DETAIL_SIGMA = 3.0         # pixels: detail = luma minus its blur at this scale
LK_STEPS = (4, 2)          # Gauss-Newton steps at half and at full working resolution

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
    if not dark.any():
        return dark
    labels, _ = ndimage.label(dark)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    padding = np.isin(labels, edge[edge > 0])
    return padding if padding.mean() < 0.5 else np.zeros_like(padding)


@dataclasses.dataclass
class Fingerprint:
    """What verification needs of one image, at WORK_SIDE pixels on its short side."""

    luma: np.ndarray       # float16 (h, w): blurred luma, zero mean and unit sd over `valid`
    valid: np.ndarray      # bool (h, w): pixels of the picture (not rotation fill)
    centre: tuple          # (row, col) of the nucleus: the origin of the rings
    rings: np.ndarray      # float32 (RINGS, ANGLES): luma sampled on rings around `centre`
    signature: np.ndarray  # float32: rotation/flip-invariant summary of `rings`, unit length


def working_image(rgb: np.ndarray) -> np.ndarray:
    """The RGB image box-averaged to WORK_SIDE pixels on its short side (float32)."""
    h, w = rgb.shape[:2]
    scale = WORK_SIDE / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = Image.fromarray(np.ascontiguousarray(rgb))
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


def fingerprint_of_working_image(small: np.ndarray, padding: np.ndarray) -> Fingerprint:
    """:func:`fingerprint` from :func:`working_image` and its :func:`padding_mask` (callers
    that hash the same small image compute them once)."""
    valid = ~padding
    if valid.sum() < 16:
        valid[:] = True
    luma = small @ _LUMA
    # Normalised convolution: the blur never mixes fill into the picture's edge pixels.
    weight = valid.astype(np.float32)
    luma = ndimage.gaussian_filter(luma * weight, 1.0) / np.maximum(
        ndimage.gaussian_filter(weight, 1.0), 1e-3)
    valid = ndimage.binary_erosion(valid, iterations=1, border_value=1)
    if valid.sum() < 16:
        valid[:] = True
    values = luma[valid]
    luma = np.where(valid, (luma - values.mean()) / (values.std() + 1e-6), 0.0).astype(np.float32)
    centre = _nucleus_centre(small[..., 1], valid)
    rings = _rings(luma, centre)
    return Fingerprint(luma=luma.astype(np.float16), valid=valid, centre=centre, rings=rings,
                       signature=_signature(rings))


def _nucleus_centre(green: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Where the darkest blob is: the peak of the blurred share of dark (green) pixels.

    Stains make the nucleus the darkest object in green light; the peak (not the mean) of
    the blurred map stays on it when other dark things (platelets, a cut neighbour) appear.
    """
    low, high = np.percentile(green[valid], [1, NUCLEUS_SHARE])
    weight = np.clip((high - green) / max(high - low, 1e-3), 0.0, 1.0) * valid
    sigma = WORK_SIDE / 21
    blurred = ndimage.gaussian_filter(weight, sigma)
    y, x = np.unravel_index(int(np.argmax(blurred)), blurred.shape)
    reach = int(2 * sigma)
    rows = slice(max(0, y - reach), min(blurred.shape[0], y + reach + 1))
    cols = slice(max(0, x - reach), min(blurred.shape[1], x + reach + 1))
    window = blurred[rows, cols]
    total = window.sum()
    if total <= 0:
        return float(y), float(x)
    yy, xx = np.mgrid[rows, cols]
    return float((window * yy).sum() / total), float((window * xx).sum() / total)


_RADII = np.linspace(1.5, RING_REACH * WORK_SIDE, RINGS)[:, None]
_PHI = np.arange(ANGLES)[None, :] * 2 * np.pi / ANGLES


def _rings(luma: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    rows = centre[0] + _RADII * np.sin(_PHI)
    cols = centre[1] + _RADII * np.cos(_PHI)
    return ndimage.map_coordinates(luma, [rows, cols], order=1, cval=0.0).astype(np.float32)


def _signature(rings: np.ndarray) -> np.ndarray:
    spectrum = np.abs(np.fft.rfft(rings, axis=1)[:, 1:HARMONICS + 1]) / ANGLES
    vector = np.concatenate([rings.mean(axis=1), spectrum.ravel()])
    return (vector / (np.linalg.norm(vector) + 1e-9)).astype(np.float32)


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

@dataclasses.dataclass
class _Level:
    """One resolution of an image: as template (A: its valid pixels) and as the image
    sampled (B: luma, gradients and validity stacked)."""

    luma: np.ndarray        # (h, w)
    stack: np.ndarray       # (5, h, w): detail, valid, luma, d/drow, d/dcol (slices: views)
    rows: np.ndarray        # valid pixels' rows minus the centre's row
    cols: np.ndarray
    values: np.ndarray      # luma at those pixels
    details: np.ndarray     # detail (band-pass luma) at those pixels
    centre: np.ndarray      # (row, col) at this resolution


def _detail(luma: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Band-pass luma: the image minus its blur at DETAIL_SIGMA (normalised convolution over
    the picture). Smooth shapes of different cells can be bent onto each other; their fine
    structure cannot, so the similarity is measured on this."""
    weight = valid.astype(np.float32)
    smooth = ndimage.gaussian_filter(luma * weight, DETAIL_SIGMA) / np.maximum(
        ndimage.gaussian_filter(weight, DETAIL_SIGMA), 1e-3)
    return ((luma - smooth) * weight).astype(np.float32)


def _level(luma: np.ndarray, valid: np.ndarray, centre: np.ndarray) -> _Level:
    gy, gx = np.gradient(luma)
    detail = _detail(luma, valid)
    stack = np.stack([detail, valid.astype(np.float32), luma, gy, gx]).astype(np.float32)
    rows, cols = np.nonzero(valid)
    return _Level(luma=luma, stack=stack, rows=(rows - centre[0]).astype(np.float32),
                  cols=(cols - centre[1]).astype(np.float32), values=luma[rows, cols],
                  details=detail[rows, cols], centre=centre)


@dataclasses.dataclass
class _Working:
    """Float arrays of one fingerprint that pairs reuse (cached)."""

    full: _Level
    half: _Level
    valid: np.ndarray
    spectrum: np.ndarray   # rfft of the zero-mean rings, and of the mirrored rings
    mirrored: np.ndarray
    ring_norm: float
    grid_rows: np.ndarray  # every pixel's row/col minus the centre's (for the FFT shift)
    grid_cols: np.ndarray
    _templates: dict = dataclasses.field(default_factory=dict)

    def template(self, size) -> np.ndarray:
        if size not in self._templates:
            self._templates[size] = np.fft.rfft2(self.full.luma, size)
        return self._templates[size]


def _working(f: Fingerprint) -> _Working:
    luma = f.luma.astype(np.float32)
    centre = np.asarray(f.centre, dtype=float)
    half_luma = ndimage.zoom(luma, 0.5, order=1, grid_mode=True, mode="nearest")
    half_valid = ndimage.zoom(f.valid.astype(np.float32), 0.5, order=1, grid_mode=True,
                              mode="nearest") > 0.999
    if half_valid.sum() < 4:
        half_valid[:] = True
    rings = f.rings - f.rings.mean()
    h, w = luma.shape
    rows, cols = np.mgrid[:h, :w].astype(np.float32)
    return _Working(full=_level(luma, f.valid, centre),
                    half=_level(half_luma, half_valid, (centre + 0.5) / 2 - 0.5),
                    valid=f.valid, spectrum=np.fft.rfft(rings, axis=1),
                    mirrored=np.fft.rfft(rings[:, _MIRROR], axis=1),
                    ring_norm=float(np.linalg.norm(rings)),
                    grid_rows=(rows - centre[0]).ravel(), grid_cols=(cols - centre[1]).ravel())


@dataclasses.dataclass
class Verification:
    """How well image B, mapped onto image A, matches it."""

    similarity: float  # NCC of the aligned detail (band-pass) pixels (-1: nothing compared)
    luma: float        # NCC of the aligned (blurred) luma
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
    den = np.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else -1.0


def _sample(stack: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear samples of every channel of ``stack`` (channels, h, w) at the given points;
    0 outside, so a valid channel marks where B has no picture. (A hand-written gather:
    ``ndimage.affine_transform`` on a channel stack is ~10x slower at this size.)"""
    channels, h, w = stack.shape
    r0 = np.floor(rows)
    c0 = np.floor(cols)
    fr = (rows - r0).astype(np.float32)
    fc = (cols - c0).astype(np.float32)
    inside = (r0 >= 0) & (r0 < h - 1) & (c0 >= 0) & (c0 < w - 1)
    index = (np.clip(r0, 0, h - 2) * w + np.clip(c0, 0, w - 2)).astype(np.intp)
    flat = stack.reshape(channels, -1)
    top_left = np.take(flat, index, axis=1)  # np.take: 4x faster than flat[:, index]
    top = top_left + (np.take(flat, index + 1, axis=1) - top_left) * fc
    bottom_left = np.take(flat, index + w, axis=1)
    bottom = bottom_left + (np.take(flat, index + w + 1, axis=1) - bottom_left) * fc
    out = top + (bottom - top) * fr
    out[:, ~inside] = 0.0
    return out


def _warp_points(stack, matrix, translation, rows, cols):
    """``stack`` sampled at ``matrix @ (p - c) + translation`` for points p - c = (rows, cols)."""
    return _sample(stack, matrix[0, 0] * rows + matrix[0, 1] * cols + translation[0],
                   matrix[1, 0] * rows + matrix[1, 1] * cols + translation[1])


def _ring_match(a: _Working, b: _Working, mirrored: bool) -> tuple[float, float]:
    """NCC of A's rings with B's (mirrored) rings at the best turn, and that turn (radians)."""
    spectrum = b.mirrored if mirrored else b.spectrum
    corr = np.fft.irfft((a.spectrum * np.conj(spectrum)).sum(axis=0), n=ANGLES)
    peak = int(np.argmax(corr))
    left, mid, right = corr[(peak - 1) % ANGLES], corr[peak], corr[(peak + 1) % ANGLES]
    curve = left - 2 * mid + right
    step = 0.5 * (left - right) / curve if curve < 0 else 0.0
    return float(mid / (a.ring_norm * b.ring_norm + 1e-9)), (peak + step) * 2 * np.pi / ANGLES


def _rigid(a: _Working, b: _Working, mirrored: bool, theta: float):
    """The shift (FFT cross-correlation) of B turned by ``theta`` about its nucleus onto A:
    returns (ncc, matrix, translation)."""
    h, w = a.full.luma.shape
    size = (int(h * (1 + MAX_SHIFT)) + 1, int(w * (1 + MAX_SHIFT)) + 1)
    reach = int(MAX_SHIFT * min(h, w))
    matrix = _rotation(mirrored, theta)
    cb = b.full.centre
    warped = _warp_points(b.full.stack[1:3], matrix, cb, a.grid_rows, a.grid_cols)
    picture = (warped[1] * (warped[0] > 0.999)).reshape(h, w)
    cross = np.fft.irfft2(a.template(size) * np.conj(np.fft.rfft2(picture, size)), size)
    cross[reach + 1:size[0] - reach] = -np.inf
    cross[:, reach + 1:size[1] - reach] = -np.inf
    dy, dx = np.unravel_index(int(np.argmax(cross)), cross.shape)
    dy = dy - size[0] if dy > size[0] // 2 else dy
    dx = dx - size[1] if dx > size[1] // 2 else dx
    # a[p + d] matches warped[p]: A's pixel p lands at matrix @ (p - d - c) + cb in B
    translation = cb - matrix @ np.array([dy, dx], dtype=float)
    # the NCC at that shift, from the arrays at hand (no second resampling)
    rows_a = slice(max(0, dy), min(h, h + dy))
    cols_a = slice(max(0, dx), min(w, w + dx))
    rows_b = slice(max(0, -dy), min(h, h - dy))
    cols_b = slice(max(0, -dx), min(w, w - dx))
    both = a.valid[rows_a, cols_a] & (warped[0].reshape(h, w)[rows_b, cols_b] > 0.999)
    if both.sum() < MIN_OVERLAP * h * w:
        return -1.0, matrix, translation
    score = _ncc(a.full.luma[rows_a, cols_a][both], warped[1].reshape(h, w)[rows_b, cols_b][both])
    return score, matrix, translation


def _score(a: _Level, b: _Level, matrix, translation, detail: bool = False) -> float:
    """NCC of A's valid pixels and B's mapped ones (luma, or detail), over the pixels both
    show."""
    warped = _warp_points(b.stack[0:2] if detail else b.stack[1:3], matrix, translation,
                          a.rows, a.cols)
    both = warped[1 if detail else 0] > 0.999
    if both.sum() < MIN_OVERLAP * a.luma.size:
        return -1.0
    if not detail:
        return _ncc(a.values[both], warped[1][both])
    return _ncc(a.details[both], warped[0][both])


def _refine(a: _Level, b: _Level, matrix, translation, steps: int):
    """Gauss-Newton (forward-additive Lucas-Kanade) on an affine map and a gain/bias:
    minimise the squared difference of B(M (p - c) + t) and g A(p) + b over the overlap."""
    gain, bias = 1.0, 0.0
    for _ in range(steps):
        warped = _warp_points(b.stack[1:], matrix, translation, a.rows, a.cols)
        both = warped[0] > 0.999
        if both.sum() < MIN_OVERLAP * a.luma.size:
            break
        value, gy, gx = warped[1][both], warped[2][both], warped[3][both]
        template, y, x = a.values[both], a.rows[both], a.cols[both]
        jac = np.stack([gy * y, gy * x, gx * y, gx * x, gy, gx, -template,
                        -np.ones_like(template)], axis=1)
        residual = value - gain * template - bias
        try:
            delta = np.linalg.solve(jac.T @ jac + 1e-6 * np.eye(8), -(jac.T @ residual))
        except np.linalg.LinAlgError:
            break
        matrix = matrix + delta[:4].reshape(2, 2)
        translation = translation + delta[4:6]
        gain, bias = gain + delta[6], bias + delta[7]
        if np.abs(delta[4:6]).max() < 0.02 and np.abs(delta[:4]).max() < 1e-3:
            break
    return matrix, translation


def _plausible(matrix: np.ndarray) -> bool:
    """A copy's map is a rotation/mirror up to a modest scale and shear."""
    singular = np.linalg.svd(matrix, compute_uv=False)
    return bool(singular.min() > 1 - MAX_DISTORTION and singular.max() < 1 + MAX_DISTORTION)


def verify(fa: Fingerprint, fb: Fingerprint, cache: "WorkingCache | None" = None
           ) -> Verification:
    """Align B onto A (mirror, rotation, shift, then affine refinement) and compare pixels.

    Gates keep the cost of clear non-copies low: rings that match poorly in both mirror
    senses (``RING_GATE``), a rigid alignment far from a match (``REJECT_BELOW``) and a
    half-resolution refinement whose luma stays poor (``HALF_GATE``) end the comparison
    early with similarity -1 (``luma`` then holds the best luma NCC reached, if any).
    """
    a = cache.get(fa) if cache is not None else _working(fa)
    b = cache.get(fb) if cache is not None else _working(fb)
    best = Verification(-1.0, -1.0, False, 0.0, np.eye(2), np.zeros(2))
    senses = sorted(((*_ring_match(a, b, m), m) for m in (False, True)), reverse=True)
    for ring, theta, mirrored in senses:
        if ring < max(RING_GATE, senses[0][0] - SENSE_MARGIN):
            break  # rings too unlike, or much less alike than in the other mirror sense
        aligned, matrix, translation = _rigid(a, b, mirrored, theta)
        if aligned < REJECT_BELOW:
            continue  # this mirror sense is far off: try the other
        if aligned < 0.995:
            # coarse-to-fine: half resolution first (pixel p there is 2 p + 0.5 here)
            m, t = _refine(a.half, b.half, matrix, (translation + 0.5) / 2 - 0.5, LK_STEPS[0])
            half = _score(a.half, b.half, m, t) if _plausible(m) else -1.0
            if half < HALF_GATE:
                return Verification(-1.0, max(aligned, half), bool(mirrored), 0.0, matrix,
                                    translation)  # no copy: the detail is not compared
            m, t = _refine(a.full, b.full, m, (t + 0.5) * 2 - 0.5, LK_STEPS[1])
            if _plausible(m):
                refined = _score(a.full, b.full, m, t)
                if refined > aligned:
                    aligned, matrix, translation = refined, m, t
        similarity = _score(a.full, b.full, matrix, translation, detail=True)
        if similarity > best.similarity:
            angle = float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))
            best = Verification(float(similarity), float(aligned), bool(mirrored), angle,
                                matrix, translation)
        break  # this sense aligned the pictures; the other (rings less alike) is not tried
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
            item = _working(f)
            self._items[key] = item
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return item


def verify_pairs(fingerprints, pairs: np.ndarray, skip=None) -> np.ndarray:
    """Similarity and luma NCC of each pair ``(i, j)``, shape (n, 2) (NaN where
    ``skip(i, j)`` said not to look)."""
    cache = WorkingCache()
    out = np.full((len(pairs), 2), np.nan, dtype=np.float32)
    for k, (i, j) in enumerate(np.asarray(pairs).tolist()):
        if skip is not None and skip(i, j):
            continue
        result = verify(fingerprints[i], fingerprints[j], cache)
        out[k] = result.similarity, result.luma
    return out


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
    pair: both image names, the hash distance in bits and the pixel similarity. At most
    ``max_pairs`` panels, shared out over the role pairs in order. Writes a PNG at ``path``
    and returns the number of panels drawn.
    """
    from PIL import ImageDraw

    from .images import load_rgb
    from .io import atomic_path

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
            draw.text((x0, y0 + th + 15), f"distance {int(row.distance)} bits, similarity "
                                          f"{float(row.similarity):.3f}", fill="black")
            drawn += 1
        y += -(-len(shown) // SHEET_COLUMNS) * (th + text_h + pad)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return drawn
