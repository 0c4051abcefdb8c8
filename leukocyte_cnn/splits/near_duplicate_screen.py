"""Near-duplicate screen: what one image contributes to the search for copies of one cell.

This module holds the per-image side of the copy detector: the padding mask (rotation fill),
the working image at ``WORK_SIDE`` pixels and its :class:`Fingerprint` (blurred luma, the
nucleus centre, luma sampled on rings around it and a rotation-invariant signature), and
:func:`signature_neighbours`, the cheap, loose screen that proposes candidate pairs for
:mod:`leukocyte_cnn.splits.near_duplicate_verify` to check on pixels.

Augmented datasets (the Kaggle blood-cell TRAIN folder above all) hold copies of one source
cell rotated by arbitrary angles (black corners), shifted, sheared, flipped, with their
brightness changed and re-encoded. A 64-bit perceptual hash cannot tell those copies from
look-alike cells (on the full Kaggle set both lie at 6-10 bits), so a pair is a candidate
when its dihedral pHashes are within the hash threshold
(:mod:`leukocyte_cnn.splits.perceptual_hash`), or when one image is among the
``SCREEN_NEIGHBOURS`` nearest of the other by a rotation- and flip-invariant signature: the
image's luma sampled on rings around its nucleus (the centroid of the darkest blob),
summarised by the magnitudes of the low angular Fourier harmonics of each ring. Turning an
image about that point only shifts each ring's samples, which leaves those magnitudes
unchanged; a mirror reverses them, which does too.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image
from scipy import ndimage

from leukocyte_cnn.splits.pixel_ops import PAD, blur, blur_within, gaussian_kernel, padded, sample

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

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


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


def working_image(rgb: np.ndarray | Image.Image) -> np.ndarray:
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
    luma = blur_within(small @ _LUMA if luma is None else luma, valid, 1.0)
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
    y, x = divmod(int(np.argmax(blur(coarse, WORK_SIDE / 42))), coarse.shape[1])
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
    return sample(padded(luma, 0.0), points).reshape(RINGS, ANGLES)


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
_RADIAL_BLUR = ndimage.correlate1d(np.eye(RINGS), gaussian_kernel(RADIAL_BLUR), axis=0,
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


