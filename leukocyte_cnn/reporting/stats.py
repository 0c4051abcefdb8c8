"""Confidence intervals and paired tests: is a difference between two settings real?

A table of pooled test metrics says little without their uncertainty: 0.02 more accuracy on
260 images is well within chance. This module gives every pooled metric a 95 % interval and
every comparison a paired test on the same test images.

* :func:`bootstrap_ci`: percentile interval from a **stratified bootstrap over test images**
  (images are resampled within each class, and within each fold when the rows carry folds,
  so every replicate keeps the class balance of the test set), **seeded** so a summary is
  repeatable. Where several test images share a group (a patient, the source cell of
  augmented copies), whole groups are resampled instead (cluster bootstrap), because images
  of one patient are not independent evidence.
* :func:`mcnemar_exact`: McNemar's test for two classifiers' accuracy on the same images,
  exact (the discordant pairs are binomial with p = 1/2 under the null hypothesis).
* :func:`delong_test`: DeLong's test for two correlated binary ROC-AUCs on the same images
  (Sun & Xu's fast midrank algorithm); :func:`paired_bootstrap` for any metric (multiclass
  ROC-AUC, macro-F1), resampling the same images for both settings.
* :func:`paired_across_seeds`: settings trained with the same seeds, one number per seed:
  mean difference with a t interval, paired t-test (``scipy.stats.ttest_rel``) and Wilcoxon's
  signed-rank test.

The metrics resampled here, by name, are :data:`leukocyte_cnn.reporting.metrics.METRICS`; the
point metrics and their fast array versions live in ``leukocyte_cnn.reporting.metrics``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from leukocyte_cnn.reporting.metrics import METRICS, midranks

N_BOOTSTRAP = 1000   # bootstrap replicates (95 % percentile bounds move by ~0.003 between seeds)
LEVEL = 0.95         # confidence level of every interval
SEED = 0             # bootstrap seed: the same predictions always give the same interval


# --------------------------------------------------------------------------- resampling


def _clusters(groups: Sequence | None, n: int) -> np.ndarray | None:
    """Integer cluster ids when some group holds several images; None when all are single."""
    if groups is None:
        return None
    codes, ids = pd.factorize(pd.Series(list(groups)).astype(str))
    if len(ids) == n:
        return None
    return codes


def resampled_indices(y: np.ndarray, *, strata: np.ndarray | None = None,
                      groups: Sequence | None = None, n_boot: int = N_BOOTSTRAP,
                      seed: int = SEED):
    """Yield ``n_boot`` index arrays of a stratified (cluster) bootstrap of ``len(y)`` rows.

    Without groups: within every stratum (``strata``, default the class ``y``), as many rows
    as it has, drawn with replacement. With groups shared by several rows: whole groups are
    drawn with replacement within strata of groups (the stratum of a group's first row),
    so the number of images per replicate varies a little.
    """
    y = np.asarray(y)
    n = len(y)
    strata = y if strata is None else np.asarray(strata)
    rng = np.random.default_rng(seed)
    clusters = _clusters(groups, n)
    if clusters is None:
        members = [np.flatnonzero(strata == s) for s in np.unique(strata)]
        for _ in range(n_boot):
            yield np.concatenate([m[rng.integers(0, len(m), len(m))] for m in members])
        return
    order = np.argsort(clusters, kind="stable")
    starts = np.searchsorted(clusters[order], np.arange(clusters.max() + 2))
    rows_of = [order[starts[c]:starts[c + 1]] for c in range(clusters.max() + 1)]
    cluster_stratum = np.array([strata[rows[0]] for rows in rows_of])
    by_stratum = [np.flatnonzero(cluster_stratum == s) for s in np.unique(cluster_stratum)]
    for _ in range(n_boot):
        chosen = np.concatenate([c[rng.integers(0, len(c), len(c))] for c in by_stratum])
        yield np.concatenate([rows_of[c] for c in chosen])


def _interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(y, prob, metric: str | Callable = "accuracy", *, strata=None, groups=None,
                 n_boot: int = N_BOOTSTRAP, seed: int = SEED, level: float = LEVEL
                 ) -> tuple[float, float]:
    """95 % percentile interval of ``metric`` (a name in :data:`METRICS` or a function of
    ``(y, prob)``) by :func:`resampled_indices`."""
    y = np.asarray(y, dtype=int)
    prob = np.asarray(prob, dtype=float)
    function = METRICS[metric] if isinstance(metric, str) else metric
    values = [function(y[i], prob[i]) for i in resampled_indices(
        y, strata=strata, groups=groups, n_boot=n_boot, seed=seed)]
    return _interval(values, level)


def metric_intervals(predictions: pd.DataFrame, class_names: Sequence[str],
                     metrics: Sequence[str] = tuple(METRICS), *, n_boot: int = N_BOOTSTRAP,
                     seed: int = SEED, level: float = LEVEL) -> dict[str, tuple[float, float]]:
    """Intervals of every metric of a predictions table (``label``, ``prob_*``, optional
    ``fold`` and ``group``) from one set of bootstrap replicates: strata are class x fold,
    clusters the groups where a group holds several test images (patients, source cells)."""
    y, prob, strata, groups = _arrays(predictions, class_names)
    samples = {name: [] for name in metrics}
    for index in resampled_indices(y, strata=strata, groups=groups, n_boot=n_boot, seed=seed):
        for name in metrics:
            samples[name].append(METRICS[name](y[index], prob[index]))
    return {name: _interval(values, level) for name, values in samples.items()}


def _arrays(predictions: pd.DataFrame, class_names: Sequence[str]):
    y = predictions["label"].to_numpy(dtype=int)
    prob = predictions[[f"prob_{c}" for c in class_names]].to_numpy(dtype=float)
    strata = y
    if "fold" in predictions and predictions["fold"].nunique() > 1:
        strata = predictions["fold"].to_numpy(dtype=int) * len(class_names) + y
    groups = predictions["group"].astype(str).to_numpy() if "group" in predictions else None
    return y, prob, strata, groups


def clustering_note(predictions: pd.DataFrame) -> str:
    """In words, how :func:`metric_intervals` resamples these predictions."""
    groups = predictions["group"] if "group" in predictions else None
    folds = "fold" in predictions and predictions["fold"].nunique() > 1
    strata = "class" + (" and fold" if folds else "")
    if groups is not None and _clusters(groups.astype(str).tolist(), len(predictions)) is not None:
        return (f"whole groups (patients or source cells; {groups.nunique()} groups of "
                f"{len(predictions)} test images) resampled within {strata}")
    return f"test images resampled within {strata}"


# --------------------------------------------------------------------------- paired tests


def mcnemar_exact(correct_a, correct_b) -> dict:
    """Exact McNemar test of two classifiers on the same images.

    ``n_ab``: images A gets right and B wrong; ``n_ba`` the reverse. Under the null hypothesis
    of equal accuracy each discordant image is a fair coin, so the two-sided p-value is the
    binomial test of ``n_ab`` out of ``n_ab + n_ba`` at 1/2 (1.0 without discordant images).
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("mcnemar_exact: both classifiers must be scored on the same images")
    n_ab = int((a & ~b).sum())
    n_ba = int((~a & b).sum())
    p = 1.0 if n_ab + n_ba == 0 else float(sps.binomtest(n_ab, n_ab + n_ba, 0.5).pvalue)
    return {"n_a_only": n_ab, "n_b_only": n_ba, "p": p}


def paired_bootstrap(y, prob_a, prob_b, metric: str | Callable = "roc_auc", *, strata=None,
                     groups=None, n_boot: int = N_BOOTSTRAP, seed: int = SEED,
                     level: float = LEVEL) -> dict:
    """``metric(A) - metric(B)`` on the same images, with the 95 % interval and a two-sided
    p-value from the same bootstrap replicates of the images (A and B resampled together).

    The p-value is twice the share of replicates on the far side of 0 (at least 1/n_boot):
    an approximation, good enough to tell 0.3 from 0.003.
    """
    y = np.asarray(y, dtype=int)
    prob_a = np.asarray(prob_a, dtype=float)
    prob_b = np.asarray(prob_b, dtype=float)
    function = METRICS[metric] if isinstance(metric, str) else metric
    difference = function(y, prob_a) - function(y, prob_b)
    values = np.array([function(y[i], prob_a[i]) - function(y[i], prob_b[i])
                       for i in resampled_indices(y, strata=strata, groups=groups,
                                                  n_boot=n_boot, seed=seed)])
    values = values[np.isfinite(values)]
    low, high = _interval(values, level)
    if not values.size:
        p = math.nan
    else:
        p = min(1.0, 2 * min((values <= 0).mean(), (values >= 0).mean()))
        p = max(p, 1.0 / values.size)
    return {"difference": float(difference), "ci_low": low, "ci_high": high, "p": float(p)}


def delong_test(positive, score_a, score_b, level: float = LEVEL) -> dict:
    """DeLong's test of two correlated ROC-AUCs on the same images (binary task).

    ``positive`` is the boolean truth, ``score_a``/``score_b`` the two models' scores. Returns
    both AUCs, the difference A - B, its standard error, normal-approximation 95 % interval,
    z and two-sided p (DeLong, DeLong & Clarke-Pearson 1988; Sun & Xu 2014 midrank form).
    """
    positive = np.asarray(positive, dtype=bool)
    scores = np.vstack([np.asarray(score_a, float), np.asarray(score_b, float)])
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError("delong_test: needs at least two positive and two negative images")
    x, y = scores[:, positive], scores[:, ~positive]
    tx = np.array([midranks(row) for row in x])
    ty = np.array([midranks(row) for row in y])
    tz = np.array([midranks(row) for row in np.hstack([x, y])])
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v01 = (tz[:, :m] - tx) / n        # structural components of the positives
    v10 = 1.0 - (tz[:, m:] - ty) / m  # and of the negatives
    cov = np.cov(v01) / m + np.cov(v10) / n
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    difference = float(aucs[0] - aucs[1])
    se = math.sqrt(max(variance, 0.0))
    z_crit = sps.norm.ppf(0.5 + level / 2)
    if se == 0:
        z, p = (0.0, 1.0) if difference == 0 else (math.copysign(math.inf, difference), 0.0)
    else:
        z = difference / se
        p = float(2 * sps.norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": difference,
            "se": se, "ci_low": difference - z_crit * se, "ci_high": difference + z_crit * se,
            "z": float(z), "p": p}


def paired_across_seeds(values_a, values_b, level: float = LEVEL) -> dict:
    """One number per seed for settings A and B (same seeds, same order): the mean difference
    A - B with its t interval, the paired t-test and Wilcoxon's signed-rank test (exact for
    few seeds). NaN p-values with fewer than two seeds."""
    a = np.asarray(values_a, dtype=float)
    b = np.asarray(values_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError("paired_across_seeds: both settings need one value per seed")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    out = {"n_seeds": int(d.size), "difference": float(d.mean()) if d.size else math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "p_ttest": math.nan,
           "p_wilcoxon": math.nan}
    if d.size < 2:
        return out
    sd = d.std(ddof=1)
    half = sps.t.ppf(0.5 + level / 2, d.size - 1) * sd / math.sqrt(d.size)
    out.update(ci_low=float(d.mean() - half), ci_high=float(d.mean() + half))
    if sd == 0:
        out.update(p_ttest=1.0 if d.mean() == 0 else 0.0)
    else:
        out["p_ttest"] = float(sps.ttest_rel(a[keep], b[keep]).pvalue)
    if np.any(d != 0):
        out["p_wilcoxon"] = float(sps.wilcoxon(a[keep], b[keep]).pvalue)
    else:
        out["p_wilcoxon"] = 1.0
    return out


# --------------------------------------------------------------------------- formatting


def format_ci(value: float, low: float, high: float, digits: int = 3,
              signed: bool = False) -> str:
    """``0.812 [0.761, 0.858]`` (``signed``: ``-0.021 [-0.048, +0.005]``); ``n/a`` for a
    missing value, the value alone without an interval."""
    if value is None or not np.isfinite(value):
        return "n/a"
    form = f"{'+' if signed else ''}.{digits}f"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:{form}}"
    return f"{value:{form}} [{low:{form}}, {high:{form}}]"


def format_difference(difference: float, low: float, high: float, digits: int = 3) -> str:
    """A difference with its interval, signs shown (:func:`format_ci` with ``signed``)."""
    return format_ci(difference, low, high, digits, signed=True)


def format_p(p: float) -> str:
    """``p = 0.031``, ``p < 0.001``, ``n/a``."""
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


# --------------------------------------------------------------------------- comparison tables


def compare_to_best(predictions: dict, class_names: Sequence[str],
                    metrics: Sequence[str] = ("accuracy",), *, pair_on: Sequence[str] = ("image",),
                    seeds_column: str | None = None, n_boot: int = N_BOOTSTRAP,
                    seed: int = SEED, functions: dict | None = None) -> pd.DataFrame:
    """Each entry's metrics with 95 % intervals, and its difference to the best entry.

    ``predictions`` maps a name (a setting, a run) to its predictions table (``label``,
    ``prob_*``, the ``pair_on`` columns and, when given, ``seeds_column``). The best entry has
    the highest first metric. Every other entry is paired with it on the same test images
    (``pair_on``; and the same seed or trial when ``seeds_column`` is given):

    * two or more common seeds: the mean per-seed difference with its t interval, and the
      paired t-test over seeds (:func:`paired_across_seeds`);
    * one seed (or none): the difference on the pooled images with a paired bootstrap
      interval, and a paired test on those images: exact McNemar for accuracy, DeLong for a
      binary ROC-AUC, the paired bootstrap otherwise.

    Columns per metric ``m``: ``m``, ``m_ci_low``, ``m_ci_high``, ``m_diff``,
    ``m_diff_low``, ``m_diff_high``, ``m_p``, ``m_test``; plus ``name``, ``n_images`` and
    ``best`` (True for the reference). ``functions`` adds metrics by name (``f(y, prob)``,
    e.g. the calibration error) to :data:`METRICS`; the best entry is still the one with the
    highest first metric.
    """
    registry = {**METRICS, **(functions or {})}
    names = list(predictions)
    columns = [f"prob_{c}" for c in class_names]
    keys = list(pair_on) + ([seeds_column] if seeds_column else [])
    values, rows = {}, []
    for name in names:
        table = predictions[name]
        y = table["label"].to_numpy(dtype=int)
        prob = table[columns].to_numpy(dtype=float)
        groups = table[list(pair_on)].astype(str).agg("/".join, axis=1).to_numpy()
        row = {"name": name, "n_images": int(table[list(pair_on)].drop_duplicates().shape[0])}
        for m in metrics:
            row[m] = registry[m](y, prob)
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = bootstrap_ci(
                y, prob, registry[m], groups=groups, n_boot=n_boot, seed=seed)
        values[name] = row
        rows.append(row)
    finite = [n for n in names if np.isfinite(values[n][metrics[0]])]
    best = max(finite, key=lambda n: values[n][metrics[0]]) if finite else None
    for row in rows:
        row["best"] = row["name"] == best
        for m in metrics:
            row.update({f"{m}_diff": math.nan, f"{m}_diff_low": math.nan,
                        f"{m}_diff_high": math.nan, f"{m}_p": math.nan, f"{m}_test": ""})
        if best is None or row["best"]:
            continue
        merged = predictions[row["name"]].merge(predictions[best], on=keys,
                                                suffixes=("", "_best"))
        if not len(merged):
            for m in metrics:
                row[f"{m}_test"] = "no common test images"
            continue
        y = merged["label"].to_numpy(dtype=int)
        prob = merged[columns].to_numpy(dtype=float)
        prob_best = merged[[f"{c}_best" for c in columns]].to_numpy(dtype=float)
        seeds = (sorted(merged[seeds_column].unique()) if seeds_column else [None])
        for m in metrics:
            if len(seeds) >= 2:
                f = registry[m]
                per_seed = [(f(y[mask], prob[mask]), f(y[mask], prob_best[mask]))
                            for mask in (merged[seeds_column].to_numpy() == s for s in seeds)]
                result = paired_across_seeds([a for a, _ in per_seed], [b for _, b in per_seed])
                row.update({f"{m}_diff": result["difference"], f"{m}_diff_low": result["ci_low"],
                            f"{m}_diff_high": result["ci_high"], f"{m}_p": result["p_ttest"],
                            f"{m}_test": f"paired t-test over {len(seeds)} seeds"})
                continue
            paired = paired_bootstrap(y, prob, prob_best, registry[m], n_boot=n_boot, seed=seed)
            p, test = paired["p"], "paired bootstrap"
            if m == "accuracy":
                p = mcnemar_exact(prob.argmax(1) == y, prob_best.argmax(1) == y)["p"]
                test = "exact McNemar"
            elif m == "roc_auc" and prob.shape[1] == 2 and min(np.bincount(y, minlength=2)) >= 2:
                p = delong_test(y == 1, prob[:, 1], prob_best[:, 1])["p"]
                test = "DeLong"
            row.update({f"{m}_diff": paired["difference"], f"{m}_diff_low": paired["ci_low"],
                        f"{m}_diff_high": paired["ci_high"], f"{m}_p": p, f"{m}_test": test})
    return pd.DataFrame(rows)


def shown_comparison(numbers: pd.DataFrame, metrics: Sequence[str] = ("accuracy",),
                     labels: dict | None = None) -> pd.DataFrame:
    """The display columns of :func:`compare_to_best`: value [CI], Δ vs best [CI], p (test)."""
    labels = labels or {}
    out = pd.DataFrame({"name": numbers["name"]})
    for m in metrics:
        label = labels.get(m, m.replace("_", " "))
        out[f"{label} [95 % CI]"] = [format_ci(v, lo, hi) for v, lo, hi in
                                     numbers[[m, f"{m}_ci_low", f"{m}_ci_high"]].itertuples(
                                         index=False)]
        out[f"Δ {label} vs best [95 % CI]"] = [
            "best" if best else format_difference(d, lo, hi)
            for best, d, lo, hi in numbers[["best", f"{m}_diff", f"{m}_diff_low",
                                            f"{m}_diff_high"]].itertuples(index=False)]
        out[f"p ({label})"] = [
            "" if best else (f"{format_p(p)} ({test})" if test else format_p(p))
            for best, p, test in numbers[["best", f"{m}_p", f"{m}_test"]].itertuples(index=False)]
    return out
