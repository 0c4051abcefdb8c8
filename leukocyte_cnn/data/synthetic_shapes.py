"""The shapes of the synthetic blood-cell renderer, in optical-density units before any colour.

Noise textures (windows of a fixed bank of smooth random fields, built once per process from a
constant seed, so that textures cost a slice instead of a filter), signed-distance geometry
(ellipses, strands, arcs, granule stamps), red-cell thickness maps (biconcave discs scattered by
dart throwing) and the white-cell and platelet recipes: each class draws its nucleus, cytoplasm
and granules as density maps per stain component in its own square :class:`Patch`.
:mod:`leukocyte_cnn.data.synthetic_render` colours and places them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

# ----------------------------------------------------------------------------- noise bank
BANK_SIZE = 512
_BANK_SEED = 20110917  # constant: the bank is part of the renderer, not of the data seed
_BANK_STEPS = 11  # scales 2 ** (k / 2) pixels, k = 0..10: 1 to 32 pixels


@lru_cache(maxsize=None)
def _bank(scale: float) -> np.ndarray:
    """A 512×512 smooth random field of unit sd varying over ``scale`` pixels (built once)."""
    rng = np.random.default_rng([_BANK_SEED, int(scale * 10)])
    if scale <= 1.0:
        field_ = rng.standard_normal((BANK_SIZE, BANK_SIZE), dtype=np.float32)
    else:
        n = int(np.ceil(BANK_SIZE / scale)) + 2
        coarse = rng.standard_normal((n, n), dtype=np.float32)
        side = int(round(n * scale))
        fine = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC))
        field_ = np.ascontiguousarray(fine[:BANK_SIZE, :BANK_SIZE])
    field_ = (field_ - field_.mean()) / field_.std()
    field_.setflags(write=False)
    return field_


@lru_cache(maxsize=None)
def pixel_noise_bank() -> np.ndarray:
    """White Gaussian noise (3×512×512) for the sensor noise of images that fit in it."""
    bank = np.random.default_rng([_BANK_SEED, 1]).standard_normal(
        (3, BANK_SIZE, BANK_SIZE), dtype=np.float32)
    bank.setflags(write=False)
    return bank


def random_window(bank: np.ndarray, shape: tuple[int, int], rng: np.random.Generator
                  ) -> np.ndarray:
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
    if shape[0] <= BANK_SIZE and shape[1] <= BANK_SIZE:
        return random_window(_bank(nearest), shape, rng)
    # Larger than the bank (only whole smears): repeat one window; never used for cell textures.
    tile = random_window(_bank(nearest), (min(BANK_SIZE, shape[0]), min(BANK_SIZE, shape[1])),
                         rng)
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
RBC_DIAMETER_UM = 7.6


def _rbc_sprite(radius: float, rng: np.random.Generator) -> np.ndarray:
    """Thickness map of one red cell: a biconcave disc, thick rim, pale centre.

    The slight ellipse is axis-aligned; :func:`red_cells` turns sprites by 90° steps.
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


def red_cells(h: int, w: int, ppu: float, rng: np.random.Generator) -> np.ndarray:
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


def patch_boxes(shape: tuple[int, int], patch_shape: tuple[int, int], cy: int, cx: int
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
    boxes = patch_boxes(target.shape[:2], patch.shape[:2], cy, cx)
    if boxes is not None:
        target[boxes[0]] += patch[boxes[1]]


# ----------------------------------------------------------------------------- white cells
# Cell diameter in µm: (mean, sd, low, high). Blast and lymphocyte overlap on purpose.
_DIAMETER_UM = {
    "lymphoblast": (13.2, 1.7, 9.5, 18.0),
    "lymphocyte": (9.6, 1.3, 7.0, 13.5),
    "neutrophil": (12.5, 1.0, 10.0, 15.0),
    "eosinophil": (13.5, 1.1, 11.0, 16.5),
    "basophil": (11.5, 1.0, 9.5, 14.0),
    "monocyte": (16.0, 1.6, 12.5, 20.0),
}


@dataclass
class Patch:
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


def leukocyte(class_name: str, ppu: float, rng: np.random.Generator) -> Patch:
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
    return Patch(cover=cover, layers=layers, labels=labels,
                  nucleus_centre=(du * s + dv * c, du * c - dv * s), radius=radius)


def platelets(ppu: float, rng: np.random.Generator, n_fragments: tuple[int, int] = (3, 9),
               spread_um: float = 1.3) -> Patch:
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
    return Patch(cover=cover, layers=[(cover * np.float32(rng.uniform(0.7, 1.1)), "platelet"),
                                       (_soft(core) * grains, "platelet_granule")],
                  labels=labels, radius=float(half))

