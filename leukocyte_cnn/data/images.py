"""Decoding and writing images: one strict reader for every file the dataset readers list.

Microscopy collections arrive in every flavour Pillow knows: 8-bit JPEG, 16-bit TIFF from
scientific cameras, RGBA PNG exported from viewers, palette BMP, CMYK JPEG from print
workflows. ``load_rgb`` turns all of them into the one thing the rest of the repository
expects, an ``uint8`` array of shape ``(H, W, 3)``, and refuses broken files with a one-line
:class:`~leukocyte_cnn.base.errors.InputError` instead of silently training on grey padding
(which is what ``ImageFile.LOAD_TRUNCATED_IMAGES`` would do; it is never switched on here).
"""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import atomic_path

# Formats that TensorFlow's own decoders read (``tf.io.decode_image``); everything else, TIFF
# above all, goes through Pillow in the input pipeline.
TF_NATIVE_FORMATS = frozenset({"JPEG", "PNG", "BMP", "GIF"})

# Pillow modes that hold more than 8 bits per sample. ``Image.convert("RGB")`` would clip them
# at 255 (a 16-bit image turns almost white), so they are rescaled by hand.
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})

# What a broken file raises somewhere inside Pillow's decoders: truncated data gives OSError,
# corrupt headers SyntaxError/struct.error, odd tables ValueError/IndexError/EOFError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
                  zlib.error)

# Deterministic encoder options per suffix, so that writing the same array twice gives the
# same bytes (augmented sets and caches are compared by hash). JPEG keeps full chroma
# resolution (subsampling 0): stain colour at cell edges is the signal here.
_SAVE_OPTIONS: dict[str, tuple[str, dict]] = {
    ".png": ("PNG", {"compress_level": 6}),
    ".jpg": ("JPEG", {"quality": 95, "subsampling": 0, "optimize": False}),
    ".jpeg": ("JPEG", {"quality": 95, "subsampling": 0, "optimize": False}),
    ".tif": ("TIFF", {"compression": "tiff_lzw"}),
    ".tiff": ("TIFF", {"compression": "tiff_lzw"}),
    ".bmp": ("BMP", {}),
}


def load_rgb(path: str | os.PathLike, reduce_to: int | None = None,
             data: bytes | None = None) -> np.ndarray:
    """Decode ``path`` fully and return it as an ``uint8`` array of shape ``(H, W, 3)``.

    16-bit and float images are rescaled by their value range (65535 -> 255), transparent
    pixels are composited on white (the colour of an empty slide), grayscale is replicated,
    palette/CMYK/YCbCr are converted, and EXIF orientation is applied. Broken, empty or
    non-image files raise ``InputError("<path>: <problem>")``. ``reduce_to``: a JPEG may be
    decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, ~2x faster) as long as both
    sides keep at least this many pixels (for callers that shrink the image anyway).
    ``data``: the file's bytes, where the caller has read them already (errors still name
    ``path``).
    """
    return np.ascontiguousarray(np.asarray(load_rgb_image(path, reduce_to, data),
                                           dtype=np.uint8))


def load_rgb_image(path: str | os.PathLike, reduce_to: int | None = None,
                   data: bytes | None = None) -> Image.Image:
    """:func:`load_rgb` as a Pillow ``RGB`` image (for callers that resize it: no round trip
    through an array)."""
    path = Path(path)
    with _open_image(path, data) as img:
        try:
            if reduce_to and img.format == "JPEG":
                img.draft(None, (reduce_to, reduce_to))
            img.load()  # full decode: a truncated file fails here, not later in training
            upright = ImageOps.exif_transpose(img)
            return _to_rgb_image(upright, path)
        except Image.DecompressionBombError as exc:
            raise InputError(f"{path}: image too large to decode safely ({exc})") from None
        except _DECODE_ERRORS as exc:
            raise InputError(f"{path}: truncated or corrupt image ({_reason(exc)})") from None


def image_mode_info(path: str | os.PathLike) -> tuple[int, int, str]:
    """Return ``(width, height, mode)`` from the file header, without decoding pixels."""
    path = Path(path)
    with _open_image(path) as img:
        return img.width, img.height, img.mode


def needs_pillow(path: str | os.PathLike) -> bool:
    """True when TensorFlow's native decoders cannot be trusted with ``path``.

    TF reads 8-bit RGB/gray JPEG, PNG, BMP and GIF. It cannot read TIFF, decodes 16-bit PNG
    to a different dtype, drops alpha instead of compositing, ignores EXIF orientation and
    palette transparency, and fails on CMYK JPEG and compressed/16-bit BMP. Progressive
    JPEGs are routed to Pillow too: rare here, and not worth a second decoder's quirks.
    """
    path = Path(path)
    with _open_image(path) as img:
        if img.format not in TF_NATIVE_FORMATS or img.mode not in ("RGB", "L"):
            return True
        if "transparency" in img.info or _has_16bit_samples(img):
            return True
        if img.format == "JPEG":
            orientation = img.getexif().get(0x0112, 1)
            return orientation != 1 or bool(img.info.get("progressive"))
        if img.format == "BMP":
            # Plain 24/32-bit BMP only; RLE-compressed or 15/16-bit BMPs are Pillow's job.
            return img.info.get("compression", 0) != 0 or _tile_rawmode(img) not in ("BGR", "BGRX")
        return False


