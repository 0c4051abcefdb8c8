"""A procedurally rendered, stained blood-smear dataset: the repository's embedded default.

Each single-cell image shows a pinkish background with red cells (pale-centred discs, some
overlapping or cut at the border) and one white cell in the centre whose morphology follows its
class, drawn from the textbook description (May-Grünwald-Giemsa-like colours):

- lymphoblast: large cell, large round nucleus, fine pale chromatin, 1-3 nucleoli, thin blue rim;
- lymphocyte: small cell, small dense dark round nucleus, scant blue cytoplasm;
- neutrophil: 3-5 nuclear lobes joined by thin strands, pale pink granular cytoplasm;
- eosinophil: two lobes, coarse orange-red granules;
- basophil: dark purple granules over nucleus and cytoplasm;
- monocyte: large cell, folded/kidney nucleus, grey-blue cytoplasm with vacuoles;
- thrombocyte: a small clump of platelet fragments, no large cell.

Stain hue, illumination, blur, noise, size and orientation vary per image (and per patient for
the C-NMC-like set), so the task is learnable but not trivial: blast and lymphocyte sizes
overlap. Every single-cell image has a mask (nucleus 255, cytoplasm 128, background 0).

Each image draws from its own generator ``default_rng([seed, kind, index])``, so the files do
not depend on generation order, and encoder options are fixed: the same seed gives
byte-identical files. Layouts follow the real datasets (see docs/architecture.md).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy import ndimage

KINDS = ("all_idb2", "multiclass", "kaggle", "all_idb1", "cnmc")
NORMAL_CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
CELL_CLASSES = ("lymphoblast", *NORMAL_CLASSES, "thrombocyte")
KAGGLE_CLASSES = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
CLASS_NAMES = {
    "all_idb2": ("other", "lymphoblast"),
    "multiclass": ("lymphoblast", "neutrophil", "lymphocyte", "monocyte", "eosinophil",
                   "basophil", "thrombocyte"),
    "kaggle": KAGGLE_CLASSES,
    "all_idb1": ("no_blasts", "blasts"),
    "cnmc": ("hem", "all"),
}
DEFAULTS = {
    "all_idb2": {"n_blast": 130, "n_other": 130, "size": 257},
    "multiclass": {"counts": {"lymphoblast": 60, "neutrophil": 50, "lymphocyte": 45,
                              "monocyte": 25, "eosinophil": 15, "basophil": 4,
                              "thrombocyte": 3}, "size": 257},
    "kaggle": {"train_cells": 20, "copies": 3, "test_cells": 15},
    "all_idb1": {"n_images": 20, "n_with_blasts": 10, "height": 480, "width": 640},
    "cnmc": {"folds": 3, "all_patients": 4, "hem_patients": 3, "cells": 10, "size": 128},
}
COMPLETE = ".complete"

# Reference colours (RGB, 0-255) of the stained components.
PLASMA = np.array([236, 222, 226], np.float32)
RBC = np.array([222, 148, 160], np.float32)
NUCLEUS = np.array([92, 52, 140], np.float32)
BLUE_CYTOPLASM = np.array([150, 170, 215], np.float32)
PINK_CYTOPLASM = np.array([226, 196, 212], np.float32)
GREY_CYTOPLASM = np.array([178, 180, 206], np.float32)
EOSIN_GRANULE = np.array([222, 104, 70], np.float32)
BASO_GRANULE = np.array([60, 25, 90], np.float32)
PLATELET = np.array([140, 90, 170], np.float32)


# ----------------------------------------------------------------------------- drawing
def _soft(distance_inside: np.ndarray, edge: float = 1.2) -> np.ndarray:
    """Alpha from a signed distance (positive inside): a one-pixel anti-aliased edge."""
    return np.clip(distance_inside / edge + 0.5, 0.0, 1.0)


def _blob(yy, xx, cy, cx, radius, rng, wobble=0.08, aspect=1.0, angle=0.0):
    """Alpha of an irregular ellipse: radius modulated by low Fourier terms of the angle.

    Only the blob's bounding box is computed (the rest of the window stays 0): lobes, granule
    clumps and vacuoles are small, and this keeps rendering fast.
    """
    terms = [(wobble / k * rng.uniform(-1, 1), k, rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)]
    out = np.zeros(yy.shape, np.float32)
    reach = radius * max(aspect, 1.0) * (1 + wobble) + 2
    rows = np.flatnonzero(np.abs(yy[:, 0] - cy) <= reach)
    cols = np.flatnonzero(np.abs(xx[0, :] - cx) <= reach)
    if len(rows) == 0 or len(cols) == 0:
        return out
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    dy, dx = yy[box] - cy, xx[box] - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = (dx * c + dy * s) / aspect, -dx * s + dy * c
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    edge = 1.0
    for amplitude, k, phase in terms:
        edge = edge + amplitude * np.cos(k * theta + phase)
    out[box] = _soft(radius * edge - r)
    return out


def _segment(yy, xx, p, q, width):
    """Alpha of a thick line segment from p to q (strands between nuclear lobes)."""
    p, q = np.asarray(p, np.float32), np.asarray(q, np.float32)
    d = q - p
    t = np.clip(((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
    dist = np.hypot(yy - (p[0] + t * d[0]), xx - (p[1] + t * d[1]))
    return _soft(width / 2 - dist)


def _smooth_noise(shape, rng, scale: float, amplitude: float) -> np.ndarray:
    """Band-limited noise: white noise blurred at ``scale`` pixels, unit variance × amplitude."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), scale)
    return noise / (noise.std() + 1e-6) * amplitude


