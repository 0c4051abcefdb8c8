"""The gallery of errors of a run: its misclassified test cells with Grad-CAM heatmaps.

:func:`error_gallery` draws ``errors_gallery.png`` in a run folder: the misclassified test
cells of its finished folds, the most confident errors first (by the probability of the wrong
class, capped at ``max_errors``), then, for contrast, the most confident correct cells of each
class. Each tile shows the cell as the model saw it (the run's size, colour mode and masks,
through the training pipeline) and beside it the Grad-CAM heatmap of the predicted class
(:mod:`leukocyte_cnn.reporting.gradcam`) from that fold's own checkpoint, under the title
``true X → pred Y p=0.97`` and the fold and image it comes from.

:func:`explain_images` draws the same for any image files with one fold's model (what
``explain.py --images`` does). Both read only the run folder (``settings.json``,
``fold_XX/{predictions.csv, inputs.csv, model.keras, timing.json}``) and the images;
a figure is written atomically, like every result file.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import atomic_path, read_json
from leukocyte_cnn.base.run_folder import (
    CHECKPOINT,
    INPUTS,
    PREDICTIONS,
    fold_dir,
    read_settings,
)
from leukocyte_cnn.reporting.gradcam import gradcam, last_conv_layer, overlay
from leukocyte_cnn.reporting.metrics import prob_columns

GALLERY = "errors_gallery.png"
MAX_TILES = 40        # tiles drawn at most (errors first; correct cells share what is left)
COLUMNS = 4           # tiles per row
MASK_ARTIFACTS = ("otsu_masks", "unet_masks")  # timing.json artifacts that blank backgrounds


# --------------------------------------------------------------------------- which cells


def predicted_probability(predictions: pd.DataFrame, class_names: Sequence[str]) -> np.ndarray:
    """The probability each row gives its predicted class (``pred``)."""
    probs = predictions[prob_columns(class_names)].to_numpy(dtype=np.float64)
    return probs[np.arange(len(probs)), predictions["pred"].astype(int).to_numpy()]


def choose_cells(predictions: pd.DataFrame, class_names: Sequence[str], max_errors: int = 16,
                 correct_per_class: int = 2, max_tiles: int = MAX_TILES) -> pd.DataFrame:
    """The rows a gallery draws: misclassified ones sorted by the probability of the
    predicted class (most confident errors first; ties by fold and image), at most
    ``max_errors``; then up to ``correct_per_class`` correctly classified rows of each class,
    the most confident first, in class order, within ``max_tiles`` in all.

    Returns the rows with ``p_pred`` (that probability) and ``kind`` (``error``/``correct``).
    """
    table = predictions.assign(p_pred=predicted_probability(predictions, class_names))
    table = table.sort_values(["p_pred", "fold", "image"], ascending=[False, True, True],
                              kind="stable")
    wrong = table["pred"].astype(int) != table["label"].astype(int)
    errors = table[wrong].head(max(0, min(max_errors, max_tiles)))
    room = max(0, max_tiles - len(errors))
    correct = [rows.head(correct_per_class) for _, rows in
               table[~wrong].groupby(table.loc[~wrong, "label"].astype(int), sort=True)]
    correct = (pd.concat(correct) if correct else table.iloc[:0]).head(room)
    return pd.concat([errors.assign(kind="error"), correct.assign(kind="correct")],
                     ignore_index=True)


# --------------------------------------------------------------------------- inputs


def model_image_size(model, config: dict | None = None) -> tuple[int, int]:
    """(height, width) the model takes: its input shape, else the run's recorded
    ``image_size`` or ``IMAGE_SIZE`` knob (a side or [height, width])."""
    shape = tuple(model.inputs[0].shape[1:3]) if getattr(model, "inputs", None) else ()
    if len(shape) == 2 and None not in shape:
        return int(shape[0]), int(shape[1])
    config = config or {}
    raw = config.get("image_size", (config.get("knobs") or {}).get("IMAGE_SIZE"))
    if raw is None:
        raise InputError(f"{model.name}: takes any image size and the run records none "
                         "(config.image_size or the IMAGE_SIZE knob)")
    return (int(raw), int(raw)) if np.ndim(raw) == 0 else (int(raw[0]), int(raw[1]))


def pipeline_options(config: dict) -> dict:
    """What ``inputs.pipeline.load_arrays`` needs, besides size and masks, to give the pixels
    the run trained on: colour mode, resize method, aspect handling."""
    return {"color_mode": (config.get("knobs") or {}).get("COLOR_MODE", "rgb"),
            "resize_method": str(config.get("resize_method", "bilinear")),
            "keep_aspect": bool(config.get("keep_aspect", False))}


def fold_checkpoint(directory: Path) -> Path | None:
    """The fold's ``model.keras``, or the checkpoint its ``timing.json`` names (a run that
    re-predicted another run's folds, e.g. test-time augmentation)."""
    if (directory / CHECKPOINT).is_file():
        return directory / CHECKPOINT
    timing = directory / "timing.json"
    if timing.is_file():
        path = ((read_json(timing).get("artifacts") or {}).get("checkpoint") or {}).get("path")
        if path and Path(path).is_file():
            return Path(path)
    return None


