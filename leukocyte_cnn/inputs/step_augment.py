"""Online augmentation inside the training step, as pure Keras: it runs on the device that trains.

Augmenting in ``tf.data`` (:class:`leukocyte_cnn.inputs.keras_augment.RandomAffine` in the
pipeline) keeps the resampling on the CPU, always: on a GPU workstation the feed, not the
network, then sets the speed (``benchmarks/bench_pipeline.py``). Here the pipeline hands over
decoded, resized ``uint8`` batches, and :class:`StepAugmentation` turns, flips, shifts, zooms,
shears and colour-jitters each batch as the first thing the training step does, on the GPU on
a workstation and on the CPU here. :class:`AugmentedTrainer` wraps a network for ``fit``:
training batches are augmented, validation batches (``training=False``) and every prediction
(made with the network itself) are not. Only ``keras.ops`` and ``keras.random`` are used, so
the layers run under ``KERAS_BACKEND=jax`` as well as TensorFlow.

The geometry is :mod:`leukocyte_cnn.inputs.keras_augment`'s: the same per-image parameters,
composed into one matrix (:func:`affine_transforms`, the same numbers as
``keras_augment.affine_matrices``) and resampled once, bilinear with reflected borders
(``keras.ops.image.affine_transform``; on TensorFlow the very kernel the pipeline path uses,
``ImageProjectiveTransformV3``). Given the same draws both paths give identical pixels. The
draws themselves come from another random stream (the layer's ``SeedGenerator`` advancing
once per step, where the pipeline drew one seed per batch from ``tf.data``), so one seed gives
other, equally distributed, augmented batches than the pipeline path: the same ranges of
angles, the same share of flips and the same pixel statistics (``tests/test_augment.py``).
"""
from __future__ import annotations

import math

import keras
from keras import ops

WHERE = ("step", "pipeline")  # where online augmentation runs (a script's AUGMENT_IN knob)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as the pipeline's grayscale


def affine_transforms(angle_deg, hflip, vflip, zoom, shear_deg, dx, dy, height, width):
    """Per-image transform rows (B, 8) for ``keras.ops.image.affine_transform``: output pixel
    to input pixel, about the image centre. The forward map is shear, zoom, flips, rotation
    (counter-clockwise on screen for a positive angle), then the shift ``(dx, dy)`` right and
    down; ``hflip``/``vflip`` are booleans, ``zoom`` the magnification."""
    angle = ops.cast(angle_deg, "float32") * (math.pi / 180.0)
    cos, sin = ops.cos(angle), ops.sin(angle)
    fx = ops.where(hflip, -1.0, 1.0)
    fy = ops.where(vflip, -1.0, 1.0)
    inv_zoom = 1.0 / ops.cast(zoom, "float32")
    k = ops.tan(ops.cast(shear_deg, "float32") * (math.pi / 180.0))
    r00, r01 = fx * cos, -fx * sin
    r10, r11 = fy * sin, fy * cos
    m00, m01 = inv_zoom * (r00 - k * r10), inv_zoom * (r01 - k * r11)
    m10, m11 = inv_zoom * r10, inv_zoom * r11
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    ox, oy = -cx - ops.cast(dx, "float32"), -cy - ops.cast(dy, "float32")
    zeros = ops.zeros_like(m00)
    return ops.stack([m00, m01, cx + m00 * ox + m01 * oy,
                      m10, m11, cy + m10 * ox + m11 * oy, zeros, zeros], axis=1)


def set_geometry(layer, rotation_degrees, horizontal_flip, vertical_flip, shift, zoom, shear,
                 fill_mode, seed) -> None:
    """Check and set a random affine layer's geometry (this module's layer and the pipeline's
    ``keras_augment.RandomAffine`` take the same arguments) and its seed generator."""
    if shear and not 0 < abs(shear) < 45:
        raise ValueError(f"shear must be within (0, 45) degrees, got {shear}")
    for name, value in (("zoom", zoom), ("shift", shift)):
        if value and not 0 < value < 1:
            raise ValueError(f"{name} must be within (0, 1), got {value}")
    if fill_mode not in ("reflect", "constant", "nearest", "wrap"):
        raise ValueError(f"fill_mode must be reflect/constant/nearest/wrap, got {fill_mode!r}")
    layer.rotation_degrees = abs(float(rotation_degrees))
    layer.horizontal_flip, layer.vertical_flip = bool(horizontal_flip), bool(vertical_flip)
    layer.shift, layer.zoom, layer.shear = float(shift), float(zoom), abs(float(shear))
    layer.fill_mode = fill_mode
    layer.seed = seed
    layer.seed_generator = keras.random.SeedGenerator(seed)


def geometry_config(layer) -> dict:
    """The arguments :func:`set_geometry` set, for ``get_config``."""
    return {"rotation_degrees": layer.rotation_degrees, "horizontal_flip": layer.horizontal_flip,
            "vertical_flip": layer.vertical_flip, "shift": layer.shift, "zoom": layer.zoom,
            "shear": layer.shear, "fill_mode": layer.fill_mode, "seed": layer.seed}


