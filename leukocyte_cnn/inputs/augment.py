"""Augmentation: offline transforms written to disk, and the online Keras layer stack.

Two kinds of augmentation live here, on purpose in one module so they use the same words:

* **Offline** (``rotate``, ``flip``, ``shift``, ``zoom``, ``stain_jitter``, ``shear``,
  ``gaussian_blur``, ``grayscale``, ``equalize_histogram``): pure functions on
  ``uint8 H×W×3`` arrays. Each is fully determined by its parameters, so an augmented image
  can be rebuilt from the ``params`` column of a manifest (``apply_transform``), and
  ``plan_balancing`` decides which images to write so that every class reaches a target
  count (the thesis "rotate by distinct angles until the classes are balanced" scheme).
* **Online** (``online_augmentation``): seeded random transforms of every training batch,
  inside the training step on the training device (``where="step"``,
  :mod:`leukocyte_cnn.inputs.step_augment`) or, as before, in the ``tf.data`` pipeline on
  the CPU (``where="pipeline"``, ``make_dataset(..., augment=...)``). Keras 3 has no
  ``ImageDataGenerator``.

Conventions (image coordinates: x to the right, y down, origin top-left):

* ``rotate(img, +a)`` turns the picture **counter-clockwise** by ``a`` degrees, like
  ``np.rot90``, ``skimage.transform.rotate`` and ``PIL.Image.rotate``. The size is kept and
  the corners are filled by reflection, so a rotated cell never gets black corners.
* ``flip(img, horizontal=True)`` mirrors left-right (``np.flip(axis=1)``);
  ``vertical=True`` mirrors top-bottom (``np.flip(axis=0)``).
* ``shift(img, dx, dy)`` moves the content ``dx`` pixels right and ``dy`` pixels down.
* ``zoom(img, f)`` with ``f > 1`` magnifies the centre (zoom in), ``f < 1`` zooms out.
* ``shear(img, d)`` shears along x by ``d`` degrees about the centre row (rows below the
  centre move right for ``d > 0``).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError

# Parameters in the order ``apply_transform`` applies them, with their identity values.
# Geometry first (flips, rotation, shear, zoom, shift: one resampling each), then colour,
# then blur, so that blur is not undone by interpolation and colour changes act on the
# final pixels. A missing key means "identity".
IDENTITY_PARAMS: dict[str, Any] = {
    "flip_h": False,
    "flip_v": False,
    "angle": 0.0,
    "shear": 0.0,
    "zoom": 1.0,
    "dx": 0,
    "dy": 0,
    "hue": 0.0,
    "saturation": 1.0,
    "brightness": 1.0,
    "blur_sigma": 0.0,
    "grayscale": False,
    "equalize": False,
}

# Fill modes of scikit-image's ``warp``. Note: scikit-image "reflect" mirrors about the edge
# pixel without repeating it (``c b | a b c``); "symmetric" repeats it (``b a | a b c``),
# which is what Keras calls "reflect".
FILL_MODES = ("reflect", "symmetric", "constant", "edge", "wrap")


# --------------------------------------------------------------------------- helpers


def _check_image(img: np.ndarray) -> np.ndarray:
    """Accept only what the offline transforms promise to handle: uint8 H×W×3."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 H×W×3 image, got {img.dtype} {img.shape}")
    return img


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Round float pixel values back to uint8 (rounding, not truncation, keeps the mean)."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _check_fill(fill: str) -> None:
    if fill not in FILL_MODES:
        raise ValueError(f"fill must be one of {FILL_MODES}, got {fill!r}")


def _warp_about_centre(img: np.ndarray, forward: np.ndarray, fill: str) -> np.ndarray:
    """Apply a 3×3 forward affine matrix given in centred (x, y) coordinates.

    The matrix acts about the image centre ``((W-1)/2, (H-1)/2)``, the same centre that
    ``skimage.transform.rotate`` uses, so all geometric transforms keep the cell centred.
    Bilinear interpolation (order 1): cheap and free of ringing around nuclei.
    """
    from skimage.transform import AffineTransform, warp

    _check_fill(fill)
    h, w = img.shape[:2]
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=float)
    back = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]], dtype=float)
    matrix = back @ forward @ to_centre
    out = warp(img, AffineTransform(matrix=matrix).inverse, order=1, mode=fill,
               cval=0.0, preserve_range=True)
    return _to_uint8(out)


