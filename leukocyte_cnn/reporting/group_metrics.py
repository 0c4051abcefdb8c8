"""Group-level results: one prediction per patient (or smear, or source cell), not per image.

Where several test images share a group (C-NMC patients, ALL-IDB1 smears, Kaggle source
cells), a reader asks two questions: how often is an image right, and how often is the
*patient* right? This module answers the second beside the first:

* :func:`group_predictions`: the group's prediction is the **mean of its images'
  probabilities** (its arg-max the predicted class). The group's label is its images' label
  (C-NMC patients are all-ALL or all-normal); a group whose images carry several labels (the
  crops of an ALL-IDB1 smear: blasts and other cells) takes the most frequent one and is
  flagged in ``mixed_labels``.
* :func:`group_metrics_table`: accuracy, balanced accuracy and ROC-AUC at image level and at
  group level side by side, each with a 95 % bootstrap interval. Both intervals resample
  whole groups: the image-level one is ``stats.metric_intervals`` (the run's summary interval:
  clusters of images, strata class x fold), the group-level one resamples the groups' rows
  (each group one unit, strata class x fold).
* :func:`per_group_table`: one row per group (C-NMC's per-patient table).

Groups are pooled across folds: in a group-safe split every group is tested in exactly one
fold; in a LEAKY image-level split a group's images may be tested by several folds' models,
and its mean then mixes them (``n_folds`` says so).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from leukocyte_cnn.reporting.metrics import METRICS, prob_columns
from leukocyte_cnn.reporting.stats import N_BOOTSTRAP, SEED, format_ci, metric_intervals

GROUP_METRICS = ("accuracy", "balanced_accuracy", "roc_auc")


def has_shared_groups(predictions: pd.DataFrame) -> bool:
    """True when the table has a ``group`` column and some group holds two or more test
    images (the case in which group-level results mean something)."""
    if "group" not in predictions or not len(predictions):
        return False
    return bool(predictions["group"].astype(str).value_counts().max() >= 2)


def _natural_key(text: str) -> list:
    """``H2`` before ``H10``: digits compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", text) if part]


