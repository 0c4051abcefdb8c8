"""A procedurally rendered, stained blood-smear dataset: the repository's embedded default data.

Each single-cell image shows a plasma background with red cells (pale-centred biconcave discs,
some overlapping, some cut by the border) and one white cell near the centre whose morphology
follows its class, drawn from the textbook description of a May-Grünwald-Giemsa smear:

- lymphoblast: large cell, large round/oval nucleus, fine pale chromatin, 1-3 nucleoli,
  thin basophilic (blue) rim;
- lymphocyte: small cell, small dense dark round nucleus with coarse clumps, scant blue rim;
- neutrophil: 3-5 nuclear lobes joined by thin strands, pale pink finely granular cytoplasm;
- eosinophil: two lobes, coarse orange-red granules filling the cytoplasm;
- basophil: dark purple granules scattered over nucleus and cytoplasm;
- monocyte: large cell, folded kidney/horseshoe nucleus, grey-blue cytoplasm with vacuoles;
- thrombocyte: a small clump of platelet fragments, no large cell.

Colours follow Beer-Lambert: each component adds optical density (``-ln(colour/255)``) and the
light is attenuated by the sum, so overlapping red cells darken and a nucleus seen through
cytoplasm mixes like a real dye. Stain hue and strength, background tint, illumination
gradient, magnification, blur and sensor noise vary per image (and per patient in the
C-NMC-like set), so the task is learnable but not trivial: blast and lymphocyte sizes overlap.
Every single-cell image has a mask (nucleus 255, cytoplasm 128, background 0).

Speed: textures come from windows of a fixed bank of smooth noise fields (built once per
process from a constant seed), so rendering is a few dozen vectorised array operations on the
cell's bounding box; a 320×240 cell takes a few milliseconds.

Determinism: each image draws from its own generator ``default_rng([seed, kind, index])``, so
files do not depend on generation order or worker count; encoder options are fixed
(:func:`leukocyte_cnn.data.images.save_rgb`) and no file holds a time stamp. The same seed gives
byte-identical files. Layouts follow the real datasets (docs/architecture.md, "Synthetic data").
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import atomic_path, write_json, write_text

KINDS = ("all_idb2", "multiclass", "kaggle", "all_idb1", "cnmc")
NORMAL_CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
CELL_CLASSES = ("lymphoblast", *NORMAL_CLASSES, "thrombocyte")
KAGGLE_CLASSES = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
CLASS_NAMES = {  # the class list each set's reader reports, ordered by label
    "all_idb2": ("other", "lymphoblast"),
    "multiclass": ("basophil", "eosinophil", "lymphoblast", "lymphocyte", "monocyte",
                   "neutrophil", "thrombocyte"),  # the CSV reader orders names alphabetically
    "kaggle": KAGGLE_CLASSES,
    "all_idb1": ("no_blasts", "blasts"),
    "cnmc": ("hem", "all"),
}
DEFAULTS = {  # size options of each kind; other values get their own folder
    "all_idb2": {"n_blast": 130, "n_other": 130, "size": 257},
    "multiclass": {"counts": {"lymphoblast": 60, "neutrophil": 50, "lymphocyte": 45,
                              "monocyte": 25, "eosinophil": 15, "basophil": 4,
                              "thrombocyte": 3}, "size": 257},
    "kaggle": {"train_cells": 20, "copies": 3, "test_cells": 15},
    "all_idb1": {"n_images": 20, "n_with_blasts": 10, "height": 480, "width": 640},
    "cnmc": {"folds": 3, "all_patients": 4, "hem_patients": 3, "cells": 10, "size": 128},
}
COMPLETE = ".complete"
# Version of the renderer and the folder layouts, written into the ``.complete`` marker with the
# kind, seed and size options. Bump it whenever a change alters the files of a set (drawing,
# encoder options, file names, CSV columns): sets on disk with another version (or a marker
# without one, i.e. older than this check) are then regenerated instead of silently reused.
SYNTHETIC_FORMAT_VERSION = 2
KAGGLE_SIZE = (240, 320)  # (height, width) of the real Kaggle images

# "Other" cells of the ALL-IDB2-like set, cycled by image number: mostly lymphocytes (the cell
# a blast is confused with), then the other normal leukocytes roughly by blood frequency.
ALL_IDB2_OTHER_CYCLE = ("lymphocyte", "neutrophil", "lymphocyte", "monocyte", "lymphocyte",
                        "eosinophil", "neutrophil", "lymphocyte", "basophil", "lymphocyte",
                        "neutrophil", "monocyte", "lymphocyte", "eosinophil", "lymphocyte",
                        "neutrophil", "lymphocyte", "monocyte", "neutrophil", "lymphocyte")

# ----------------------------------------------------------------------------- stains
# Transmitted colour (RGB on white light) of one unit of each stained component. Optical
# density is -ln(colour / 255), so densities add and colours multiply, as real dyes do.
_STAIN_RGB = {
    "rbc": (232, 158, 162),
    "chromatin": (72, 32, 118),
    "cyto_blue": (148, 176, 228),
    "cyto_pink": (238, 212, 224),
    "cyto_grey": (188, 190, 218),
    "granule_fine": (206, 158, 200),
    "granule_eos": (236, 118, 72),
    "granule_baso": (52, 22, 82),
    "nucleolus": (170, 182, 226),
    "platelet": (200, 176, 228),
    "platelet_granule": (118, 62, 158),
}
_BASE_OD = {key: -np.log(np.array(rgb, np.float32) / 255.0) for key, rgb in _STAIN_RGB.items()}
# Plasma / illumination tints seen in the real sets: PBC peach, Kaggle lavender, ALL-IDB grey,
# and a pink one; each image mixes them.
_PLASMA_RGB = np.array([(250, 234, 222), (224, 218, 234), (214, 208, 202), (246, 228, 234)],
                       np.float32)

# Cell diameter in µm: (mean, sd, low, high). Blast and lymphocyte overlap on purpose.
_DIAMETER_UM = {
    "lymphoblast": (13.2, 1.7, 9.5, 18.0),
    "lymphocyte": (9.6, 1.3, 7.0, 13.5),
    "neutrophil": (12.5, 1.0, 10.0, 15.0),
    "eosinophil": (13.5, 1.1, 11.0, 16.5),
    "basophil": (11.5, 1.0, 9.5, 14.0),
    "monocyte": (16.0, 1.6, 12.5, 20.0),
}
RBC_DIAMETER_UM = 7.6


@dataclass(frozen=True)
class _Stain:
    """One image's stain and optics."""

    od: dict[str, np.ndarray]  # optical density of one unit of each component
    light: np.ndarray  # plasma / illumination colour (RGB)
    gain: float  # exposure
    tilt: tuple[float, float]  # illumination gradient (rows, columns) across the image
    vignette: float  # darkening towards the corners
    blur: float  # box-blur radius in pixels (focus)
    noise: float  # sensor noise sd in grey levels, before the blur


def _draw_stain(rng: np.random.Generator, offset: np.ndarray | None = None) -> _Stain:
    """Per-image stain: strength, hue tilt (per-channel density scale), light, optics.

    ``offset`` (3 log-scale factors on the red/green/blue densities) shifts every component
    alike: a patient's or a lab's staining batch.
    """
    strength = rng.uniform(0.8, 1.2)
    tilt = rng.normal(0.0, 0.07, 3)
    if offset is not None:
        tilt = tilt + np.asarray(offset, np.float64)
    od = {key: (base * strength * np.exp(tilt + rng.normal(0.0, 0.04, 3))).astype(np.float32)
          for key, base in _BASE_OD.items()}
    weights = rng.dirichlet(np.full(len(_PLASMA_RGB), 0.7))
    light = (weights @ _PLASMA_RGB + rng.normal(0.0, 3.0, 3)).astype(np.float32)
    return _Stain(od=od, light=light, gain=rng.uniform(0.94, 1.04),
                  tilt=(rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1)),
                  vignette=rng.uniform(0.0, 0.15), blur=rng.uniform(0.35, 1.3),
                  noise=rng.uniform(2.0, 8.0))