# --------------------------------------------------------------------------- offline transforms


def rotate(img: np.ndarray, angle_deg: float, fill: str = "reflect") -> np.ndarray:
    """Rotate counter-clockwise by ``angle_deg`` about the centre, keeping the size.

    ``rotate(img, 90)`` equals ``np.rot90(img)`` for a square image. ``fill`` decides what
    enters the corners: ``"reflect"`` (default, no black corners), ``"symmetric"``,
    ``"edge"``, ``"wrap"`` or ``"constant"`` (black).
    """
    img = _check_image(img)
    _check_fill(fill)
    if float(angle_deg) % 360.0 == 0.0:
        return img.copy()
    from skimage.transform import rotate as sk_rotate

    out = sk_rotate(img, float(angle_deg), resize=False, order=1, mode=fill, cval=0.0,
                    preserve_range=True)
    return _to_uint8(out)


def flip(img: np.ndarray, horizontal: bool = False, vertical: bool = False) -> np.ndarray:
    """Mirror left-right (``horizontal``) and/or top-bottom (``vertical``); exact, no resampling."""
    img = _check_image(img)
    if horizontal:
        img = img[:, ::-1]
    if vertical:
        img = img[::-1]
    return np.ascontiguousarray(img)


def shift(img: np.ndarray, dx: float, dy: float, fill: str = "reflect") -> np.ndarray:
    """Move the content ``dx`` pixels right and ``dy`` pixels down; the gap is filled by
    ``fill``."""
    img = _check_image(img)
    if dx == 0 and dy == 0:
        return img.copy()
    forward = np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], dtype=float)
    return _warp_about_centre(img, forward, fill)


def zoom(img: np.ndarray, factor: float, fill: str = "reflect") -> np.ndarray:
    """Scale about the centre by ``factor`` (> 1 zooms in, < 1 zooms out), keeping the size."""
    img = _check_image(img)
    if factor <= 0:
        raise ValueError(f"zoom factor must be positive, got {factor}")
    if factor == 1:
        return img.copy()
    forward = np.diag([float(factor), float(factor), 1.0])
    return _warp_about_centre(img, forward, fill)


def shear(img: np.ndarray, degrees: float, fill: str = "reflect") -> np.ndarray:
    """Shear along x by ``degrees`` about the centre row (x' = x + tan(degrees)·y)."""
    img = _check_image(img)
    if degrees == 0:
        return img.copy()
    if abs(degrees) >= 90:
        raise ValueError(f"shear must be within (-90, 90) degrees, got {degrees}")
    forward = np.array([[1, math.tan(math.radians(degrees)), 0], [0, 1, 0], [0, 0, 1]])
    return _warp_about_centre(img, forward, fill)


def stain_jitter(img: np.ndarray, hue_shift: float = 0.0, saturation_scale: float = 1.0,
                 brightness_scale: float = 1.0) -> np.ndarray:
    """Imitate staining and illumination differences between smears in HSV space.

    ``hue_shift`` is a fraction of the colour circle (0.05 = 18°, wraps around);
    ``saturation_scale`` and ``brightness_scale`` multiply S and V (results clipped to [0, 1]).
    """
    img = _check_image(img)
    if hue_shift == 0 and saturation_scale == 1 and brightness_scale == 1:
        return img.copy()
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(img)
    hsv[..., 0] = (hsv[..., 0] + hue_shift) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation_scale, 0.0, 1.0)
    hsv[..., 2] = np.clip(hsv[..., 2] * brightness_scale, 0.0, 1.0)
    return _to_uint8(hsv2rgb(hsv) * 255.0)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Blur each channel with a Gaussian of ``sigma`` pixels (imitates a slightly defocused
    slide)."""
    img = _check_image(img)
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return img.copy()
    from skimage.filters import gaussian

    out = gaussian(img.astype(np.float64), sigma=float(sigma), channel_axis=-1, mode="reflect",
                   preserve_range=True)
    return _to_uint8(out)


def grayscale(img: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601, as Pillow's ``"L"``) repeated in 3 channels, so models keep their input
    shape."""
    from PIL import Image

    img = _check_image(img)
    luma = np.asarray(Image.fromarray(img, "RGB").convert("L"))
    return np.repeat(luma[..., None], 3, axis=2)