def _granules(shape, region, rng, density, size):
    """A map in [0, 1] of small round granules scattered inside ``region`` (alpha)."""
    n = int(region.sum() * density)
    if n == 0:
        return np.zeros(shape, np.float32)
    inside = np.flatnonzero(region.ravel() > 0.5)
    picks = rng.choice(inside, size=min(n, len(inside)), replace=False)
    impulses = np.zeros(shape[0] * shape[1], np.float32)
    impulses[picks] = 1.0
    blurred = ndimage.gaussian_filter(impulses.reshape(shape), size)
    return np.clip(blurred / (blurred.max() + 1e-6) * 1.6, 0, 1) * region


def _paint(canvas, alpha, colour):
    canvas *= 1 - alpha[..., None]
    canvas += alpha[..., None] * colour


def _stain(rng, patient_offset: np.ndarray | None = None) -> dict:
    """Per-image stain and optics: colour shifts, illumination, blur and noise levels."""
    shift = rng.normal(0, 7, 3).astype(np.float32)
    if patient_offset is not None:
        shift += patient_offset
    return {"shift": shift, "nucleus_dark": rng.uniform(0.85, 1.15),
            "blur": rng.uniform(0.4, 1.3), "noise": rng.uniform(2.0, 6.0),
            "light": rng.uniform(-0.08, 0.08, 2), "gain": rng.uniform(0.93, 1.05)}


def _background(h, w, rng, n_rbc: int) -> np.ndarray:
    """Plasma with red cells: pale-centred discs at random places, overlapping freely."""
    canvas = np.broadcast_to(PLASMA, (h, w, 3)).astype(np.float32).copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    radius_mean = rng.uniform(0.075, 0.095) * min(h, w) if min(h, w) < 300 else rng.uniform(14, 18)
    for _ in range(n_rbc):
        r = radius_mean * rng.uniform(0.85, 1.15)
        cy, cx = rng.uniform(-r, h + r), rng.uniform(-r, w + r)
        y0, y1 = int(max(cy - r - 2, 0)), int(min(cy + r + 3, h))
        x0, x1 = int(max(cx - r - 2, 0)), int(min(cx + r + 3, w))
        if y0 >= y1 or x0 >= x1:
            continue
        sub_y, sub_x = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
        alpha = _blob(sub_y, sub_x, cy, cx, r, rng, wobble=0.05) * 0.9
        dist = np.hypot(sub_y - cy, sub_x - cx) / r
        pallor = np.clip(1 - dist / 0.55, 0, 1) ** 1.5 * 0.55  # pale centre of a biconcave disc
        colour = RBC[None, None, :] * (1 - pallor[..., None]) + PLASMA * pallor[..., None]
        window = canvas[y0:y1, x0:x1]
        window *= 1 - alpha[..., None]
        window += alpha[..., None] * colour
    return canvas