# ----------------------------------------------------------------------------- noise bank
_BANK_SIZE = 512
_BANK_SEED = 20110917  # constant: the bank is part of the renderer, not of the data seed
_BANK_STEPS = 11  # scales 2 ** (k / 2) pixels, k = 0..10: 1 to 32 pixels


@lru_cache(maxsize=None)
def _bank(scale: float) -> np.ndarray:
    """A 512×512 smooth random field of unit sd varying over ``scale`` pixels (built once)."""
    rng = np.random.default_rng([_BANK_SEED, int(scale * 10)])
    if scale <= 1.0:
        field_ = rng.standard_normal((_BANK_SIZE, _BANK_SIZE), dtype=np.float32)
    else:
        n = int(np.ceil(_BANK_SIZE / scale)) + 2
        coarse = rng.standard_normal((n, n), dtype=np.float32)
        side = int(round(n * scale))
        fine = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC))
        field_ = np.ascontiguousarray(fine[:_BANK_SIZE, :_BANK_SIZE])
    field_ = (field_ - field_.mean()) / field_.std()
    field_.setflags(write=False)
    return field_


@lru_cache(maxsize=None)
def _pixel_noise_bank() -> np.ndarray:
    """White Gaussian noise (3×512×512) for the sensor noise of images that fit in it."""
    bank = np.random.default_rng([_BANK_SEED, 1]).standard_normal(
        (3, _BANK_SIZE, _BANK_SIZE), dtype=np.float32)
    bank.setflags(write=False)
    return bank


