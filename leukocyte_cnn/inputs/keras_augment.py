"""``RandomAffine``: online geometric augmentation as one Keras preprocessing layer.

Keras 3 offers one layer per transform (``RandomRotation``, ``RandomFlip``,
``RandomTranslation``, ``RandomZoom``, ``RandomShear``). Stacked, each resamples the batch
again: four bilinear interpolations blur a cell four times, and on a CPU each pass costs
about as much as decoding the JPEG (``RandomFlip`` alone ~1.7 ms per 120x160 image here).
``RandomAffine`` draws the same per-image parameters, composes them into one matrix and
resamples once (``ImageProjectiveTransformV3``: bilinear, reflect fill). Flips alone are
exact pixel reversals with no resampling at all.

Conventions (x right, y down, pixel centres at integer coordinates, transforms about the
image centre ``((W-1)/2, (H-1)/2)``): a rotation by ``a`` turns the picture
counter-clockwise by ``a`` degrees (as ``augment.rotate``); a flip mirrors about the
centre, so a flipped image is exactly ``np.flip`` of the input; a zoom ``f`` magnifies by
``f``; a shift ``(dx, dy)`` moves the content right and down; a shear by ``d`` degrees
moves rows below the centre to the right for ``d > 0`` (as ``augment.shear``).
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from leukocyte_cnn.inputs.step_augment import geometry_config, set_geometry


def affine_matrices(angle_deg, hflip, vflip, zoom, shear_deg, dx, dy, height: int, width: int):
    """``ImageProjectiveTransformV3`` rows (B, 8) for per-image parameters (each shape (B,)).

    The forward map (input -> output) is: shear, zoom, flips, rotation about the centre,
    then shift. The kernel wants the inverse (output pixel -> input pixel), built here.
    ``hflip``/``vflip`` are booleans; ``zoom`` is the magnification (1 = none).
    """
    angle = tf.cast(angle_deg, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    fx = tf.where(tf.cast(hflip, tf.bool), -1.0, 1.0)
    fy = tf.where(tf.cast(vflip, tf.bool), -1.0, 1.0)
    inv_zoom = 1.0 / tf.cast(zoom, tf.float32)
    k = tf.tan(tf.cast(shear_deg, tf.float32) * (math.pi / 180.0))
    # Forward linear part A = R(angle) F Z S with R counter-clockwise on screen (y down):
    # R = [[c, s], [-s, c]]. Inverse: S^-1 Z^-1 F R^T with S^-1 = [[1, -k], [0, 1]].
    # F R^T = [[fx c, -fx s], [fy s, fy c]].
    r00, r01 = fx * cos, -fx * sin
    r10, r11 = fy * sin, fy * cos
    m00 = inv_zoom * (r00 - k * r10)
    m01 = inv_zoom * (r01 - k * r11)
    m10 = inv_zoom * r10
    m11 = inv_zoom * r11
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    # input = C + M (output - C - shift)
    ox = -cx - tf.cast(dx, tf.float32)
    oy = -cy - tf.cast(dy, tf.float32)
    a2 = cx + m00 * ox + m01 * oy
    b2 = cy + m10 * ox + m11 * oy
    zeros = tf.zeros_like(m00)
    return tf.stack([m00, m01, a2, m10, m11, b2, zeros, zeros], axis=1)


def apply_affine(images, matrices, fill_mode: str = "reflect", interpolation: str = "bilinear"):
    """Resample a float batch (B, H, W, C) once with per-image ``affine_matrices`` rows."""
    shape = tf.shape(images)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=matrices, output_shape=shape[1:3],
        fill_value=tf.constant(0.0, tf.float32), interpolation=interpolation.upper(),
        fill_mode=fill_mode.upper())


@keras.saving.register_keras_serializable(package="leukocyte_cnn")
class RandomAffine(keras.layers.Layer):
    """Random rotation, flips, shift, zoom and shear per image, resampled once.

    Args:
        rotation_degrees: angle drawn uniformly from ±degrees (>= 180: any angle).
        horizontal_flip, vertical_flip: each applied to half of the images.
        shift: translation drawn from ±shift x width (x) and ±shift x height (y).
        zoom: magnification drawn from [1 - zoom, 1 + zoom] (aspect ratio kept).
        shear: shear angle drawn from ±degrees along x, about the centre row (< 45).
        fill_mode: "reflect" (default: no black corners a model could learn), "constant",
            "nearest" or "wrap".
        seed: seeds the layer's ``keras.random.SeedGenerator``: the same seed gives the
            same sequence of draws, batch after batch.
    Inference (``training=False``) returns the input unchanged.
    """

    def __init__(self, rotation_degrees: float = 0.0, horizontal_flip: bool = False,
                 vertical_flip: bool = False, shift: float = 0.0, zoom: float = 0.0,
                 shear: float = 0.0, fill_mode: str = "reflect", seed: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        set_geometry(self, rotation_degrees, horizontal_flip, vertical_flip, shift, zoom, shear,
                     fill_mode, seed)

    @property
    def resamples(self) -> bool:
        """Whether any non-flip transform is on (flips alone never interpolate)."""
        return bool(self.rotation_degrees or self.shift or self.zoom or self.shear)

    def call(self, images, training=True):
        if not training:
            return images
        # The layer's SeedGenerator advances once per call: the same seed gives the same
        # sequence of batches. (The pipeline calls augment_with_seed directly, with one
        # seed per batch drawn by tf.data, so batches can be augmented in parallel.)
        return self.augment_with_seed(images, self.seed_generator.next())

    def augment_with_seed(self, images, seed):
        """Augment a batch with draws fully determined by ``seed`` (2 integers); stateless."""
        images = tf.convert_to_tensor(images)
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        draws = tf.random.stateless_uniform(tf.stack([8, batch]), tf.cast(seed, tf.int64))
        signed = 2.0 * draws - 1.0  # uniform in [-1, 1)
        hflip = (draws[0] < 0.5) & self.horizontal_flip
        vflip = (draws[1] < 0.5) & self.vertical_flip
        if not self.resamples:
            if not (self.horizontal_flip or self.vertical_flip):
                return images
            out = tf.where(hflip[:, None, None, None], tf.reverse(images, [2]), images)
            return tf.where(vflip[:, None, None, None], tf.reverse(out, [1]), out)
        height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
        matrices = affine_matrices(
            angle_deg=signed[2] * min(self.rotation_degrees, 180.0), hflip=hflip, vflip=vflip,
            zoom=1.0 + signed[3] * self.zoom, shear_deg=signed[4] * self.shear,
            dx=signed[5] * self.shift * width_f, dy=signed[6] * self.shift * height_f,
            height=height_f, width=width_f)
        out = apply_affine(tf.cast(images, tf.float32), matrices, self.fill_mode)
        return tf.cast(out, images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), **geometry_config(self)}