def group_predictions(predictions: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per group of a predictions table, shaped like a predictions table itself.

    Columns: ``group``; ``fold`` (the fold that tested it; the smallest if several did) and
    ``n_folds``; ``label`` and ``class_name`` (the images' label; the most frequent one, the
    lowest label on a tie, when they differ) and ``mixed_labels`` (True then); ``n_images``;
    ``prob_<class>``, the mean of its images' probabilities; ``pred`` (their arg-max) and
    ``pred_class``. Rows are sorted by fold and group (numbers in names compare as numbers).
    Because the ``prob_*``, ``label``, ``fold`` and ``group`` columns are there, every
    function of a predictions table (``stats.metric_intervals``, ``metrics.
    predictions_metrics``) scores the groups as they stand.
    """
    if "group" not in predictions:
        raise ValueError("group_predictions: the predictions table has no 'group' column")
    columns = prob_columns(class_names)
    table = predictions.assign(group=predictions["group"].astype(str))
    has_fold = "fold" in table
    rows = []
    for group, part in table.groupby("group", sort=False):
        counts = np.bincount(part["label"].to_numpy(dtype=int), minlength=len(class_names))
        label = int(counts.argmax())
        mean = part[columns].to_numpy(dtype=np.float64).mean(axis=0)
        pred = int(mean.argmax())
        folds = sorted(int(f) for f in part["fold"].unique()) if has_fold else [0]
        rows.append({"group": group, "fold": folds[0], "n_folds": len(folds), "label": label,
                     "class_name": class_names[label],
                     "mixed_labels": bool((counts > 0).sum() > 1),
                     "n_images": int(len(part)), **dict(zip(columns, mean.tolist(), strict=True)),
                     "pred": pred, "pred_class": class_names[pred]})
    out = pd.DataFrame(rows, columns=["group", "fold", "n_folds", "label", "class_name",
                                      "mixed_labels", "n_images", *columns, "pred",
                                      "pred_class"])
    order = sorted(range(len(out)), key=lambda i: (out["fold"].iat[i],
                                                   _natural_key(out["group"].iat[i])))
    return out.iloc[order].reset_index(drop=True)


def group_metrics_table(predictions: pd.DataFrame, class_names: Sequence[str],
                        metrics: Sequence[str] = GROUP_METRICS, *, n_boot: int = N_BOOTSTRAP,
                        seed: int = SEED) -> pd.DataFrame:
    """Image-level and group-level metrics side by side, each with its 95 % interval.

    One row per metric (names in ``metrics.METRICS``; default accuracy, balanced accuracy,
    ROC-AUC) with ``image_level``, ``image_ci95_low``, ``image_ci95_high`` (the pooled test
    images; interval by ``stats.metric_intervals``, which resamples whole groups where a group
    holds several test images) and ``group_level``, ``group_ci95_low``, ``group_ci95_high``
    (:func:`group_predictions` scored as a predictions table: each group one resampled unit,
    strata class x fold), plus ``n_images``, ``n_groups`` and ``n_mixed_groups`` (groups whose
    images carry several labels; their group label is a majority, see
    :func:`group_predictions`). The point values are the bootstrap's metric functions, i.e.
    ``metrics.classification_metrics``' numbers (ROC-AUC from midranks, equal to scikit-learn's
    up to the last bit).
    """
    columns = prob_columns(class_names)
    groups = group_predictions(predictions, class_names)
    image_intervals = metric_intervals(predictions, class_names, metrics, n_boot=n_boot,
                                       seed=seed)
    group_intervals = metric_intervals(groups, class_names, metrics, n_boot=n_boot, seed=seed)
    y_image = predictions["label"].to_numpy(dtype=int)
    prob_image = predictions[columns].to_numpy(dtype=np.float64)
    y_group = groups["label"].to_numpy(dtype=int)
    prob_group = groups[columns].to_numpy(dtype=np.float64)
    rows = []
    for name in metrics:
        function = METRICS[name]
        rows.append({"metric": name,
                     "image_level": function(y_image, prob_image),
                     "image_ci95_low": image_intervals[name][0],
                     "image_ci95_high": image_intervals[name][1],
                     "group_level": function(y_group, prob_group),
                     "group_ci95_low": group_intervals[name][0],
                     "group_ci95_high": group_intervals[name][1],
                     "n_images": int(len(predictions)), "n_groups": int(len(groups)),
                     "n_mixed_groups": int(groups["mixed_labels"].sum())})
    return pd.DataFrame(rows)


def shown_group_metrics(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The display columns of :func:`group_metrics_table`: ``metric``, ``per image [95 %
    CI]``, ``per group [95 % CI]``."""
    def shown(prefix: str, value: str) -> list[str]:
        return [format_ci(v, lo, hi, digits) for v, lo, hi in
                table[[value, f"{prefix}_ci95_low", f"{prefix}_ci95_high"]].itertuples(
                    index=False)]

    return pd.DataFrame({"metric": table["metric"].str.replace("_", " "),
                         "per image [95 % CI]": shown("image", "image_level"),
                         "per group [95 % CI]": shown("group", "group_level")})


def per_group_table(predictions: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per group (C-NMC: per patient): ``group``, ``fold``, ``class_name`` (its
    label), ``n_images``, ``image_accuracy`` (share of its images whose own arg-max is the
    image's label), ``prob_<class>`` (mean over its images), ``pred_class`` (the group's
    prediction), ``correct`` (group prediction = group label) and ``mixed_labels``."""
    columns = prob_columns(class_names)
    groups = group_predictions(predictions, class_names)
    right = (predictions[columns].to_numpy(dtype=np.float64).argmax(axis=1)
             == predictions["label"].to_numpy(dtype=int))
    accuracy = pd.Series(right, index=predictions.index).groupby(
        predictions["group"].astype(str)).mean()
    out = groups[["group", "fold", "class_name", "n_images"]].copy()
    out["image_accuracy"] = groups["group"].map(accuracy).to_numpy(dtype=float)
    out[columns] = groups[columns]
    out["pred_class"] = groups["pred_class"]
    out["correct"] = (groups["pred"] == groups["label"]).to_numpy()
    out["mixed_labels"] = groups["mixed_labels"]
    return out