def _window(bank: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random window of ``bank``'s last two axes (random offset and mirroring): a
    fresh-looking field."""
    h, w = shape
    top, left, flip_rows, flip_cols = (int(k) for k in rng.integers(
        0, (bank.shape[-2] - h + 1, bank.shape[-1] - w + 1, 2, 2)))
    out = bank[..., top:top + h, left:left + w]
    return out[..., ::1 - 2 * flip_rows, ::1 - 2 * flip_cols]


def _noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth noise of unit sd varying over about ``scale`` pixels (read-only view or array)."""
    step = min(_BANK_STEPS - 1, max(0, round(2.0 * math.log2(max(scale, 1.0)))))
    nearest = 2.0 ** (step / 2)
    if shape[0] <= _BANK_SIZE and shape[1] <= _BANK_SIZE:
        return _window(_bank(nearest), shape, rng)
    # Larger than the bank (only whole smears): repeat one window; never used for cell textures.
    tile = _window(_bank(nearest), (min(_BANK_SIZE, shape[0]), min(_BANK_SIZE, shape[1])), rng)
    reps = (-(-shape[0] // tile.shape[0]), -(-shape[1] // tile.shape[1]))
    return np.tile(tile, reps)[:shape[0], :shape[1]]


# ----------------------------------------------------------------------------- geometry
def _soft(signed_distance: np.ndarray) -> np.ndarray:
    """Coverage from a signed distance in pixels (positive inside): a 1-pixel soft edge."""
    return np.clip(signed_distance + 0.5, 0.0, 1.0)


@lru_cache(maxsize=64)
def _offsets(half: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets (-half..half) of a square patch, as float32 grids."""
    axis = np.arange(-half, half + 1, dtype=np.float32)
    rows, cols = np.meshgrid(axis, axis, indexing="ij")
    rows.setflags(write=False)
    cols.setflags(write=False)
    return rows, cols


def _rotated(half: int, angle: float, dy: float = 0.0, dx: float = 0.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Patch coordinates (u along the cell's axis, v across), centred at (dy, dx)."""
    rows, cols = _offsets(half)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    y, x = rows - np.float32(dy), cols - np.float32(dx)
    return x * c + y * s, y * c - x * s


def _ellipse_sd(u: np.ndarray, v: np.ndarray, radius: float, aspect: float = 1.0
                ) -> np.ndarray:
    """Approximate signed distance (pixels, positive inside) of an ellipse with semi-axes
    ``radius`` (along u) and ``radius * aspect`` (along v)."""
    return radius - np.hypot(u, v / np.float32(aspect))


def _segment_sd(u: np.ndarray, v: np.ndarray, p: np.ndarray, q: np.ndarray,
                half_width: float) -> np.ndarray:
    """Signed distance of a thick segment p→q (points as (u, v)): strands between lobes."""
    d = q - p
    t = np.clip(((u - p[0]) * d[0] + (v - p[1]) * d[1]) / max(float(d @ d), 1e-6), 0.0, 1.0)
    return half_width - np.hypot(u - (p[0] + t * d[0]), v - (p[1] + t * d[1]))


def _arc_sd(u: np.ndarray, v: np.ndarray, arc_radius: float, half_angle: float,
            thickness: np.ndarray | float) -> np.ndarray:
    """Signed distance of a thick circular arc opening towards -u (kidney or horseshoe).

    The arc is centred at the origin, symmetric about the u axis and spans ±``half_angle``
    around +u; its ends are rounded (Quilez's exact arc distance).
    """
    sin_a, cos_a = np.float32(np.sin(half_angle)), np.float32(np.cos(half_angle))
    across = np.abs(v)
    beyond_end = cos_a * across > sin_a * u
    to_end = np.hypot(across - sin_a * arc_radius, u - cos_a * arc_radius)
    to_ring = np.abs(np.hypot(u, v) - arc_radius)
    return thickness - np.where(beyond_end, to_end, to_ring)


def _stamp(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, sigma: float,
           weights: np.ndarray) -> np.ndarray:
    """Sum of small Gaussian dots (granules) at the given pixel positions, vectorised."""
    reach = max(1, int(np.ceil(2.5 * sigma)))
    axis = np.arange(-reach, reach + 1)
    dy, dx = np.meshgrid(axis, axis, indexing="ij")
    kernel = np.exp(-(dy ** 2 + dx ** 2) / (2.0 * sigma ** 2)).ravel()
    iy = np.rint(rows).astype(np.int64)[:, None] + dy.ravel()[None, :]
    ix = np.rint(cols).astype(np.int64)[:, None] + dx.ravel()[None, :]
    inside = (iy >= 0) & (iy < shape[0]) & (ix >= 0) & (ix < shape[1])
    values = (weights[:, None] * kernel[None, :])[inside]
    flat = np.bincount((iy * shape[1] + ix)[inside], values, minlength=shape[0] * shape[1])
    return flat.reshape(shape).astype(np.float32)


def _scatter_in(rng: np.random.Generator, allowed: np.ndarray, n: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random positions (rows, cols; sub-pixel) where ``allowed`` is True."""
    candidates = np.flatnonzero(allowed.ravel())
    if n <= 0 or len(candidates) == 0:
        return np.zeros(0), np.zeros(0)
    picks = candidates[rng.integers(0, len(candidates), n)]
    rows, cols = np.divmod(picks, allowed.shape[1])
    jitter = rng.uniform(-0.5, 0.5, (2, n))
    return rows + jitter[0], cols + jitter[1]


# ----------------------------------------------------------------------------- red cells
def _rbc_sprite(radius: float, rng: np.random.Generator) -> np.ndarray:
    """Thickness map of one red cell: a biconcave disc, thick rim, pale centre.

    The slight ellipse is axis-aligned; :func:`_red_cells` turns sprites by 90° steps.
    """
    half = int(np.ceil(radius * 1.12)) + 2
    rows, cols = _offsets(half)
    rho = np.hypot(cols, rows / np.float32(rng.uniform(0.88, 1.0)))
    wobble = _noise(rng, rows.shape, max(2.0, radius * 0.5)) * np.float32(radius * 0.025)
    alpha = _soft(radius + wobble - rho)
    x = rho * np.float32(1.0 / radius)
    pallor = rng.uniform(0.45, 0.8) * np.exp(-(x / rng.uniform(0.35, 0.5)) ** 4)
    rim = 0.12 * np.exp(-((x - 0.8) / 0.15) ** 2)
    return (alpha * (1.0 - pallor + rim)).astype(np.float32)


def _scatter_discs(rng: np.random.Generator, n: int, h: int, w: int, radius: float
                   ) -> np.ndarray:
    """Centres (row, col) of ``n`` discs by dart throwing: mostly apart, some overlapping."""
    tries = 4 * n + 8
    cand = np.stack([rng.uniform(-radius * 0.8, h + radius * 0.8, tries),
                     rng.uniform(-radius * 0.8, w + radius * 0.8, tries)], axis=1)
    # A per-candidate minimum gap below 2 r lets some discs overlap, as in a real smear.
    gap2 = (radius * rng.uniform(1.35, 2.05, tries)) ** 2
    dist2 = ((cand[:, None, :] - cand[None, :, :]) ** 2).sum(axis=2)
    free = np.ones(tries, bool)
    kept = []
    for i in range(tries):
        if len(kept) == n:
            break
        if free[i]:
            kept.append(i)
            free &= dist2[i] >= gap2  # later candidates too close to this one are out
    return cand[kept]


def _red_cells(h: int, w: int, ppu: float, rng: np.random.Generator) -> np.ndarray:
    """Red-cell thickness map of a field: a few sprite variants stamped at dart positions."""
    radius = RBC_DIAMETER_UM / 2 * ppu * rng.uniform(0.92, 1.08)
    sprites = [_rbc_sprite(radius * rng.uniform(0.92, 1.08), rng) for _ in range(3)]
    coverage = rng.uniform(0.3, 0.6)
    n = int(coverage * h * w / (np.pi * radius ** 2))
    centres = _scatter_discs(rng, n, h, w, radius)
    choice = rng.integers(0, len(sprites), len(centres))
    pose = rng.integers(0, 8, len(centres))
    thickness = np.zeros((h, w), np.float32)
    for (cy, cx), k, p in zip(centres, choice, pose):
        sprite = sprites[k][::1 - 2 * (p & 1), ::1 - (p & 2)]  # mirror rows / columns
        if p & 4:
            sprite = sprite.T
        _add_clipped(thickness, sprite, int(round(cy)), int(round(cx)))
    return thickness


def _boxes(shape: tuple[int, int], patch_shape: tuple[int, int], cy: int, cx: int
           ) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Slices of the image and of a patch centred at (cy, cx), clipped to the image."""
    ph, pw = patch_shape
    top, left = cy - ph // 2, cx - pw // 2
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + ph, shape[0]), min(left + pw, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    return ((slice(y0, y1), slice(x0, x1)),
            (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)))


def _add_clipped(target: np.ndarray, patch: np.ndarray, cy: int, cx: int) -> None:
    boxes = _boxes(target.shape[:2], patch.shape[:2], cy, cx)
    if boxes is not None:
        target[boxes[0]] += patch[boxes[1]]


# ----------------------------------------------------------------------------- white cells
@dataclass
class _Patch:
    """A rendered cell in its own square window, ready to be placed on a field."""

    cover: np.ndarray  # 0..1, hides the red cells beneath
    layers: list[tuple[np.ndarray, str]]  # (density, stain component)
    labels: np.ndarray  # uint8 mask: nucleus 255, cytoplasm 128, else 0
    nucleus_centre: tuple[float, float] = (0.0, 0.0)  # (row, col) from the window centre
    radius: float = 0.0  # outer radius of the cell in pixels


@dataclass
class _Cell:
    """Coordinates and outline shared by the class recipes."""

    u: np.ndarray  # along the cell's long axis, pixels from the centre
    v: np.ndarray  # across
    radius: float  # cell radius in pixels
    ppu: float  # pixels per µm
    rng: np.random.Generator
    cell_sd: np.ndarray | None = None  # signed distance to the cell outline (pixels)

    def noise(self, scale_um: float) -> np.ndarray:
        return _noise(self.rng, self.u.shape, scale_um * self.ppu)


def _wobble(cell: _Cell, size: float, scale: float = 0.35, amount: float = 0.03
            ) -> np.ndarray:
    """Low-frequency outline irregularity, in pixels, for a shape of size ``size`` px."""
    return _noise(cell.rng, cell.u.shape, max(2.0, size * scale)) * np.float32(size * amount)


def _round_nucleus(cell: _Cell, fill: tuple[float, float], eccentric: tuple[float, float]
                   ) -> tuple[np.ndarray, tuple[float, float]]:
    """A round/oval nucleus taking ``fill`` of the cell radius, shifted off-centre."""
    rng = cell.rng
    radius = cell.radius * rng.uniform(*fill)
    room = cell.radius - radius
    shift = room * rng.uniform(*eccentric)
    direction = rng.uniform(0, 2 * np.pi)
    du, dv = shift * np.cos(direction), shift * np.sin(direction)
    sd = _ellipse_sd(cell.u - np.float32(du), cell.v - np.float32(dv), radius,
                     rng.uniform(0.86, 1.0)) + _wobble(cell, radius)
    return sd, (du, dv)


def _lobed_nucleus(cell: _Cell, n_lobes: int, lobe: tuple[float, float],
                   ring: tuple[float, float], span: tuple[float, float], strand: float
                   ) -> tuple[np.ndarray, tuple[float, float]]:
    """Lobes along a curved path, joined by thin chromatin strands (segmented nucleus)."""
    rng, r = cell.rng, cell.radius
    ring_r = r * rng.uniform(*ring)
    total = rng.uniform(*span)
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.linspace(0, total, n_lobes) + rng.normal(0, 0.12, n_lobes)
    centres = np.stack([ring_r * np.cos(angles), ring_r * np.sin(angles)], 1)
    centres += rng.normal(0, 0.04 * r, centres.shape)
    centres -= centres.mean(axis=0) * 0.6  # keep the nucleus near the middle of the cell
    sd = None
    for (cu, cv), size in zip(centres, r * rng.uniform(*lobe, n_lobes)):
        lobe_sd = _ellipse_sd(cell.u - np.float32(cu), cell.v - np.float32(cv), size,
                              rng.uniform(0.75, 1.0))
        sd = lobe_sd if sd is None else np.maximum(sd, lobe_sd)
    half_width = max(0.8, r * strand * rng.uniform(0.8, 1.2))
    for p, q in zip(centres[:-1], centres[1:]):
        sd = np.maximum(sd, _segment_sd(cell.u, cell.v, p, q, half_width))
    sd += _wobble(cell, r, scale=0.15, amount=0.02)
    return sd, (float(centres[:, 0].mean()), float(centres[:, 1].mean()))


def _cytoplasm_granules(cell: _Cell, region: np.ndarray, spacing_um: float, size_um: float,
                        strength: tuple[float, float]) -> np.ndarray:
    """Granules packed at about ``spacing_um`` inside ``region`` (bool), as a density map."""
    rng = cell.rng
    n = int(region.sum() / (spacing_um * cell.ppu) ** 2)
    rows, cols = _scatter_in(rng, region, n)
    weights = rng.uniform(*strength, len(rows))
    return _stamp(region.shape, rows, cols, max(0.6, size_um * cell.ppu), weights)


def _nucleoli(cell: _Cell, centre: tuple[float, float], within: float, count: int
              ) -> np.ndarray:
    """Coverage (0..1) of ``count`` nucleoli inside a nucleus of radius ``within`` pixels."""
    rng = cell.rng
    cover = np.zeros(cell.u.shape, np.float32)
    for _ in range(count):
        dist, angle = within * np.sqrt(rng.uniform(0.02, 0.3)), rng.uniform(0, 2 * np.pi)
        cu, cv = centre[0] + dist * np.cos(angle), centre[1] + dist * np.sin(angle)
        size = rng.uniform(0.5, 1.1) * cell.ppu
        cover = np.maximum(cover, _soft(_ellipse_sd(cell.u - np.float32(cu),
                                                    cell.v - np.float32(cv), max(size, 1.0),
                                                    rng.uniform(0.7, 1.0))))
    return cover


def _recipe_lymphoblast(cell: _Cell):
    """Large round nucleus, fine pale chromatin, 1-3 nucleoli, thin blue rim."""
    rng = cell.rng
    nuc_sd, centre = _round_nucleus(cell, fill=(0.8, 0.92), eccentric=(0.0, 0.6))
    nuc = _soft(np.minimum(nuc_sd, cell.cell_sd - 1.0))
    chromatin = rng.uniform(0.5, 0.72) * (1.0 + 0.11 * cell.noise(0.3) + 0.07 * cell.noise(1.5))
    nucleoli = _nucleoli(cell, centre, cell.radius * 0.8, int(rng.integers(1, 4)))
    nucleoli *= nuc * np.float32(rng.uniform(0.7, 1.0))
    chromatin = chromatin * (1.0 - 0.65 * nucleoli)
    rim = np.clip(1.0 - cell.cell_sd / (0.25 * cell.radius), 0.0, 1.0)  # darker at the edge
    cyto = rng.uniform(0.5, 0.85) * (0.7 + 0.5 * rim) * (1.0 + 0.06 * cell.noise(1.0))
    return nuc_sd, centre, [(cyto * (1.0 - 0.8 * nuc), "cyto_blue"),
                            (chromatin * nuc, "chromatin"), (nucleoli, "nucleolus")]


def _recipe_lymphocyte(cell: _Cell):
    """Small cell, dense dark round nucleus with coarse clumps, scant blue rim."""
    rng = cell.rng
    nuc_sd, centre = _round_nucleus(cell, fill=(0.74, 0.88), eccentric=(0.2, 0.9))
    nuc = _soft(np.minimum(nuc_sd, cell.cell_sd - 1.0))
    clumps = 1.0 / (1.0 + np.exp(-2.5 * cell.noise(0.7)))
    border = np.exp(-np.clip(nuc_sd, 0, None) / np.float32(0.8 * cell.ppu))
    chromatin = rng.uniform(0.85, 1.05) * (0.72 + 0.38 * clumps + 0.12 * border
                                           + 0.05 * cell.noise(0.25))
    rim = np.clip(1.0 - cell.cell_sd / (0.3 * cell.radius), 0.0, 1.0)
    cyto = rng.uniform(0.95, 1.25) * (0.75 + 0.4 * rim)
    return nuc_sd, centre, [(cyto * (1.0 - 0.8 * nuc), "cyto_blue"),
                            (chromatin * nuc, "chromatin")]


def _recipe_neutrophil(cell: _Cell):
    """3-5 lobes joined by thin strands, pale pink finely granular cytoplasm."""
    rng = cell.rng
    nuc_sd, centre = _lobed_nucleus(cell, int(rng.integers(3, 6)), lobe=(0.19, 0.25),
                                    ring=(0.27, 0.38), span=(2.2, 4.0), strand=0.035)
    nuc = _soft(np.minimum(nuc_sd, cell.cell_sd - 1.0))
    chromatin = rng.uniform(0.9, 1.1) * (0.8 + 0.35 / (1.0 + np.exp(-2.0 * cell.noise(0.6))))
    cyto = rng.uniform(0.8, 1.2) * (1.0 + 0.15 * cell.noise(0.2))
    fine = np.clip(cell.noise(0.15), 0.0, None) * np.float32(rng.uniform(0.25, 0.45))
    return nuc_sd, centre, [(cyto * (1.0 - 0.6 * nuc), "cyto_pink"),
                            (fine * (1.0 - nuc), "granule_fine"),
                            (chromatin * nuc, "chromatin")]


def _recipe_eosinophil(cell: _Cell):
    """Two lobes; coarse orange-red granules filling the cytoplasm."""
    rng = cell.rng
    nuc_sd, centre = _lobed_nucleus(cell, 2, lobe=(0.24, 0.3), ring=(0.3, 0.38),
                                    span=(1.6, 2.6), strand=0.04)
    nuc = _soft(np.minimum(nuc_sd, cell.cell_sd - 1.0))
    chromatin = rng.uniform(0.8, 1.0) * (0.85 + 0.25 / (1.0 + np.exp(-2.0 * cell.noise(0.6))))
    region = (cell.cell_sd > 0.35 * cell.ppu) & (nuc_sd < 0.5 * cell.ppu)
    granules = _cytoplasm_granules(cell, region, spacing_um=0.5, size_um=0.22,
                                   strength=(0.3, 0.6))
    cyto = rng.uniform(0.6, 0.9)
    return nuc_sd, centre, [(np.full_like(nuc, cyto) * (1.0 - 0.6 * nuc), "cyto_pink"),
                            (granules * _soft(cell.cell_sd), "granule_eos"),
                            (chromatin * nuc, "chromatin")]


def _recipe_basophil(cell: _Cell):
    """Pale lobed nucleus hidden under coarse dark purple granules."""
    rng = cell.rng
    nuc_sd, centre = _lobed_nucleus(cell, int(rng.integers(2, 4)), lobe=(0.24, 0.3),
                                    ring=(0.18, 0.28), span=(1.5, 3.0), strand=0.08)
    nuc = _soft(np.minimum(nuc_sd, cell.cell_sd - 1.0))
    chromatin = rng.uniform(0.55, 0.75) * (1.0 + 0.1 * cell.noise(0.6))
    region = cell.cell_sd > 0.3 * cell.ppu
    granules = _cytoplasm_granules(cell, region, spacing_um=rng.uniform(1.2, 1.8),
                                   size_um=0.42, strength=(0.5, 1.1))
    cyto = rng.uniform(0.6, 0.9) * (1.0 + 0.1 * cell.noise(0.5))
    return nuc_sd, centre, [(cyto * (1.0 - 0.6 * nuc), "cyto_pink"),
                            (granules * _soft(cell.cell_sd), "granule_baso"),
                            (chromatin * nuc, "chromatin")]


def _recipe_monocyte(cell: _Cell):
    """Folded kidney/horseshoe nucleus, lacy chromatin, grey-blue cytoplasm with vacuoles."""
    rng, r = cell.rng, cell.radius
    if rng.uniform() < 0.5:  # kidney: fat, short arc
        arc_r, half_angle, thick = r * rng.uniform(0.26, 0.34), rng.uniform(0.9, 1.4), 0.42
    else:  # horseshoe: thinner, longer arc
        arc_r, half_angle, thick = r * rng.uniform(0.4, 0.48), rng.uniform(1.6, 2.3), 0.27
    shift = r * rng.uniform(-0.08, 0.12)  # the indentation faces a random side (cell angle)
    u, v = cell.u - np.float32(shift), cell.v
    along = np.arctan2(v, u)
    thickness = r * thick * rng.uniform(0.9, 1.1) * (1.0 - 0.25 * np.abs(along) / np.pi)
    nuc_sd = _arc_sd(u, v, arc_r, half_angle, thickness) + _wobble(cell, r, 0.2, 0.025)
    nuc = _soft(np.minimum(nuc_sd, cell.cell_sd - 1.0))
    folds = np.exp(-(cell.noise(1.0) / 0.22) ** 2)  # ridges where the field crosses zero
    chromatin = rng.uniform(0.6, 0.8) * (0.9 + 0.15 * cell.noise(0.35) + 0.35 * folds)
    cyto = rng.uniform(0.8, 1.1) * (1.0 + 0.08 * cell.noise(0.8))
    vacuoles = np.zeros_like(nuc)
    space = (cell.cell_sd > 1.2 * cell.ppu) & (nuc_sd < -1.2 * cell.ppu)
    rows, cols = _scatter_in(rng, space, int(rng.integers(0, 9)))
    half = cell.u.shape[0] // 2
    rows_grid, cols_grid = _offsets(half)
    for row, col in zip(rows - half, cols - half):
        size = rng.uniform(0.3, 0.8) * cell.ppu
        vacuoles = np.maximum(vacuoles, _soft(size - np.hypot(rows_grid - np.float32(row),
                                                              cols_grid - np.float32(col))))
    dust = np.clip(cell.noise(0.15), 0.0, None) * np.float32(rng.uniform(0.05, 0.15))
    return nuc_sd, (shift + arc_r * 0.5, 0.0), [
        (cyto * (1.0 - 0.85 * vacuoles) * (1.0 - 0.7 * nuc), "cyto_grey"),
        (dust * (1.0 - nuc), "granule_fine"), (chromatin * nuc, "chromatin")]


_RECIPES = {"lymphoblast": _recipe_lymphoblast, "lymphocyte": _recipe_lymphocyte,
            "neutrophil": _recipe_neutrophil, "eosinophil": _recipe_eosinophil,
            "basophil": _recipe_basophil, "monocyte": _recipe_monocyte}


def _draw_diameter(class_name: str, rng: np.random.Generator) -> float:
    mean, sd, low, high = _DIAMETER_UM[class_name]
    return float(np.clip(rng.normal(mean, sd), low, high))


def _leukocyte(class_name: str, ppu: float, rng: np.random.Generator) -> _Patch:
    """Render one white cell of ``class_name`` (``ppu`` pixels per µm) in its own window."""
    radius = _draw_diameter(class_name, rng) / 2 * ppu
    half = int(np.ceil(radius * 1.08)) + 3
    angle = rng.uniform(0, 2 * np.pi)
    u, v = _rotated(half, angle)
    cell = _Cell(u=u, v=v, radius=radius, ppu=ppu, rng=rng)
    cell.cell_sd = _ellipse_sd(u, v, radius, rng.uniform(0.9, 1.0)) + _wobble(cell, radius)
    nuc_sd, centre, layers = _RECIPES[class_name](cell)
    cover = _soft(cell.cell_sd)
    layers = [(np.asarray(density * cover, np.float32), key) for density, key in layers]
    labels = np.zeros(cover.shape, np.uint8)
    labels[cell.cell_sd > 0] = 128
    labels[(nuc_sd > 0) & (cell.cell_sd > 1.0)] = 255
    # Nucleus centre back in window rows/cols: undo the rotation of (u, v).
    c, s = np.cos(angle), np.sin(angle)
    du, dv = centre
    return _Patch(cover=cover, layers=layers, labels=labels,
                  nucleus_centre=(du * s + dv * c, du * c - dv * s), radius=radius)


def _platelets(ppu: float, rng: np.random.Generator, n_fragments: tuple[int, int] = (3, 9),
               spread_um: float = 1.3) -> _Patch:
    """A clump of platelet fragments: pale hyalomere around a granular purple core."""
    half = int(np.ceil((spread_um * 2.2 + 1.6) * ppu)) + 3
    rows, cols = _offsets(half)
    n = int(rng.integers(*n_fragments))
    body = core = None
    for _ in range(n):
        cy, cx = rng.normal(0, spread_um * ppu, 2)
        size = max(1.5, rng.uniform(0.7, 1.5) * ppu)
        u, v = _rotated(half, rng.uniform(0, np.pi), cy, cx)
        sd = _ellipse_sd(u, v, size, rng.uniform(0.6, 1.0))
        sd = sd + _noise(rng, u.shape, max(2.0, size * 0.4)) * np.float32(size * 0.12)
        inner = sd - np.float32(0.45 * size)
        body = sd if body is None else np.maximum(body, sd)
        core = inner if core is None else np.maximum(core, inner)
    cover = _soft(body)
    grains = np.clip(0.6 + 0.8 * _noise(rng, cover.shape, 0.25 * ppu), 0.0, None)
    labels = np.zeros(cover.shape, np.uint8)
    labels[body > 0] = 128
    labels[core > 0] = 255
    return _Patch(cover=cover, layers=[(cover * np.float32(rng.uniform(0.7, 1.1)), "platelet"),
                                       (_soft(core) * grains, "platelet_granule")],
                  labels=labels, radius=float(half))


# ----------------------------------------------------------------------------- fields
def _hide_red_cells(rbc: np.ndarray, patch: _Patch, cy: int, cx: int) -> None:
    """A white cell or platelet lies on top: red cells under it are not seen."""
    boxes = _boxes(rbc.shape, patch.cover.shape, cy, cx)
    if boxes is not None:
        rbc[boxes[0]] *= 1.0 - patch.cover[boxes[1]]


def _add_dyes(od: np.ndarray, mask: np.ndarray | None, patch: _Patch, stain: _Stain,
              cy: int, cx: int) -> None:
    """Add a patch's dye densities centred at (cy, cx); its labels too if ``mask``."""
    boxes = _boxes(od.shape[1:], patch.cover.shape, cy, cx)
    if boxes is None:
        return
    image_box, patch_box = boxes
    window = od[(slice(None), *image_box)]
    for density, key in patch.layers:
        window += stain.od[key][:, None, None] * density[patch_box]
    if mask is not None:
        np.maximum(mask[image_box], patch.labels[patch_box], out=mask[image_box])


def _compose(rbc: np.ndarray | None, shape: tuple[int, int], stain: _Stain,
             placed: list[tuple[_Patch, int, int]], mask: np.ndarray | None = None
             ) -> np.ndarray:
    """Optical density of a field (channels first: 3×H×W, so that every array operation
    runs along long contiguous rows): red cells hidden under the others, then the patches.

    ``mask`` receives the labels of the first patch only (the centred cell).
    """
    if rbc is None:
        od = np.zeros((3, *shape), np.float32)
    else:
        for patch, cy, cx in placed:
            _hide_red_cells(rbc, patch, cy, cx)
        od = stain.od["rbc"][:, None, None] * rbc
    for k, (patch, cy, cx) in enumerate(placed):
        _add_dyes(od, mask if k == 0 else None, patch, stain, cy, cx)
    return od


def _stray_platelets(ppu: float, rng: np.random.Generator, h: int, w: int,
                     avoid: list[tuple[float, float, float]]) -> list[tuple[_Patch, int, int]]:
    """A few single platelets scattered in the plasma, away from the white cells."""
    out = []
    for _ in range(int(rng.poisson(0.5 * h * w / (32 * ppu) ** 2))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if any(np.hypot(cy - y, cx - x) < r + 3 * ppu for y, x, r in avoid):
            continue
        out.append((_platelets(ppu, rng, (1, 3), 0.5), int(cy), int(cx)))
    return out


def _finish(od: np.ndarray, stain: _Stain, rng: np.random.Generator,
            keep: np.ndarray | None = None) -> np.ndarray:
    """Light through the dyes, illumination, sensor noise, optional black surround, blur.

    Noise goes in before the blur: the camera's demosaicing and JPEG smooth it too, and it
    saves a float pass (this function is most of the rendering time).
    """
    h, w = od.shape[1:]
    rows = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    cols = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    light = stain.gain * (1.0 + stain.tilt[0] * rows + stain.tilt[1] * cols
                          - stain.vignette * (rows ** 2 + cols ** 2))
    od -= np.log(light)  # illumination as a (negative) density: one pass less
    np.negative(od, out=od)
    np.exp(od, out=od)
    od *= stain.light[:, None, None]
    if h <= _BANK_SIZE and w <= _BANK_SIZE:
        noise = _window(_pixel_noise_bank(), (h, w), rng)
    else:
        noise = rng.standard_normal((3, h, w), dtype=np.float32)
    od += noise * np.float32(stain.noise)
    if keep is not None:
        od *= keep  # the surround of a segmented cell is exactly black
    np.clip(od, 0, 255, out=od)
    planes = [Image.fromarray(plane) for plane in od.astype(np.uint8)]
    image = Image.merge("RGB", planes).filter(ImageFilter.BoxBlur(stain.blur))
    return np.asarray(image)


def pixels_per_um(size: tuple[int, int], background: str = "smear") -> float:
    """Nominal magnification of a single-cell image: a smear crop shows ~32 µm across its
    short side (ALL-IDB2, Kaggle); a segmented cell on black nearly fills its frame (C-NMC)."""
    return min(size) / (19.0 if background == "black" else 32.0)


def render_cell(class_name: str, size: tuple[int, int], rng: np.random.Generator,
                background: str = "smear", stain_offset: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """One single-cell image (``uint8`` H×W×3) and its mask (``uint8`` H×W: 255/128/0).

    ``size`` is (height, width). ``background="smear"`` puts the cell among red cells on
    plasma; ``"black"`` gives a segmented cell on black, as in C-NMC. ``stain_offset`` (3
    log-scale factors on the red/green/blue optical densities) is a shared stain batch, e.g.
    one patient's. The mask marks the centred cell only (the platelet clump for
    ``thrombocyte``: granular cores 255, pale rims 128).
    """
    if class_name not in CELL_CLASSES:
        raise ValueError(f"unknown cell class {class_name!r}; known: {', '.join(CELL_CLASSES)}")
    if background not in ("smear", "black"):
        raise ValueError(f"background must be 'smear' or 'black', got {background!r}")
    h, w = int(size[0]), int(size[1])
    stain = _draw_stain(rng, stain_offset)
    ppu = pixels_per_um((h, w), background) * rng.uniform(0.93, 1.07)
    if class_name == "thrombocyte":
        patch = _platelets(ppu, rng, (4, 11), 1.5)
    else:
        patch = _leukocyte(class_name, ppu, rng)
    cy = int(round(h / 2 + rng.normal(0, 0.02 * h)))
    cx = int(round(w / 2 + rng.normal(0, 0.02 * w)))
    mask = np.zeros((h, w), np.uint8)
    placed = [(patch, cy, cx)]
    if background == "smear":
        rbc = _red_cells(h, w, ppu, rng)
        placed += _stray_platelets(ppu, rng, h, w, [(cy, cx, patch.radius)])
        return _finish(_compose(rbc, (h, w), stain, placed, mask), stain, rng), mask
    od = _compose(None, (h, w), stain, placed, mask)
    keep = np.zeros((h, w), np.float32)
    boxes = _boxes((h, w), patch.cover.shape, cy, cx)
    if boxes is not None:
        keep[boxes[0]] = patch.cover[boxes[1]]
    return _finish(od, stain, rng, keep), mask


def render_smear(size: tuple[int, int], rng: np.random.Generator, n_cells: int,
                 n_blasts: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """An ALL-IDB1-like field: red cells and ``n_cells`` white cells, ``n_blasts`` of them
    lymphoblasts (the rest normal leukocytes); returns the image and the blast nucleus
    centroids as integer (x, y), in placement order. Cells that find no free room (tiny
    images) are left out."""
    if not 0 <= n_blasts <= n_cells:
        raise ValueError(f"need 0 <= n_blasts <= n_cells, got {n_blasts} and {n_cells}")
    h, w = int(size[0]), int(size[1])
    stain = _draw_stain(rng)
    ppu = min(h, w) / 100.0 * rng.uniform(0.93, 1.07)
    classes = ["lymphoblast"] * n_blasts + [
        NORMAL_CLASSES[int(k)] for k in rng.integers(0, len(NORMAL_CLASSES), n_cells - n_blasts)]
    classes = [classes[int(k)] for k in rng.permutation(n_cells)]
    rbc = _red_cells(h, w, ppu, rng)
    placed: list[tuple[_Patch, int, int]] = []
    blasts = []
    for class_name in classes:
        patch = _leukocyte(class_name, ppu, rng)
        r = patch.radius
        for _ in range(200):  # rejection sampling: white cells do not overlap
            cy, cx = rng.uniform(r + 2, h - r - 2), rng.uniform(r + 2, w - r - 2)
            if all(np.hypot(cy - y, cx - x) > r + p.radius + 4 for p, y, x in placed):
                break
        else:
            continue
        cy, cx = int(round(cy)), int(round(cx))
        placed.append((patch, cy, cx))
        if class_name == "lymphoblast":
            ny, nx = patch.nucleus_centre
            blasts.append((int(round(cx + nx)), int(round(cy + ny))))
    placed += _stray_platelets(ppu, rng, h, w, [(y, x, p.radius) for p, y, x in placed])
    return _finish(_compose(rbc, (h, w), stain, placed), stain, rng), blasts


# ----------------------------------------------------------------------------- datasets
# Fixed encoder options per suffix (the same array always gives the same bytes), chosen like
# the real sets: ALL-IDB2 ships uncompressed TIFF, Kaggle's JPEGs are quality 75 with 4:2:0
# chroma (read from their quantisation tables), camera smears are high-quality JPEG. PNG uses
# zlib level 1 with the strategy that suits the content (measured: run-length for masks,
# 0.45 ms and smallest; Huffman-only for noisy renders, smallest and 4x faster than level 6).
_ENCODERS: dict[str, tuple[str, dict]] = {
    ".tif": ("TIFF", {"compression": "raw"}),
    ".png": ("PNG", {"compress_level": 1}),
    ".jpeg": ("JPEG", {"quality": 75, "subsampling": 2, "optimize": False}),
    ".jpg": ("JPEG", {"quality": 90, "subsampling": 2, "optimize": False}),
    ".bmp": ("BMP", {}),
}
_Z_HUFFMAN_ONLY, _Z_RLE = 2, 3  # zlib strategies


def _save(path: str | os.PathLike, image: np.ndarray | Image.Image) -> None:
    """Write an image with the fixed encoder options of its suffix, atomically."""
    image_format, options = _ENCODERS[os.path.splitext(path)[1].lower()]
    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    if image_format == "PNG":
        options = {**options, "compress_type": _Z_RLE if image.mode == "L" else _Z_HUFFMAN_ONLY}
    with atomic_path(path) as tmp:
        image.save(tmp, format=image_format, **options)


def _image_rng(seed: int, kind: str, index: int, *more: int) -> np.random.Generator:
    """The generator of one image: independent of generation order and worker count."""
    return np.random.default_rng([seed, KINDS.index(kind), index, *more])


def _augment_copy(image: Image.Image, mask: Image.Image, rng: np.random.Generator
                  ) -> tuple[Image.Image, Image.Image]:
    """A Kaggle-style augmented copy: flips, small rotation (black corners), shift."""
    w = image.width
    angle = float(rng.uniform(-20, 20))
    dx, dy = (int(k) for k in rng.integers(-int(0.06 * w), int(0.06 * w) + 1, 2))
    for flip, how in zip(rng.integers(0, 2, 2), (Image.Transpose.FLIP_LEFT_RIGHT,
                                                 Image.Transpose.FLIP_TOP_BOTTOM)):
        if flip:
            image, mask = image.transpose(how), mask.transpose(how)
    # Nearest-neighbour: 11x faster than Pillow's bilinear here, and the renders are already
    # smooth; TRAIN and TEST copies go through the same transform, so its traces say nothing
    # about the class or the split.
    image = image.rotate(angle, Image.NEAREST, translate=(dx, dy), fillcolor=(0, 0, 0))
    mask = mask.rotate(angle, Image.NEAREST, translate=(dx, dy), fillcolor=0)
    return image, mask


def _run_job(job: tuple) -> int:
    """Render and write one job's files into the temporary set folder; returns the count.

    Jobs are plain tuples so that worker processes can receive them.
    """
    task = job[0]
    if task == "cell":
        _, seed, kind, index, class_name, size, background, offset, image_path, mask_path = job
        rng = _image_rng(seed, kind, index)
        image, mask = render_cell(class_name, size, rng, background,
                                  None if offset is None else np.asarray(offset))
        _save(image_path, image)
        _save(mask_path, mask)
        return 2
    if task == "kaggle":
        _, seed, cell_id, class_name, copies, image_dir, mask_dir = job
        image, mask = render_cell(class_name, KAGGLE_SIZE, _image_rng(seed, "kaggle", cell_id))
        image, mask = Image.fromarray(image), Image.fromarray(mask)
        for copy in range(copies):
            aug_image, aug_mask = _augment_copy(image, mask,
                                                _image_rng(seed, "kaggle", cell_id, copy + 1))
            _save(os.path.join(image_dir, f"_{copy}_{cell_id}.jpeg"), aug_image)
            _save(os.path.join(mask_dir, f"_{copy}_{cell_id}.png"), aug_mask)
        return 2 * copies
    if task == "smear":
        _, seed, index, size, with_blasts, image_path = job
        rng = _image_rng(seed, "all_idb1", index)
        n_cells = int(rng.integers(6, 16))
        n_blasts = int(rng.integers(2, min(6, n_cells) + 1)) if with_blasts else 0
        image, blasts = render_smear(size, rng, n_cells, n_blasts)
        _save(image_path, image)
        write_text(Path(image_path).with_suffix(".xyc"), "".join(f"{x} {y}\n" for x, y in blasts))
        return 2
    raise ValueError(f"unknown job {task!r}")


def _jobs_all_idb2(root: Path, seed: int, n_blast: int, n_other: int, size: int) -> list:
    jobs = []
    for i in range(n_blast + n_other):
        blast = i < n_blast
        cls = "lymphoblast" if blast else ALL_IDB2_OTHER_CYCLE[(i - n_blast)
                                                                % len(ALL_IDB2_OTHER_CYCLE)]
        name = f"Im{i + 1:03d}_{int(blast)}"
        jobs.append(("cell", seed, "all_idb2", i, cls, (size, size), "smear", None,
                     str(root / f"{name}.tif"), str(root / "masks" / f"{name}.png")))
    return jobs


def _jobs_multiclass(root: Path, seed: int, counts: dict, size: int) -> list:
    jobs, lines = [], ["image,class_name"]
    index = 0
    for cls, n in counts.items():
        for _ in range(n):
            index += 1
            rel = f"images/{index:04d}.png"
            lines.append(f"{rel},{cls}")
            jobs.append(("cell", seed, "multiclass", index, cls, (size, size), "smear", None,
                         str(root / rel), str(root / "masks" / f"{index:04d}.png")))
    write_text(root / "labels.csv", "\n".join(lines) + "\n")
    return jobs


def _jobs_kaggle(root: Path, seed: int, train_cells: int, copies: int, test_cells: int
                 ) -> list:
    jobs, cell_id = [], 0
    for split, n_cells, n_copies in (("TRAIN", train_cells, copies), ("TEST", test_cells, 1)):
        for cls in KAGGLE_CLASSES:
            image_dir = root / "dataset2-master" / "images" / split / cls
            mask_dir = root / "masks" / "dataset2-master" / "images" / split / cls
            for _ in range(n_cells):
                cell_id += 1  # unique over the whole set: TEST never repeats a TRAIN cell
                jobs.append(("kaggle", seed, cell_id, cls.lower(), n_copies, str(image_dir),
                             str(mask_dir)))
    return jobs


def _jobs_cnmc(root: Path, seed: int, folds: int, all_patients: int, hem_patients: int,
               cells: int, size: int) -> list:
    jobs, index = [], 0
    numbers = {"all": 0, "hem": 0}
    for fold in range(folds):
        for label, n_patients in (("all", all_patients), ("hem", hem_patients)):
            cls = "lymphoblast" if label == "all" else "lymphocyte"
            for _ in range(n_patients):
                numbers[label] += 1
                p = numbers[label]
                pid = str(p) if label == "all" else f"H{p}"
                # The patient's stain batch: the same for all their cells, so a split that puts
                # one patient on both sides lets a model match stains instead of cells.
                offset = _image_rng(seed, "cnmc", 10 ** 6 + p, int(label == "hem")).normal(
                    0.0, 0.15, 3)
                for n in range(cells):
                    index += 1
                    name = f"UID_{pid}_{n // 3 + 1}_{n % 3 + 1}_{label}"
                    rel = Path(f"fold_{fold}") / label
                    jobs.append(("cell", seed, "cnmc", index, cls, (size, size), "black",
                                 tuple(float(x) for x in offset), str(root / rel / f"{name}.bmp"),
                                 str(root / "masks" / rel / f"{name}.png")))
    return jobs


def _jobs_all_idb1(root: Path, seed: int, n_images: int, n_with_blasts: int, height: int,
                   width: int) -> list:
    return [("smear", seed, i, (height, width), i < n_with_blasts,
             str(root / f"Im{i + 1:03d}_{int(i < n_with_blasts)}.jpg")) for i in range(n_images)]


_JOB_BUILDERS = {"all_idb2": _jobs_all_idb2, "multiclass": _jobs_multiclass,
                 "kaggle": _jobs_kaggle, "cnmc": _jobs_cnmc, "all_idb1": _jobs_all_idb1}


def _options(kind: str, size_options: dict, where: str | os.PathLike = "synthetic") -> dict:
    """Defaults of ``kind`` updated by ``size_options``, checked."""
    if kind not in KINDS:
        raise InputError(f"{where}: unknown synthetic kind {kind!r} (known: {', '.join(KINDS)})")
    unknown = sorted(set(size_options) - set(DEFAULTS[kind]))
    if unknown:
        raise InputError(f"{where}: unknown option(s) {unknown} for synthetic {kind} "
                         f"(known: {sorted(DEFAULTS[kind])})")
    options = {**DEFAULTS[kind], **size_options}
    for key, value in options.items():
        values = value.values() if isinstance(value, dict) else [value]
        if not all(isinstance(x, (int, np.integer)) and x >= 0 for x in values):
            raise InputError(f"{where}: synthetic {kind} option {key} must be non-negative "
                             f"integers, got {value!r}")
    if kind == "multiclass":
        bad = sorted(set(options["counts"]) - set(CELL_CLASSES))
        if bad:
            raise InputError(f"{where}: unknown cell classes {bad} (known: {CELL_CLASSES})")
    if kind == "all_idb1" and options["n_with_blasts"] > options["n_images"]:
        raise InputError(f"{where}: n_with_blasts > n_images")
    for key in ("size", "height", "width"):
        if key in options and options[key] < 16:
            raise InputError(f"{where}: synthetic {kind} {key} must be at least 16 pixels")
    return options


def _temp_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}.tmp-{socket.gethostname()}-"


def _remove_stale_temps(out_dir: Path) -> None:
    """Delete temporary folders left by killed generations of this set on this machine."""
    prefix = _temp_prefix(out_dir)
    if not out_dir.parent.is_dir():
        return
    for path in out_dir.parent.glob(prefix + "*"):
        pid = path.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:  # a helper's job list
                path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_jobs(jobs: list, workers: int, scratch: Path) -> int:
    """Run jobs here and in ``workers - 1`` helper processes; returns the file count.

    Helpers are plain ``python -m leukocyte_cnn.data.synthetic <jobs.json>`` processes: unlike
    multiprocessing's spawn they never re-run the caller's script (a notebook, or a script
    without a ``__main__`` guard), and unlike fork they are safe when the caller already runs
    TensorFlow's threads. Their job lists go through JSON files named ``<scratch>.jobs-K.json``.
    Each image has its own generator, so the files are the same whatever the split. A helper
    that fails has its share redone here.
    """
    if workers <= 1 or len(jobs) < 2:
        return sum(_run_job(job) for job in jobs)
    shares = [jobs[k::workers] for k in range(workers)]  # interleaved: similar work each
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    helpers = []
    try:
        for k, share in enumerate(shares[1:], 1):
            job_file = scratch.parent / f"{scratch.name}.jobs-{k}.json"
            write_text(job_file, json.dumps(share))
            proc = subprocess.Popen([sys.executable, "-m", "leukocyte_cnn.data.synthetic",
                                     str(job_file)], env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            helpers.append((proc, share, job_file))
        n_files = sum(_run_job(job) for job in shares[0])
        for proc, share, _ in helpers:
            out, err = proc.communicate()
            if proc.returncode == 0 and out.strip().isdigit():
                n_files += int(out)
            else:  # redo its share here: same files, just slower
                print(f"synthetic: a helper process failed ({err.decode(errors='replace')[-300:]}"
                      "); generating its images here", file=sys.stderr, flush=True)
                n_files += sum(_run_job(job) for job in share)
        return n_files
    finally:
        for proc, _, job_file in helpers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            job_file.unlink(missing_ok=True)


def _helper_main(job_file: str) -> None:
    """Entry of a helper process started by :func:`_run_jobs`: jobs in, file count out."""
    jobs = json.loads(Path(job_file).read_text(encoding="utf-8"))
    print(sum(_run_job(tuple(job)) for job in jobs), flush=True)


def _marker(kind: str, seed: int, options: dict, n_files: int) -> dict:
    return {"format_version": SYNTHETIC_FORMAT_VERSION, "kind": kind, "seed": int(seed),
            "options": options, "files": n_files}


def _stale_reason(root: Path, kind: str, seed: int, options: dict) -> str | None:
    """Why ``root`` is not a finished set of this kind, seed, options and format version
    (``None`` when it is one)."""
    try:
        marker = json.loads((root / COMPLETE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no .complete marker"
    except (OSError, ValueError):
        marker = None
    if not isinstance(marker, dict):
        return "marker of an older format"
    version = marker.get("format_version", 1)
    if version != SYNTHETIC_FORMAT_VERSION:
        return f"format version {version}, current {SYNTHETIC_FORMAT_VERSION}"
    wanted = {"kind": kind, "seed": int(seed), "options": options}
    if any(marker.get(key) != value for key, value in wanted.items()):
        return "made with other generation parameters"
    return None


def is_current(root: str | os.PathLike, kind: str, seed: int = 0, **size_options) -> bool:
    """Whether ``root`` holds a finished set of ``kind`` with this seed, these size options
    and the current :data:`SYNTHETIC_FORMAT_VERSION` (what :func:`ensure_synthetic` reuses)."""
    options = _options(kind, size_options, root)
    return _stale_reason(Path(root), kind, seed, options) is None


def generate(kind: str, out_dir: str | os.PathLike, seed: int = 0, workers: int | None = None,
             replace: bool = True, **size_options) -> Path:
    """Render the set ``kind`` into ``out_dir``; returns ``out_dir``.

    Files go into a temporary sibling folder that is renamed into place once complete (with
    the ``.complete`` marker written last inside it: format version, kind, seed, options and
    file count), so an interrupted generation never leaves a half set. An existing ``out_dir``
    is replaced, unless ``replace`` is False and it is a current set (:func:`is_current`:
    another process finished the same set meanwhile, same seed, same bytes).
    ``workers`` processes (default: 2 when there are many images, else 1) give the same files.
    """
    out_dir = Path(out_dir)
    options = _options(kind, size_options, out_dir)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"{out_dir}: seed must be a non-negative integer, got {seed!r}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out_dir)
    tmp = out_dir.parent / f"{_temp_prefix(out_dir)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        jobs = _JOB_BUILDERS[kind](tmp, int(seed), **options)
        if workers is None:  # two processes pay off once their start-up (~1 s) is small
            workers = min(2, os.cpu_count() or 1) if len(jobs) >= 150 else 1
        n_files = _run_jobs(jobs, workers, tmp)
        write_json(tmp / COMPLETE, _marker(kind, seed, options, n_files))
        if not replace and _stale_reason(out_dir, kind, seed, options) is None:
            return out_dir  # the finally clause drops our identical copy
        if out_dir.exists():  # replace: move the old set aside first, then drop it
            old = out_dir.parent / f"{tmp.name}-old"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def synthetic_root(kind: str, data_dir: str | os.PathLike = "data", seed: int = 0,
                   **size_options) -> Path:
    """Where a set lives: ``<data_dir>/synthetic/<kind>``, or ``<kind>_<hash>`` when the seed
    or the size options differ from the defaults, so different sets never mix."""
    options = _options(kind, size_options, Path(data_dir) / "synthetic" / kind)
    tag = ""
    if options != DEFAULTS[kind] or seed != 0:
        text = json.dumps({"seed": int(seed), "options": options}, sort_keys=True)
        tag = "_" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return Path(data_dir) / "synthetic" / f"{kind}{tag}"


def ensure_synthetic(kind: str, data_dir: str | os.PathLike = "data", seed: int = 0,
                     **size_options) -> Path:
    """The set's folder, generated first when it is not a current set: its ``.complete``
    marker is missing, or names another :data:`SYNTHETIC_FORMAT_VERSION` or other generation
    parameters (a stale set is replaced atomically, never reused)."""
    root = synthetic_root(kind, data_dir, seed, **size_options)
    options = _options(kind, size_options, root)
    stale = _stale_reason(root, kind, seed, options)
    if stale is not None:
        if root.exists() and stale != "no .complete marker":
            print(f"synthetic {kind} set in {root} is stale ({stale}); regenerating", flush=True)
        start = time.perf_counter()
        try:
            generate(kind, root, seed, replace=False, **size_options)
        except OSError as exc:
            if _stale_reason(root, kind, seed, options) is None:  # another process was first
                return root
            raise InputError(f"{root}: cannot write the synthetic set ({exc})") from None
        print(f"generated synthetic {kind} set in {root} ({time.perf_counter() - start:.1f} s)",
              flush=True)
    return root


if __name__ == "__main__":
    _helper_main(sys.argv[1])
