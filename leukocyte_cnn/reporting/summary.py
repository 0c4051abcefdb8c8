"""Tables (CSV + Markdown) and figures of a run, rebuilt from its fold files alone.

``summarize_run(run_dir)`` reads ``settings.json`` and every ``fold_XX/predictions.csv`` and
``epochs.csv`` and writes ``summary.csv``, ``summary.md`` and the figures. It never needs the
models or the data, so it also merges folds that ran on different machines.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from leukocyte_cnn.base.io import write_csv, write_text
from leukocyte_cnn.base.run_folder import (
    EPOCHS,
    chain_lines,
    check_fold_chain,
    load_predictions,
    read_settings,
    run_lock,
)
from leukocyte_cnn.reporting.diagnostics import GALLERY, Diagnostics, run_diagnostics
from leukocyte_cnn.reporting.figures import pyplot, save_figure
from leukocyte_cnn.reporting.html_report import REPORT
from leukocyte_cnn.reporting.metrics import (
    SUMMARY_METRICS,
    format_mean_std,
    mean_std,
    per_fold_table,
    predictions_metrics,
    prob_columns,
)
from leukocyte_cnn.reporting.stats import N_BOOTSTRAP, clustering_note, format_ci, metric_intervals

LEAKY_TEXT = ("LEAKY SPLIT: images of one source cell or patient can sit in both training and "
              "test; these numbers overstate accuracy and are shown only to reproduce published "
              "figures.")


def is_leaky_config(settings: dict) -> bool:
    """Whether a run's ``settings.json`` (or its ``config`` part) records a leaky split."""
    config = settings.get("config", settings) if isinstance(settings, dict) else {}
    return bool(config.get("leaky"))


def leaky_banner(settings: dict, text: str = LEAKY_TEXT) -> str:
    """The one LEAKY label of Markdown reports: a bold block quote, or ``""`` when the run's
    split is not leaky. ``settings`` is ``settings.json`` or its ``config``."""
    return f"> **{text}**\n\n" if is_leaky_config(settings) else ""


def run_config(run_dir: str | os.PathLike) -> dict:
    """The ``config`` of a run folder's ``settings.json`` ({} when there is none), for the
    LEAKY label of figures and tables drawn from a run folder."""
    path = Path(run_dir) / "settings.json"
    return read_settings(run_dir).get("config", {}) if path.is_file() else {}


def leaky_tag(settings: dict) -> str:
    """`` [LEAKY split]`` for figure titles and console lines, ``""`` otherwise."""
    return " [LEAKY split]" if is_leaky_config(settings) else ""


def color_mode_lines(config: dict) -> list[str]:
    """The report line naming the input colours (a script's ``COLOR_MODE`` knob), if any."""
    mode = (config.get("knobs") or {}).get("COLOR_MODE")
    if mode is None:
        return []
    words = {"rgb": "RGB", "grayscale": "grayscale (ITU-R 601 luminance in all three channels)"}
    return [f"- input colours (COLOR_MODE): {words.get(mode, mode)}"]


def markdown_table(frame: pd.DataFrame, float_digits: int = 3) -> str:
    """A GitHub Markdown table (no extra dependency)."""
    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            return "n/a" if math.isnan(value) else f"{value:.{float_digits}f}"
        return str(value).replace("|", "\\|")
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def write_table(frame: pd.DataFrame, path_without_suffix: str | os.PathLike, title: str = "",
                note: str = "") -> tuple[Path, Path]:
    """Write a table as ``<name>.csv`` and ``<name>.md`` (title and note above the table)."""
    base = Path(path_without_suffix)
    csv_path = write_csv(base.with_suffix(".csv"), frame)
    text = (f"# {title}\n\n" if title else "") + (f"{note}\n\n" if note else "")
    md_path = write_text(base.with_suffix(".md"), text + markdown_table(frame))
    return csv_path, md_path


_pyplot = pyplot  # the older name, used by callers of this module


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str],
                          path: str | os.PathLike, title: str = "") -> Path:
    plt = _pyplot()
    matrix = np.asarray(matrix)
    size = max(4.0, 0.7 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > threshold else "black")
    ax.set_title(title or "Confusion matrix (pooled test folds)")
    return save_figure(fig, path)