def _mask_root(directory: Path) -> Path | None:
    """The mask set the fold blanked its images with (recorded in ``timing.json``)."""
    timing = directory / "timing.json"
    if not timing.is_file():
        return None
    artifacts = read_json(timing).get("artifacts") or {}
    for kind in MASK_ARTIFACTS:
        path = (artifacts.get(kind) or {}).get("path")
        if path:
            return Path(path)
    return None


def fold_test_inputs(run_dir: Path, fold: int, config: dict) -> pd.DataFrame:
    """The fold's test images: ``image``, ``path`` and ``mask`` (``""`` when none), from
    ``fold_XX/inputs.csv``, else that of the fold it re-predicted (``timing.json``'s
    ``source_fold``, e.g. test-time augmentation), else the run's split file."""
    directory = fold_dir(run_dir, fold)
    inputs = directory / INPUTS
    if not inputs.is_file() and (directory / "timing.json").is_file():
        source = read_json(directory / "timing.json").get("source_fold")
        inputs = Path(source) / INPUTS if source else inputs
    if inputs.is_file():
        rows = pd.read_csv(inputs, dtype={"image": str, "group": str})
    else:
        from leukocyte_cnn.splits.split_files import load_split

        rows = load_split(config["split_file"], data_root=config.get("data_root")).fold(fold)
    rows = rows[rows["role"] == "test"]
    rows = rows[["image", "path"]].drop_duplicates("image").reset_index(drop=True)
    root = _mask_root(directory)
    if root is None:
        return rows.assign(mask="")
    from leukocyte_cnn.inputs.masks import mask_file

    return rows.assign(mask=[str(mask_file(root, key)) for key in rows["image"]])


def load_cells(rows: pd.DataFrame, size: tuple[int, int], config: dict) -> np.ndarray:
    """The images of ``rows`` (``path``, ``mask``) as the run fed them: float32 (N, H, W, 3)."""
    from leukocyte_cnn.inputs.pipeline import load_arrays

    masks = rows["mask"].tolist() if "mask" in rows and rows["mask"].astype(bool).any() else None
    return load_arrays(rows["path"].tolist(), size, masks=masks, **pipeline_options(config))


# --------------------------------------------------------------------------- drawing


