"""Transfer learning between blood-cell datasets: source checkpoints, their checks, learning curves.

A source model (``resnext_transfer_learning.py --pretrain``) is saved as ``<name>.keras`` with
two files beside it, written after the model and the sidecar last (a checkpoint with its
sidecar is complete):

- ``<name>.images.csv``: the SHA-256 of every image file the source model trained or validated
  on, so that fine-tuning can refuse a target split whose images the source weights have
  already seen (pretraining on the target data would leak its test images into every fold);
- ``<name>.json``: class names, input shape, preprocessing, architecture, source dataset and
  its hash, seed, validation accuracy.

:func:`check_source_checkpoint` loads a checkpoint in Keras' safe mode and refuses it, with one
line and before any training, when the file is missing or not a Keras model, when it has no
``head_dense`` layer or no ResNeXt stages, when its input shape is not the target image size,
or when its preprocessing differs from the target pipeline's (this repository feeds float32
pixels in [0, 255] and every model scales them in its own first layer).

The learning curve trains on nested, seeded subsets of each fold's training images
(:func:`subsample_per_class`) and tabulates and plots accuracy, macro-F1 and ROC-AUC against
the number of training images per class (:func:`learning_curve_table`,
:func:`plot_learning_curve`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import (file_sha256, read_json, save_model, write_csv, write_json, write_text)

# The only preprocessing this repository's pipelines produce: float32 pixels in [0, 255] go
# in, and the model scales them itself (a Rescaling layer right after its input).
PREPROCESSING = "rescaling_in_model"
INPUT_PIXELS = "[0, 255]"
MODES = ("scratch", "transfer")
CURVE_METRICS = ("accuracy", "macro_f1", "roc_auc")
_METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "roc_auc": "ROC-AUC"}


# --------------------------------------------------------------------------- files of a checkpoint


def sidecar_path(checkpoint: str | os.PathLike) -> Path:
    """``<name>.json`` beside ``<name>.keras``."""
    return Path(checkpoint).with_suffix(".json")


def images_path(checkpoint: str | os.PathLike) -> Path:
    """``<name>.images.csv`` beside ``<name>.keras``: digests of the source images."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.images.csv")


def file_digests(paths: Sequence[str | os.PathLike], workers: int = 4) -> list[str]:
    """SHA-256 of each file's bytes, in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(file_sha256, paths))


def input_scaling(model) -> dict | None:
    """``{"scale", "offset"}`` of the Rescaling layer right after the model's input, or None."""
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not layers or not isinstance(layers[0], keras.layers.Rescaling):
        return None
    first = layers[0]
    return {"scale": float(np.ravel(first.scale)[0]), "offset": float(np.ravel(first.offset)[0])}