def plot_roc(predictions: pd.DataFrame, class_names: Sequence[str],
             path: str | os.PathLike, title_suffix: str = "") -> Path:
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    prob = predictions[prob_columns(class_names)].to_numpy()
    y = predictions["label"].to_numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    targets = [1] if len(class_names) == 2 else range(len(class_names))
    for c in targets:
        if (y == c).any() and (y != c).any():
            fpr, tpr, _ = roc_curve(y == c, prob[:, c])
            ax.plot(fpr, tpr, label=class_names[c])
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (pooled test folds" + (", one-vs-rest)" if len(targets) > 1 else ")")
                 + title_suffix)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_learning_curves(run_dir: str | os.PathLike, path: str | os.PathLike,
                         title_suffix: str = "") -> Path | None:
    """Training and validation loss/accuracy per epoch, one thin line per fold."""
    logs = sorted(Path(run_dir).glob(f"fold_*/{EPOCHS}"))
    if not logs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for log_path in logs:
        log = pd.read_csv(log_path)
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            for prefix, style in (("", "-"), ("val_", "--")):
                if prefix + metric in log:
                    ax.plot(log["epoch"], log[prefix + metric], style, lw=0.8, alpha=0.6,
                            color="C0" if not prefix else "C1")
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)  # whole epochs
        ax.set_ylabel(metric)
        ax.set_title(f"{metric}: training (solid) / validation (dashed){title_suffix}")
    return save_figure(fig, path)


def summarize_run(run_dir: str | os.PathLike, quiet: bool = False) -> pd.DataFrame:
    """Rebuild ``summary.csv``/``summary.md`` and figures from the run's fold files.

    Under the run folder's lock (``run_folder.run_lock``): fold jobs that finish together
    rebuild the summary one after the other, each from the folds finished by then, so every
    summary is whole and consistent and the last one holds every fold."""
    with run_lock(run_dir, "summary of"):
        return _summarize_run(Path(run_dir), quiet)


