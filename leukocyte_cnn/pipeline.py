"""The one input pipeline: image files → batches of float32 [0, 255] images for Keras.

Every training, evaluation and prediction script builds its data with :func:`make_dataset`
(or :func:`dataset_from_table`), so all of them see the same decoding, resizing and
rounding. Steps, in order:

1. ``from_tensor_slices`` over (path, needs-Pillow flag, label). The flag is decided per
   file up front with ``leukocyte_cnn.images.needs_pillow``; missing files fail here with a
   one-line ``InputError`` instead of deep inside ``fit``.
2. Shuffle of the *file list* (seeded), when shuffling and not caching: an exact full-size
   shuffle that costs no image memory.
3. Decode in parallel (``num_parallel_calls=AUTOTUNE``, ``deterministic=True`` so order is
   kept): JPEG/PNG/BMP/GIF with TensorFlow's native decoder; TIFF, 16-bit, CMYK, palette
   and alpha images through Pillow (``load_rgb``) in ``tf.numpy_function``. Optional masks
   blank the background. Resize to (H, W) (bilinear with antialiasing by default), round
   to uint8.
4. Optional cache (``"memory"`` or a file prefix) of those uint8 images: 4× smaller than
   float32 and identical to what an uncached run computes.
5. Shuffle of the decoded images (seeded), when shuffling a cached dataset.
6. Cast to float32, optional per-image ``preprocess``, batch.
7. Optional ``augment`` (a Keras preprocessing-layer stack) on each batch with
   ``training=True``. Only training datasets get one; validation and test datasets are
   built with ``augment=None`` and are never altered.
8. Prefetch.

Images enter models as float32 in [0, 255] (scaling is the model's first layer); image
sizes are (height, width). Nothing here loads a whole dataset into a NumPy array except
:func:`load_arrays`, which is meant for small sets (tests, feature maps, ``serve.py``).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InputError

LABEL_MODES = ("int", "onehot", "binary")
RESIZE_METHODS = ("bilinear", "bicubic", "area", "nearest", "lanczos3", "lanczos5",
                  "gaussian", "mitchellcubic")


# --------------------------------------------------------------------------- image I/O hooks


def _image_io() -> tuple[Callable[[str], np.ndarray], Callable[[str], bool]]:
    """``(load_rgb, needs_pillow)`` from ``leukocyte_cnn.images`` (imported lazily)."""
    from .images import load_rgb, needs_pillow

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
    """Labels as the array the loss expects: int32 (N,), one-hot float32 (N, C) or float32 (N, 1)."""
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


def _decode(path, use_pillow, pillow_files: str):
    """Decode one file to uint8 (h, w, 3); ``pillow_files`` is "none", "all" or "some"."""
    import tensorflow as tf

    def native():
        data = tf.io.read_file(path)
        return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)

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

    if keep_aspect:
        out = tf.image.resize(image, size, method=method, antialias=True,
                              preserve_aspect_ratio=True)
        out = tf.image.resize_with_crop_or_pad(out, size[0], size[1])
    else:
        out = tf.image.resize(image, size, method=method, antialias=True)
    # Rounding to uint8 (±0.5 grey level, below JPEG noise) makes cached and uncached
    # pipelines identical and the cache 4× smaller; cubic kernels can overshoot, hence clip.
    # "nearest" returns the input's uint8, hence the cast to float first.
    out = tf.cast(tf.clip_by_value(tf.round(tf.cast(out, tf.float32)), 0.0, 255.0), tf.uint8)
    out.set_shape([size[0], size[1], 3])
    return out


def _cache_file(prefix: str, paths: list[str], labels: np.ndarray | None,
                masks: list[str] | None, settings: str) -> str:
    """Cache file name = prefix + fingerprint of the inputs.

    tf.data reuses whatever cache file it finds; the fingerprint makes a cache for other
    files, labels, size or mask settings a different file instead of silently stale data.
    """
    digest = hashlib.sha256()
    for part in (paths, masks or [], [settings]):
        digest.update("\0".join(part).encode("utf-8"))
        digest.update(b"\1")
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
                 shuffle_buffer: int | None = None):
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
            test datasets with ``augment=None``. Run sequentially, because the layers' seed
            state advances per call and parallel calls would make the draws unrepeatable.
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

    Returns:
        A dataset of ``(float32 (B, H, W, 3) in [0, 255], labels)``, or of images only when
        ``labels`` is ``None``.
    """
    import tensorflow as tf

    size = _check_size(image_size)
    if resize_method not in RESIZE_METHODS:
        raise ValueError(f"resize_method must be one of {RESIZE_METHODS}, got {resize_method!r}")
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
        image = _decode(row["path"], row["pillow"], pillow_files)
        if "mask" in row:
            image = _apply_mask(image, row["mask"])
        out = {"image": _resize(image, size, resize_method, keep_aspect)}
        if "label" in row:
            out["label"] = row["label"]
        return out

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    if cache is not None:
        settings = f"{size}|{resize_method}|{keep_aspect}|{label_mode}|{num_classes}"
        ds = ds.cache("" if str(cache) == "memory" else
                      _cache_file(os.fspath(cache), path_list, encoded, mask_list, settings))
        if shuffle:
            ds = ds.shuffle(shuffle_buffer or max(n, 1), seed=seed, reshuffle_each_iteration=True)

    def to_float(row):
        image = tf.cast(row["image"], tf.float32)
        if preprocess is not None:
            image = tf.cast(preprocess(image), tf.float32)
        return (image, row["label"]) if "label" in row else image

    ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if augment is not None:
        ds = ds.map(_augment_fn(augment, with_labels=encoded is not None))
    return ds.prefetch(tf.data.AUTOTUNE)


def _augment_fn(augment: Any, with_labels: bool) -> Callable:
    """Wrap a Keras layer stack as a batch map: training mode, float32 out, still in [0, 255]."""
    import tensorflow as tf

    def run(images):
        out = tf.cast(augment(images, training=True), tf.float32)
        return tf.clip_by_value(out, 0.0, 255.0)

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
               resize_method: str = "bilinear", keep_aspect: bool = False) -> np.ndarray:
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
    (path,) = _as_path_list([path])
    load_rgb, needs_pillow = _image_io()
    if needs_pillow(path):  # what _decode's Pillow branch runs inside tf.numpy_function
        image = tf.constant(load_rgb(path))
    else:
        image = _decode(tf.constant(path), tf.constant(False), "none")
    image = _resize(image, size, resize_method, keep_aspect)
    return tf.cast(image, tf.float32).numpy()