def save_source_checkpoint(model, path: str | os.PathLike, *, metadata: dict,
                           images: pd.DataFrame) -> Path:
    """Write ``<name>.keras``, ``<name>.images.csv`` and ``<name>.json`` (last), atomically.

    ``images`` has ``image`` (the source key), ``role`` and ``path`` of every image the
    model trained or validated on; only keys, roles and digests are written.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise InputError(f"{path}: a checkpoint name must end in .keras")
    save_model(model, path)
    listing = pd.DataFrame({"image": images["image"].astype(str).to_numpy(),
                            "role": images["role"].astype(str).to_numpy(),
                            "sha256": file_digests(images["path"].tolist())})
    write_csv(images_path(path), listing)
    sidecar = {**metadata,
               "input_shape": [int(v) for v in model.input_shape[1:]],
               "preprocessing": PREPROCESSING, "input_pixels": INPUT_PIXELS,
               "input_scaling": input_scaling(model),
               "images_file": images_path(path).name,
               "checkpoint_sha256": file_sha256(path)}
    write_json(sidecar_path(path), sidecar)  # last: the checkpoint is complete
    return path


# --------------------------------------------------------------------------- checking a checkpoint


@dataclasses.dataclass
class SourceCheckpoint:
    """A checked source checkpoint: its path, sidecar (``{}`` without one) and file digest."""

    path: Path
    metadata: dict
    sha256: str
    input_shape: tuple[int, ...]

    def load_for(self, num_classes: int, retrain: str):
        """A fresh copy of the source weights with a new ``num_classes`` head, ``retrain`` set.

        Loaded from the file every time, so each fold starts from the source weights and
        never from another fold's fine-tuned ones.
        """
        import keras
        import resnext_network as rx

        model = keras.models.load_model(self.path, compile=False, safe_mode=True)
        model = rx.replace_head(model, num_classes)
        rx.set_retrain(model, retrain)
        return model


def check_source_checkpoint(path: str | os.PathLike | None,
                            image_size: tuple[int, int]) -> SourceCheckpoint:
    """Load ``path`` in safe mode and check it can be fine-tuned on ``image_size`` images.

    One-line ``InputError`` for: no path given, missing file, not a Keras model, no
    ``head_dense`` layer, no ``stageK_*`` layers, an input shape other than
    ``(*image_size, 3)``, and preprocessing other than [0, 255] pixels scaled inside the
    model (declared in the sidecar or seen in the model).
    """
    from leukocyte_cnn.models.checkpoints import load_checkpoint
    import resnext_network as rx

    if path is None:
        raise InputError("--source-checkpoint: required for fine-tuning and the learning "
                         "curve (make one with --pretrain)")
    path = Path(path)
    model = load_checkpoint(path)  # missing, not a .keras archive, unsafe or unreadable
    names = [layer.name for layer in model.layers]
    if "head_dense" not in names:
        raise InputError(f"{path}: no 'head_dense' layer to replace (a feature extractor or "
                         "a model not built by resnext_network.py); pretrain with --pretrain")
    if not any(rx.stage_of_layer(name) for name in names):
        raise InputError(f"{path}: no stageK_* layers, so RETRAIN cannot choose what to "
                         "fine-tune; use a ResNeXt built by resnext_network.py")
    have = tuple(int(v) for v in model.input_shape[1:])
    want = (int(image_size[0]), int(image_size[1]), 3)
    if have != want:
        hint = (f"pass --image-size {have[0]}" if have[0] == have[1] and have[2] == 3
                else "pretrain a source model at the target size")
        raise InputError(f"{path}: checkpoint takes {'x'.join(map(str, have))} images but this "
                         f"run feeds {'x'.join(map(str, want))}; {hint}")
    metadata = _read_sidecar(path)
    declared = metadata.get("preprocessing", PREPROCESSING)
    if declared != PREPROCESSING or metadata.get("input_pixels", INPUT_PIXELS) != INPUT_PIXELS:
        raise InputError(
            f"{sidecar_path(path)}: source preprocessing is {declared!r} (input pixels "
            f"{metadata.get('input_pixels', '?')}), but this pipeline feeds {INPUT_PIXELS} "
            f"pixels that the model scales itself ({PREPROCESSING!r}); the fine-tuned model "
            "would see pixels scaled unlike those it learnt from - pretrain with --pretrain")
    scaling = input_scaling(model)
    if scaling is None:
        raise InputError(f"{path}: model has no Rescaling input layer, so it expects "
                         f"pre-scaled pixels while this pipeline feeds {INPUT_PIXELS}; "
                         "rebuild it with the repository's builders (scaling inside the model)")
    recorded = metadata.get("input_scaling")
    if recorded is not None and not np.allclose([recorded["scale"], recorded["offset"]],
                                                [scaling["scale"], scaling["offset"]]):
        raise InputError(f"{sidecar_path(path)}: records input scaling {recorded} but the "
                         f"checkpoint scales by {scaling}; the sidecar belongs to another model")
    return SourceCheckpoint(path=path, metadata=metadata, sha256=file_sha256(path),
                            input_shape=have)


def _read_sidecar(path: Path) -> dict:
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        print(f"note: {sidecar} not found; source classes and data unknown, preprocessing "
              "taken from the model", flush=True)
        return {}
    metadata = read_json(sidecar)
    if not isinstance(metadata, dict):
        raise InputError(f"{sidecar}: expected a JSON object")
    return metadata


def check_source_disjoint(source: SourceCheckpoint, target_hash: str | None,
                          target: pd.DataFrame) -> int:
    """Refuse a source model that has seen any image of the target split; return images checked.

    Compares the recorded source dataset hash with the target's and the SHA-256 of every
    target file (``target['path']``) with the source listing. Without a listing (a
    checkpoint made elsewhere) only the dataset hash is compared, and a note says so.
    """
    where = sidecar_path(source.path)
    source_hash = source.metadata.get("source_dataset_hash")
    if source_hash and target_hash and source_hash == target_hash:
        raise InputError(f"{where}: the source model was trained on the target dataset itself "
                         "(same dataset hash); its weights have seen this split's test images "
                         "- pretrain on another dataset")
    listing_path = images_path(source.path)
    if not listing_path.exists():
        print(f"note: {listing_path} not found; cannot check that the source model never saw "
              "the target images", flush=True)
        return 0
    listing = pd.read_csv(listing_path, dtype=str, keep_default_na=False)
    if "sha256" not in listing.columns:
        raise InputError(f"{listing_path}: no sha256 column")
    seen = set(listing["sha256"])
    target = target.drop_duplicates("path")
    digests = file_digests(target["path"].tolist())
    shared = [image for image, digest in zip(target["image"], digests) if digest in seen]
    if shared:
        raise InputError(f"{listing_path}: the source model trained on {len(shared)} image(s) "
                         f"of the target split (e.g. {shared[0]}); its weights have seen test "
                         "images - pretrain on data disjoint from the target")
    return len(target)


# --------------------------------------------------------------------------- learning curve


def parse_train_sizes(text: str) -> list[int]:
    """``"5,10,20"`` -> ``[5, 10, 20]`` (positive, increasing order, duplicates dropped)."""
    try:
        sizes = sorted({int(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        raise InputError(f"--train-sizes {text}: expected whole numbers like 5,10,20") from None
    if not sizes or sizes[0] < 1:
        raise InputError(f"--train-sizes {text}: expected positive numbers of images per class")
    return sizes


def subsample_per_class(train: pd.DataFrame, n_per_class: int, *, seed: int,
                        fold: int) -> pd.DataFrame:
    """The first ``n_per_class`` training images of each class in a seeded per-fold order.

    The order is drawn once per (seed, fold) for every class, whatever ``n_per_class``, so
    the subsets are nested (the 5 images of a class are among its 10). Only ``train`` is
    read: validation and test images cannot be drawn. A class with fewer images keeps all.
    """
    if "role" in train and (train["role"] != "train").any():
        raise ValueError("subsample_per_class was given non-training images")
    rng = np.random.default_rng([seed, fold])
    parts = []
    for _, part in train.sort_values("image", kind="stable").groupby("label", sort=True):
        order = rng.permutation(len(part))
        parts.append(part.iloc[order[:n_per_class]])
    return pd.concat(parts).sort_values("image", kind="stable").reset_index(drop=True)


def repeat_to_epoch(train: pd.DataFrame, min_images: int) -> pd.DataFrame:
    """``train`` repeated whole until it holds at least ``min_images`` rows (every image the
    same number of times, so class shares stay as they are).

    An epoch of 20 images is one step at batch 32: with early stopping counted in epochs, a
    tiny training set then stops after a few dozen updates, long before it has learnt what
    it could. Repeated, with online flips and rotations making every repeat another view, an
    epoch of N images per class gets as many updates as one of the full training set.
    """
    if min_images <= len(train) or not len(train):
        return train
    times = -(-int(min_images) // len(train))  # ceiling
    return pd.concat([train] * times, ignore_index=True)


def curve_dir(run_dir: str | os.PathLike, size: int, mode: str) -> Path:
    """Where the folds of one (training-set size, mode) point of the curve go."""
    return Path(run_dir) / f"size_{size:03d}_{mode}"


def learning_curve_table(run_dir: str | os.PathLike, sizes: Sequence[int],
                         class_names: Sequence[str], modes: Sequence[str] = MODES) -> pd.DataFrame:
    """One row per (size, mode): metrics of the test folds, mean and sample std over folds."""
    from leukocyte_cnn.reporting.metrics import mean_std, per_fold_table
    from leukocyte_cnn.base.run_folder import load_predictions

    rows = []
    for size in sizes:
        for mode in modes:
            directory = curve_dir(run_dir, size, mode)
            folds = per_fold_table(load_predictions(directory), class_names)
            timings = sorted(directory.glob("fold_*/timing.json"))
            n_train = [read_json(timing)["n_train"] for timing in timings]
            row = {"size": int(size), "mode": mode, "n_folds": len(folds),
                   "train_images": float(np.mean(n_train)) if n_train else float("nan")}
            for metric in CURVE_METRICS:
                row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(folds[metric].tolist())
            if mode != "scratch" and "scratch" in modes:
                row.update(paired_to_scratch(run_dir, size, mode, class_names))
            rows.append(row)
    return pd.DataFrame(rows)


def paired_to_scratch(run_dir: str | os.PathLike, size: int, mode: str,
                      class_names: Sequence[str]) -> dict:
    """Test accuracy of ``mode`` minus from-scratch at one size, on the same test images: the
    difference, its paired bootstrap 95 % interval and the exact McNemar p-value (NaN when
    the two points share no test images)."""
    from leukocyte_cnn.reporting.stats import mcnemar_exact, paired_bootstrap
    from leukocyte_cnn.base.run_folder import load_predictions

    columns = [f"prob_{c}" for c in class_names]
    merged = load_predictions(curve_dir(run_dir, size, mode)).merge(
        load_predictions(curve_dir(run_dir, size, "scratch")), on=["fold", "image"],
        suffixes=("", "_scratch"))
    out = {"accuracy_vs_scratch": float("nan"), "accuracy_vs_scratch_low": float("nan"),
           "accuracy_vs_scratch_high": float("nan"), "mcnemar_p_vs_scratch": float("nan")}
    if not len(merged):
        return out
    y = merged["label"].to_numpy(dtype=int)
    prob = merged[columns].to_numpy(dtype=float)
    prob_scratch = merged[[f"{c}_scratch" for c in columns]].to_numpy(dtype=float)
    paired = paired_bootstrap(y, prob, prob_scratch, "accuracy")
    out.update(accuracy_vs_scratch=paired["difference"], accuracy_vs_scratch_low=paired["ci_low"],
               accuracy_vs_scratch_high=paired["ci_high"],
               mcnemar_p_vs_scratch=mcnemar_exact(prob.argmax(1) == y,
                                                  prob_scratch.argmax(1) == y)["p"])
    return out


def finished_sizes(run_dir: str | os.PathLike, sizes: Sequence[int], n_folds: int,
                   modes: Sequence[str] = MODES) -> tuple[list[int], list[int]]:
    """Sizes of a learning curve whose every mode has all ``n_folds`` folds predicted, and
    the sizes that do not (yet)."""
    done, missing = [], []
    for size in sizes:
        complete = all(len(list(curve_dir(run_dir, size, mode).glob("fold_*/predictions.csv")))
                       >= n_folds for mode in modes)
        (done if complete else missing).append(int(size))
    return done, missing


def rebuild_learning_curve(run_dir: str | os.PathLike) -> pd.DataFrame:
    """``learning_curve.csv/.md/.png`` of a learning-curve run from its fold files, over the
    sizes whose points are complete (a run stopped early, or still running, gets the curve
    it has so far; the table says which sizes are missing). Folds of another split file are
    refused, as for any run."""
    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.base.run_folder import check_fold_chain, read_settings

    run_dir = Path(run_dir)
    config = read_settings(run_dir)["config"]
    sizes = [int(s) for s in config.get("train_sizes") or []]
    if not sizes:
        raise InputError(f"{run_dir}/settings.json: not a learning-curve run (no train_sizes)")
    for size in sizes:
        for mode in MODES:
            if curve_dir(run_dir, size, mode).is_dir():
                check_fold_chain(curve_dir(run_dir, size, mode), config.get("split_sha256"))
    done, missing = finished_sizes(run_dir, sizes, int(config["n_folds"]))
    if not done:
        raise InputError(f"{run_dir}: no size of the learning curve has all "
                         f"{config['n_folds']} folds of both arms yet")
    table = learning_curve_table(run_dir, done, config["class_names"])
    note = (f"Test folds of {Path(config.get('split_file', '?')).name}; mean ± sample std over "
            f"the {config['n_folds']} folds (one repeat per fold, its test images never trained "
            "on).")
    if missing:
        note += (f" Not finished, so not shown: {', '.join(map(str, missing))} training "
                 "images per class.")
    write_learning_curve(table, run_dir, title=config.get("title", "learning curve"), note=note)
    return table


def write_learning_curve(table: pd.DataFrame, run_dir: str | os.PathLike, title: str,
                         note: str = "") -> tuple[Path, Path, Path]:
    """``learning_curve.csv`` (numbers), ``learning_curve.md`` (mean ± std) and ``.png``."""
    from leukocyte_cnn.reporting.summary import leaky_banner, leaky_tag, markdown_table, run_config

    run_dir = Path(run_dir)
    config = run_config(run_dir)  # a LEAKY split says so above the table and in the figure
    csv_path = write_csv(run_dir / "learning_curve.csv", table)
    shown = table[["size", "mode", "n_folds", "train_images"]].copy()
    shown["train_images"] = shown["train_images"].map(lambda v: f"{v:.1f}")
    for metric in CURVE_METRICS:
        shown[_METRIC_LABELS[metric]] = [_mean_pm_std(m, s) for m, s in
                                         zip(table[f"{metric}_mean"], table[f"{metric}_std"])]
    if "accuracy_vs_scratch" in table:
        from leukocyte_cnn.reporting.stats import format_difference, format_p

        shown["Δ accuracy vs scratch [95 % CI]"] = [
            "" if mode == "scratch" else format_difference(d, lo, hi)
            for mode, d, lo, hi in table[["mode", "accuracy_vs_scratch", "accuracy_vs_scratch_low",
                                          "accuracy_vs_scratch_high"]].itertuples(index=False)]
        shown["McNemar p"] = ["" if mode == "scratch" else format_p(p) for mode, p in
                              table[["mode", "mcnemar_p_vs_scratch"]].itertuples(index=False)]
        note = (note + "\n\n" if note else "") + (
            "Δ vs scratch: test accuracy of the pooled folds minus that of the from-scratch model "
            "at the same size, on the same test images (paired bootstrap 95 % interval, exact "
            "McNemar test).")
    text = (f"# {title}\n\n" + leaky_banner(config) + (f"{note}\n\n" if note else "")
            + markdown_table(shown))
    md_path = write_text(run_dir / "learning_curve.md", text)
    png_path = plot_learning_curve(table, run_dir / "learning_curve.png",
                                   title_suffix=leaky_tag(config))
    return csv_path, md_path, png_path


def _mean_pm_std(mean: float, std: float) -> str:
    if mean != mean:  # NaN
        return "n/a"
    return f"{mean:.3f}" + ("" if std != std else f" ± {std:.3f}")


def plot_learning_curve(table: pd.DataFrame, path: str | os.PathLike,
                        title_suffix: str = "") -> Path:
    """Accuracy, macro-F1 and ROC-AUC against images per class, one line per mode (± std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leukocyte_cnn.reporting.summary import save_figure

    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4.2 * len(CURVE_METRICS), 3.8))
    for ax, metric in zip(axes, CURVE_METRICS):
        for mode, part in table.groupby("mode", sort=False):
            part = part.sort_values("size")
            ax.errorbar(part["size"], part[f"{metric}_mean"],
                        yerr=part[f"{metric}_std"].fillna(0.0), marker="o", capsize=3,
                        label="from scratch" if mode == "scratch" else mode)
        ax.set_xscale("log")
        sizes = sorted(table["size"].unique())
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training images per class")
        ax.set_ylabel(_METRIC_LABELS[metric])
        ax.set_title(f"{_METRIC_LABELS[metric]} (mean ± std over folds){title_suffix}")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def describe(metadata: dict) -> str:
    """One line about a source checkpoint, for the run log."""
    if not metadata:
        return "source checkpoint without sidecar"
    return (f"source {metadata.get('source_dataset')} ({len(metadata.get('class_names', []))} "
            f"classes, val accuracy {metadata.get('val_accuracy', float('nan')):.3f}, "
            f"{json.dumps(metadata.get('architecture', {}), sort_keys=True)})")
