"""Calibration: do a model's probabilities mean what they say, and temperature scaling.

A classifier that says 0.99 should be right 99 times in 100. This module measures how far a
run's test probabilities are from that, and fixes the cheapest part of it:

* :func:`expected_calibration_error` (ECE): top-label, :data:`ECE_BINS` equal-width bins of
  the top probability; :func:`brier_score` (scikit-learn's ``brier_score_loss``, the
  multi-class definition for every number of classes) and :func:`negative_log_likelihood`.
* :func:`calibration_table`: those three pooled over the test folds with 95 % bootstrap
  intervals (the conventions of ``stats.metric_intervals``: strata class x fold, whole
  groups resampled where a group holds several test images), raw and temperature-scaled side
  by side with the difference between them; :func:`plot_reliability_diagram` draws both.
* Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks"): one
  number ``T`` per fold, fitted on **that fold's validation images, never its test images**
  (:func:`fit_fold_temperature` refuses a table that holds one), divides the logits: the
  scaled probabilities are ``softmax(log p / T)``. ``T > 1`` softens an over-confident model;
  no ``T`` changes which class is largest, so accuracy and the confusion matrix stay as they
  are. It is stored as ``fold_XX/temperature.json`` beside ``model.keras``.

Probabilities are (N, C) arrays with one column per class, also for binary models (column 1
the positive class), as everywhere in ``leukocyte_cnn.reporting``.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import read_json, write_json
from leukocyte_cnn.reporting.figures import save_figure
from leukocyte_cnn.reporting.metrics import prob_columns
from leukocyte_cnn.reporting.stats import N_BOOTSTRAP, SEED, bootstrap_ci, format_ci

ECE_BINS = 15              # equal-width bins of the top probability (Guo et al. 2017)
PROB_FLOOR = 1e-7          # probabilities are clipped here before a logarithm is taken
FLOAT32_SUM_TOLERANCE = 1e-5  # rows of float32 probabilities sum to 1 within this
T_BOUNDS = (0.05, 20.0)    # the temperature search interval; a fit at a bound is flagged
TEMPERATURE_FILE = "temperature.json"
CALIBRATION_METRICS = ("ece", "brier", "nll")
METRIC_LABELS = {"ece": f"ECE ({ECE_BINS} bins, top label)",
                 "brier": "Brier score (sum over classes, 0-2)",
                 "nll": "negative log-likelihood"}


def _as_arrays(y, prob) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=int)
    prob = np.asarray(prob, dtype=np.float64)
    if prob.ndim != 2 or prob.shape[1] < 2 or len(prob) != len(y):
        raise ValueError(f"probabilities must be (N, C) with C >= 2 for N = {len(y)} labels, "
                         f"got shape {prob.shape}")
    if len(y) and (y.min() < 0 or y.max() >= prob.shape[1]):
        raise ValueError(f"labels must lie in 0..{prob.shape[1] - 1}")
    return y, prob


# --------------------------------------------------------------------------- metrics


def bin_edges(bins: int = ECE_BINS) -> np.ndarray:
    """``bins + 1`` equal-width edges of [0, 1]: ``k / bins`` (exact quotients, so a
    probability written as ``k / bins`` is on the edge, not a rounding error off it)."""
    return np.arange(bins + 1) / bins


def bin_of(confidence, bins: int = ECE_BINS) -> np.ndarray:
    """Bin index of each confidence: bins are ``(lo, hi]``, the first one ``[0, hi]``.

    A confidence exactly on an inner edge belongs to the bin below it (0.4 with 5 bins is in
    (0.2, 0.4]); 1.0 is in the last bin, 0.0 in the first. scikit-learn's
    ``calibration_curve(strategy="uniform")`` bins the same way (``searchsorted`` on the
    inner edges).
    """
    confidence = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    return np.searchsorted(bin_edges(bins)[1:-1], confidence, side="left")


def reliability_bins(y, prob, bins: int = ECE_BINS) -> pd.DataFrame:
    """One row per bin of the top probability: ``bin``, ``lo``, ``hi``, ``n`` (images),
    ``accuracy`` (share whose arg-max is right) and ``confidence`` (mean top probability);
    NaN accuracy and confidence in an empty bin."""
    y, prob = _as_arrays(y, prob)
    confidence = prob.max(axis=1)
    correct = (prob.argmax(axis=1) == y).astype(float)
    index = bin_of(confidence, bins)
    n = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=bins) / n
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / n
    edges = bin_edges(bins)
    return pd.DataFrame({"bin": np.arange(bins), "lo": edges[:-1], "hi": edges[1:], "n": n,
                         "accuracy": accuracy, "confidence": mean_confidence})


def expected_calibration_error(y, prob, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error: ``sum over bins of |accuracy - confidence| x
    n_bin / N``, where an image's confidence is its top probability, it is right when that
    class is its label, and the bins are ``bins`` equal-width bins of [0, 1] (``(lo, hi]``,
    the first including 0: :func:`bin_of`). Empty bins add nothing; NaN without images."""
    y, prob = _as_arrays(y, prob)
    if not len(y):
        return math.nan
    confidence = prob.max(axis=1)
    gap = (prob.argmax(axis=1) == y) - confidence  # per image; summed per bin below
    index = bin_of(confidence, bins)
    return float(np.abs(np.bincount(index, weights=gap, minlength=bins)).sum() / len(y))


