"""The one input pipeline: image files → batches of float32 [0, 255] images for Keras.

Every training, evaluation and prediction script builds its data with :func:`make_dataset`
(or :func:`dataset_from_table`), so all of them see the same decoding, resizing and
rounding. Steps, in order:

1. ``from_tensor_slices`` over (path, needs-Pillow flag, label). The flag is decided per
   file up front with ``leukocyte_cnn.data.images.needs_pillow``; missing files fail here with a
   one-line ``InputError`` instead of deep inside ``fit``.
2. Shuffle of the *file list* (seeded), when shuffling and not caching: an exact full-size
   shuffle that costs no image memory.
3. Decode in parallel (``num_parallel_calls=AUTOTUNE``, ``deterministic=True`` so order is
   kept): JPEG/PNG/BMP/GIF with TensorFlow's native decoder; TIFF, 16-bit, CMYK, palette
   and alpha images through Pillow (``load_rgb``) in ``tf.numpy_function``. JPEGs are
   decoded at the largest 1/2, 1/4 or 1/8 DCT scale that still gives >= (H, W) (libjpeg's
   scaled IDCT, as Pillow's ``draft``). Optional masks blank the background (masked images
   are decoded at full size, to match their masks). Resize to (H, W) (bilinear with
   antialiasing by default; skipped when the decode already gave (H, W)), round to uint8;
   ``color_mode="grayscale"`` then turns it into ITU-R 601 luminance in all three channels.
4. Optional cache (``"memory"`` or a file prefix) of those uint8 images: 4× smaller than
   float32 and identical to what an uncached run computes.
5. Shuffle of the decoded images (seeded), when shuffling a cached dataset.
6. Batch, cast to float32 (with a per-image ``preprocess``: cast and preprocess, then batch).
7. Optional ``augment`` (a Keras preprocessing-layer stack) on each batch with
   ``training=True``: ``RandomAffine`` layers in parallel, one seed per batch from
   ``tf.data.Dataset.random(seed)``; other Keras layers sequentially. Only training
   datasets get one; validation and test datasets are built with ``augment=None`` and are
   never altered.
8. Prefetch.

Images enter models as float32 in [0, 255] (scaling is the model's first layer); image
sizes are (height, width). Nothing here loads a whole dataset into a NumPy array except
:func:`load_arrays`, which is meant for small sets (tests, feature maps, ``serve.py``).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leukocyte_cnn.base.errors import InputError

# Bumped whenever decoded pixels change, so on-disk caches of older pixels are not reused.
PIPELINE_VERSION = 2  # 2: JPEGs decoded with libjpeg's DCT scaling
LABEL_MODES = ("int", "onehot", "binary")
COLOR_MODES = ("rgb", "grayscale")  # grayscale: ITU-R 601 luminance in all three channels
BT601_WEIGHTS = (0.299, 0.587, 0.114)  # luminance = 0.299 R + 0.587 G + 0.114 B
RESIZE_METHODS = ("bilinear", "bicubic", "area", "nearest", "lanczos3", "lanczos5",
                  "gaussian", "mitchellcubic")


# --------------------------------------------------------------------------- image I/O hooks


def _image_io() -> tuple[Callable[[str], np.ndarray], Callable[[str], bool]]:
    """``(load_rgb, needs_pillow)`` from ``leukocyte_cnn.data.images`` (imported lazily)."""
    from leukocyte_cnn.data.images import load_rgb, needs_pillow

    return load_rgb, needs_pillow


# --------------------------------------------------------------------------- argument checks


def _as_path_list(paths: Sequence[Any], what: str = "paths") -> list[str]:
    """Paths as strings, each checked to exist (a one-line error beats a tf.data traceback)."""
    out = [os.fspath(p) for p in paths]
    for path in out:
        if not os.path.isfile(path):
            raise InputError(f"{path}: file not found ({what} of the input pipeline)")
    return out


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or min(int(s) for s in image_size) < 1:
        raise ValueError(f"image_size must be (height, width) > 0, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _encode_labels(labels: Sequence[int], n: int, num_classes: int | None,
                   label_mode: str) -> np.ndarray:
    """Labels as the array the loss expects: int32 (N,), one-hot float32 (N, C) or float32
    (N, 1)."""
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    values = np.asarray(labels)
    if values.shape != (n,):
        raise InputError(f"labels: expected {n} labels (one per path), got shape {values.shape}")
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise InputError(f"labels: expected integer class indices, got dtype {values.dtype}")
    values = values.astype(np.int64)
    if values.size and values.min() < 0:
        raise InputError(f"labels: negative class index {values.min()}")
    if num_classes is not None and values.size and values.max() >= num_classes:
        raise InputError(f"labels: class index {values.max()} >= num_classes {num_classes}")
    if label_mode == "int":
        return values.astype(np.int32)
    if label_mode == "binary":
        if values.size and values.max() > 1:
            raise InputError(f"labels: label_mode 'binary' needs labels 0/1, got {values.max()}")
        return values.astype(np.float32).reshape(n, 1)
    if num_classes is None:
        # Inferring C from the labels at hand is wrong for a fold that lacks a class.
        raise ValueError("label_mode 'onehot' needs num_classes")
    return np.eye(num_classes, dtype=np.float32)[values]


# --------------------------------------------------------------------------- per-image graph


JPEG_SCALES = (1, 2, 4, 8)  # libjpeg's scaled IDCT: decode at 1/1, 1/2, 1/4 or 1/8 size


def _jpeg_scale_index(data, size: tuple[int, int], keep_aspect: bool):
    """Index into JPEG_SCALES of the largest reduction that still leaves >= the output size.

    libjpeg's scaled output is ceil(h / r) x ceil(w / r). Keeping at least the output size
    means the resize that follows only finishes a downscale of less than 2x (with its own
    antialiasing), so the scaled decode never upsamples and never aliases.
    """
    import tensorflow as tf

    shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.float32)
    height, width = shape[0], shape[1]
    if keep_aspect:
        factor = tf.minimum(size[0] / height, size[1] / width)
        need_h, need_w = height * factor, width * factor
    else:
        need_h, need_w = float(size[0]), float(size[1])
    ratios = tf.constant(JPEG_SCALES[1:], tf.float32)
    fits = (tf.math.ceil(height / ratios) >= need_h) & (tf.math.ceil(width / ratios) >= need_w)
    return tf.reduce_sum(tf.cast(fits, tf.int32))  # fits is a prefix of True values


def _decode(path, use_pillow, pillow_files: str, size: tuple[int, int] | None = None,
            keep_aspect: bool = False):
    """Decode one file to uint8 (h, w, 3); ``pillow_files`` is "none", "all" or "some".

    With ``size`` (the output size), JPEGs are decoded by libjpeg at the largest of 1/2,
    1/4, 1/8 scale that keeps at least ``size`` (a DCT-domain downscale, what Pillow's
    ``draft`` does): a 320x240 Kaggle image bound for 160x120 is decoded straight to
    160x120, about 5x less CPU than a full decode plus an antialiased resize. Without
    ``size`` (masks, which must match the full image) the decode is full size.
    """
    import tensorflow as tf

    def decode_any(data):
        return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)

    def native():
        data = tf.io.read_file(path)
        if size is None:
            return decode_any(data)

        def jpeg():
            index = _jpeg_scale_index(data, size, keep_aspect)
            return tf.switch_case(index, [
                (lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r)) for r in JPEG_SCALES])

        is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")
        image = tf.cond(is_jpeg, jpeg, lambda: decode_any(data))
        image.set_shape([None, None, 3])
        return image

    def pillow():
        load_rgb = _image_io()[0]
        image = tf.numpy_function(lambda p: load_rgb(p.decode("utf-8")), [path], tf.uint8,
                                  stateful=False)
        image.set_shape([None, None, 3])
        return image

    # Build only the branch(es) needed: a dataset without TIFFs never touches Python.
    if pillow_files == "none":
        return native()
    if pillow_files == "all":
        return pillow()
    return tf.cond(use_pillow, pillow, native)


def _apply_mask(image, mask_path):
    """Blank the background (mask value 0) so that only the segmented cell remains."""
    import tensorflow as tf

    mask = tf.io.decode_image(tf.io.read_file(mask_path), channels=1, dtype=tf.uint8,
                              expand_animations=False)
    tf.debugging.assert_equal(tf.shape(mask)[:2], tf.shape(image)[:2],
                              message="mask size differs from image size")
    return image * tf.cast(mask > 0, tf.uint8)


def _resize(image, size: tuple[int, int], method: str, keep_aspect: bool):
    """Resize uint8 (h, w, 3) to uint8 (H, W, 3); ``keep_aspect`` pads with black, centred."""
    import tensorflow as tf

    def resize_to_uint8():
        if keep_aspect:
            out = tf.image.resize(image, size, method=method, antialias=True,
                                  preserve_aspect_ratio=True)
            out = tf.image.resize_with_crop_or_pad(out, size[0], size[1])
        else:
            out = tf.image.resize(image, size, method=method, antialias=True)
        # Rounding to uint8 (±0.5 grey level, below JPEG noise) makes cached and uncached
        # pipelines identical and the cache 4× smaller; cubic kernels can overshoot, hence
        # clip. "nearest" returns the input's uint8, hence the cast to float first.
        return tf.cast(tf.clip_by_value(tf.round(tf.cast(out, tf.float32)), 0.0, 255.0),
                       tf.uint8)

    if keep_aspect:
        out = resize_to_uint8()
    else:
        # An image already at (H, W) (e.g. a JPEG decoded at 1/2 scale) is used as it is.
        same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
        out = tf.cond(same, lambda: tf.cast(image, tf.uint8), resize_to_uint8)
    out.set_shape([size[0], size[1], 3])
    return out


def _check_color_mode(color_mode: str) -> str:
    if color_mode not in COLOR_MODES:
        raise InputError(f"COLOR_MODE {color_mode!r}: expected one of {', '.join(COLOR_MODES)}")
    return color_mode


def _apply_color_mode(image, color_mode: str):
    """uint8 (H, W, 3) in the colour mode: ``grayscale`` is the ITU-R BT.601 luminance
    (0.299 R + 0.587 G + 0.114 B, rounded) copied into all three channels, so every network
    of the repository (all built for three channels) takes it unchanged."""
    import tensorflow as tf

    if color_mode == "rgb":
        return image
    weights = tf.constant(BT601_WEIGHTS, tf.float32)  # tf.image's own are 0.2989, 0.587, 0.114
    luminance = tf.reduce_sum(tf.cast(image, tf.float32) * weights, axis=-1, keepdims=True)
    gray = tf.cast(tf.clip_by_value(tf.round(luminance), 0.0, 255.0), tf.uint8)
    return tf.repeat(gray, 3, axis=-1)


def _cache_file(prefix: str, paths: list[str], labels: np.ndarray | None,
                masks: list[str] | None, settings: str) -> str:
    """Cache file name = prefix + fingerprint of the inputs.

    tf.data reuses whatever cache file it finds; the fingerprint makes a cache for other
    files, labels, size or mask settings a different file instead of silently stale data.
    Each file's size and modification time stand in for its content, so an image rewritten
    in place (same path, new pixels) also gets a new cache.
    """
    digest = hashlib.sha256()
    for part in (paths, masks or [], [settings]):
        digest.update("\0".join(part).encode("utf-8"))
        digest.update(b"\1")
    for path in [*paths, *(masks or [])]:
        try:
            stat = os.stat(path)
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}\0".encode())
        except OSError:  # a missing file fails later, in decoding, with its name
            digest.update(b"?\0")
    if labels is not None:
        digest.update(np.ascontiguousarray(labels).tobytes())
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    return f"{prefix}-{digest.hexdigest()[:16]}"


# --------------------------------------------------------------------------- public API


def make_dataset(paths: Sequence[Any], labels: Sequence[int] | None, image_size: Sequence[int],
                 batch_size: int, *, shuffle: bool = False, augment: Any = None, seed: int = 0,
                 cache: str | os.PathLike | None = None, num_classes: int | None = None,
                 label_mode: str = "int", drop_remainder: bool = False,
                 masks: Sequence[Any] | None = None, preprocess: Callable | None = None,
                 resize_method: str = "bilinear", keep_aspect: bool = False,
                 shuffle_buffer: int | None = None, color_mode: str = "rgb",
                 as_uint8: bool = False):
    """Build the ``tf.data.Dataset`` of ``(images, labels)`` batches for one image list.

    Args:
        paths: image files; batches follow this order unless ``shuffle``.
        labels: class index per path, or ``None`` to yield images only (prediction).
        image_size: (height, width) of the output images.
        batch_size: images per batch; the last batch is smaller unless ``drop_remainder``.
        shuffle: reshuffle every epoch, seeded by ``seed``: a new order each iteration, the
            same sequence of orders in every run with the same seed.
        augment: Keras layer/Sequential applied per batch with ``training=True`` (e.g.
            ``augment.online_augmentation()``). Training data only; build validation and
            test datasets with ``augment=None``. Layers with ``augment_with_seed`` (our
            ``RandomAffine``) run in parallel with one tf.data-drawn seed per batch; other
            Keras layers run sequentially, as their seed state advances per call.
        seed: seed for shuffling.
        cache: ``"memory"``, or a file prefix for an on-disk cache (a fingerprint of the
            inputs is appended). Caches decoded, resized uint8 images, before shuffling and
            augmentation. A file cache is complete only after one full pass.
        num_classes: number of classes; needed for ``label_mode="onehot"``, checked otherwise.
        label_mode: ``"int"`` (int32, shape (B,)), ``"onehot"`` (float32, (B, C)) or
            ``"binary"`` (float32, (B, 1), labels 0/1).
        drop_remainder: drop a last incomplete batch (e.g. for BatchNorm with batch 1).
        masks: optional mask file per image (Zheng 2018 PNGs); pixels where the mask is 0
            are set to black before resizing, leaving only the cell.
        preprocess: optional TF-traceable function on one float32 (H, W, 3) image, applied
            after the cache and before batching (e.g. a stain normalisation).
        resize_method: ``tf.image.resize`` method; always antialiased when shrinking.
        keep_aspect: resize without distortion and pad with black to (H, W).
        shuffle_buffer: buffer for shuffling a *cached* dataset; default the dataset size
            (an exact shuffle). Lower it if a file cache of large images exceeds memory.
        color_mode: ``"rgb"`` or ``"grayscale"`` (ITU-R 601 luminance replicated to three
            channels), applied after resizing, before the cache (and part of its fingerprint).
        as_uint8: hand over the ``uint8`` batches as decoded and resized (for augmentation in
            the training step, :mod:`leukocyte_cnn.inputs.step_augment`, which casts): a
            quarter of the bytes to copy and move to the device. Not with ``preprocess`` or
            ``augment``.

    Returns:
        A dataset of ``(float32 (B, H, W, 3) in [0, 255], labels)`` (``uint8`` with
        ``as_uint8``), or of images only when ``labels`` is ``None``.
    """
    import tensorflow as tf

    if as_uint8 and (preprocess is not None or augment is not None):
        raise ValueError("as_uint8 hands over images as decoded: not with preprocess or augment")

    size = _check_size(image_size)
    if resize_method not in RESIZE_METHODS:
        raise ValueError(f"resize_method must be one of {RESIZE_METHODS}, got {resize_method!r}")
    _check_color_mode(color_mode)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path_list = _as_path_list(paths)
    n = len(path_list)
    encoded = None if labels is None else _encode_labels(labels, n, num_classes, label_mode)
    mask_list = None
    if masks is not None:
        mask_list = _as_path_list(masks, "masks")
        if len(mask_list) != n:
            raise InputError(f"masks: expected {n} mask files (one per path), got {len(mask_list)}")

    needs_pillow = _image_io()[1]
    flags = np.array([bool(needs_pillow(p)) for p in path_list], dtype=bool)
    pillow_files = "all" if n and flags.all() else ("some" if flags.any() else "none")

    columns: dict[str, Any] = {"path": tf.constant(path_list, tf.string),
                               "pillow": tf.constant(flags)}
    if mask_list is not None:
        columns["mask"] = tf.constant(mask_list, tf.string)
    if encoded is not None:
        columns["label"] = tf.constant(encoded)
    ds = tf.data.Dataset.from_tensor_slices(columns)

    # Shuffle the file list when there is no cache: exact and costs no image memory. With a
    # cache the order must be drawn after it, or the cache would freeze the first order.
    if shuffle and cache is None:
        ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)

    def load(row):
        image = _decode(row["path"], row["pillow"], pillow_files,
                        None if "mask" in row else size, keep_aspect)
        if "mask" in row:
            image = _apply_mask(image, row["mask"])
        out = {"image": _apply_color_mode(_resize(image, size, resize_method, keep_aspect),
                                          color_mode)}
        if "label" in row:
            out["label"] = row["label"]
        return out

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    if cache is not None:
        settings = (f"{PIPELINE_VERSION}|{size}|{resize_method}|{keep_aspect}|{label_mode}|"
                    f"{num_classes}|{color_mode}")
        ds = ds.cache("" if str(cache) == "memory" else
                      _cache_file(os.fspath(cache), path_list, encoded, mask_list, settings))
        if shuffle:
            ds = ds.shuffle(shuffle_buffer or max(n, 1), seed=seed, reshuffle_each_iteration=True)

    def to_float(row):
        image = row["image"] if as_uint8 else tf.cast(row["image"], tf.float32)
        if preprocess is not None:
            image = tf.cast(preprocess(image), tf.float32)
        return (image, row["label"]) if "label" in row else image

    if preprocess is None:
        # Batch the uint8 images, then cast whole batches: one op per batch, not per image.
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if augment is not None:
        with_labels = encoded is not None
        stateless = _stateless_layers(augment)
        if stateless:
            # One seed per batch from tf.data's own seeded stream (new draws every epoch,
            # the same sequence in every run): batches are augmented in parallel, and the
            # result does not depend on how many threads run.
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            ds = tf.data.Dataset.zip(ds, seeds.batch(2))
            ds = ds.map(_stateless_augment_fn(stateless, with_labels),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        else:
            ds = ds.map(_augment_fn(augment, with_labels))
    return ds.prefetch(tf.data.AUTOTUNE)


def _stateless_layers(augment: Any) -> list:
    """The layers of ``augment`` if all can augment from an explicit seed, else []."""
    layers = list(getattr(augment, "layers", [augment]))
    return layers if layers and all(hasattr(x, "augment_with_seed") for x in layers) else []


def _finish(images):
    import tensorflow as tf

    return tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0)


def _stateless_augment_fn(layers: list, with_labels: bool) -> Callable:
    """Batch map for layers with ``augment_with_seed``: each layer gets its own folded seed."""
    import tensorflow as tf

    def run(images, seed):
        for i, layer in enumerate(layers):
            images = layer.augment_with_seed(
                images, tf.random.experimental.stateless_fold_in(seed, i))
        return _finish(images)

    if with_labels:
        return lambda batch, seed: (run(batch[0], seed), batch[1])
    return run


def _augment_fn(augment: Any, with_labels: bool) -> Callable:
    """Wrap a Keras layer stack as a batch map: training mode, float32 out, still in [0, 255].

    Runs sequentially: the layers' seed state advances per call, and parallel calls would
    make the draws unrepeatable."""

    def run(images):
        return _finish(augment(images, training=True))

    if with_labels:
        return lambda images, labels: (run(images), labels)
    return run


def dataset_from_table(table, image_size: Sequence[int], batch_size: int, **kw):
    """:func:`make_dataset` over a reader or split table (columns ``path`` and ``label``).

    Keyword arguments go to :func:`make_dataset`; ``masks`` may also be given as the name
    of a column of ``table`` that holds mask paths.
    """
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise InputError(f"input table: missing column(s) {sorted(missing)}")
    if isinstance(kw.get("masks"), str):
        kw["masks"] = table[kw["masks"]].tolist()
    return make_dataset(table["path"].tolist(), table["label"].to_numpy(), image_size,
                        batch_size, **kw)


def load_arrays(paths: Sequence[Any], image_size: Sequence[int], *, batch_size: int = 32,
                **kw) -> np.ndarray:
    """All images as one float32 array (N, H, W, 3) in [0, 255], through the same pipeline.

    For small sets only (tests, feature-map figures, ``serve.py``): it holds everything in
    memory. Training never uses it; it streams with :func:`make_dataset`. Keyword arguments
    (``resize_method``, ``keep_aspect``, ``masks``, ``preprocess``) go to ``make_dataset``,
    so the pixels equal those a model saw in training.
    """
    size = _check_size(image_size)
    paths = list(paths)
    if not paths:
        return np.zeros((0, size[0], size[1], 3), dtype=np.float32)
    ds = make_dataset(paths, None, size, batch_size, **kw)
    return np.concatenate([batch.numpy() for batch in ds], axis=0)


def load_image(path: str | os.PathLike, image_size: Sequence[int], *,
               resize_method: str = "bilinear", keep_aspect: bool = False,
               color_mode: str = "rgb") -> np.ndarray:
    """One image as float32 (H, W, 3) in [0, 255], decoded and resized as :func:`make_dataset` does.

    The same decoder choice (TensorFlow's native decoder, Pillow for TIFF and odd modes),
    resize and rounding, run eagerly without building a ``tf.data`` pipeline: about a
    millisecond per small image instead of ~0.2 s for :func:`load_arrays` on one file, which
    is what an HTTP service answering one image per request needs. The pixels equal
    ``load_arrays([path], image_size, ...)[0]``. (TensorFlow's and Pillow's JPEG decoders
    differ by a few grey levels, so a server must not decode with Pillow alone.)
    """
    import tensorflow as tf

    size = _check_size(image_size)
    if resize_method not in RESIZE_METHODS:
        raise ValueError(f"resize_method must be one of {RESIZE_METHODS}, got {resize_method!r}")
    _check_color_mode(color_mode)
    (path,) = _as_path_list([path])
    load_rgb, needs_pillow = _image_io()
    if needs_pillow(path):  # what _decode's Pillow branch runs inside tf.numpy_function
        image = tf.constant(load_rgb(path))
    else:
        image = _decode(tf.constant(path), tf.constant(False), "none", size, keep_aspect)
    image = _apply_color_mode(_resize(image, size, resize_method, keep_aspect), color_mode)
    return tf.cast(image, tf.float32).numpy()