def equalize_histogram(img: np.ndarray) -> np.ndarray:
    """Equalise the luma histogram only (YCbCr), so that stain colours do not shift.

    Equalising R, G and B separately would change hues, which carry the class information
    here (purple nuclei, pink cytoplasm).
    """
    from PIL import Image, ImageOps

    img = _check_image(img)
    y, cb, cr = Image.fromarray(img, "RGB").convert("YCbCr").split()
    merged = Image.merge("YCbCr", (ImageOps.equalize(y), cb, cr)).convert("RGB")
    return np.asarray(merged, dtype=np.uint8).copy()


def apply_transform(img: np.ndarray, params: Mapping[str, Any] | str) -> np.ndarray:
    """Apply a parameter dict (or its JSON string, as in a manifest) to ``img``.

    Keys are those of :data:`IDENTITY_PARAMS`; a missing key is the identity, so ``{}`` and
    ``IDENTITY_PARAMS`` return an unchanged copy. Order: flips, rotation, shear, zoom, shift,
    colour (hue/saturation/brightness), blur, grayscale, equalisation.
    """
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError as exc:
            raise InputError(f"augmentation parameters: not valid JSON ({exc.msg})") from None
    unknown = sorted(set(params) - set(IDENTITY_PARAMS))
    if unknown:
        raise InputError(f"augmentation parameters: unknown key(s) {unknown} "
                         f"(known: {', '.join(IDENTITY_PARAMS)})")
    p = {**IDENTITY_PARAMS, **params}
    out = flip(_check_image(img), bool(p["flip_h"]), bool(p["flip_v"]))
    out = rotate(out, float(p["angle"]))
    out = shear(out, float(p["shear"]))
    out = zoom(out, float(p["zoom"]))
    out = shift(out, float(p["dx"]), float(p["dy"]))
    out = stain_jitter(out, float(p["hue"]), float(p["saturation"]), float(p["brightness"]))
    out = gaussian_blur(out, float(p["blur_sigma"]))
    if p["grayscale"]:
        out = grayscale(out)
    if p["equalize"]:
        out = equalize_histogram(out)
    return out


# --------------------------------------------------------------------------- balancing plan


def sample_distinct_angles(n: int, rng: np.random.Generator | int,
                           include_zero: bool = True) -> list[float]:
    """``n`` distinct rotation angles in [0, 360), seeded by ``rng``.

    Whole degrees while they suffice (n ≤ 360, or ≤ 359 without zero), as in the thesis, so
    manifests stay readable; beyond that, distinct real-valued angles.
    ``include_zero=False`` leaves out 0°, which would repeat the original image.
    """
    rng = np.random.default_rng(rng)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    whole = np.arange(0 if include_zero else 1, 360)
    if n <= len(whole):
        return [float(a) for a in rng.choice(whole, size=n, replace=False)]
    angles: list[float] = []
    seen: set[float] = set() if include_zero else {0.0}
    while len(angles) < n:
        # Continuous draws collide with probability ~0; the set makes "distinct" a guarantee.
        a = round(float(rng.uniform(0.0, 360.0)), 6) % 360.0
        if a not in seen:
            seen.add(a)
            angles.append(a)
    return angles


def _geometric_variants(k: int, rng: np.random.Generator, flips: bool) -> list[tuple[float, bool]]:
    """``k`` distinct (angle, mirror) pairs, never the identity (0°, no mirror).

    Only the left-right mirror is used: a vertical flip equals a left-right flip plus a 180°
    rotation, so (angle, flip_h, flip_v) triples would describe the same picture twice.
    """
    if not flips:
        return [(a, False) for a in sample_distinct_angles(k, rng, include_zero=False)]
    whole = [(float(a), m) for m in (False, True) for a in range(360) if (a, m) != (0, False)]
    if k <= len(whole):
        picks = rng.choice(len(whole), size=k, replace=False)
        return [whole[i] for i in picks]
    angles = sample_distinct_angles(k, rng, include_zero=True)
    mirrors = rng.integers(0, 2, size=k).astype(bool)
    # Distinct angles already make the pairs distinct; drop an accidental identity.
    return [(a, bool(m)) if (a, bool(m)) != (0.0, False) else (a, True)
            for a, m in zip(angles, mirrors, strict=True)]