def brier_score(y, prob) -> float:
    """Multi-class Brier score: mean over images of ``sum over classes (p_k - [y = k])^2``,
    in [0, 2], for every number of classes (scikit-learn's ``brier_score_loss`` with
    ``scale_by_half=False``).

    For two classes this is **twice** the usual binary Brier score ``mean (p_1 - y)^2``
    (scikit-learn's default for binary tasks): one definition for binary and multi-class runs
    keeps their numbers comparable. NaN without images.
    """
    from sklearn.metrics import brier_score_loss

    y, prob = _as_arrays(y, prob)
    if not len(y):
        return math.nan
    with warnings.catch_warnings():
        if np.allclose(prob.sum(axis=1), 1.0, rtol=0, atol=FLOAT32_SUM_TOLERANCE):
            # float32 softmax rows (predictions.csv) miss 1 by ~1e-7, which scikit-learn's
            # check (~1e-8) calls "not probabilities"; rows further off still warn
            warnings.filterwarnings("ignore", message="The y_prob values do not sum to one")
        return float(brier_score_loss(y, prob, labels=np.arange(prob.shape[1]),
                                      scale_by_half=False))


def negative_log_likelihood(y, prob) -> float:
    """Mean ``-log p(label)`` with the probability clipped at :data:`PROB_FLOOR` (so one
    image counts at most about 16.1); NaN without images."""
    y, prob = _as_arrays(y, prob)
    if not len(y):
        return math.nan
    return float(-np.log(np.clip(prob[np.arange(len(y)), y], PROB_FLOOR, 1.0)).mean())


def per_image_terms(y, prob, bins: int = ECE_BINS) -> np.ndarray:
    """(N, 4) per-image parts of the three calibration metrics, computed once so that a
    bootstrap only has to add them up: the ECE bin of the top probability, ``right -
    top probability``, the image's Brier term and its ``-log p(label)``
    (:func:`statistic_of_terms` turns a subset of rows into a metric)."""
    y, prob = _as_arrays(y, prob)
    rows = np.arange(len(y))
    confidence = prob.max(axis=1)
    gap = (prob.argmax(axis=1) == y) - confidence
    brier = (prob ** 2).sum(axis=1) - 2 * prob[rows, y] + 1.0
    nll = -np.log(np.clip(prob[rows, y], PROB_FLOOR, 1.0))
    return np.column_stack([bin_of(confidence, bins), gap, brier, nll])


def statistic_of_terms(name: str, bins: int = ECE_BINS):
    """The function ``(y, terms) -> metric`` of rows of :func:`per_image_terms`: equal to
    :func:`expected_calibration_error`, :func:`brier_score` or :func:`negative_log_likelihood`
    of the same images (up to rounding), fast enough for thousands of bootstrap replicates."""
    def ece(y, terms):
        if not len(terms):
            return math.nan
        sums = np.bincount(terms[:, 0].astype(int), weights=terms[:, 1], minlength=bins)
        return float(np.abs(sums).sum() / len(terms))

    def mean_of(column):
        return lambda y, terms: float(terms[:, column].mean()) if len(terms) else math.nan

    return {"ece": ece, "brier": mean_of(2), "nll": mean_of(3)}[name]


# --------------------------------------------------------------------------- temperature


def _log_probabilities(prob: np.ndarray) -> np.ndarray:
    """``log p``: the logits up to a per-image constant, which a softmax ignores."""
    return np.log(np.clip(prob, PROB_FLOOR, 1.0))


def _scaled_log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return temperature