@keras.saving.register_keras_serializable(package="leukocyte_cnn")
class StepAugmentation(keras.layers.Layer):
    """Random rotation, flips, shift, zoom and shear (one resampling), then colour jitter.

    Args:
        rotation_degrees, horizontal_flip, vertical_flip, shift, zoom, shear, fill_mode: as
            :class:`leukocyte_cnn.inputs.keras_augment.RandomAffine`.
        brightness: each image's pixels scaled by a factor from [1 - b, 1 + b].
        saturation: each image's colour moved from or towards its grey by [1 - s, 1 + s].
        stain: each channel of each image scaled by its own factor from [1 - t, 1 + t] (the
            colour cast of another stain batch or scanner).
        seed: seeds the layer's ``keras.random.SeedGenerator``: one draw per training step,
            so one seed gives one sequence of augmented batches.
    Takes any numeric batch (``uint8`` from the feed) and returns ``float32`` in [0, 255];
    with ``training`` false only the cast is done.
    """

    in_step = True  # train_classifier_fold: augment in the training step, feed uint8

    def __init__(self, rotation_degrees: float = 0.0, horizontal_flip: bool = False,
                 vertical_flip: bool = False, shift: float = 0.0, zoom: float = 0.0,
                 shear: float = 0.0, brightness: float = 0.0, saturation: float = 0.0,
                 stain: float = 0.0, fill_mode: str = "reflect", seed: int | None = None,
                 **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        for name, value in (("brightness", brightness), ("saturation", saturation),
                            ("stain", stain)):
            if value and not 0 < abs(value) < 1:
                raise ValueError(f"{name} must be within (0, 1), got {value}")
        self.brightness, self.saturation = float(brightness), float(saturation)
        self.stain = float(stain)
        set_geometry(self, rotation_degrees, horizontal_flip, vertical_flip, shift, zoom, shear,
                     fill_mode, seed)

    @property
    def resamples(self) -> bool:
        """Whether any non-flip transform is on (flips alone never interpolate)."""
        return bool(self.rotation_degrees or self.shift or self.zoom or self.shear)

    def draws(self, batch):
        """This step's per-image draws, uniform in [0, 1): rows hflip, vflip, angle, zoom,
        shear, dx, dy, brightness, saturation, then 3 stain gains (12 x B)."""
        return keras.random.uniform((12, batch), seed=self.seed_generator)

    def call(self, images, training=None):
        images = ops.cast(images, "float32")
        if not training:
            return images
        return self.augment(images, self.draws(ops.shape(images)[0]))

    def augment(self, images, draws):
        """Augment a float32 batch with the given :meth:`draws`."""
        signed = 2.0 * draws - 1.0
        hflip = ops.logical_and(draws[0] < 0.5, self.horizontal_flip)
        vflip = ops.logical_and(draws[1] < 0.5, self.vertical_flip)
        if self.resamples:
            height = ops.cast(images.shape[1] or ops.shape(images)[1], "float32")
            width = ops.cast(images.shape[2] or ops.shape(images)[2], "float32")
            transforms = affine_transforms(
                signed[2] * min(self.rotation_degrees, 180.0), hflip, vflip,
                1.0 + signed[3] * self.zoom, signed[4] * self.shear,
                signed[5] * self.shift * width, signed[6] * self.shift * height, height, width)
            images = ops.image.affine_transform(images, transforms, interpolation="bilinear",
                                                fill_mode=self.fill_mode,
                                                data_format="channels_last")
        elif self.horizontal_flip or self.vertical_flip:
            images = ops.where(hflip[:, None, None, None], ops.flip(images, axis=2), images)
            images = ops.where(vflip[:, None, None, None], ops.flip(images, axis=1), images)
        if self.brightness:
            images = images * (1.0 + signed[7] * self.brightness)[:, None, None, None]
        if self.saturation:
            grey = ops.sum(images * ops.convert_to_tensor(_LUMA, "float32"), axis=-1,
                           keepdims=True)
            factor = (1.0 + signed[8] * self.saturation)[:, None, None, None]
            images = grey + factor * (images - grey)
        if self.stain:
            gains = 1.0 + ops.transpose(signed[9:12]) * self.stain  # (B, 3)
            images = images * gains[:, None, None, :]
        return ops.clip(images, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), **geometry_config(self), "brightness": self.brightness,
                "saturation": self.saturation, "stain": self.stain}


class AugmentedTrainer(keras.Model):
    """``network`` behind ``augmentation`` for ``fit``: batches are augmented when training
    and only cast otherwise. Shares the network's weights: train this, then save, evaluate
    and predict with ``network`` itself (which never sees the augmentation)."""

    def __init__(self, network, augmentation, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.augmentation = augmentation

    def call(self, images, training=None):
        return self.network(self.augmentation(images, training=training), training=training)
