"""The decoding catalogue: every odd file a microscopy collection may hold, built in tmp_path.

Readable files must come back as uint8 H×W×3 with the expected pixel values; broken ones must
raise a one-line InputError that starts with the file's path.
"""
from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.data.images import (
    check_images,
    image_mode_info,
    load_rgb,
    needs_pillow,
    save_rgb,
)


def assert_input_error(path: Path, match: str) -> str:
    """load_rgb(path) raises InputError: path first, one line, containing ``match``."""
    with pytest.raises(InputError) as info:
        load_rgb(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    assert match in message, message
    return message


def write_png16_rgb(path: Path, array: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def jpeg_bytes(tmp_path: Path) -> bytes:
    source = tmp_path / "source.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(source, quality=90)
    return source.read_bytes()


# ----------------------------------------------------------------------------- broken files

@pytest.mark.reliability
def test_missing_file(tmp_path):
    assert_input_error(tmp_path / "nope.jpg", "file not found")


@pytest.mark.reliability
def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert_input_error(path, "empty file (0 bytes)")


@pytest.mark.reliability
def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("patient 12, smear 3\nlooks fine\n")
    message = assert_input_error(path, "not an image file")
    assert message.count(str(path)) == 1  # Pillow's own copy of the name is stripped


@pytest.mark.reliability
def test_corrupt_jpeg_garbage_after_header(tmp_path):
    data = jpeg_bytes(tmp_path)
    scan = data.index(b"\xff\xda")  # start-of-scan: everything before it is a valid header
    garbage = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(data[:scan + 14] + garbage)
    assert_input_error(path, "truncated or corrupt image")


@pytest.mark.reliability
def test_truncated_jpeg(tmp_path):
    data = jpeg_bytes(tmp_path)
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert_input_error(path, "truncated or corrupt image")


@pytest.mark.reliability
def test_truncated_tiff(tmp_path):
    source = tmp_path / "whole.tif"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(source)
    data = source.read_bytes()
    path = tmp_path / "Im001_1.tif"
    path.write_bytes(data[: len(data) // 2])
    assert_input_error(path, "truncated or corrupt image")


@pytest.mark.reliability
def test_png_with_damaged_header_is_corrupt_not_non_image(tmp_path):
    path = tmp_path / "damaged.png"
    Image.new("RGB", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    data[16] ^= 0xFF  # inside IHDR: its checksum no longer matches
    path.write_bytes(bytes(data))
    assert_input_error(path, "truncated or corrupt image")


# ----------------------------------------------------------------------------- conversions

def test_16bit_gray_tiff_scaled_by_range(tmp_path):
    path = tmp_path / "gray16.tif"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(path)
    assert image_mode_info(path) == (3, 1, "I;16")
    pixels = load_rgb(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 3, 3)
    assert pixels[0, :, 0].tolist() == [0, 128, 255]  # clipping would give [0, 255, 255]
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_16bit_rgb_png(tmp_path):
    values = np.array([[[65535, 0, 32768], [0, 65535, 0]]], dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    write_png16_rgb(path, values)
    pixels = load_rgb(path)
    assert pixels.tolist() == [[[255, 0, 128], [0, 255, 0]]]
    assert needs_pillow(path)  # TF would decode it to uint16


def test_16bit_rgb_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile", reason="tifffile (a scikit-image dependency) "
                                   "writes the 16-bit RGB TIFF")
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, np.array([[[65535, 0, 32768]]], dtype=np.uint16), photometric="rgb")
    assert load_rgb(path).tolist() == [[[255, 0, 128]]]


def test_float_tiff_in_unit_range(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(path)
    assert load_rgb(path)[0, :, 0].tolist() == [0, 128, 255]


def test_rgba_png_composited_on_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [0, 0, 255, 0], [0, 0, 0, 128]]], dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    pixels = load_rgb(path)
    assert pixels.shape == (1, 3, 3)
    assert pixels[0, 0].tolist() == [255, 0, 0]  # opaque: unchanged
    assert pixels[0, 1].tolist() == [255, 255, 255]  # transparent: white, not blue or black
    assert all(abs(v - 127) <= 1 for v in pixels[0, 2])  # half-transparent black: grey


def test_grayscale_replicated(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8), "L").save(path)
    pixels = load_rgb(path)
    assert pixels.tolist() == [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]
    assert not needs_pillow(path)


def test_bilevel_image(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(np.array([[False, True]])).convert("1").save(path)
    assert load_rgb(path).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    pixels = load_rgb(path)
    assert pixels.shape == (8, 8, 3)
    assert np.abs(pixels[4, 4].astype(int) - [255, 0, 0]).max() <= 3
    assert needs_pillow(path)


def test_palette_png_with_transparency(tmp_path):
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0] + [0] * (768 - 9))
    image.putdata([0, 1, 2])
    path = tmp_path / "palette.png"
    image.save(path)
    assert load_rgb(path).tolist() == [[[255, 0, 0], [0, 0, 255], [0, 255, 0]]]
    image.info["transparency"] = 1
    transparent = tmp_path / "palette_t.png"
    image.save(transparent, transparency=1)
    assert load_rgb(transparent).tolist() == [[[255, 0, 0], [255, 255, 255], [0, 255, 0]]]
    assert needs_pillow(path)


def test_exif_orientation_applied(tmp_path):
    image = Image.new("RGB", (4, 2), (10, 20, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    assert load_rgb(path).shape == (4, 2, 3)
    assert needs_pillow(path)  # TF ignores EXIF orientation


def test_plain_files_are_tf_native_and_tiff_is_not(tmp_path):
    jpeg, tiff, bmp = tmp_path / "a.jpg", tmp_path / "a.tif", tmp_path / "a.bmp"
    for path in (jpeg, tiff, bmp):
        Image.new("RGB", (5, 4), (9, 9, 9)).save(path)
    assert image_mode_info(tiff) == (5, 4, "RGB")
    assert not needs_pillow(jpeg) and not needs_pillow(bmp)
    assert needs_pillow(tiff)


# ----------------------------------------------------------------------------- check_images

@pytest.mark.reliability
def test_check_images_reports_and_skips_bad_files(tmp_path):
    good = tmp_path / "Im001_1.png"
    Image.new("RGB", (4, 4)).save(good)
    empty = tmp_path / "Im002_0.png"
    empty.write_bytes(b"")
    text = tmp_path / "Im003_0.png"
    text.write_text("not a picture")
    table = pd.DataFrame({"image": [p.name for p in (good, empty, text)],
                          "path": [str(p) for p in (good, empty, text)], "label": [1, 0, 0]})

    with pytest.raises(InputError, match=r"^" + str(empty).replace(".", r"\.") + ": empty file"):
        check_images(table, skip_bad=False)

    with pytest.warns(UserWarning) as record:
        kept, bad = check_images(table, skip_bad=True)
    assert kept["image"].tolist() == ["Im001_1.png"]
    assert [b["image"] for b in bad] == ["Im002_0.png", "Im003_0.png"]
    assert bad[0]["problem"] == "empty file (0 bytes)"
    assert bad[1]["problem"].startswith("not an image file")
    assert len(record) == 2 and str(record[0].message).startswith(str(empty))


@pytest.mark.reliability
def test_check_images_catches_png_checksum_errors(tmp_path):
    path = tmp_path / "crc.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    data = bytearray(path.read_bytes())
    data[data.index(b"IDAT") + 6] ^= 0xFF
    path.write_bytes(bytes(data))
    table = pd.DataFrame({"image": ["crc.png"], "path": [str(path)], "label": [0]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept, bad = check_images(table, skip_bad=True)
    assert kept.empty and bad[0]["problem"].startswith("truncated or corrupt image")


# ----------------------------------------------------------------------------- save_rgb

@pytest.mark.reliability
def test_save_rgb_round_trip_and_deterministic(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    for suffix in (".png", ".tif", ".bmp"):
        first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
        save_rgb(first, pixels)
        save_rgb(second, pixels)
        assert np.array_equal(load_rgb(first), pixels), suffix
        assert first.read_bytes() == second.read_bytes(), suffix
    jpeg = tmp_path / "a.jpg"
    save_rgb(jpeg, np.full((16, 16, 3), 120, dtype=np.uint8))
    assert np.abs(load_rgb(jpeg).astype(int) - 120).max() <= 2
    gray = tmp_path / "mask.png"
    save_rgb(gray, np.array([[0, 128, 255]], dtype=np.uint8))
    assert Image.open(gray).mode == "L"
    written = ["a.png", "b.png", "a.tif", "b.tif", "a.bmp", "b.bmp", "a.jpg", "mask.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written)  # no temp files left


@pytest.mark.reliability
def test_save_rgb_refuses_bad_input_and_keeps_old_file(tmp_path):
    path = tmp_path / "keep.png"
    save_rgb(path, np.zeros((2, 2, 3), dtype=np.uint8))
    before = path.read_bytes()
    with pytest.raises(ValueError):
        save_rgb(path, np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        save_rgb(path, np.zeros((2, 2, 4), dtype=np.uint8))
    with pytest.raises(InputError, match="unsupported image suffix"):
        save_rgb(tmp_path / "x.xyz", np.zeros((2, 2, 3), dtype=np.uint8))
    assert path.read_bytes() == before
