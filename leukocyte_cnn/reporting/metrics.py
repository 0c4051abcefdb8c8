"""Point metrics from per-image test probabilities: the one place they are computed.

Probabilities are always an (N, C) array with one column per class, also for binary models
(column 1 = positive class); predictions are its arg-max. Accuracy, balanced accuracy and the
F1 scores come from one ``np.bincount`` confusion matrix, with scikit-learn's definitions
(macro averages over the classes present in the labels, 0 where a ratio is undefined) and
bit for bit its numbers; they are a few numpy operations each because the bootstrap in
``leukocyte_cnn.reporting.stats`` calls them thousands of times (:data:`METRICS`). ROC-AUC
has two arithmetic paths, see :func:`roc_auc` and :func:`rank_roc_auc`. Also here: the
per-fold table of a predictions file and the mean ± std of per-fold values.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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


# --------------------------------------------------------------------------- confusion matrix


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``[true class, predicted class]`` of integer labels in ``range(n_classes)``."""
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def class_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 and support (true count) of a confusion matrix.

    A ratio with a zero denominator is 0 (scikit-learn's ``zero_division=0``). F1 is
    2 tp / (predicted + true), scikit-learn's formula, so the numbers are the same bits.
    """
    tp = np.diag(cm).astype(float)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denominator = predicted + support  # 2 tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return precision, recall, f1, support


def balanced_accuracy_of(cm: np.ndarray) -> float:
    """Mean recall over the classes present in the labels (scikit-learn's definition)."""
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def macro_f1_of(cm: np.ndarray) -> float:
    """Mean F1 over the classes present in the labels: a class nobody has is no evidence."""
    _, _, f1, support = class_scores(cm)
    return float(f1[support > 0].mean())


def weighted_f1_of(cm: np.ndarray) -> float:
    """F1 averaged with the classes' true counts as weights."""
    _, _, f1, support = class_scores(cm)
    return float((f1 * support).sum() / support.sum())


# --------------------------------------------------------------------------- metrics of (y, prob)


def _confusion_of(y: np.ndarray, prob: np.ndarray) -> np.ndarray:
    return confusion_matrix(y, prob.argmax(axis=1), prob.shape[1])


def accuracy(y: np.ndarray, prob: np.ndarray) -> float:
    """Share of images whose arg-max is the label; NaN without images."""
    return float(np.mean(prob.argmax(axis=1) == y)) if len(y) else math.nan


def balanced_accuracy(y: np.ndarray, prob: np.ndarray) -> float:
    """:func:`balanced_accuracy_of` the predictions; NaN without images."""
    return balanced_accuracy_of(_confusion_of(y, prob)) if len(y) else math.nan


def macro_f1(y: np.ndarray, prob: np.ndarray) -> float:
    """:func:`macro_f1_of` the predictions; NaN without images."""
    return macro_f1_of(_confusion_of(y, prob)) if len(y) else math.nan


def weighted_f1(y: np.ndarray, prob: np.ndarray) -> float:
    """:func:`weighted_f1_of` the predictions; NaN without images."""
    return weighted_f1_of(_confusion_of(y, prob)) if len(y) else math.nan


def midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank (``scipy.stats.rankdata``, faster)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def _rank_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC with midranks for ties; NaN without both kinds of images."""
    n1 = int(positive.sum())
    n0 = len(positive) - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = midranks(score)
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _auc_over_classes(y: np.ndarray, prob: np.ndarray,
                      binary_auc: Callable[[np.ndarray, np.ndarray], float]) -> float:
    """Positive-class AUC for two classes, else one-vs-rest macro over the classes present.

    Classes absent from ``y`` cannot have an AUC and are left out of the macro average;
    NaN when fewer than two classes are present (a single leave-P-out fold, for example).
    """
    present = np.unique(y)
    if len(present) < 2:
        return math.nan
    if prob.shape[1] == 2:
        return float(binary_auc(y == 1, prob[:, 1]))
    return float(np.mean([binary_auc(y == c, prob[:, c]) for c in present]))


def roc_auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """ROC-AUC as reported in summaries: positive-class probability for two classes,
    one-vs-rest macro over the classes present otherwise; NaN with fewer than two classes.

    scikit-learn's trapezoids do the arithmetic. :func:`rank_roc_auc` gives the same number up
    to the last bit or two (about one set of predictions in four differs there), so reported
    numbers keep scikit-learn's arithmetic and stay what earlier runs wrote.
    """
    y_true = np.asarray(y_true)
    prob = np.asarray(prob, dtype=np.float64)
    return _auc_over_classes(y_true, prob, skm.roc_auc_score)


def rank_roc_auc(y: np.ndarray, prob: np.ndarray) -> float:
    """:func:`roc_auc` from Mann-Whitney midranks: exact and fast, for the bootstrap."""
    return _auc_over_classes(y, prob, _rank_auc)


# The metrics a bootstrap resamples, by name: functions of integer labels and (N, C) float
# probabilities (arrays, not lists), fast enough to call thousands of times.
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy, "balanced_accuracy": balanced_accuracy, "macro_f1": macro_f1,
    "weighted_f1": weighted_f1, "roc_auc": rank_roc_auc}

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "roc_auc")


# --------------------------------------------------------------------------- tables


def classification_metrics(y_true: Sequence[int], prob: np.ndarray,
                           class_names: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro/weighted F1, ROC-AUC and per-class P/R/F1.

    ``prob`` is (N, C); predictions are its arg-max. Returns plain floats and lists so the
    result goes straight into JSON and CSV.
    """
    y_true = np.asarray(y_true, dtype=int)
    prob = np.asarray(prob, dtype=np.float64)
    if not len(y_true):
        raise ValueError("classification_metrics: no images to score")
    cm = confusion_matrix(y_true, prob.argmax(axis=1), len(class_names))
    precision, recall, f1, support = class_scores(cm)
    return {
        "n": int(len(y_true)),
        "accuracy": accuracy(y_true, prob),
        "balanced_accuracy": balanced_accuracy_of(cm),
        "macro_f1": macro_f1_of(cm),
        "weighted_f1": weighted_f1_of(cm),
        "roc_auc": roc_auc(y_true, prob),
        "confusion_matrix": cm.tolist(),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
    }


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
