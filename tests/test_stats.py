"""Confidence intervals and paired tests (leukocyte_cnn.reporting.stats) against hand-computed
and scipy / scikit-learn reference values on fixed predictions, including two settings that
differ by chance only, which the tests must call not significant."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from leukocyte_cnn.reporting import metrics, stats
from leukocyte_cnn.reporting.metrics import classification_metrics


def _predictions(n: int, n_classes: int, accuracy: float, seed: int):
    """Labels and probabilities whose arg-max is right on about ``accuracy`` of the images."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(0, 1, (n, n_classes))
    right = rng.random(n) < accuracy
    logits[np.arange(n), y] += np.where(right, 4.0, -4.0)
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, prob


@pytest.mark.parametrize("n_classes", [2, 4])
def test_fast_metrics_equal_the_scikit_learn_ones_of_the_summaries(n_classes):
    y, prob = _predictions(157, n_classes, 0.7, seed=n_classes)
    names = [f"c{i}" for i in range(n_classes)]
    reference = classification_metrics(y, prob, names)
    for name, function in stats.METRICS.items():
        assert function(y, prob) == pytest.approx(reference[name], abs=1e-12), name
    if n_classes == 2:
        return
    # a class missing from the labels is left out of macro averages, as in metrics.py
    keep = y != 0
    reference = classification_metrics(y[keep], prob[keep], names)
    assert metrics.macro_f1(y[keep], prob[keep]) == pytest.approx(reference["macro_f1"])
    assert metrics.rank_roc_auc(y[keep], prob[keep]) == pytest.approx(reference["roc_auc"])


def test_mcnemar_exact_matches_the_hand_computed_binomial_p_value():
    # 8 images only A gets right, 2 only B, 40 both, 10 neither:
    # p = 2 * P(X <= 2 | 10, 1/2) = 2 * (1 + 10 + 45) / 1024
    a = np.array([1] * 8 + [0] * 2 + [1] * 40 + [0] * 10, bool)
    b = np.array([0] * 8 + [1] * 2 + [1] * 40 + [0] * 10, bool)
    result = stats.mcnemar_exact(a, b)
    assert (result["n_a_only"], result["n_b_only"]) == (8, 2)
    assert result["p"] == pytest.approx(112 / 1024)
    assert stats.mcnemar_exact(a, a)["p"] == 1.0  # no discordant images: nothing to test


