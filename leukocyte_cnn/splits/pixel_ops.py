"""Pixel operations that the near-duplicate screen and verification share, on small float32
images: a Gaussian blur written as two matrix products (a stack of images at once), a blur
within a mask that never mixes in rotation fill (normalised convolution), and bilinear
sampling of images given a border of ``PAD`` pixels (``padded``), either point by point
(``sample``) or from precomputed per-cell coefficients for many calls (``Bilinear``). At
64 pixels every numpy call counts, hence the hand-written forms of the ``scipy.ndimage``
equivalents each docstring names.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

PAD = 2                    # zero border of the sampled arrays (no bounds checks per point)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
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
    return ndimage.correlate1d(np.eye(n), gaussian_kernel(sigma), axis=0).astype(np.float32)


@functools.lru_cache(maxsize=8)
def gaussian_kernel(sigma: float) -> np.ndarray:
    offsets = np.arange(-int(4.0 * sigma + 0.5), int(4.0 * sigma + 0.5) + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def blur_within(image: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution: a blur of the picture that never mixes in rotation fill."""
    if valid.all():
        return blur(image, sigma)
    weight = valid.astype(np.float32)
    picture, weights = blur(np.stack([image * weight, weight]), sigma)  # one product each side
    return picture / np.maximum(weights, 1e-3)


def sample(stack: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``stack`` (h, w) at ``points`` (2, n: rows, columns).

    ``stack`` is a :func:`padded` one: points beyond its border are moved onto it. Where B
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


class Bilinear:
    """A :func:`padded` image ready for many :func:`sample` calls: each cell's bilinear
    coefficients (value, step along the row, step down, twist), so a sample gathers one
    column of 4 instead of 4 corners. Same values as :func:`sample` up to rounding, NaN
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
        """Bilinear samples at ``points`` (2, n: rows, columns; float32), as :func:`sample`.
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


@functools.lru_cache(maxsize=16)
def _limit(h: int, w: int) -> np.ndarray:
    return np.array([[h - 1.001], [w - 1.001]], dtype=np.float32)


def padded(image: np.ndarray, fill: float) -> np.ndarray:
    """``image`` (float32) with a border of PAD pixels of ``fill`` (see :func:`sample`)."""
    h, w = image.shape
    out = np.full((h + 2 * PAD, w + 2 * PAD), fill, dtype=np.float32)
    out[PAD:PAD + h, PAD:PAD + w] = image
    return out