def _safe_name(text: str) -> str:
    """A file-system-safe name: path separators and odd characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _source_sizes(paths: Sequence[str]) -> list[tuple[int, int]]:
    """(width, height) of each source from its header only (Pillow opens lazily)."""
    from PIL import Image

    sizes = []
    for path in paths:
        try:
            with Image.open(path) as im:
                sizes.append(im.size)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read image size ({exc})") from None
    return sizes


def plan_balancing(table: pd.DataFrame, target_per_class: int, rng: np.random.Generator | int,
                   *, shifts: float = 0.0, zoom: float = 0.0, stain: float = 0.0,
                   flips: bool = True) -> pd.DataFrame:
    """Plan the images to write so that every class has exactly ``target_per_class`` images.

    Each class keeps all its original images (rows with identity params) and gets
    ``target - n`` extra images that cycle over its sources in sorted order (so sources are
    used evenly). Every extra image of a source gets a distinct (angle, mirror) pair that is
    not the identity, so no (source, params) pair repeats. A class that already has
    ``≥ target`` images keeps all of them and gets no extra image: real images are never
    dropped to reach the target (such a class ends up above it).

    Optional jitter on top of the rotation, drawn per extra image: ``shifts`` (fraction of
    width/height, dx ~ U(±shifts·W)), ``zoom`` (factor ~ U(1±zoom)), ``stain`` (hue shift ~
    U(±stain) of the colour circle, saturation and brightness scales ~ U(1±stain)).

    ``table`` needs ``label``, ``class_name`` and ``path`` or ``image`` columns (the reader
    or split table). Returns one row per image to write with columns ``source_image``
    (the ``image`` key, else the path), ``source_path``, ``class_name``, ``label``,
    ``out_name`` (a ``.png`` file name, unique within its class; the writer puts it in the
    class's folder) and ``params`` (JSON). Same ``rng`` seed → identical plan.
    """
    rng = np.random.default_rng(rng)
    key_col = "image" if "image" in table.columns else "path"
    missing = {"label", "class_name", key_col} - set(table.columns)
    if missing:
        raise InputError(f"balancing table: missing column(s) {sorted(missing)}")
    if target_per_class < 1:
        raise ValueError(f"target_per_class must be >= 1, got {target_per_class}")

    rows: list[dict[str, Any]] = []
    for label in sorted(table["label"].unique()):
        group = table[table["label"] == label].sort_values(key_col)
        rows.extend(_plan_class(group, key_col, int(label), target_per_class, rng,
                                shifts=shifts, zoom_range=zoom, stain=stain, flips=flips))
    plan = pd.DataFrame(rows, columns=["source_image", "source_path", "class_name", "label",
                                       "out_name", "params"])
    clash = plan.duplicated(["class_name", "out_name"])
    if clash.any():  # two keys of one class that differ only in odd characters
        raise InputError(f"balancing table: output names collide: "
                         f"{plan.loc[clash, 'out_name'].iloc[0]}")
    return plan


def _plan_class(group: pd.DataFrame, key_col: str, label: int, target: int,
                rng: np.random.Generator, *, shifts: float, zoom_range: float, stain: float,
                flips: bool) -> list[dict[str, Any]]:
    """Rows for one class: its originals, then the extra augmented images."""
    class_name = str(group["class_name"].iloc[0])
    keys = [str(k) for k in group[key_col]]
    paths = [str(p) for p in group["path"]] if "path" in group.columns else keys
    stems = [_safe_name(k.rsplit(".", 1)[0]) for k in keys]

    def row(i: int, out_name: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"source_image": keys[i], "source_path": paths[i], "class_name": class_name,
                "label": label, "out_name": f"{out_name}.png",
                "params": json.dumps(params, sort_keys=True)}

    rows = [row(i, stems[i], dict(IDENTITY_PARAMS)) for i in range(len(keys))]
    extra = max(0, target - len(keys))
    if extra == 0:
        return rows
    # Source i gets the extras i, i+n, i+2n, ...: counts differ by at most one.
    per_source = [len(range(i, extra, len(keys))) for i in range(len(keys))]
    sizes = _source_sizes(paths) if shifts > 0 else [(0, 0)] * len(keys)
    for i, k in enumerate(per_source):
        for j, (angle, mirror) in enumerate(_geometric_variants(k, rng, flips)):
            params = {**IDENTITY_PARAMS, "angle": angle, "flip_h": mirror}
            params.update(_jitter(rng, sizes[i], shifts, zoom_range, stain))
            rows.append(row(i, f"{stems[i]}__aug{j:04d}", params))
    return rows


def _jitter(rng: np.random.Generator, size: tuple[int, int], shifts: float, zoom_range: float,
            stain: float) -> dict[str, Any]:
    """Random shift/zoom/stain parameters; only the enabled ones are drawn (keeps plans stable)."""
    out: dict[str, Any] = {}
    if shifts > 0:
        w, h = size
        out["dx"] = int(round(rng.uniform(-shifts, shifts) * w))
        out["dy"] = int(round(rng.uniform(-shifts, shifts) * h))
    if zoom_range > 0:
        out["zoom"] = round(float(rng.uniform(1 - zoom_range, 1 + zoom_range)), 4)
    if stain > 0:
        out["hue"] = round(float(rng.uniform(-stain, stain)), 4)
        out["saturation"] = round(float(rng.uniform(1 - stain, 1 + stain)), 4)
        out["brightness"] = round(float(rng.uniform(1 - stain, 1 + stain)), 4)
    return out


# --------------------------------------------------------------------------- online (Keras)


def online_augmentation(rotation_degrees: float = 359, horizontal_flip: bool = True,
                        vertical_flip: bool = True, shift: float = 0.0, zoom: float = 0.0,
                        shear: float = 0.0, seed: int = 0, where: str = "pipeline",
                        brightness: float = 0.0, saturation: float = 0.0, stain: float = 0.0):
    """Online augmentation for training batches, run where ``where`` says.

    ``rotation_degrees``: angles drawn from ±degrees (359 = any angle), reflect fill;
    ``horizontal_flip`` / ``vertical_flip``: each on half of the images; ``shift``:
    translation as a fraction of height/width; ``zoom``: magnification range 1 ± zoom
    (aspect kept); ``shear``: shear range ±degrees along x about the centre row. A zero
    switches that transform off. All transforms drawn for an image are composed and applied
    as **one** bilinear resampling, not one per transform as a stack of Keras'
    ``RandomRotation``/``RandomFlip``/... would: less blur, and on a CPU 2-4x less time.

    ``where="step"``: a pure-Keras :class:`~leukocyte_cnn.inputs.step_augment.StepAugmentation`
    that ``train_classifier_fold`` runs inside the training step, on the training device, fed
    ``uint8`` batches; it also offers colour jitter (``brightness``, ``saturation``, ``stain``).
    ``where="pipeline"``: the former path, a seeded ``keras.Sequential`` holding one
    ``keras_augment.RandomAffine`` for ``make_dataset(..., augment=...)``, which runs in
    ``tf.data`` on the CPU (float32 even under ``mixed_float16``); no colour jitter there.
    """
    import keras

    if where not in ("step", "pipeline"):
        raise InputError(f"augmentation in {where!r}: choose 'step' or 'pipeline'")
    geometry = dict(rotation_degrees=rotation_degrees, horizontal_flip=horizontal_flip,
                    vertical_flip=vertical_flip, shift=shift, zoom=zoom, shear=shear,
                    fill_mode="reflect", seed=seed)
    if where == "step":
        from leukocyte_cnn.inputs.step_augment import StepAugmentation

        return StepAugmentation(brightness=brightness, saturation=saturation, stain=stain,
                                name="step_augmentation", **geometry)
    if brightness or saturation or stain:
        raise InputError("colour jitter runs in the training step only: set the augmentation "
                         "to 'step' (AUGMENT_IN) or the jitter to 0")
    from leukocyte_cnn.inputs.keras_augment import RandomAffine

    layer = RandomAffine(dtype="float32", name="random_affine", **geometry)
    return keras.Sequential([layer], name="online_augmentation")