def apply_temperature(prob, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities ``softmax(log p / T)`` of an (N, C) array.

    ``log p`` stands for the logits (they differ by a constant per image, which the softmax
    ignores; ``p`` is clipped at :data:`PROB_FLOOR`). For a binary model's ``(1 - p, p)``
    this is ``sigmoid(logit(p) / T)``, temperature scaling of its sigmoid. ``T = 1`` returns
    the probabilities unchanged; the arg-max of a row never changes. A sigmoid output of
    shape (N,) or (N, 1) goes through ``metrics.probabilities_from_output`` first.
    """
    temperature = _check_temperature(temperature)
    prob = np.asarray(prob, dtype=np.float64)
    if prob.ndim != 2 or prob.shape[1] < 2:
        raise ValueError(f"apply_temperature: probabilities must be (N, C) with C >= 2, got "
                         f"shape {prob.shape}")
    if temperature == 1.0:
        return prob.copy()
    return np.exp(_scaled_log_softmax(_log_probabilities(prob), temperature))


def fit_temperature(val_prob, val_labels) -> float:
    """The temperature ``T`` that minimises the validation images' negative log-likelihood
    of ``softmax(log p / T)`` (:func:`apply_temperature`).

    A bounded scalar search (``scipy.optimize.minimize_scalar``) on ``log T`` over
    :data:`T_BOUNDS`; the likelihood is convex in ``1 / T``, so the search finds the one
    minimum. Validation images that are all right and well separated push ``T`` to the lower
    bound (sharper is always better there): :func:`fit_fold_temperature` flags that.
    """
    from scipy.optimize import minimize_scalar

    y, prob = _as_arrays(val_labels, val_prob)
    if not len(y):
        raise ValueError("fit_temperature: no validation images to fit on")
    logits = _log_probabilities(prob)
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-_scaled_log_softmax(logits, math.exp(log_t))[rows, y].mean())

    low, high = (math.log(b) for b in T_BOUNDS)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded",
                             options={"xatol": 1e-6})
    best = min((result.x, low, high, 0.0), key=nll)  # the bounds and T = 1 as candidates
    return float(math.exp(best))


def fit_fold_temperature(fold_test_images: Iterable[str], val_table: pd.DataFrame,
                         class_names: Sequence[str] | None = None) -> dict:
    """Fit one fold's temperature on its validation images; refuse any of its test images.

    ``val_table`` holds the fold's validation predictions: ``image``, ``label`` and one
    ``prob_<class>`` column per class (``class_names``; default every ``prob_*`` column in
    order). Raises ``ValueError`` naming the image when an image of ``val_table`` is one of
    ``fold_test_images``, or when a ``role`` column says anything but ``val``: a temperature
    fitted on test images would make the test images' calibration look better than it is.

    Returns ``{"temperature", "n_val", "nll_before", "nll_after", "ece_before",
    "ece_after", "at_bound", "fitted_on": "validation images"}`` (the numbers on the
    validation images), what :func:`write_temperature` stores.
    """
    if "image" not in val_table:
        raise ValueError("fit_fold_temperature: the validation table needs an 'image' column "
                         "(to check that no test image is in it)")
    images = val_table["image"].astype(str)
    test = {str(image) for image in fold_test_images}
    leaked = images[images.isin(test)]
    if len(leaked):
        more = f" and {len(leaked) - 1} more" if len(leaked) > 1 else ""
        raise ValueError(f"fit_fold_temperature: {leaked.iloc[0]}{more} is one of the fold's "
                         "test images; a temperature is fitted on validation images only")
    if "role" in val_table:
        roles = val_table["role"].astype(str)
        if (roles != "val").any():
            wrong = val_table.loc[roles != "val"].iloc[0]
            raise ValueError(f"fit_fold_temperature: {wrong['image']} has role {wrong['role']!r}"
                             "; a temperature is fitted on validation images only")
    columns = (prob_columns(class_names) if class_names is not None
               else [c for c in val_table.columns if str(c).startswith("prob_")])
    y = val_table["label"].to_numpy(dtype=int)
    prob = val_table[columns].to_numpy(dtype=np.float64)
    temperature = fit_temperature(prob, y)
    scaled = apply_temperature(prob, temperature)
    at_bound = any(math.isclose(temperature, b, rel_tol=1e-4) for b in T_BOUNDS)
    return {"temperature": temperature, "n_val": int(len(y)),
            "nll_before": negative_log_likelihood(y, prob),
            "nll_after": negative_log_likelihood(y, scaled),
            "ece_before": expected_calibration_error(y, prob),
            "ece_after": expected_calibration_error(y, scaled),
            "at_bound": bool(at_bound), "fitted_on": "validation images"}


def write_temperature(fold_dir: str | os.PathLike, info: Mapping) -> Path:
    """Store a fold's :func:`fit_fold_temperature` result as ``fold_XX/temperature.json``
    (atomically), beside its ``model.keras``. Returns the path."""
    info = dict(info)
    info["temperature"] = _check_temperature(info["temperature"])
    return write_json(Path(fold_dir) / TEMPERATURE_FILE, info)


def read_temperature(fold_dir: str | os.PathLike) -> float | None:
    """The fold's fitted temperature, or None when it has none (a fold made before
    temperatures were fitted). A malformed file is an ``InputError`` naming it."""
    path = Path(fold_dir) / TEMPERATURE_FILE
    if not path.exists():
        return None
    info = read_json(path)
    try:
        return _check_temperature(info["temperature"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: no valid 'temperature' (a number > 0)") from None


def read_temperatures(run_dir: str | os.PathLike) -> dict[int, float]:
    """``{fold: temperature}`` of every ``fold_XX`` of a run that has a ``temperature.json``."""
    found = {}
    for folder in sorted(Path(run_dir).glob("fold_*")):
        match = re.fullmatch(r"fold_(\d+)", folder.name)
        if match and folder.is_dir():
            temperature = read_temperature(folder)
            if temperature is not None:
                found[int(match.group(1))] = temperature
    return found


def scaled_predictions(predictions: pd.DataFrame, class_names: Sequence[str],
                       temperatures: Mapping[int, float]) -> pd.DataFrame:
    """The predictions table with each fold's ``prob_*`` columns scaled by that fold's
    temperature, and ``pred``/``pred_class`` recomputed (temperature never changes the
    arg-max, so they come out the same). Raises ``ValueError`` naming the folds that have
    no temperature: a half-scaled table would mix two models' calibrations."""
    columns = prob_columns(class_names)
    folds = sorted(int(f) for f in predictions["fold"].unique())
    missing = [f for f in folds if f not in temperatures]
    if missing:
        raise ValueError(f"scaled_predictions: no temperature for fold(s) "
                         f"{', '.join(map(str, missing))}")
    out = predictions.copy()
    prob = np.array(out[columns], dtype=np.float64)  # a writable copy
    fold = out["fold"].to_numpy(dtype=int)
    for f in folds:
        rows = fold == f
        prob[rows] = apply_temperature(prob[rows], temperatures[f])
    out[columns] = prob
    out["pred"] = prob.argmax(axis=1)
    out["pred_class"] = [class_names[i] for i in out["pred"]]
    return out


