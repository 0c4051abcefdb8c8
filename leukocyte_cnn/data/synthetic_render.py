"""The procedural renderer of stained blood-smear images: single cells and whole fields.

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

Determinism: an image depends only on the generator passed in (the noise bank's seed is a
constant of the renderer). The shapes live in :mod:`leukocyte_cnn.data.synthetic_shapes`; the
dataset layouts built from these images in :mod:`leukocyte_cnn.data.synthetic`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from leukocyte_cnn.data.synthetic_shapes import (BANK_SIZE, Patch, leukocyte, patch_boxes,
                                                 pixel_noise_bank, platelets, random_window,
                                                 red_cells)

NORMAL_CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
CELL_CLASSES = ("lymphoblast", *NORMAL_CLASSES, "thrombocyte")

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



# ----------------------------------------------------------------------------- fields
def _hide_red_cells(rbc: np.ndarray, patch: Patch, cy: int, cx: int) -> None:
    """A white cell or platelet lies on top: red cells under it are not seen."""
    boxes = patch_boxes(rbc.shape, patch.cover.shape, cy, cx)
    if boxes is not None:
        rbc[boxes[0]] *= 1.0 - patch.cover[boxes[1]]


def _add_dyes(od: np.ndarray, mask: np.ndarray | None, patch: Patch, stain: _Stain,
              cy: int, cx: int) -> None:
    """Add a patch's dye densities centred at (cy, cx); its labels too if ``mask``."""
    boxes = patch_boxes(od.shape[1:], patch.cover.shape, cy, cx)
    if boxes is None:
        return
    image_box, patch_box = boxes
    window = od[(slice(None), *image_box)]
    for density, key in patch.layers:
        window += stain.od[key][:, None, None] * density[patch_box]
    if mask is not None:
        np.maximum(mask[image_box], patch.labels[patch_box], out=mask[image_box])


def _compose(rbc: np.ndarray | None, shape: tuple[int, int], stain: _Stain,
             placed: list[tuple[Patch, int, int]], mask: np.ndarray | None = None
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
                     avoid: list[tuple[float, float, float]]) -> list[tuple[Patch, int, int]]:
    """A few single platelets scattered in the plasma, away from the white cells."""
    out = []
    for _ in range(int(rng.poisson(0.5 * h * w / (32 * ppu) ** 2))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if any(np.hypot(cy - y, cx - x) < r + 3 * ppu for y, x, r in avoid):
            continue
        out.append((platelets(ppu, rng, (1, 3), 0.5), int(cy), int(cx)))
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
    if h <= BANK_SIZE and w <= BANK_SIZE:
        noise = random_window(pixel_noise_bank(), (h, w), rng)
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
        patch = platelets(ppu, rng, (4, 11), 1.5)
    else:
        patch = leukocyte(class_name, ppu, rng)
    cy = int(round(h / 2 + rng.normal(0, 0.02 * h)))
    cx = int(round(w / 2 + rng.normal(0, 0.02 * w)))
    mask = np.zeros((h, w), np.uint8)
    placed = [(patch, cy, cx)]
    if background == "smear":
        rbc = red_cells(h, w, ppu, rng)
        placed += _stray_platelets(ppu, rng, h, w, [(cy, cx, patch.radius)])
        return _finish(_compose(rbc, (h, w), stain, placed, mask), stain, rng), mask
    od = _compose(None, (h, w), stain, placed, mask)
    keep = np.zeros((h, w), np.float32)
    boxes = patch_boxes((h, w), patch.cover.shape, cy, cx)
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
    rbc = red_cells(h, w, ppu, rng)
    placed: list[tuple[Patch, int, int]] = []
    blasts = []
    for class_name in classes:
        patch = leukocyte(class_name, ppu, rng)
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