def _draw_leukocyte(canvas, mask, cls: str, cy: float, cx: float, scale: float, rng,
                    stain: dict) -> None:
    """Paint one white cell of class ``cls`` centred at (cy, cx); ``scale`` ~ cell radius unit.

    Works in a window around the cell; writes the nucleus/cytoplasm labels into ``mask``.
    """
    h, w = canvas.shape[:2]
    half = int(scale * 1.6) + 4
    y0, y1, x0, x1 = max(int(cy) - half, 0), min(int(cy) + half, h), max(int(cx) - half, 0), min(int(cx) + half, w)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    shape = yy.shape
    window, mwin = canvas[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    angle = rng.uniform(0, 2 * np.pi)
    dark = stain["nucleus_dark"]

    if cls == "thrombocyte":
        clump = np.zeros(shape, np.float32)
        for _ in range(rng.integers(4, 9)):
            r = scale * rng.uniform(0.12, 0.22)
            oy, ox = rng.normal(0, scale * 0.3, 2)
            clump = np.maximum(clump, _blob(yy, xx, cy + oy, cx + ox, r, rng, wobble=0.3))
        granulomere = _granules(shape, clump, rng, 0.05, 0.8)
        _paint(window, clump * 0.8, PLATELET + 40)
        _paint(window, granulomere * 0.7, PLATELET * 0.7)
        mwin[clump > 0.5] = 128
        mwin[granulomere > 0.5] = 255
        return

    size = {"lymphoblast": rng.uniform(0.85, 1.15), "lymphocyte": rng.uniform(0.62, 0.85),
            "neutrophil": rng.uniform(0.9, 1.08), "eosinophil": rng.uniform(0.92, 1.1),
            "basophil": rng.uniform(0.8, 0.98), "monocyte": rng.uniform(1.05, 1.25)}[cls]
    r_cell = scale * size
    cell = _blob(yy, xx, cy, cx, r_cell, rng, wobble=0.06, aspect=rng.uniform(0.92, 1.08),
                 angle=angle)
    cyto_colour = {"lymphoblast": BLUE_CYTOPLASM, "lymphocyte": BLUE_CYTOPLASM * 0.92,
                   "neutrophil": PINK_CYTOPLASM, "eosinophil": PINK_CYTOPLASM * 0.97,
                   "basophil": PINK_CYTOPLASM * 0.92, "monocyte": GREY_CYTOPLASM}[cls]
    _paint(window, cell, cyto_colour + _smooth_noise(shape, rng, 1.5, 3)[..., None])

    if cls in ("lymphoblast", "lymphocyte"):
        fill = 0.82 if cls == "lymphoblast" else 0.86
        nucleus = _blob(yy, xx, cy + rng.normal(0, r_cell * 0.04), cx + rng.normal(0, r_cell * 0.04),
                        r_cell * fill * rng.uniform(0.94, 1.04), rng, wobble=0.08,
                        aspect=rng.uniform(0.9, 1.1), angle=angle)
        if cls == "lymphoblast":  # fine, pale, even chromatin
            tone = NUCLEUS * 1.18 / dark
            texture = _smooth_noise(shape, rng, 0.7, 6)
        else:  # dense, dark, clumped chromatin
            tone = NUCLEUS * 0.72 / dark
            texture = _smooth_noise(shape, rng, 2.0, 14)
        _paint(window, nucleus, np.clip(tone, 0, 255) + texture[..., None])
        if cls == "lymphoblast":
            for _ in range(rng.integers(1, 4)):
                oy, ox = rng.normal(0, r_cell * 0.28, 2)
                nucleolus = _blob(yy, xx, cy + oy, cx + ox, r_cell * rng.uniform(0.08, 0.13),
                                  rng, wobble=0.2) * nucleus * 0.75
                _paint(window, nucleolus, np.array([150, 130, 190], np.float32))
    elif cls in ("neutrophil", "eosinophil"):
        n_lobes = rng.integers(3, 6) if cls == "neutrophil" else 2
        arc = rng.uniform(1.8, 3.4) if n_lobes > 2 else rng.uniform(1.3, 2.0)
        radius = r_cell * rng.uniform(0.42, 0.52)
        centres = []
        for i in range(n_lobes):
            a = angle + arc * (i / (n_lobes - 1) - 0.5)
            centres.append((cy + radius * np.sin(a), cx + radius * np.cos(a)))
        nucleus = np.zeros(shape, np.float32)
        lobe_r = r_cell * (0.24 if cls == "neutrophil" else 0.30)
        for py, px in centres:
            nucleus = np.maximum(nucleus, _blob(yy, xx, py, px, lobe_r * rng.uniform(0.85, 1.15),
                                                rng, wobble=0.15))
        for p, q in zip(centres, centres[1:]):
            nucleus = np.maximum(nucleus, _segment(yy, xx, p, q, max(1.5, r_cell * 0.06)))
        if cls == "neutrophil":
            fine = _granules(shape, cell * (1 - nucleus), rng, 0.06, 0.6) * 0.35
            _paint(window, fine, np.array([190, 140, 180], np.float32))
        else:
            coarse = _granules(shape, cell * (1 - nucleus), rng, 0.05, 1.1) * 0.9
            _paint(window, coarse, EOSIN_GRANULE)
        _paint(window, nucleus, NUCLEUS * 0.85 / dark + _smooth_noise(shape, rng, 1.5, 8)[..., None])
    elif cls == "basophil":
        nucleus = _blob(yy, xx, cy, cx, r_cell * 0.55, rng, wobble=0.35, angle=angle)
        _paint(window, nucleus, NUCLEUS * 0.95 / dark)
        granules = _granules(shape, cell, rng, 0.07, 1.0) * 0.95
        _paint(window, granules, BASO_GRANULE)
    elif cls == "monocyte":
        off = r_cell * rng.uniform(0.35, 0.55)
        body = _blob(yy, xx, cy, cx, r_cell * 0.66, rng, wobble=0.12, angle=angle)
        notch = _blob(yy, xx, cy + off * np.sin(angle), cx + off * np.cos(angle),
                      r_cell * rng.uniform(0.36, 0.48), rng, wobble=0.1)
        nucleus = np.clip(body - notch, 0, 1)  # kidney / horseshoe
        vacuoles = np.zeros(shape, np.float32)
        for _ in range(rng.integers(3, 9)):
            a, d = rng.uniform(0, 2 * np.pi), r_cell * rng.uniform(0.55, 0.85)
            vacuoles = np.maximum(vacuoles, _blob(yy, xx, cy + d * np.sin(a), cx + d * np.cos(a),
                                                  r_cell * rng.uniform(0.05, 0.1), rng, 0.1))
        _paint(window, vacuoles * cell * (1 - nucleus) * 0.7, np.array([232, 232, 240], np.float32))
        _paint(window, nucleus, NUCLEUS * 1.05 / dark + _smooth_noise(shape, rng, 2.5, 9)[..., None])
    mwin[cell > 0.5] = 128
    mwin[(nucleus > 0.5) & (cell > 0.3)] = 255


def _finish(canvas: np.ndarray, stain: dict, rng, black_background: np.ndarray | None = None) -> np.ndarray:
    """Stain shift, uneven illumination, blur and sensor noise; then 8-bit RGB."""
    h, w = canvas.shape[:2]
    canvas = canvas + stain["shift"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 1 + stain["light"][0] * (yy / h - 0.5) * 2 + stain["light"][1] * (xx / w - 0.5) * 2
    canvas *= (light * stain["gain"])[..., None]
    if black_background is not None:
        canvas *= black_background[..., None]
    canvas = ndimage.gaussian_filter(canvas, (stain["blur"], stain["blur"], 0))
    canvas += rng.normal(0, stain["noise"], canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_cell(class_name: str, size: tuple[int, int], rng: np.random.Generator,
                background: str = "smear", patient_offset: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """One single-cell image (uint8 H×W×3) and its mask (uint8 H×W: 255/128/0).

    ``background="black"`` gives a segmented cell on black, as in C-NMC.
    """
    if class_name not in CELL_CLASSES:
        raise ValueError(f"unknown cell class {class_name!r}; known: {', '.join(CELL_CLASSES)}")
    h, w = size
    stain = _stain(rng, patient_offset)
    if background == "black":
        canvas = np.zeros((h, w, 3), np.float32) + PLASMA
    else:
        canvas = _background(h, w, rng, n_rbc=int(rng.integers(7, 14) * h * w / 257 ** 2) + 2)
    mask = np.zeros((h, w), np.uint8)
    scale = min(h, w) * rng.uniform(0.25, 0.29)
    cy, cx = h / 2 + rng.normal(0, h * 0.02), w / 2 + rng.normal(0, w * 0.02)
    _draw_leukocyte(canvas, mask, class_name, cy, cx, scale, rng, stain)
    keep = None
    if background == "black":
        keep = ndimage.gaussian_filter((mask > 0).astype(np.float32), 0.8)
    return _finish(canvas, stain, rng, keep), mask


def render_smear(size: tuple[int, int], rng: np.random.Generator, n_cells: int,
                 n_blasts: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """An ALL-IDB1-like field: many red cells, ``n_cells`` white cells of which ``n_blasts``
    are lymphoblasts; returns the image and the blast centroids as (x, y)."""
    h, w = size
    stain = _stain(rng)
    canvas = _background(h, w, rng, n_rbc=int(h * w / 2600))
    mask = np.zeros((h, w), np.uint8)
    scale = min(h, w) * 0.055
    placed: list[tuple[float, float]] = []
    blasts = []
    for i in range(n_cells):
        for _ in range(50):  # rejection sampling: white cells do not overlap
            cy, cx = rng.uniform(scale * 1.5, h - scale * 1.5), rng.uniform(scale * 1.5, w - scale * 1.5)
            if all(np.hypot(cy - py, cx - px) > scale * 3 for py, px in placed):
                break
        placed.append((cy, cx))
        cls = "lymphoblast" if i < n_blasts else NORMAL_CLASSES[int(rng.integers(0, 5))]
        _draw_leukocyte(canvas, mask, cls, cy, cx, scale * rng.uniform(0.9, 1.1), rng, stain)
        if cls == "lymphoblast":
            blasts.append((int(round(cx)), int(round(cy))))
    return _finish(canvas, stain, rng), blasts


# ----------------------------------------------------------------------------- datasets
def _job_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, KINDS.index(kind), index])


def _cell_job(job: tuple) -> None:
    """Render and write one single-cell image + mask (runs in worker processes)."""
    from .augment import flip, rotate, shift
    from .images import save_rgb

    seed, kind, index, cls, size, image_path, mask_path, copy, extra = job
    rng = _job_rng(seed, kind, index)
    image, mask = render_cell(cls, size, rng, background=extra.get("background", "smear"),
                              patient_offset=extra.get("patient_offset"))
    if copy:  # an augmented copy of the source cell (Kaggle TRAIN): rotate, flip, shift
        crng = np.random.default_rng([seed, KINDS.index(kind), index, copy])
        angle, fh, fv = crng.uniform(0, 360), bool(crng.integers(2)), bool(crng.integers(2))
        dx, dy = crng.integers(-12, 13, 2)
        image = shift(flip(rotate(image, angle), fh, fv), int(dx), int(dy))
        mask = shift(flip(rotate(np.repeat(mask[..., None], 3, 2), angle, fill="constant"),
                          fh, fv), int(dx), int(dy), fill="constant")[..., 0]
        mask = np.where(mask > 191, 255, np.where(mask > 64, 128, 0)).astype(np.uint8)
    save_rgb(image_path, image)
    save_rgb(mask_path, mask)


def _smear_job(job: tuple) -> None:
    from .images import save_rgb

    seed, index, size, n_cells, n_blasts, image_path = job
    image, blasts = render_smear(size, _job_rng(seed, "all_idb1", index), n_cells, n_blasts)
    save_rgb(image_path, image)
    text = "".join(f"{x} {y}\n" for x, y in blasts)
    Path(image_path).with_suffix(".xyc").write_text(text)


def _jobs_all_idb2(root: Path, seed: int, n_blast: int, n_other: int, size: int) -> list:
    jobs = []
    for i in range(n_blast + n_other):
        blast = i < n_blast
        cls = "lymphoblast" if blast else NORMAL_CLASSES[i % len(NORMAL_CLASSES)]
        name = f"Im{i + 1:03d}_{int(blast)}"
        jobs.append((seed, "all_idb2", i, cls, (size, size), root / f"{name}.tif",
                     root / "masks" / f"{name}.png", 0, {}))
    return jobs


def _jobs_multiclass(root: Path, seed: int, counts: dict, size: int) -> list:
    jobs, rows, index = [], [], 0
    for cls, n in counts.items():
        for _ in range(n):
            index += 1
            rel = f"images/{index:04d}.png"
            rows.append({"image": rel, "class_name": cls})
            jobs.append((seed, "multiclass", index, cls, (size, size), root / rel,
                         root / "masks" / f"{index:04d}.png", 0, {}))
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False, lineterminator="\n")
    return jobs


def _jobs_kaggle(root: Path, seed: int, train_cells: int, copies: int, test_cells: int) -> list:
    jobs, cell_id = [], 0
    images, masks = root / "dataset2-master" / "images", root / "masks"
    for split, n_cells, n_copies in (("TRAIN", train_cells, copies), ("TEST", test_cells, 1)):
        for c, cls in enumerate(KAGGLE_CLASSES):
            for _ in range(n_cells):
                cell_id += 1
                for copy in range(n_copies):
                    name = f"_{copy}_{cell_id}"
                    rel = Path(split) / cls
                    jobs.append((seed, "kaggle", cell_id, cls.lower(), (240, 320),
                                 images / rel / f"{name}.jpeg", masks / rel / f"{name}.png",
                                 copy if split == "TRAIN" else 0, {}))
    return jobs


def _jobs_cnmc(root: Path, seed: int, folds: int, all_patients: int, hem_patients: int,
               cells: int, size: int) -> list:
    jobs, index, patient = [], 0, 0
    for fold in range(folds):
        for label, n_patients in (("all", all_patients), ("hem", hem_patients)):
            for _ in range(n_patients):
                patient += 1
                offset = np.random.default_rng([seed, 99, patient]).normal(0, 9, 3).astype(np.float32)
                pid = str(patient) if label == "all" else f"H{patient}"
                for n in range(cells):
                    index += 1
                    name = f"UID_{pid}_{n // 3 + 1}_{n % 3 + 1}_{label}"
                    rel = Path(f"fold_{fold}") / label
                    cls = "lymphoblast" if label == "all" else "lymphocyte"
                    jobs.append((seed, "cnmc", index, cls, (size, size),
                                 root / rel / f"{name}.bmp", root / "masks" / rel / f"{name}.png",
                                 0, {"background": "black", "patient_offset": offset}))
    return jobs


def _jobs_all_idb1(root: Path, seed: int, n_images: int, n_with_blasts: int, height: int,
                   width: int) -> list:
    jobs = []
    for i in range(n_images):
        with_blasts = i < n_with_blasts
        rng = np.random.default_rng([seed, 98, i])
        n_cells = int(rng.integers(6, 16))
        n_blasts = int(rng.integers(2, max(3, n_cells // 2 + 1))) if with_blasts else 0
        jobs.append((seed, i, (height, width), n_cells, n_blasts,
                     root / f"Im{i + 1:03d}_{int(with_blasts)}.jpg"))
    return jobs


def _options(kind: str, size_options: dict) -> dict:
    if kind not in KINDS:
        from .errors import InputError
        raise InputError(f"synthetic kind {kind!r}: unknown (known: {', '.join(KINDS)})")
    unknown = set(size_options) - set(DEFAULTS[kind])
    if unknown:
        raise TypeError(f"synthetic {kind}: unknown options {sorted(unknown)}")
    return {**DEFAULTS[kind], **size_options}


def generate(kind: str, out_dir: str | os.PathLike, seed: int = 0, workers: int | None = None,
             **size_options) -> Path:
    """Render the set ``kind`` into ``out_dir`` (written to a temporary sibling, then renamed)."""
    options = _options(kind, size_options)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        builders: dict[str, Callable] = {"all_idb2": _jobs_all_idb2, "multiclass": _jobs_multiclass,
                                         "kaggle": _jobs_kaggle, "cnmc": _jobs_cnmc,
                                         "all_idb1": _jobs_all_idb1}
        jobs = builders[kind](tmp, seed, **options)
        work = _smear_job if kind == "all_idb1" else _cell_job
        workers = workers or min(2, os.cpu_count() or 1)
        if workers > 1 and len(jobs) > 20:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                list(pool.map(work, jobs, chunksize=8))
        else:
            for job in jobs:
                work(job)
        (tmp / COMPLETE).write_text(f"kind {kind}\nseed {seed}\noptions {sorted(options.items())}\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def synthetic_root(kind: str, data_dir: str | os.PathLike = "data", seed: int = 0,
                   **size_options) -> Path:
    """Where a set lives: ``data/synthetic/<kind>`` (+ a tag when seed or sizes differ)."""
    import hashlib

    options = _options(kind, size_options)
    tag = ""
    if options != DEFAULTS[kind] or seed != 0:
        tag = "_" + hashlib.sha256(repr((seed, sorted(options.items()))).encode()).hexdigest()[:8]
    return Path(data_dir) / "synthetic" / f"{kind}{tag}"


def ensure_synthetic(kind: str, data_dir: str | os.PathLike = "data", seed: int = 0,
                     **size_options) -> Path:
    """The set's folder, generated first if it is not complete (first use of a script)."""
    root = synthetic_root(kind, data_dir, seed, **size_options)
    if not (root / COMPLETE).exists():
        start = time.perf_counter()
        generate(kind, root, seed, **size_options)
        print(f"generated synthetic {kind} set in {root} ({time.perf_counter() - start:.1f} s)",
              flush=True)
    return root