# --------------------------------------------------------------------------- pooled table


def _design(predictions: pd.DataFrame, n_classes: int):
    """Labels, strata and groups of a predictions table, as ``stats.metric_intervals``
    resamples it: strata class x fold (with several folds), clusters the groups."""
    y = predictions["label"].to_numpy(dtype=int)
    strata = y
    if "fold" in predictions and predictions["fold"].nunique() > 1:
        strata = predictions["fold"].to_numpy(dtype=int) * n_classes + y
    groups = predictions["group"].astype(str).to_numpy() if "group" in predictions else None
    return y, strata, groups


def calibration_table(predictions: pd.DataFrame, class_names: Sequence[str],
                      temperatures: Mapping[int, float] | None = None, *,
                      n_boot: int = N_BOOTSTRAP, seed: int = SEED,
                      bins: int = ECE_BINS) -> pd.DataFrame:
    """ECE, Brier score and NLL of the pooled test predictions with 95 % intervals.

    One row per metric (``metric``: ``ece``, ``brier``, ``nll``; ``label``: its name in
    words) with ``raw``, ``raw_ci95_low``, ``raw_ci95_high``. With ``temperatures`` (``{fold:
    T}`` for every fold, :func:`read_temperatures`) also ``scaled`` and its interval, and
    ``difference`` (scaled - raw, negative = better calibrated) with its interval from the
    same bootstrap replicates. Intervals are ``stats.bootstrap_ci`` with the run's
    conventions (``stats.metric_intervals``): seeded, strata class x fold, whole groups
    resampled where a group holds several test images; every column uses the same replicates.
    """
    columns = prob_columns(class_names)
    prob = predictions[columns].to_numpy(dtype=np.float64)
    y, strata, groups = _design(predictions, len(class_names))
    versions = [("raw", prob)]
    if temperatures is not None:
        versions.append(("scaled", scaled_predictions(predictions, class_names, temperatures)[
            columns].to_numpy(dtype=np.float64)))
    points = {"ece": lambda y_, p_: expected_calibration_error(y_, p_, bins),
              "brier": brier_score, "nll": negative_log_likelihood}
    terms = [per_image_terms(y, p, bins) for _, p in versions]
    width = terms[0].shape[1]
    options = {"strata": strata, "groups": groups, "n_boot": n_boot, "seed": seed}
    rows = []
    for name in CALIBRATION_METRICS:
        statistic = statistic_of_terms(name, bins)
        label = f"ECE ({bins} bins, top label)" if name == "ece" else METRIC_LABELS[name]
        row = {"metric": name, "label": label}
        for (version, p), t in zip(versions, terms, strict=True):
            row[version] = points[name](y, p)  # Brier: scikit-learn's number
            row[f"{version}_ci95_low"], row[f"{version}_ci95_high"] = bootstrap_ci(
                y, t, statistic, **options)
        if len(versions) == 2:
            def difference(y_, both, statistic=statistic):
                return statistic(y_, both[:, width:]) - statistic(y_, both[:, :width])

            row["difference"] = row["scaled"] - row["raw"]
            row["difference_ci95_low"], row["difference_ci95_high"] = bootstrap_ci(
                y, np.hstack(terms), difference, **options)
        rows.append(row)
    return pd.DataFrame(rows)


