"""Metrics against values computed by hand."""
import math

import numpy as np
import pytest

from leukocyte_cnn.reporting.metrics import (
    classification_metrics,
    format_mean_std,
    mean_std,
    probabilities_from_output,
    roc_auc,
)


def test_binary_metrics_match_hand_computation():
    # labels:      1    1    1    0    0    0
    # p(positive): 0.9  0.6  0.4  0.3  0.7  0.1
    # predicted:   1    1    0    0    1    0   -> TP=2 FN=1 FP=1 TN=2
    y = [1, 1, 1, 0, 0, 0]
    prob = probabilities_from_output(np.array([0.9, 0.6, 0.4, 0.3, 0.7, 0.1])[:, None])
    m = classification_metrics(y, prob, ["other", "blast"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["blast"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["blast"]["recall"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    # AUC = fraction of (positive, negative) pairs ranked correctly:
    # positives 0.9, 0.6, 0.4 vs negatives 0.3, 0.7, 0.1 -> 3 + 2 + 2 = 7 of 9 pairs
    assert m["roc_auc"] == pytest.approx(7 / 9)


def test_multiclass_balanced_accuracy_and_macro_f1():
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 2])
    prob = np.eye(3)[pred]
    m = classification_metrics(y, prob, ["a", "b", "c"])
    # recalls: a 3/4, b 1/2, c 1 -> balanced accuracy 0.75
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    # precisions: a 3/4, b 1/2, c 1; F1 = recall = precision here
    assert m["macro_f1"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    # weighted F1 weights by support 4, 2, 1
    assert m["weighted_f1"] == pytest.approx((4 * 0.75 + 2 * 0.5 + 1 * 1.0) / 7)
    assert m["accuracy"] == pytest.approx(5 / 7)


def test_weighted_f1_matches_scikit_learn_on_hand_made_example():
    from sklearn.metrics import f1_score

    y = [0, 1, 1, 0, 1, 1, 1, 0]
    pred = [0, 1, 0, 0, 1, 1, 0, 1]
    m = classification_metrics(y, np.eye(2)[pred], ["hem", "all"])
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))


def test_auc_undefined_for_one_class_and_ovr_skips_absent_classes():
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]])))
    y = np.array([0, 0, 1, 1])
    prob = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    assert roc_auc(y, prob) == pytest.approx(1.0)  # class 2 absent: left out of the mean


def test_mean_std_formatting():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert format_mean_std([0.5]) == "0.500"
    assert format_mean_std([float("nan")]) == "n/a"
