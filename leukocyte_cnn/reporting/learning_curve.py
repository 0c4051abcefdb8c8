"""The learning curve's table, paired tests, Markdown and figure, read from its fold folders.

A learning-curve run keeps the folds of each (training images per class, mode) point in
``<run>/size_NNN_<mode>`` (:func:`curve_dir`), ``mode`` an arm of the run (``scratch``, or a
fine-tuning mode such as ``head``, ``last_stage``, ``all``; older runs: ``transfer``).
:func:`learning_curve_table` tabulates accuracy, macro-F1 and ROC-AUC over the test folds of
every point, with the paired difference of each fine-tuned point to from-scratch on the same
test images (:func:`paired_to_scratch`);
:func:`write_learning_curve` writes ``learning_curve.{csv,md,png}``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from leukocyte_cnn.base.io import read_json, write_csv, write_text

MODES = ("scratch", "transfer")  # the two arms of runs that predate CURVE_ARMS
_ARM_LABELS = {"scratch": "from scratch", "transfer": "fine-tuned", "head": "fine-tuned: head",
               "last_stage": "fine-tuned: last stage",
               "last_two_stages": "fine-tuned: last two stages", "all": "fine-tuned: all layers"}
CURVE_METRICS = ("accuracy", "macro_f1", "roc_auc")
_METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "roc_auc": "ROC-AUC"}


def curve_dir(run_dir: str | os.PathLike, size: int, mode: str) -> Path:
    """Where the folds of one (training-set size, mode) point of the curve go."""
    return Path(run_dir) / f"size_{size:03d}_{mode}"


def learning_curve_table(run_dir: str | os.PathLike, sizes: Sequence[int],
                         class_names: Sequence[str], modes: Sequence[str] = MODES) -> pd.DataFrame:
    """One row per (size, mode): metrics of the test folds, mean and sample std over folds."""
    from leukocyte_cnn.base.run_folder import load_predictions
    from leukocyte_cnn.reporting.metrics import mean_std, per_fold_table

    rows = []
    for size in sorted(sizes):
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
                row.update(roc_auc_over_repeats(run_dir, size, mode, class_names, folds))
            rows.append(row)
    return pd.DataFrame(rows)


def paired_to_scratch(run_dir: str | os.PathLike, size: int, mode: str,
                      class_names: Sequence[str]) -> dict:
    """Test accuracy of ``mode`` minus from-scratch at one size, on the same test images: the
    difference, its paired bootstrap 95 % interval and the exact McNemar p-value (NaN when
    the two points share no test images)."""
    from leukocyte_cnn.base.run_folder import load_predictions
    from leukocyte_cnn.reporting.stats import mcnemar_exact, paired_bootstrap

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


def roc_auc_over_repeats(run_dir: str | os.PathLike, size: int, mode: str,
                         class_names: Sequence[str], folds: pd.DataFrame) -> dict:
    """ROC-AUC of ``mode`` minus from-scratch, paired by repeat (fold): the mean difference
    with its t interval and Wilcoxon's signed-rank p over the repeats (exact for few)."""
    from leukocyte_cnn.base.run_folder import load_predictions
    from leukocyte_cnn.reporting.metrics import per_fold_table
    from leukocyte_cnn.reporting.stats import paired_across_seeds

    scratch = per_fold_table(load_predictions(curve_dir(run_dir, size, "scratch")), class_names)
    both = folds.merge(scratch, on="fold", suffixes=("", "_scratch"))
    paired = paired_across_seeds(both["roc_auc"], both["roc_auc_scratch"])
    return {"roc_auc_vs_scratch": paired["difference"], "roc_auc_vs_scratch_low":
            paired["ci_low"], "roc_auc_vs_scratch_high": paired["ci_high"],
            "wilcoxon_p_roc_auc_vs_scratch": paired["p_wilcoxon"]}


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
                                         zip(table[f"{metric}_mean"], table[f"{metric}_std"],
                                             strict=True)]
    if "accuracy_vs_scratch" in table:
        _paired_columns(shown, table, "accuracy", "Δ accuracy vs scratch [95 % CI]",
                        "mcnemar_p_vs_scratch", "McNemar p")
        note = (note + "\n\n" if note else "") + (
            "Δ vs scratch: test accuracy of the pooled folds minus that of the from-scratch model "
            "at the same size, on the same test images (paired bootstrap 95 % interval, exact "
            "McNemar test).")
    if "roc_auc_vs_scratch" in table:
        _paired_columns(shown, table, "roc_auc", "Δ ROC-AUC vs scratch [95 % CI]",
                        "wilcoxon_p_roc_auc_vs_scratch", "Wilcoxon p")
        note += (" Δ ROC-AUC: the mean over repeats of each repeat's ROC-AUC minus the "
                 "from-scratch one on the same test images (t interval), Wilcoxon's "
                 "signed-rank test over the repeats.")
    text = (f"# {title}\n\n" + leaky_banner(config) + (f"{note}\n\n" if note else "")
            + markdown_table(shown))
    md_path = write_text(run_dir / "learning_curve.md", text)
    png_path = plot_learning_curve(table, run_dir / "learning_curve.png",
                                   title_suffix=leaky_tag(config))
    return csv_path, md_path, png_path


def _paired_columns(shown: pd.DataFrame, table: pd.DataFrame, metric: str, label: str,
                    p_column: str, p_label: str) -> None:
    """``shown[label]``: ``metric``'s difference to scratch with its interval, and
    ``shown[p_label]``: its p-value; blank on the scratch rows."""
    from leukocyte_cnn.reporting.stats import format_difference, format_p

    base = f"{metric}_vs_scratch"
    shown[label] = ["" if mode == "scratch" else format_difference(d, lo, hi)
                    for mode, d, lo, hi in table[["mode", base, f"{base}_low",
                                                  f"{base}_high"]].itertuples(index=False)]
    shown[p_label] = ["" if mode == "scratch" else format_p(p)
                      for mode, p in table[["mode", p_column]].itertuples(index=False)]


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
    for ax, metric in zip(axes, CURVE_METRICS, strict=True):
        for mode, part in table.groupby("mode", sort=False):
            part = part.sort_values("size")
            ax.errorbar(part["size"], part[f"{metric}_mean"],
                        yerr=part[f"{metric}_std"].fillna(0.0), marker="o", capsize=3,
                        label=_ARM_LABELS.get(mode, mode))
        ax.set_xscale("log")
        sizes = sorted(table["size"].unique())
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training images per class")
        ax.set_ylabel(_METRIC_LABELS[metric])
        ax.set_title(f"{_METRIC_LABELS[metric]} (mean ± std over folds){title_suffix}")
        ax.legend(fontsize=8)
    return save_figure(fig, path)