def shown_calibration_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The display columns of :func:`calibration_table`: ``metric`` in words, ``raw [95 %
    CI]`` and, when scaled, ``temperature-scaled [95 % CI]`` and ``Δ scaled - raw [95 %
    CI]``."""
    out = pd.DataFrame({"metric": table["label"]})
    out["raw [95 % CI]"] = [format_ci(v, lo, hi, digits) for v, lo, hi in
                            table[["raw", "raw_ci95_low", "raw_ci95_high"]].itertuples(
                                index=False)]
    if "scaled" in table:
        out["temperature-scaled [95 % CI]"] = [
            format_ci(v, lo, hi, digits) for v, lo, hi in
            table[["scaled", "scaled_ci95_low", "scaled_ci95_high"]].itertuples(index=False)]
        out["Δ scaled - raw [95 % CI]"] = [
            format_ci(v, lo, hi, digits, signed=True) for v, lo, hi in
            table[["difference", "difference_ci95_low", "difference_ci95_high"]].itertuples(
                index=False)]
    return out


# --------------------------------------------------------------------------- figure


def plot_reliability_diagram(predictions: pd.DataFrame, class_names: Sequence[str],
                             path: str | os.PathLike,
                             temperatures: Mapping[int, float] | None = None,
                             title_suffix: str = "", bins: int = ECE_BINS) -> Path:
    """Reliability diagram of the pooled test predictions (top label: accuracy against mean
    top probability per bin, ``sklearn.calibration.calibration_curve`` with ``bins``
    equal-width bins, the bins of the ECE), raw and, with ``temperatures``, scaled; below it
    the number of images per bin. Written atomically; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    columns = prob_columns(class_names)
    y = predictions["label"].to_numpy(dtype=int)
    series = [("raw", predictions[columns].to_numpy(dtype=np.float64))]
    if temperatures is not None:
        scaled = scaled_predictions(predictions, class_names, temperatures)
        series.append(("temperature-scaled", scaled[columns].to_numpy(dtype=np.float64)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    edges = bin_edges(bins)
    width = (edges[1] - edges[0]) / (len(series) + 0.5)
    for i, (name, prob) in enumerate(series):
        confidence = prob.max(axis=1)
        correct = (prob.argmax(axis=1) == y).astype(int)
        accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=bins,
                                                      strategy="uniform", pos_label=1)
        ece = expected_calibration_error(y, prob, bins)
        top.plot(mean_confidence, accuracy, "o-", ms=4, label=f"{name} (ECE {ece:.3f})")
        counts = np.bincount(bin_of(confidence, bins), minlength=bins)
        bottom.bar(edges[:-1] + (i + 0.25) * width, counts, width=width, align="edge",
                   label=name)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("accuracy (top label)")
    top.set_title(f"Reliability (pooled test folds, {bins} bins){title_suffix}")
    top.legend(fontsize=8, loc="upper left")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("images")
    bottom.set_yscale("symlog", linthresh=1)
    return save_figure(fig, path)