def _tile(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The cell and, beside it, the cell under its heatmap (uint8, one white column between)."""
    cell = np.clip(image, 0, 255).astype(np.uint8)
    gap = np.full((cell.shape[0], max(2, cell.shape[1] // 32), 3), 255, np.uint8)
    return np.concatenate([cell, gap, overlay(cell, heatmap)], axis=1)


def tile_title(true_class: str | None, pred_class: str, probability: float, where: str,
               empty: bool = False) -> str:
    """``true X → pred Y p=0.97`` (``pred Y p=0.97`` without a known class) over ``where``;
    ``empty``: the heatmap is all zero (no positive evidence for the class in that map)."""
    head = (f"true {true_class} → pred {pred_class}" if true_class is not None
            else f"pred {pred_class}")
    return f"{head} p={probability:.2f}\n{where}" + ("\n(Grad-CAM: no positive evidence)"
                                                    if empty else "")


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


TILE_INCHES = (2.9, 1.9)  # (width, height) of one tile with its title
HEADING_INCHES = 0.4      # height of a section's heading


def draw_gallery(sections: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]],
                 path: str | os.PathLike, title: str) -> Path:
    """One PNG of titled sections of tiles ``(tile image, tile title)``, ``COLUMNS`` a row,
    written atomically; its ``Title`` text chunk holds the figure's title and headings (as
    ``summary.save_figure`` does, so labels such as LEAKY can be checked by program)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = []  # one heading row per section, then its rows of tiles
    for _, tiles in sections:
        heights += [HEADING_INCHES] + [TILE_INCHES[1]] * max(1, -(-len(tiles) // COLUMNS))
    top = 0.45
    fig = plt.figure(figsize=(TILE_INCHES[0] * COLUMNS, sum(heights) + top))
    grid = fig.add_gridspec(len(heights), COLUMNS, height_ratios=heights, hspace=0.05,
                            wspace=0.04, left=0.01, right=0.99, bottom=0.01,
                            top=1 - top / (sum(heights) + top))
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / (sum(heights) + top), va="top")
    row = 0
    for heading, tiles in sections:
        ax = fig.add_subplot(grid[row, :])
        ax.axis("off")
        ax.text(0, 0.2, heading, fontsize=9.5, fontweight="bold", transform=ax.transAxes)
        row += 1
        n_rows = max(1, -(-len(tiles) // COLUMNS))
        for k in range(n_rows * COLUMNS):
            ax = fig.add_subplot(grid[row + k // COLUMNS, k % COLUMNS])
            ax.axis("off")
            if k < len(tiles):
                picture, caption = tiles[k]
                ax.imshow(picture, interpolation="nearest")
                ax.set_title(caption, fontsize=7, pad=2)
            elif not tiles and k == 0:
                ax.text(0, 0.5, "none", fontsize=9, transform=ax.transAxes)
        row += n_rows
    titles = " | ".join([title] + [heading for heading, _ in sections])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata={"Title": titles})
    plt.close(fig)
    return Path(path)


# --------------------------------------------------------------------------- the gallery


def _finished_folds(run_dir: Path, folds: Iterable[int] | None) -> list[int]:
    done = sorted(int(p.parent.name.split("_")[1]) for p in run_dir.glob(f"fold_*/{PREDICTIONS}"))
    if folds is None:
        return done
    wanted = sorted({int(f) for f in folds})
    missing = [f for f in wanted if f not in done]
    if missing:
        raise InputError(f"{run_dir}: fold(s) {missing} not finished here (finished: "
                         f"{done or 'none'})")
    return wanted


def _matches(rows: pd.DataFrame, images: Iterable[str]) -> pd.Series:
    """Rows whose image key, file name or path is among ``images``."""
    wanted = {str(i) for i in images}
    names = {Path(i).name for i in wanted}
    return (rows["image"].astype(str).isin(wanted) | rows["path"].astype(str).isin(wanted)
            | rows["image"].map(lambda key: Path(str(key)).name in names))


def _fold_tiles(run_dir: Path, config: dict, fold: int, rows: pd.DataFrame, say
                ) -> tuple[dict[int, tuple[np.ndarray, bool]], str | None]:
    """Tiles of one fold's chosen rows (by row index) and the layer explained."""
    from leukocyte_cnn.models.checkpoints import load_checkpoint

    directory = fold_dir(run_dir, fold)
    checkpoint = fold_checkpoint(directory)
    if checkpoint is None:
        say(f"gallery: {directory}: no {CHECKPOINT}; its {len(rows)} cell(s) left out")
        return {}, None
    inputs = fold_test_inputs(run_dir, fold, config).set_index("image")
    rows = rows[rows["image"].isin(inputs.index)]
    rows = rows.assign(path=inputs.loc[rows["image"], "path"].to_numpy(),
                       mask=inputs.loc[rows["image"], "mask"].to_numpy())
    present = (rows["path"].map(lambda p: Path(p).is_file())
               & rows["mask"].map(lambda m: not m or Path(m).is_file()))
    if not present.all():
        say(f"gallery: fold {fold}: {int((~present).sum())} image(s) or mask(s) not found "
            f"on this machine (e.g. {rows.loc[~present, 'path'].iloc[0]}), left out")
    rows = rows[present]
    if rows.empty:
        return {}, None
    model = load_checkpoint(checkpoint)
    images = load_cells(rows, model_image_size(model, config), config)
    layer = last_conv_layer(model)
    heatmaps = gradcam(model, images, rows["pred"].astype(int).to_numpy(), layer=layer)
    return ({index: (_tile(image, heatmap), not heatmap.any())
             for index, image, heatmap in zip(rows.index, images, heatmaps, strict=True)},
            layer.name)


def gallery_cells(run_dir: Path, config: dict, chosen: pd.DataFrame, say=print
                  ) -> tuple[list, list[str]]:
    """(row, tile image, heatmap empty) of every chosen row that can be drawn here, in
    ``chosen``'s order, and the names of the layers explained; each fold's checkpoint is
    loaded once. A fold whose checkpoint, images or split cannot be read here is left out
    with one line (the gallery is part of every summary; it must not stop one)."""
    tiles: dict[int, tuple[np.ndarray, bool]] = {}
    layers: list[str] = []
    for fold, rows in chosen.groupby("fold", sort=True):
        try:
            drawn, layer = _fold_tiles(run_dir, config, int(fold), rows, say)
        except (InputError, ValueError) as exc:
            say(f"gallery: fold {fold} left out: {exc}")
            continue
        tiles.update(drawn)
        layers += [layer] if layer and layer not in layers else []
    return [(row, *tiles[index]) for index, row in chosen.iterrows() if index in tiles], layers


def error_gallery(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None,
                  max_errors: int = 16, correct_per_class: int = 2,
                  folds: Iterable[int] | None = None, images: Iterable[str] | None = None,
                  say=print) -> Path | None:
    """Draw the run's gallery of errors (``<run>/errors_gallery.png`` unless ``out_path``).

    Reads ``settings.json`` and every finished fold's ``predictions.csv`` (``folds``: only
    these), chooses the cells (:func:`choose_cells`; ``images``: only these test images, by
    key, file name or path), loads them as the run fed them (``fold_XX/inputs.csv``, the
    model's input size, the run's colour mode and, where the fold recorded one, its mask
    set) and computes each one's Grad-CAM for its predicted class with its fold's
    checkpoint. Returns the PNG's path, or ``None`` when there is nothing to draw (no
    finished fold, no image or checkpoint on this machine).
    """
    run_dir = Path(run_dir)
    config = read_settings(run_dir).get("config", {})
    class_names = [str(c) for c in config["class_names"]]
    done = _finished_folds(run_dir, folds)
    if not done:
        return None
    predictions = pd.concat([pd.read_csv(fold_dir(run_dir, k) / PREDICTIONS,
                                         dtype={"image": str, "group": str}) for k in done],
                            ignore_index=True)
    if images is not None:
        images = [str(image) for image in images]
        paths = pd.concat([fold_test_inputs(run_dir, k, config).assign(fold=k) for k in done])
        keys = paths[_matches(paths, images)]
        predictions = predictions.merge(keys[["fold", "image"]], on=["fold", "image"])
        if predictions.empty:
            raise InputError(f"{run_dir}: none of {', '.join(map(str, images))} is a test "
                             "image of its finished folds")
    chosen = choose_cells(predictions, class_names, max_errors, correct_per_class)
    cells, layers = gallery_cells(run_dir, config, chosen, say=say)
    if not cells:
        return None
    n_errors = int((predictions["pred"] != predictions["label"]).sum())
    sections = []
    for kind, heading in (
            ("error", f"Misclassified test cells: {sum(r.kind == 'error' for r, *_ in cells)} of "
                      f"{n_errors} shown, most confident first"),
            ("correct", "Correctly classified, for contrast: the most confident per class")):
        tiles = [(tile, tile_title(row["class_name"], row["pred_class"], row["p_pred"],
                                   _short(f"fold {int(row['fold'])} {row['image']}"), empty))
                 for row, tile, empty in cells if row["kind"] == kind]
        if tiles or kind == "error":
            sections.append((heading, tiles))
    leaky = " [LEAKY split]" if config.get("leaky") else ""
    title = (f"{config.get('title', run_dir.name)}: test cells with the Grad-CAM heatmap of "
             f"the predicted class ({', '.join(layers)}){leaky}")
    return draw_gallery(sections, run_dir / GALLERY if out_path is None else out_path, title)


# --------------------------------------------------------------------------- chosen images


def explain_images(run_dir: str | os.PathLike, paths: Sequence[str | os.PathLike],
                   checkpoint: str | os.PathLike, out_path: str | os.PathLike,
                   masks: Sequence[str] | None = None, say=print) -> tuple[Path, pd.DataFrame]:
    """Run one checkpoint of a run on image files and draw each with its predicted class,
    probability and Grad-CAM heatmap (``masks``: one mask file per image, to blank the
    background as a masked run did). Returns the PNG and a table (``image``, ``pred``,
    ``pred_class``, ``p_pred``, ``prob_<class>`` ...). A missing or unreadable image raises a
    one-line ``InputError`` naming it."""
    from leukocyte_cnn.data.images import check_images
    from leukocyte_cnn.models.checkpoints import load_checkpoint
    from leukocyte_cnn.reporting.metrics import probabilities_from_output

    run_dir = Path(run_dir)
    config = read_settings(run_dir).get("config", {})
    class_names = [str(c) for c in config["class_names"]]
    paths = [str(p) for p in paths]
    for path in paths:
        if not Path(path).is_file():
            raise InputError(f"{path}: image not found")
    check_images(pd.DataFrame({"image": paths, "path": paths}), skip_bad=False)
    model = load_checkpoint(checkpoint, num_classes=len(class_names))
    if masks is None and _mask_root(Path(checkpoint).parent) is not None:
        say(f"{Path(checkpoint).parent}: the fold's images were masked "
            f"({_mask_root(Path(checkpoint).parent)}); these images are explained unmasked")
    rows = pd.DataFrame({"image": paths, "path": paths, "mask": list(masks or [""] * len(paths))})
    images = load_cells(rows, model_image_size(model, config), config)
    outputs = np.concatenate([np.asarray(model(images[i:i + 16], training=False), np.float64)
                              for i in range(0, len(images), 16)])
    probs = probabilities_from_output(outputs)
    pred = probs.argmax(axis=1)
    heatmaps = gradcam(model, images, pred)
    table = pd.DataFrame({"image": paths, "pred": pred,
                          "pred_class": [class_names[k] for k in pred],
                          "p_pred": probs[np.arange(len(pred)), pred]})
    for column, values in zip(prob_columns(class_names), probs.T, strict=True):
        table[column] = values
    tiles = [(_tile(image, heatmap), tile_title(None, row.pred_class, row.p_pred,
                                                _short(Path(row.image).name),
                                                not heatmap.any()))
             for image, heatmap, row in zip(images, heatmaps, table.itertuples(), strict=True)]
    layer = last_conv_layer(model).name
    title = (f"{config.get('title', run_dir.name)}: {Path(checkpoint).parent.name} on "
             f"{len(paths)} image(s), Grad-CAM of the predicted class ({layer})")
    return draw_gallery([("Chosen images", tiles)], out_path, title), table
