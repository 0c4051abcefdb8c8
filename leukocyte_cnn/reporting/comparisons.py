"""Tables and figures of a study: repeated trials of several settings on one split.

A study (``leukocyte_cnn.runs.trials``) leaves one run folder per (setting, trial) under
``<run>/<setting>/trial_NN``. This module reads those folders only: per-trial numbers
(:func:`collect_trials`), the per-setting comparison with each setting's difference to the best
one (:func:`comparison_table`, :func:`difference_to_best`), ``comparison.{csv,md}`` and the
study's ``report.html`` (:func:`write_comparison`), pooled confusion matrices, validation
curves and feature maps. It also holds :class:`Setting`, the configuration both the trial loop
and these tables are keyed by, and the LEAKY banner of a study on a random split.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from leukocyte_cnn.base.io import read_json, write_csv, write_text
from leukocyte_cnn.base.run_folder import (
    CHECKPOINT,
    EPOCHS,
    PREDICTIONS,
    load_predictions,
    read_settings,
)
from leukocyte_cnn.reporting.metrics import predictions_metrics

# Shown above every table of a study on a random split (and printed with it).
LEAKY_WARNING = ("LEAKY SPLIT (--split-method random or --ignore-groups): augmented copies of "
                 "one source cell can sit in both training and test (or validation), so these "
                 "accuracies are inflated (one "
                 "earlier study reported 0.99 this way); shown only to reproduce such numbers. "
                 "Use the dataset's own TRAIN/TEST split for real estimates.")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One configuration of a study: a folder name and the parameters that define it."""

    name: str
    params: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)


def is_leaky(run_dir: str | os.PathLike) -> bool:
    """Whether the study in ``run_dir`` trained on a leaky (random) split."""
    return bool(read_settings(run_dir)["config"].get("leaky"))


# --------------------------------------------------------------------------- per-trial numbers


def model_size_mb(path: str | os.PathLike) -> float:
    """Size of a saved ``.keras`` file in MB (10^6 bytes); NaN when it is absent.

    The file holds the weights, the optimizer's slots (Adam: two per weight) and the config,
    so it is about 12 bytes per trainable parameter after Adam, as in the Copenhagen deck.
    """
    path = Path(path)
    return path.stat().st_size / 1e6 if path.is_file() else float("nan")


def epoch_numbers(log: pd.DataFrame, convergence_accuracy: float) -> dict:
    """From one fold's ``epochs.csv``: epochs run, the kept (best) epoch, best validation
    accuracy, whether the trial converged, and the first epoch above the threshold."""
    monitor = str(log["monitor"].iloc[0]) if "monitor" in log and len(log) else "val_loss"
    out = {"epochs_run": int(len(log)), "best_epoch": float("nan"),
           "best_val_accuracy": float("nan"), "converged": float("nan"),
           "epochs_to_threshold": float("nan")}
    if len(log) and monitor in log:
        out["best_epoch"] = int(log["epoch"].iloc[int(np.nanargmin(log[monitor].to_numpy()))])
    if len(log) and "val_accuracy" in log:
        val = log["val_accuracy"].to_numpy(dtype=float)
        out["best_val_accuracy"] = float(np.nanmax(val))
        above = np.flatnonzero(val >= convergence_accuracy)
        out["converged"] = bool(above.size)
        if above.size:
            out["epochs_to_threshold"] = int(log["epoch"].iloc[above[0]])
    return out


