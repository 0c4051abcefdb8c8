"""The four pixel scalings of the Copenhagen study, fitted on training images only, streamed.

The deck compared four ways to scale the (already resized) training images, each fitted on
the training images and then applied unchanged to validation and test images:

=================  =====================================================  =================
name               statistics                                             deck's name
=================  =====================================================  =================
``pixel_channel``  one mean and std per pixel position and channel        pixel/channel
``global``         one mean and std over every pixel, channel and image   global
``channel``        one mean and std per colour channel (3)                channel
``divide255``      none: x / 255                                          normalization
=================  =====================================================  =================

The deck fitted scikit-learn ``StandardScaler`` s on all training images held in one array.
Here the same statistics are accumulated batch by batch (:class:`PixelMoments`: count, sum
and sum of squares per pixel and channel, in float64), so the training set never has to fit
into memory, and one pass gives all three standardisations. As in ``StandardScaler`` the
standard deviation is the population one (ddof=0) and a zero deviation is replaced by 1.

A fitted :class:`Scaler` becomes the model's first layer (:meth:`Scaler.layer`: a Keras
``Normalization`` layer whose mean and variance are stored as weights, or ``Rescaling`` for
``divide255``), so a checkpoint takes [0, 255] pixels like every other model here.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import read_npz, write_npz

SCALINGS = ("pixel_channel", "global", "channel", "divide255")


class PixelMoments:
    """Running count, sum and sum of squares per pixel position and channel (float64).

    Feed it batches of equally sized images ``(B, H, W, C)`` with :meth:`update`; the three
    standardisations are derived from these sums alone. float64 sums of values up to 255 stay
    exact to about 1e-9 relative for any realistic number of images.
    """

    def __init__(self):
        self.count = 0
        self.sum: np.ndarray | None = None
        self.sum_sq: np.ndarray | None = None

    def update(self, batch) -> PixelMoments:
        batch = np.asarray(batch, dtype=np.float64)
        if batch.ndim != 4:
            raise ValueError(f"expected a batch (B, H, W, C), got shape {batch.shape}")
        if self.sum is None:
            self.sum = np.zeros(batch.shape[1:], dtype=np.float64)
            self.sum_sq = np.zeros(batch.shape[1:], dtype=np.float64)
        elif batch.shape[1:] != self.sum.shape:
            raise ValueError(f"image shape {batch.shape[1:]} differs from earlier batches "
                             f"{self.sum.shape}")
        self.count += batch.shape[0]
        self.sum += batch.sum(axis=0)
        self.sum_sq += np.square(batch).sum(axis=0)
        return self

    def mean_std(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean and population std for ``method``, shaped to broadcast over (H, W, C)."""
        if self.count == 0 or self.sum is None:
            raise ValueError("no images seen: fit the scaler on at least one training image")
        if method == "pixel_channel":
            n, total, total_sq = self.count, self.sum, self.sum_sq
        elif method == "channel":
            n = self.count * self.sum.shape[0] * self.sum.shape[1]
            total, total_sq = (self.sum.sum(axis=(0, 1), keepdims=True),
                               self.sum_sq.sum(axis=(0, 1), keepdims=True))
        elif method == "global":
            n = self.count * self.sum.size
            total = self.sum.sum().reshape(1, 1, 1)
            total_sq = self.sum_sq.sum().reshape(1, 1, 1)
        else:
            raise ValueError(f"no statistics for scaling {method!r}")
        mean = total / n
        variance = np.maximum(total_sq / n - np.square(mean), 0.0)
        std = np.sqrt(variance)
        std[std == 0] = 1.0  # StandardScaler's convention for constant features
        return mean, std


@dataclasses.dataclass
class Scaler:
    """A fitted scaling: ``(x - mean) / std`` with arrays that broadcast over (H, W, C)."""

    method: str
    mean: np.ndarray
    std: np.ndarray
    n_images: int

    def apply(self, images) -> np.ndarray:
        return ((np.asarray(images, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def layer(self, name: str = "scaling"):
        """The scaling as a Keras layer (statistics stored as weights, safe-mode loadable)."""
        import keras

        if self.method == "divide255":
            return keras.layers.Rescaling(1.0 / 255.0, name=name)
        axis = {"pixel_channel": (1, 2, 3), "channel": -1, "global": None}[self.method]
        layer = keras.layers.Normalization(axis=axis, name=name)
        height, width, channels = self.mean.shape if self.method == "pixel_channel" else (1, 1, 3)
        layer.build((None, height, width, channels))
        layer.adapt_mean.assign(np.reshape(self.mean, layer.adapt_mean.shape).astype("float32"))
        layer.adapt_variance.assign(np.reshape(np.square(self.std),
                                               layer.adapt_variance.shape).astype("float32"))
        layer.finalize_state()
        return layer


def check_scaling(method: str) -> str:
    if method not in SCALINGS:
        raise InputError(f"scaling {method!r}: unknown; choose from {', '.join(SCALINGS)}")
    return method


def scaler_from_moments(method: str, moments: PixelMoments) -> Scaler:
    check_scaling(method)
    if method == "divide255":
        return Scaler(method, np.zeros((1, 1, 1)), np.full((1, 1, 1), 255.0), moments.count)
    mean, std = moments.mean_std(method)
    return Scaler(method, mean, std, moments.count)


def accumulate(batches: Iterable) -> PixelMoments:
    """One pass over training batches (arrays, tensors, or ``(images, labels)`` pairs)."""
    moments = PixelMoments()
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        moments.update(images.numpy() if hasattr(images, "numpy") else images)
    return moments


def moments_of_images(paths: Sequence[str], image_size: Sequence[int], *,
                      masks: Sequence[str] | None = None, batch_size: int = 64,
                      color_mode: str = "rgb") -> PixelMoments:
    """Stream image files through the training pipeline (same decode, mask, resize, colour
    mode) and accumulate their moments. Pass the *training* images only."""
    from leukocyte_cnn.inputs.pipeline import make_dataset

    if not len(paths):
        raise InputError("scaler: no training images to fit on")
    return accumulate(make_dataset(list(paths), None, image_size, batch_size,
                                   masks=list(masks) if masks is not None else None,
                                   color_mode=color_mode))


def fit_scalers(batches: Iterable, methods: Iterable[str] = SCALINGS) -> dict[str, Scaler]:
    """All requested scalers from one streamed pass over the *training* batches."""
    methods = [check_scaling(m) for m in methods]
    moments = accumulate(batches)
    return {method: scaler_from_moments(method, moments) for method in methods}


def save_moments(path: str | os.PathLike, moments: PixelMoments) -> Path:
    """Keep the fitted sums (NPZ, no pickle): every scaler can be rebuilt from them."""
    return write_npz(path, count=np.array(moments.count), sum=moments.sum, sum_sq=moments.sum_sq)


def load_moments(path: str | os.PathLike) -> PixelMoments:
    data = read_npz(path)
    if not {"count", "sum", "sum_sq"} <= set(data):
        raise InputError(f"{path}: not a scaler statistics file (needs count, sum, sum_sq)")
    moments = PixelMoments()
    moments.count = int(data["count"])
    moments.sum, moments.sum_sq = data["sum"], data["sum_sq"]
    return moments