def _delong_by_hand(positive, a, b):
    """DeLong's variance from its definition: structural components by all pairs."""
    def components(score):
        x, y = score[positive], score[~positive]
        psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        return psi.mean(axis=1), psi.mean(axis=0), psi.mean()
    va10, va01, auc_a = components(a)
    vb10, vb01, auc_b = components(b)
    m, n = positive.sum(), (~positive).sum()
    s10 = np.cov(np.vstack([va10, vb10]))
    s01 = np.cov(np.vstack([va01, vb01]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (auc_a - auc_b) / math.sqrt(var)
    return auc_a, auc_b, 2 * sps.norm.sf(abs(z))


def test_delong_equals_the_pairwise_definition_and_scikit_learn_aucs():
    rng = np.random.default_rng(3)
    positive = rng.random(120) < 0.4
    a = np.round(positive * 1.0 + rng.normal(0, 0.8, 120), 1)   # rounded: ties included
    b = np.round(positive * 0.6 + rng.normal(0, 0.8, 120), 1)
    result = stats.delong_test(positive, a, b)
    auc_a, auc_b, p = _delong_by_hand(positive, a, b)
    assert result["auc_a"] == pytest.approx(roc_auc_score(positive, a))
    assert result["auc_b"] == pytest.approx(roc_auc_score(positive, b))
    assert (result["auc_a"], result["auc_b"]) == pytest.approx((auc_a, auc_b))
    assert result["p"] == pytest.approx(p, rel=1e-9)
    assert result["ci_low"] < result["difference"] < result["ci_high"]


def test_paired_across_seeds_matches_scipy_and_the_t_interval():
    a = np.array([0.81, 0.84, 0.79, 0.86, 0.83])
    b = np.array([0.78, 0.80, 0.80, 0.81, 0.79])
    result = stats.paired_across_seeds(a, b)
    d = a - b
    half = sps.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert result["difference"] == pytest.approx(d.mean())
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((d.mean() - half,
                                                                   d.mean() + half))
    assert result["p_ttest"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert result["p_wilcoxon"] == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert math.isnan(stats.paired_across_seeds([0.8], [0.7])["p_ttest"])  # one seed: no test


def test_bootstrap_interval_is_seeded_stratified_and_close_to_the_binomial_one():
    y, prob = _predictions(400, 2, 0.8, seed=5)
    low, high = stats.bootstrap_ci(y, prob, "accuracy")
    assert (low, high) == stats.bootstrap_ci(y, prob, "accuracy")  # seeded: repeatable
    acc = metrics.accuracy(y, prob)
    wald = 1.96 * math.sqrt(acc * (1 - acc) / len(y))
    assert low < acc < high
    assert high - low == pytest.approx(2 * wald, rel=0.15)
    for index in list(stats.resampled_indices(y, n_boot=5)):
        assert np.bincount(y[index]).tolist() == np.bincount(y).tolist()  # classes kept


def test_groups_of_several_images_are_resampled_whole_and_widen_the_interval():
    # 30 patients x 10 images; a patient's images are all right or all wrong together, so
    # there are 30 independent pieces of evidence, not 300.
    rng = np.random.default_rng(7)
    patient_right = rng.random(30) < 0.7
    groups = np.repeat([f"P{i}" for i in range(30)], 10)
    y = np.tile([0, 1], 150)
    correct = np.repeat(patient_right, 10)
    pred = np.where(correct, y, 1 - y)
    prob = np.eye(2)[pred]
    for index in stats.resampled_indices(y, groups=groups, n_boot=3):
        counts = pd.Series(groups[index]).value_counts()
        assert set(counts % 10) == {0}  # whole patients only
    plain = stats.bootstrap_ci(y, prob, "accuracy")
    clustered = stats.bootstrap_ci(y, prob, "accuracy", groups=groups)
    assert clustered[1] - clustered[0] > 2 * (plain[1] - plain[0])


def test_two_settings_that_differ_by_chance_only_are_not_called_different():
    # Two models of the same quality (80 %) that err on different random images.
    rng = np.random.default_rng(11)
    n = 300
    y = rng.integers(0, 2, n)
    right_a, right_b = rng.random(n) < 0.8, rng.random(n) < 0.8
    prob_a = np.eye(2)[np.where(right_a, y, 1 - y)] * 0.8 + 0.1
    prob_b = np.eye(2)[np.where(right_b, y, 1 - y)] * 0.8 + 0.1
    assert abs(right_a.mean() - right_b.mean()) > 0  # they do differ on this sample ...
    assert stats.mcnemar_exact(right_a, right_b)["p"] > 0.05  # ... but by chance only
    paired = stats.paired_bootstrap(y, prob_a, prob_b, "accuracy", n_boot=1000)
    assert paired["ci_low"] < 0 < paired["ci_high"] and paired["p"] > 0.05
    seeds_a = 0.80 + rng.normal(0, 0.01, 5)
    seeds_b = 0.80 + rng.normal(0, 0.01, 5)
    assert stats.paired_across_seeds(seeds_a, seeds_b)["p_ttest"] > 0.05
    # A real difference on the same images is found by every test.
    right_c = right_a & (rng.random(n) < 0.75)  # C is A with a quarter of its hits lost
    prob_c = np.eye(2)[np.where(right_c, y, 1 - y)] * 0.8 + 0.1
    assert stats.mcnemar_exact(right_a, right_c)["p"] < 0.001
    paired = stats.paired_bootstrap(y, prob_a, prob_c, "accuracy", n_boot=1000)
    assert paired["ci_low"] > 0 and paired["p"] < 0.01
    assert stats.paired_across_seeds(seeds_a, seeds_a - 0.05)["p_ttest"] < 0.001


def test_metric_intervals_of_a_predictions_table_cover_the_pooled_values():
    y, prob = _predictions(240, 3, 0.75, seed=2)
    table = pd.DataFrame({"fold": np.arange(240) % 3, "label": y,
                          "group": [f"img{i}" for i in range(240)],
                          **{f"prob_c{c}": prob[:, c] for c in range(3)}})
    intervals = stats.metric_intervals(table, ["c0", "c1", "c2"], n_boot=500)
    for name, (low, high) in intervals.items():
        assert low <= stats.METRICS[name](y, prob) <= high, name
    assert "within class and fold" in stats.clustering_note(table)
    assert stats.format_ci(0.8123, 0.76, 0.85) == "0.812 [0.760, 0.850]"
    assert stats.format_difference(-0.021, -0.048, 0.005) == "-0.021 [-0.048, +0.005]"
    assert stats.format_p(0.0004) == "< 0.001"