def _summarize_run(run_dir: Path, quiet: bool) -> pd.DataFrame:
    """:func:`summarize_run` with the run folder's lock held."""
    settings = read_settings(run_dir)
    config = settings["config"]
    class_names = list(config["class_names"])
    chain = check_fold_chain(run_dir, config.get("split_sha256"))  # refuses a mixed split
    predictions = load_predictions(run_dir)
    pooled = predictions_metrics(predictions, class_names)
    folds = per_fold_table(predictions, class_names)
    expected = config.get("n_folds")

    rows = []
    for name in SUMMARY_METRICS:
        mean, std = mean_std(folds[name].tolist())
        rows.append({"metric": name, "pooled": pooled[name], "fold_mean": mean,
                     "fold_std": std, "n_folds": int(folds[name].notna().sum())})
    summary = pd.DataFrame(rows)
    intervals = metric_intervals(predictions, class_names, SUMMARY_METRICS)
    summary.insert(2, "ci95_low", [intervals[m][0] for m in summary["metric"]])
    summary.insert(3, "ci95_high", [intervals[m][1] for m in summary["metric"]])
    per_class = pd.DataFrame([{"class": c, **v} for c, v in pooled["per_class"].items()])
    write_csv(run_dir / "summary.csv", summary)
    write_csv(run_dir / "per_class.csv", per_class)
    write_csv(run_dir / "per_fold.csv", folds)

    cm = pd.DataFrame(pooled["confusion_matrix"], columns=[f"pred {c}" for c in class_names])
    cm.insert(0, "true", class_names)
    leaky = bool(config.get("leaky"))
    lines = [f"# {config.get('title', run_dir.name)}", ""]
    if leaky:
        lines += [leaky_banner(config)]
    lines += [f"- run: `{run_dir.name}`; dataset: `{config.get('dataset')}`; split: "
              f"`{config.get('split_file')}` "
              f"(dataset hash `{str(config.get('dataset_hash'))[:12]}`)",
              *color_mode_lines(config),
              f"- folds finished: {len(folds)}" + (f" of {expected}" if expected else "")
              + f"; pooled test images: {pooled['n']}; seed {config.get('seed')}",
              *(chain_lines(chain) or [
                  f"- code: `{settings['provenance']['git']['commit'][:12]}`"
                  + (" (uncommitted changes)" if settings["provenance"]["git"]["dirty"]
                     else "")]),
              f"- split file SHA-256 `{str(config.get('split_sha256'))[:12]}`; each fold's "
              "`timing.json` records its split, artifacts and commit, and `inputs.csv` "
              "the images it used",
              "", "## Test metrics", "",
              "Pooled: all folds' test predictions together, with its 95 % confidence "
              f"interval (percentile bootstrap, {N_BOOTSTRAP:,} seeded replicates: "
              f"{clustering_note(predictions)}). Per fold: mean ± sample std over "
              "folds (ROC-AUC and balanced accuracy only where a fold's test set has two or "
              "more classes).", ""]
    shown = summary.assign(
        **{PER_FOLD: [format_mean_std(folds[m].tolist()) for m in summary["metric"]]},
        **{POOLED_CI: [format_ci(v, lo, hi) for v, lo, hi in
                       summary[["pooled", "ci95_low", "ci95_high"]].itertuples(index=False)]})
    lines += [markdown_table(shown[["metric", POOLED_CI, PER_FOLD, "n_folds"]]), "",
              "## Per class (pooled)", "", markdown_table(per_class), "",
              "## Confusion matrix (pooled; rows true, columns predicted)", "",
              markdown_table(cm), ""]
    if config.get("excluded_classes"):
        lines += [f"Excluded classes (never trained or tested): "
                  f"{', '.join(map(str, config['excluded_classes']))}", ""]

    tag = leaky_tag(config)  # every figure title says LEAKY when the split is
    plot_confusion_matrix(pooled["confusion_matrix"], class_names, run_dir / "confusion_matrix.png",
                          title=f"Confusion matrix (pooled test folds){tag}")
    plot_roc(predictions, class_names, run_dir / "roc.png", title_suffix=tag)
    plot_learning_curves(run_dir, run_dir / "learning_curves.png", title_suffix=tag)
    extra = run_diagnostics(run_dir, predictions, class_names, config, title_suffix=tag,
                            markdown_table=markdown_table)
    lines += extra.lines + figure_links(run_dir)
    write_text(run_dir / "summary.md", "\n".join(lines))
    write_run_report(run_dir, settings, shown[["metric", POOLED_CI, PER_FOLD, "n_folds"]],
                     per_class, cm, folds, predictions, summary, extra)
    if not quiet:
        print(f"\n{run_dir / 'summary.md'}:\n")
        print(markdown_table(shown[["metric", POOLED_CI, PER_FOLD, "n_folds"]]))
        print(f"report: {run_dir / REPORT}")
    return summary


POOLED_CI = "pooled [95 % CI]"
PER_FOLD = "per fold (mean ± std)"
RUN_FIGURES = ("confusion_matrix.png", "roc.png", "learning_curves.png")


def figure_links(folder: str | os.PathLike) -> list[str]:
    """``summary.md`` lines showing the folder's figures (relative links) and the report."""
    from leukocyte_cnn.reporting.html_report import figures_in

    figures = figures_in(folder, RUN_FIGURES)
    lines = ["## Figures", "", f"All tables, figures, settings and provenance in one page: "
             f"[{REPORT}]({REPORT}).", ""]
    for figure in figures:
        lines += [f"![{figure.stem.replace('_', ' ')}]({figure.name})", ""]
    return lines