def collect_trials(run_dir: str | os.PathLike, settings: Sequence[Setting],
                   class_names: Sequence[str], convergence_accuracy: float) -> pd.DataFrame:
    """One row per finished (setting, trial): test metrics pooled over the trial's folds,
    epoch numbers (mean over folds), model size and training time. Read from files only."""
    rows = []
    for setting in settings:
        base = Path(run_dir) / setting.name
        for where in sorted(base.glob("trial_*")):
            if not list(where.glob(f"fold_*/{PREDICTIONS}")):
                continue
            predictions = load_predictions(where)
            metrics = predictions_metrics(predictions, class_names)
            config = read_json(where / "settings.json")["config"]
            fold_dirs = sorted(p.parent for p in where.glob(f"fold_*/{PREDICTIONS}"))
            per_fold = []
            for folder in fold_dirs:
                numbers = (epoch_numbers(pd.read_csv(folder / EPOCHS), convergence_accuracy)
                           if (folder / EPOCHS).is_file() else {})
                timing_file = folder / "timing.json"
                timing = read_json(timing_file) if timing_file.is_file() else {}
                numbers["train_seconds"] = timing.get("train_seconds", float("nan"))
                numbers["model_mb"] = model_size_mb(folder / CHECKPOINT)
                per_fold.append(numbers)
            folds = pd.DataFrame(per_fold)
            row = {"setting": setting.name, **setting.params,
                   "trial": int(config.get("trial", int(where.name.split("_")[-1]))),
                   "seed": config.get("seed"), "n_test": metrics["n"],
                   "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                   "balanced_accuracy": metrics["balanced_accuracy"]}
            for column in ("epochs_run", "best_epoch", "epochs_to_threshold",
                           "best_val_accuracy", "train_seconds", "model_mb"):
                row[column] = float(folds[column].mean()) if column in folds else float("nan")
            row["converged"] = (bool(folds["converged"].astype(float).min() > 0)
                                if "converged" in folds and folds["converged"].notna().all()
                                else float("nan"))
            row["trial_dir"] = str(where.relative_to(run_dir))
            rows.append(row)
    return pd.DataFrame(rows)


def report_trials(run_dir: str | os.PathLike, settings: Sequence[Setting],
                  class_names: Sequence[str], convergence_accuracy: float
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What every study writes after its trials: ``per_trial.csv`` (:func:`collect_trials`),
    ``val_accuracy_curves.png`` and ``confusion_<setting>.png``; returns the numeric and the
    shown comparison table (:func:`comparison_table`) for :func:`write_comparison`."""
    run_dir = Path(run_dir)
    per_trial = collect_trials(run_dir, settings, class_names, convergence_accuracy)
    write_csv(run_dir / "per_trial.csv", per_trial)
    numeric, shown = comparison_table(per_trial, settings, convergence_accuracy)
    numeric, shown = difference_to_best(run_dir, settings, class_names, numeric, shown)
    plot_validation_curves(run_dir, settings, run_dir / "val_accuracy_curves.png")
    pooled_confusion_matrices(run_dir, settings, class_names)
    return numeric, shown


# --------------------------------------------------------------------------- comparison tables

DIFFERENCE_NOTE = (
    "Δ vs best: test accuracy minus that of the best setting, on the same test images. With "
    "two or more trials (trial t of every setting has the same seed): the mean per-trial "
    "difference, its t 95 % interval and a paired t-test over the seeds; with one trial: the "
    "paired bootstrap 95 % interval over test images and the exact McNemar test. p ≥ 0.05 "
    "means these trials cannot tell the setting from the best one.")


def trial_predictions(run_dir: str | os.PathLike, setting: str) -> pd.DataFrame | None:
    """Every finished trial's test predictions of one setting, with a ``trial`` column."""
    tables = []
    for where in sorted((Path(run_dir) / setting).glob("trial_*")):
        if list(where.glob(f"fold_*/{PREDICTIONS}")):
            tables.append(load_predictions(where).assign(trial=int(where.name.split("_")[-1])))
    return pd.concat(tables, ignore_index=True) if tables else None


def difference_to_best(run_dir: str | os.PathLike, settings: Sequence[Setting],
                       class_names: Sequence[str], numeric: pd.DataFrame, shown: pd.DataFrame
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add each setting's test-accuracy difference to the best setting, its 95 % interval and
    a paired test (:func:`stats.compare_to_best`, see :data:`DIFFERENCE_NOTE`)."""
    from leukocyte_cnn.reporting.stats import compare_to_best, format_difference, format_p

    tables = {s.name: t for s in settings
              if (t := trial_predictions(run_dir, s.name)) is not None}
    if not tables or not len(numeric):
        return numeric, shown
    result = compare_to_best(tables, class_names, ("accuracy",), pair_on=("fold", "image"),
                             seeds_column="trial").set_index("name")
    names = numeric["setting"]
    numeric = numeric.assign(**{
        "pooled_accuracy": names.map(result["accuracy"]),
        "pooled_accuracy_ci_low": names.map(result["accuracy_ci_low"]),
        "pooled_accuracy_ci_high": names.map(result["accuracy_ci_high"]),
        "best": names.map(result["best"]),
        "diff_to_best": names.map(result["accuracy_diff"]),
        "diff_to_best_low": names.map(result["accuracy_diff_low"]),
        "diff_to_best_high": names.map(result["accuracy_diff_high"]),
        "p_vs_best": names.map(result["accuracy_p"]),
        "test_vs_best": names.map(result["accuracy_test"])})
    where = list(shown.columns).index("test accuracy") + 1 if "test accuracy" in shown else len(
        shown.columns)
    shown = shown.copy()
    shown.insert(where, "Δ acc vs best [95 % CI]", [
        "best" if row.best else format_difference(row.diff_to_best, row.diff_to_best_low,
                                                  row.diff_to_best_high)
        for row in numeric.itertuples()])
    shown.insert(where + 1, "p vs best", [
        "" if row.best else f"{format_p(row.p_vs_best)} ({row.test_vs_best})"
        for row in numeric.itertuples()])
    return numeric, shown


def _finite(values) -> np.ndarray:
    values = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    return values[np.isfinite(values)]


def spread(values, digits: int = 3, with_range: bool = True) -> str:
    """``mean ± std [min, max]`` (sample std, ddof=1); ``n/a`` without values."""
    values = _finite(values)
    if values.size == 0:
        return "n/a"
    text = f"{values.mean():.{digits}f}"
    text += f" ± {values.std(ddof=1):.{digits}f}" if values.size > 1 else " (1 trial)"
    if with_range and values.size > 1:
        text += f" [{values.min():.{digits}f}, {values.max():.{digits}f}]"
    return text


def comparison_table(per_trial: pd.DataFrame, settings: Sequence[Setting],
                     convergence_accuracy: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per setting: numeric summary (CSV) and a display table (Markdown).

    Accuracy and macro-F1 are mean ± sample std [min, max] over trials; "epochs to best" is
    the epoch of the kept checkpoint (lowest validation loss); a trial *converges* when its
    validation accuracy reaches ``convergence_accuracy`` within the epoch budget.
    """
    numeric, shown = [], []
    for setting in settings:
        part = per_trial[per_trial["setting"] == setting.name] if len(per_trial) else per_trial
        if not len(part):
            continue
        acc, f1 = _finite(part["accuracy"]), _finite(part["macro_f1"])
        converged = pd.to_numeric(part["converged"], errors="coerce").dropna()
        row = {"setting": setting.name, **setting.params, "trials": int(len(part)),
               "accuracy_mean": acc.mean(), "accuracy_std": _std(acc),
               "accuracy_min": acc.min(), "accuracy_max": acc.max(),
               "macro_f1_mean": f1.mean(), "macro_f1_std": _std(f1),
               "best_epoch_mean": _mean(part["best_epoch"]),
               "best_epoch_std": _std(part["best_epoch"]),
               "epochs_run_mean": _mean(part["epochs_run"]),
               "converged": int(converged.sum()), "convergence_rate":
                   float(converged.mean()) if len(converged) else math.nan,
               "model_mb": _mean(part["model_mb"]),
               "train_seconds_mean": _mean(part["train_seconds"])}
        numeric.append(row)
        shown.append({"setting": setting.name, **{k: _shown(v) for k, v in setting.params.items()},
                      "trials": row["trials"],
                      "test accuracy": spread(part["accuracy"]),
                      "macro-F1": spread(part["macro_f1"], with_range=False),
                      "epochs to best": spread(part["best_epoch"], digits=1, with_range=False),
                      f"converged (val acc ≥ {convergence_accuracy:g})":
                          (f"{row['converged']}/{len(converged)} "
                           f"({100 * row['convergence_rate']:.0f}%)" if len(converged) else "n/a"),
                      "model MB": row["model_mb"],
                      "train s/trial": row["train_seconds_mean"]})
    return pd.DataFrame(numeric), pd.DataFrame(shown)


def _shown(value):
    """Parameters as written (1e-04, not 0.000) in the Markdown table."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return value


def _mean(values) -> float:
    values = _finite(values)
    return float(values.mean()) if values.size else math.nan


def _std(values) -> float:
    values = _finite(values)
    return float(values.std(ddof=1)) if values.size > 1 else math.nan


def write_comparison(run_dir: str | os.PathLike, numeric: pd.DataFrame, shown: pd.DataFrame, *,
                     title: str, notes: Sequence[str] = (), name: str = "comparison",
                     quiet: bool = False) -> Path:
    """``<name>.csv`` (numbers, with a ``leaky`` column) and ``<name>.md`` (the table, with the
    LEAKY banner when the study's split is the random one, and the notes that define it)."""
    from leukocyte_cnn.reporting.summary import color_mode_lines, markdown_table

    run_dir = Path(run_dir)
    config = read_settings(run_dir)["config"]
    leaky = bool(config.get("leaky"))
    write_csv(run_dir / f"{name}.csv", numeric.assign(leaky=leaky, split_method=config.get(
        "split_method")))
    lines = [f"# {title}", ""]
    if leaky:
        lines += [f"> **{LEAKY_WARNING}**", ""]
    if any(str(c).startswith("Δ") for c in shown.columns):
        notes = [*notes, DIFFERENCE_NOTE]
    lines += [f"- run `{run_dir.name}`; dataset `{config.get('dataset')}`; split "
              f"`{config.get('split_file')}` (method {config.get('split_method')}"
              + (", LEAKY" if leaky else "") + ")", *color_mode_lines(config),
              *[f"- {note}" for note in notes], "", markdown_table(shown)]
    from leukocyte_cnn.reporting.summary import figure_links

    lines += ["", *figure_links(run_dir)]
    path = write_text(run_dir / f"{name}.md", "\n".join(lines))
    write_study_report(run_dir, shown, title=title, notes=notes)
    if not quiet:
        print(f"\n{path}:\n")
        if leaky:
            print(f"*** {LEAKY_WARNING} ***\n")
        print(markdown_table(shown))
    return path


def write_study_report(run_dir: str | os.PathLike, shown: pd.DataFrame, *, title: str,
                       notes: Sequence[str] = (), heading: str = "Comparison") -> Path:
    """``report.html`` of a study folder: the comparison table, its notes, every figure of
    the folder, the settings and provenance (:mod:`leukocyte_cnn.reporting.html_report`)."""
    from leukocyte_cnn.reporting.html_report import (
        esc,
        figures_in,
        provenance_table,
        read_split_settings,
        settings_table,
        split_protocol,
        table_html,
        write_report,
    )
    from leukocyte_cnn.reporting.summary import LEAKY_TEXT

    run_dir = Path(run_dir)
    settings = read_settings(run_dir)
    config = settings["config"]
    trained = {p.parents[1] for p in run_dir.glob(f"*/trial_*/fold_*/{PREDICTIONS}")}
    facts = [("run folder", f"<code>{esc(run_dir)}</code>"),
             ("dataset", esc(config.get("dataset"))),
             ("classes", esc(", ".join(map(str, config.get("class_names", []))))),
             ("split", f"<code>{esc(config.get('split_file'))}</code>"),
             ("protocol", esc(split_protocol(config, read_split_settings(config, run_dir))))]
    if trained:
        facts.append(("trials", f"{len(trained)} finished (setting, trial) trainings; trial t "
                                f"of every setting seeded with {config.get('seed')} + t"))
    notes_html = "".join(f"<p class=note>{esc(note)}</p>" for note in notes)
    sections = [(heading, table_html(shown) + notes_html),
                ("Settings", table_html(settings_table(config, settings.get("overrides")))),
                ("Provenance", table_html(provenance_table(settings.get("provenance", {}))))]
    return write_report(run_dir, title=title, subtitle=f"{run_dir.name} · {config.get('script')}",
                        banner=LEAKY_TEXT if config.get("leaky") else "", facts=facts,
                        sections=sections, figures=figures_in(run_dir),
                        figure_captions={"_wide": ("val_accuracy_curves.png",)})


# --------------------------------------------------------------------------- figures


def pooled_confusion_matrices(run_dir: str | os.PathLike, settings: Sequence[Setting],
                              class_names: Sequence[str], prefix: str = "confusion") -> list[Path]:
    """One confusion-matrix figure per setting, summed over its trials' test predictions."""
    from leukocyte_cnn.reporting.summary import plot_confusion_matrix

    written = []
    leaky = " [LEAKY split]" if is_leaky(run_dir) else ""
    for setting in settings:
        tables = [load_predictions(where) for where in sorted((Path(run_dir) / setting.name)
                                                              .glob("trial_*"))
                  if list(where.glob(f"fold_*/{PREDICTIONS}"))]
        if not tables:
            continue
        pooled = pd.concat(tables, ignore_index=True)
        matrix = predictions_metrics(pooled, class_names)["confusion_matrix"]
        written.append(plot_confusion_matrix(
            matrix, class_names, Path(run_dir) / f"{prefix}_{setting.name}.png",
            title=f"{setting.name}: {len(tables)} trial(s) pooled{leaky}"))
    return written


def plot_validation_curves(run_dir: str | os.PathLike, settings: Sequence[Setting],
                           path: str | os.PathLike, metric: str = "val_accuracy") -> Path | None:
    """``metric`` per epoch, one colour per setting, one thin line per trial (and fold)."""
    import matplotlib

    from leukocyte_cnn.reporting.summary import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for index, setting in enumerate(settings):
        logs = sorted((Path(run_dir) / setting.name).glob(f"trial_*/fold_*/{EPOCHS}"))
        for number, log_path in enumerate(logs):
            log = pd.read_csv(log_path)
            if metric not in log:
                continue
            ax.plot(log["epoch"], log[metric], color=f"C{index % 10}", lw=1, alpha=0.7,
                    label=setting.name if number == 0 else None)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    title = f"{metric.replace('_', ' ')} per epoch (one line per trial)"
    ax.set_title(title + (" [LEAKY split]" if is_leaky(run_dir) else ""))
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_feature_maps(model_path: str | os.PathLike, row: pd.Series, image_size: Sequence[int],
                      path: str | os.PathLike, *, inner: str, channels: int = 8,
                      title: str = "", color_mode: str = "rgb") -> Path | None:
    """The maps after every conv and pool layer of a trained model, for one image.

    ``model_path`` is a checkpoint whose first layer is named ``scaling`` and whose network is
    the nested model ``inner`` (as ``scaling_masks_cnn_fcn.py`` builds them); ``row`` is a
    table row with ``path`` (and ``mask`` when the setting blanks the background). The image
    goes through the same pipeline as in training. Row 0 shows the input; each further row
    one layer, its first ``channels`` maps, each scaled to its own range.
    """
    import keras

    from leukocyte_cnn.inputs.pipeline import load_arrays
    from leukocyte_cnn.reporting.summary import save_figure

    model_path = Path(model_path)
    if not model_path.is_file():
        print(f"feature maps skipped: {model_path} not found", flush=True)
        return None
    model = keras.models.load_model(model_path, safe_mode=True, compile=False)
    mask = row.get("mask") if isinstance(row.get("mask"), str) and row.get("mask") else None
    image = load_arrays([row["path"]], image_size, masks=[mask] if mask else None,
                        color_mode=color_mode)
    net = model.get_layer(inner)
    names = [layer.name for layer in net.layers
             if (layer.name.endswith(("_conv", "_pool")) or layer.name == "conv1x1")
             and len(layer.output.shape) == 4]  # spatial maps only (not global pooling)
    extractor = keras.Model(net.inputs, [net.get_layer(name).output for name in names])
    maps = extractor(model.get_layer("scaling")(image), training=False)
    maps = [np.asarray(m)[0] for m in (maps if isinstance(maps, (list, tuple)) else [maps])]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names) + 1, channels, figsize=(1.6 * channels,
                                                                 1.4 * (len(names) + 1)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(np.clip(image[0], 0, 255).astype(np.uint8))
    axes[0, 0].set_title("input", fontsize=7)
    for r, (name, fmap) in enumerate(zip(names, maps, strict=True), start=1):
        for c in range(min(channels, fmap.shape[-1])):
            axes[r, c].imshow(fmap[..., c], cmap="viridis")
            if c == 0:
                axes[r, c].set_title(f"{name} {fmap.shape[0]}x{fmap.shape[1]}x{fmap.shape[2]}",
                                     fontsize=7, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