def check_images(table, skip_bad: bool, workers: int | None = None):
    """Fully decode every file of a reader table; return ``(good_table, bad)``.

    ``bad`` is a list of ``{"image": key, "problem": text}`` in table order. Without
    ``skip_bad`` the first bad file (in table order, so the message is reproducible) raises
    ``InputError`` naming it; with ``skip_bad`` each bad file is reported by a warning and
    its row left out. Pillow releases the GIL while decoding, so a thread pool helps.
    """
    paths = [str(p) for p in table["path"]]
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        problems = list(pool.map(_problem_of, paths))
    bad = []
    keep = []
    for image, path, problem in zip(table["image"], paths, problems):
        keep.append(problem is None)
        if problem is None:
            continue
        if not skip_bad:
            raise InputError(f"{path}: {problem}")
        warnings.warn(f"{path}: {problem}; left out (skip_bad)", stacklevel=2)
        bad.append({"image": str(image), "problem": problem})
    good = table[np.asarray(keep, dtype=bool)].reset_index(drop=True)
    return good, bad


def save_rgb(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write an ``uint8`` RGB (H×W×3) or gray (H×W) array atomically; format from the suffix.

    Encoder options are fixed per format so the same array always gives the same bytes.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SAVE_OPTIONS:
        known = ", ".join(sorted(_SAVE_OPTIONS))
        raise InputError(f"{path}: unsupported image suffix {suffix!r} (use one of {known})")
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"save_rgb needs uint8 pixels, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"save_rgb needs an H×W×3 or H×W array, got shape {array.shape}")
    image_format, options = _SAVE_OPTIONS[suffix]
    image = Image.fromarray(np.ascontiguousarray(array))
    with atomic_path(path) as tmp:
        image.save(tmp, format=image_format, **options)
    return path


def _open_image(path: Path, data: bytes | None = None) -> Image.Image:
    """Open ``path`` with Pillow (header only), turning every failure into a one-line error.
    ``data``: the file's bytes, read already (opened from memory)."""
    if data is None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise InputError(f"{path}: file not found") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot read file ({exc.strerror or exc})") from None
        if path.is_dir():
            raise InputError(f"{path}: is a folder, not an image file")
    else:
        size = len(data)
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    try:
        return Image.open(path if data is None else io.BytesIO(data))
    except UnidentifiedImageError as exc:
        known = _signature_format(path)
        if known:  # right magic bytes, unreadable header: damaged rather than not an image
            raise InputError(f"{path}: truncated or corrupt image ({known} header cannot be "
                             "read)") from None
        raise InputError(f"{path}: not an image file ({_reason(exc, path)})") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: image too large to decode safely ({exc})") from None
    except PermissionError as exc:
        raise InputError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    except _DECODE_ERRORS as exc:
        raise InputError(f"{path}: truncated or corrupt image ({_reason(exc, path)})") from None


# Magic bytes of the formats the readers list, to tell a damaged image from a non-image.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"II*\x00", "TIFF"),
               (b"MM\x00*", "TIFF"), (b"BM", "BMP"), (b"GIF8", "GIF"))


def _signature_format(path: Path) -> str | None:
    """The format whose magic bytes start ``path``, or None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return None
    return next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)


def _problem_of(path: str) -> str | None:
    """The problem text of one file for :func:`check_images`, or None when it decodes."""
    try:
        # verify() checks what load() does not (PNG chunk CRCs) but leaves the image
        # unusable, hence the second open inside load_rgb.
        with _open_image(Path(path)) as img:
            try:
                img.verify()
            except _DECODE_ERRORS as exc:
                return f"truncated or corrupt image ({_reason(exc, path)})"
        load_rgb(path)
    except InputError as exc:
        text = str(exc)
        prefix = f"{path}: "
        return text[len(prefix):] if text.startswith(prefix) else text
    return None


def _to_rgb_image(img: Image.Image, path: Path) -> Image.Image:
    """Convert a decoded Pillow image of any mode to ``RGB`` (see :func:`load_rgb`)."""
    if img.mode in _HIGH_DEPTH_MODES:
        gray = _rescale_to_uint8(np.asarray(img))
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        # Composite on white: an empty slide is white, black borders would look like stain.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise InputError(f"{path}: unsupported image mode {img.mode} ({exc})") from None


def _rescale_to_uint8(samples: np.ndarray) -> np.ndarray:
    """Map 16-bit, 32-bit integer or float samples to 0..255 by their range, not by clipping."""
    values = samples.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if np.issubdtype(samples.dtype, np.floating) and 0.0 <= low and high <= 1.0:
        scaled = values * 255.0  # float images in [0, 1]
    elif 0.0 <= low and high <= 65535.0:
        scaled = values / 257.0  # 16-bit range (Pillow's "I" is 16-bit PNG/TIFF): 65535 -> 255
    else:
        # 32-bit or signed data has no agreed white point: stretch this image's own range.
        span = high - low or 1.0
        scaled = (values - low) * (255.0 / span)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _has_16bit_samples(img: Image.Image) -> bool:
    """True for files Pillow reads as 8-bit but that store 16 bits a sample (16-bit RGB PNG)."""
    return ";16" in _tile_rawmode(img)


def _tile_rawmode(img: Image.Image) -> str:
    """The raw mode of the first tile (how samples are laid out in the file), or ``""``."""
    try:
        args = img.tile[0].args if img.tile else None
    except (AttributeError, IndexError):
        return ""
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return args if isinstance(args, str) else ""


def _reason(exc: BaseException, path: str | os.PathLike | None = None) -> str:
    """Pillow's message on one line, without the repeated file name."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if path is not None:
        text = text.replace(f" {str(path)!r}", "").replace(repr(str(path)), "")
    return text.strip() or type(exc).__name__