def write_run_report(run_dir: Path, settings: dict, metrics: pd.DataFrame,
                     per_class: pd.DataFrame, cm: pd.DataFrame, folds: pd.DataFrame,
                     predictions: pd.DataFrame, summary: pd.DataFrame,
                     extra: Diagnostics | None = None) -> Path:
    """``report.html`` of a cross-validation run (see
    :mod:`leukocyte_cnn.reporting.html_report`); ``extra``: the calibration, per-group and
    error-gallery sections and figures (:func:`diagnostics.run_diagnostics`)."""
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

    config = settings["config"]
    split = read_split_settings(config, run_dir)
    expected = config.get("n_folds")
    facts = [("run folder", f"<code>{esc(run_dir)}</code>"),
             ("dataset", esc(config.get("dataset")) + (
                 f" from <code>{esc(config['data_root'])}</code>" if config.get("data_root")
                 else "")),
             ("classes", esc(", ".join(map(str, config.get("class_names", []))))),
             ("split", f"<code>{esc(config.get('split_file'))}</code>"),
             ("protocol", esc(split_protocol(config, split))),
             ("folds", f"{folds['fold'].nunique()} finished" + (f" of {expected}"
                                                                 if expected else "")),
             ("seed", esc(config.get("seed")))]
    note = ("<p class=note>Pooled: every finished fold's test predictions together; the 95 % "
            f"interval is a percentile bootstrap ({N_BOOTSTRAP:,} seeded replicates; "
            f"{esc(clustering_note(predictions))}). Per fold: mean ± sample std.</p>")
    extra = extra or Diagnostics()
    sections = [("Test metrics", table_html(metrics) + note), *extra.sections,
                ("Per class (pooled)", table_html(per_class)),
                ("Confusion matrix (pooled; rows true, columns predicted)", table_html(cm)),
                ("Per fold", table_html(folds)),
                ("Settings", table_html(settings_table(config, settings.get("overrides")))),
                ("Provenance", table_html(provenance_table(settings.get("provenance", {}))))]
    numbers = summary.set_index("metric")
    cards = [(label, f"{numbers.loc[m, 'pooled']:.3f}",
              f"95 % CI {numbers.loc[m, 'ci95_low']:.3f}–{numbers.loc[m, 'ci95_high']:.3f}")
             for m, label in (("accuracy", "test accuracy"),
                              ("balanced_accuracy", "balanced accuracy"),
                              ("roc_auc", "ROC-AUC"), ("macro_f1", "macro-F1"))
             if m in numbers.index and np.isfinite(numbers.loc[m, "pooled"])]
    cards.append(("test images", f"{len(predictions):,}",
                  f"{folds['fold'].nunique()} fold(s), {len(config.get('class_names', []))} "
                  "classes"))
    return write_report(run_dir, title=config.get("title", run_dir.name),
                        subtitle=f"{run_dir.name} · {config.get('script', '')}",
                        banner=LEAKY_TEXT if is_leaky_config(config) else "", cards=cards,
                        facts=facts, sections=sections,
                        figures=figures_in(run_dir, RUN_FIGURES
                                           + tuple(p.name for p in extra.figures)),
                        figure_captions={"confusion_matrix.png": "Confusion matrix, pooled test "
                                                                 "folds",
                                         "roc.png": "ROC curves, pooled test folds",
                                         "learning_curves.png": "Learning curves, one line per "
                                                                "fold",
                                         **extra.captions,
                                         "_wide": ("learning_curves.png", GALLERY)})


EPOCH_METRICS = ("loss", "accuracy", "auc", "precision", "recall")  # plot_epoch_metrics


def plot_epoch_metrics(run_dir: str | os.PathLike, path: str | os.PathLike,
                       metrics: Sequence[str] = EPOCH_METRICS) -> Path | None:
    """One panel per metric of ``fold_*/epochs.csv``: training solid, validation dashed.

    Metrics missing from every log are left out; returns None when no fold has a log.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from leukocyte_cnn.base.run_folder import EPOCHS
    from leukocyte_cnn.reporting.summary import leaky_tag, run_config, save_figure

    logs = [pd.read_csv(p) for p in sorted(Path(run_dir).glob(f"fold_*/{EPOCHS}"))]
    shown = [m for m in metrics if any(m in log or f"val_{m}" in log for log in logs)]
    if not logs or not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], shown, strict=True):
        for log in logs:
            for prefix, style, colour in (("", "-", "C0"), ("val_", "--", "C1")):
                if prefix + metric in log:
                    ax.plot(log["epoch"], log[prefix + metric], style, color=colour, lw=1,
                            alpha=0.7, label=("validation" if prefix else "training"))
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), fontsize=7)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
    fig.suptitle("Per-epoch metrics (positive class for AUC/precision/recall)"
                 + leaky_tag(run_config(run_dir)), fontsize=9)
    return save_figure(fig, path)
