"""Metrics from per-image test probabilities.

Every number in a summary table is computed here from the pooled ``predictions.csv`` rows of a
run, with scikit-learn doing the arithmetic. Probabilities are always an (N, C) array with one
column per class, also for binary models (column 1 = positive class), so that precision, recall
and ROC-AUC are computed from the positive-class probability against integer labels.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm


def prob_columns(class_names: Sequence[str]) -> list[str]:
    """Names of the probability columns in predictions files, one per class, in label order."""
    return [f"prob_{name}" for name in class_names]


def probabilities_from_output(output: np.ndarray) -> np.ndarray:
    """Turn a model's output into an (N, C) probability array.

    A binary model with one sigmoid unit gives (N, 1): the columns become (1 - p, p).
    """
    output = np.asarray(output, dtype=np.float64)
    if output.ndim == 1:
        output = output[:, None]
    if output.shape[1] == 1:
        output = np.concatenate([1.0 - output, output], axis=1)
    return output


def roc_auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """ROC-AUC: positive-class probability for two classes, one-vs-rest macro otherwise.

    Classes absent from ``y_true`` cannot have an AUC and are left out of the macro average;
    NaN when fewer than two classes are present (a single leave-P-out fold, for example).
    """
    y_true = np.asarray(y_true)
    prob = np.asarray(prob, dtype=np.float64)
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if prob.shape[1] == 2:
        return float(skm.roc_auc_score(y_true, prob[:, 1]))
    aucs = [skm.roc_auc_score(y_true == c, prob[:, c]) for c in present]
    return float(np.mean(aucs))


def classification_metrics(y_true: Sequence[int], prob: np.ndarray,
                           class_names: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro/weighted F1, ROC-AUC and per-class P/R/F1.

    ``prob`` is (N, C); predictions are its arg-max. Returns plain floats and lists so the
    result goes straight into JSON and CSV.
    """
    y_true = np.asarray(y_true, dtype=int)
    prob = np.asarray(prob, dtype=np.float64)
    labels = list(range(len(class_names)))
    y_pred = prob.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    result = {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=sorted(set(y_true)),
                                       average="macro", zero_division=0)),
        "weighted_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="weighted",
                                          zero_division=0)),
        "roc_auc": roc_auc(y_true, prob),
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
    }
    return result


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition)."""
    if len(y_true) == 0:
        return float("nan")
    return float(skm.balanced_accuracy_score(y_true, y_pred))


SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "roc_auc")


def predictions_metrics(predictions: pd.DataFrame, class_names: Sequence[str]) -> dict:
    """:func:`classification_metrics` of a predictions table (``label`` + ``prob_*`` columns)."""
    prob = predictions[prob_columns(class_names)].to_numpy(dtype=np.float64)
    return classification_metrics(predictions["label"].to_numpy(), prob, class_names)


def per_fold_table(predictions: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per fold with the summary metrics of that fold's test images."""
    rows = []
    for fold, part in predictions.groupby("fold", sort=True):
        m = predictions_metrics(part, class_names)
        rows.append({"fold": int(fold), "n": m["n"], **{k: m[k] for k in SUMMARY_METRICS}})
    return pd.DataFrame(rows)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the finite values; NaN when none."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    if len(finite) == 1:
        return float(finite[0]), float("nan")
    return float(np.mean(finite)), float(np.std(finite, ddof=1))


def format_mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``0.912 ± 0.031`` (or ``0.912`` for one value, ``n/a`` for none)."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
