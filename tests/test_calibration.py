"""Calibration (leukocyte_cnn.reporting.calibration): ECE and Brier score against values
computed by hand, temperature scaling that lowers the ECE of a model over-confident by
construction, leaves a calibrated one alone and refuses a test image, the pooled table with
its intervals, the stored temperatures and the reliability diagram."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.calibration import calibration_curve

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.reporting import calibration as cal
from leukocyte_cnn.reporting import stats

# Eight images, three classes; the top probability, whether it is right, and its bin of 5:
#   1 [0.90 0.05 0.05] y=0  0.90 right  (0.8, 1.0]
#   2 [0.85 0.10 0.05] y=1  0.85 wrong  (0.8, 1.0]
#   3 [0.10 0.20 0.70] y=2  0.70 right  (0.6, 0.8]
#   4 [0.30 0.60 0.10] y=1  0.60 right  (0.4, 0.6]   on an edge: the bin below
#   5 [0.50 0.30 0.20] y=1  0.50 wrong  (0.4, 0.6]
#   6 [0.40 0.35 0.25] y=0  0.40 right  (0.2, 0.4]   on an edge: the bin below
#   7 [1.00 0.00 0.00] y=0  1.00 right  (0.8, 1.0]   exactly 1: the last bin
#   8 [0.20 0.45 0.35] y=2  0.45 wrong  (0.4, 0.6]
PROB = np.array([[0.90, 0.05, 0.05], [0.85, 0.10, 0.05], [0.10, 0.20, 0.70],
                 [0.30, 0.60, 0.10], [0.50, 0.30, 0.20], [0.40, 0.35, 0.25],
                 [1.00, 0.00, 0.00], [0.20, 0.45, 0.35]])
Y = np.array([0, 1, 2, 1, 1, 0, 0, 2])
# 5 bins, by hand:
#   (0.2, 0.4]: image 6      acc 1,   conf 0.40               |gap| 0.6      x 1/8 = 0.075
#   (0.4, 0.6]: images 4 5 8 acc 1/3, conf 1.55/3 = 0.516667  |gap| 0.183333 x 3/8 = 0.06875
#   (0.6, 0.8]: image 3      acc 1,   conf 0.70               |gap| 0.3      x 1/8 = 0.0375
#   (0.8, 1.0]: images 1 2 7 acc 2/3, conf 2.75/3 = 0.916667  |gap| 0.25     x 3/8 = 0.09375
ECE_5_BINS = 0.075 + 0.06875 + 0.0375 + 0.09375  # = 0.275
# Edges taken the other way, [lo, hi), would give 0.2 + 0.11875 + 0.0875 + ... != 0.275.
# 15 bins (edges k/15): 0.40 in (0.333, 0.4], 0.45 and 0.50 in (0.4, 0.467] and (0.467,
# 0.533], 0.60 in (0.533, 0.6], 0.70 in (0.667, 0.733], 0.85 in (0.8, 0.867], 0.90 in
# (0.867, 0.933], 1.00 in (0.933, 1]: one image per bin, so the ECE is the mean |right - conf|
# = (0.10 + 0.85 + 0.30 + 0.40 + 0.50 + 0.60 + 0.00 + 0.45) / 8 = 3.2 / 8 = 0.4
ECE_15_BINS = 0.4


def test_ece_on_a_small_table_equals_the_hand_computation():
    assert cal.expected_calibration_error(Y, PROB, bins=5) == pytest.approx(ECE_5_BINS,
                                                                            abs=1e-12)
    assert cal.expected_calibration_error(Y, PROB) == pytest.approx(ECE_15_BINS, abs=1e-12)


def test_bin_edges_go_to_the_bin_below_and_one_and_zero_are_inside():
    # (lo, hi]: 0.4 with 5 bins is bin 1 (0.2, 0.4], 0.4000001 bin 2; 1.0 the last, 0.0 the first
    assert cal.bin_of([0.0, 0.2, 0.2000001, 0.4, 0.4000001, 0.6, 0.8, 1.0], bins=5).tolist() == [
        0, 0, 1, 1, 2, 2, 3, 4]
    assert cal.bin_of([1.0, 14 / 15, 1 / 15], bins=15).tolist() == [14, 13, 0]
    # a perfect, certain model: everything in the last bin, no gap
    assert cal.expected_calibration_error([0, 1], np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0
    # always 1.0 and always wrong: the whole gap
    assert cal.expected_calibration_error([1, 0], np.array([[1.0, 0.0], [0.0, 1.0]])) == 1.0


def test_bins_agree_with_scikit_learn_calibration_curve():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (400, 4))
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, 4, 400)
    table = cal.reliability_bins(y, prob)
    filled = table[table["n"] > 0]
    correct = (prob.argmax(axis=1) == y).astype(int)
    accuracy, confidence = calibration_curve(correct, prob.max(axis=1), n_bins=15, pos_label=1)
    np.testing.assert_allclose(filled["accuracy"], accuracy, atol=1e-12)
    np.testing.assert_allclose(filled["confidence"], confidence, atol=1e-12)
    ece = (filled["n"] * (filled["accuracy"] - filled["confidence"]).abs()).sum() / len(y)
    assert cal.expected_calibration_error(y, prob) == pytest.approx(ece, abs=1e-12)


def test_brier_score_is_the_multi_class_definition_for_every_number_of_classes():
    # images 1-3 above: (0.1² + 0.05² + 0.05²) + (0.85² + 0.9² + 0.05²) + (0.1² + 0.2² + 0.3²)
    #                   = 0.015 + 1.535 + 0.14 = 1.69, mean 1.69 / 3
    assert cal.brier_score(Y[:3], PROB[:3]) == pytest.approx(1.69 / 3, abs=1e-12)
    # binary (0.2, 0.8) and (0.6, 0.4), both positive: (0.2² + 0.2²) and (0.6² + 0.6²), mean
    # 0.4: twice the binary Brier score mean((0.8 - 1)², (0.4 - 1)²) = 0.2
    binary = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert cal.brier_score([1, 1], binary) == pytest.approx(0.4, abs=1e-12)
    # a class missing from the labels still counts: [0.5 0.3 0.2] with y = 0 only:
    # 0.25 + 0.09 + 0.04 = 0.38
    assert cal.brier_score([0], np.array([[0.5, 0.3, 0.2]])) == pytest.approx(0.38, abs=1e-12)
    # float32 softmax rows (as predictions.csv holds them) are probabilities: no warning
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (500, 7)).astype(np.float32)
    prob32 = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.abs(prob32.astype(np.float64).sum(axis=1) - 1).max() > 3e-8  # sklearn would warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cal.brier_score(rng.integers(0, 7, 500), prob32)
    with pytest.warns(UserWarning, match="do not sum to one"):
        cal.brier_score([0], np.array([[0.5, 0.3, 0.1]]))


@pytest.mark.parametrize("n_classes", [2, 5])
def test_the_bootstraps_per_image_terms_give_the_same_metrics(n_classes):
    rng = np.random.default_rng(n_classes)
    prob = rng.dirichlet(np.ones(n_classes) * 0.5, 300)
    y = rng.integers(0, n_classes, 300)
    terms = cal.per_image_terms(y, prob)
    for name, function in (("ece", cal.expected_calibration_error),
                           ("brier", cal.brier_score), ("nll", cal.negative_log_likelihood)):
        assert cal.statistic_of_terms(name)(y, terms) == pytest.approx(function(y, prob),
                                                                       abs=1e-12), name
        half = np.arange(0, 300, 2)
        assert cal.statistic_of_terms(name)(y[half], terms[half]) == pytest.approx(
            function(y[half], prob[half]), abs=1e-12), name
    assert cal.statistic_of_terms("ece", 5)(Y, cal.per_image_terms(Y, PROB, 5)) == \
        pytest.approx(ECE_5_BINS, abs=1e-12)


def test_negative_log_likelihood_by_hand():
    # -(ln 0.9 + ln 0.1 + ln 0.7) / 3
    expected = -(math.log(0.9) + math.log(0.1) + math.log(0.7)) / 3
    assert cal.negative_log_likelihood(Y[:3], PROB[:3]) == pytest.approx(expected, abs=1e-12)
    # a probability of 0 on the label is clipped at 1e-7: -ln(1e-7) = 16.118...
    assert cal.negative_log_likelihood([1], np.array([[1.0, 0.0]])) == pytest.approx(
        -math.log(1e-7))


# --------------------------------------------------------------------------- temperature


def overconfident(n: int, n_classes: int, right: float, top: float, seed: int):
    """The predicted class gets ``top``, but is the label only ``right`` of the time."""
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, n_classes, n)
    is_right = rng.random(n) < right
    other = (pred + rng.integers(1, n_classes, n)) % n_classes
    y = np.where(is_right, pred, other)
    prob = np.full((n, n_classes), (1 - top) / (n_classes - 1))
    prob[np.arange(n), pred] = top
    return y, prob


def test_apply_temperature_by_hand():
    # binary: sigmoid(logit(0.8) / 2) = sigmoid(ln 4 / 2) = sigmoid(ln 2) = 2/3
    np.testing.assert_allclose(cal.apply_temperature([[0.2, 0.8]], 2.0), [[1 / 3, 2 / 3]])
    # three classes, T = 1/2: p² normalised, [0.25, 0.0625, 0.0625] / 0.375
    np.testing.assert_allclose(cal.apply_temperature([[0.5, 0.25, 0.25]], 0.5),
                               [[2 / 3, 1 / 6, 1 / 6]])
    prob = np.array([[0.3, 0.7], [0.9, 0.1]])
    np.testing.assert_array_equal(cal.apply_temperature(prob, 1.0), prob)
    with pytest.raises(ValueError, match="temperature"):
        cal.apply_temperature(prob, 0.0)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model(n_classes):
    y_val, p_val = overconfident(3000, n_classes, right=0.7, top=0.99, seed=1)
    y_test, p_test = overconfident(3000, n_classes, right=0.7, top=0.99, seed=2)
    t = cal.fit_temperature(p_val, y_val)
    assert t > 1
    before = cal.expected_calibration_error(y_test, p_test)
    after = cal.expected_calibration_error(y_test, cal.apply_temperature(p_test, t))
    assert before == pytest.approx(0.29, abs=0.02)   # says 0.99, right 0.7 of the time
    assert after < 0.03 < before
    scaled = cal.apply_temperature(p_test, t)
    np.testing.assert_array_equal(scaled.argmax(axis=1), p_test.argmax(axis=1))
    # the fit is the minimum of the validation NLL: no grid point does better
    grid = np.exp(np.linspace(np.log(0.5), np.log(20), 400))
    nll = [cal.negative_log_likelihood(y_val, cal.apply_temperature(p_val, g)) for g in grid]
    assert cal.negative_log_likelihood(y_val, cal.apply_temperature(p_val, t)) <= min(nll) + 1e-9
    if n_classes == 2:  # the top probability becomes about 0.7: logit(0.99) / logit(0.7) = 5.42
        assert t == pytest.approx(math.log(99) / math.log(0.7 / 0.3), rel=0.05)


def test_temperature_of_a_calibrated_model_is_about_one():
    rng = np.random.default_rng(5)
    confidence = rng.uniform(0.5, 1.0, 6000)
    pred = rng.integers(0, 2, 6000)
    y = np.where(rng.random(6000) < confidence, pred, 1 - pred)
    prob = np.zeros((6000, 2))
    prob[np.arange(6000), pred] = confidence
    prob[np.arange(6000), 1 - pred] = 1 - confidence
    assert cal.fit_temperature(prob, y) == pytest.approx(1.0, abs=0.1)


def test_validation_images_all_right_push_the_temperature_to_its_bound():
    # every image right at 0.9: sharper is always better, the fit stops at the lower bound
    y = np.array([0, 1] * 20)
    prob = np.where(y[:, None] == np.arange(2), 0.9, 0.1)
    info = cal.fit_fold_temperature([], _val_table(y, prob, ["a", "b"]))
    assert info["temperature"] == pytest.approx(cal.T_BOUNDS[0], rel=1e-3)
    assert info["at_bound"]


def _val_table(y, prob, names, prefix="val"):
    table = pd.DataFrame({"image": [f"{prefix}_{i}.png" for i in range(len(y))], "label": y})
    for k, name in enumerate(names):
        table[f"prob_{name}"] = prob[:, k]
    return table


def test_fit_fold_temperature_refuses_a_test_image():
    y, prob = overconfident(200, 2, right=0.7, top=0.99, seed=3)
    val = _val_table(y, prob, ["hem", "all"])
    test_images = ["test_0.png", "test_1.png"]
    info = cal.fit_fold_temperature(test_images, val, ["hem", "all"])
    assert info["fitted_on"] == "validation images" and info["n_val"] == 200
    assert info["temperature"] > 1 and info["ece_after"] < info["ece_before"]
    assert info["nll_after"] < info["nll_before"] and not info["at_bound"]
    leaky = pd.concat([val, _val_table(y[:1], prob[:1], ["hem", "all"], prefix="test")])
    with pytest.raises(ValueError, match="test_0.png is one of the fold's test images"):
        cal.fit_fold_temperature(test_images, leaky, ["hem", "all"])
    # a table from inputs.csv with roles: only validation rows are accepted
    with pytest.raises(ValueError, match="role 'test'"):
        cal.fit_fold_temperature([], val.assign(role=["val"] * 199 + ["test"]))
    # prob_* columns found without class names: the same temperature
    assert cal.fit_fold_temperature(test_images, val)["temperature"] == info["temperature"]


def test_temperature_is_stored_beside_the_model_and_read_back(tmp_path):
    fold = tmp_path / "fold_03"
    assert cal.read_temperature(fold) is None
    cal.write_temperature(fold, {"temperature": 2.5, "n_val": 10,
                                 "fitted_on": "validation images"})
    assert json.loads((fold / "temperature.json").read_text())["temperature"] == 2.5
    assert cal.read_temperature(fold) == 2.5
    (tmp_path / "fold_04").mkdir()  # a fold made before temperatures: left out
    assert cal.read_temperatures(tmp_path) == {3: 2.5}
    (fold / "temperature.json").write_text('{"temperature": -1}')
    with pytest.raises(InputError, match="temperature.json"):
        cal.read_temperature(fold)
    with pytest.raises(ValueError):
        cal.write_temperature(fold, {"temperature": math.nan})


# --------------------------------------------------------------------------- pooled table


def run_predictions(seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """Three folds of an over-confident binary model, patients of four images each."""
    names = ["hem", "all"]
    parts = []
    for fold in range(3):
        y, prob = overconfident(120, 2, right=0.7, top=0.99, seed=seed + fold)
        part = _val_table(y, prob, names, prefix=f"f{fold}")
        part.insert(0, "fold", fold)
        part["group"] = [f"p{fold}_{i // 4}_{label}" for i, label in enumerate(y)]
        parts.append(part)
    return pd.concat(parts, ignore_index=True), names


def test_calibration_table_reports_raw_and_scaled_side_by_side():
    predictions, names = run_predictions()
    temperatures = {0: 5.0, 1: 5.4, 2: 5.8}
    table = cal.calibration_table(predictions, names, temperatures, n_boot=200)
    assert table["metric"].tolist() == ["ece", "brier", "nll"]
    y = predictions["label"].to_numpy()
    prob = predictions[["prob_hem", "prob_all"]].to_numpy()
    raw = table.set_index("metric")
    assert raw.loc["ece", "raw"] == pytest.approx(cal.expected_calibration_error(y, prob))
    assert raw.loc["brier", "raw"] == pytest.approx(cal.brier_score(y, prob))
    assert raw.loc["nll", "raw"] == pytest.approx(cal.negative_log_likelihood(y, prob))
    for name in ("ece", "brier", "nll"):  # over-confident: scaling helps on every count
        row = raw.loc[name]
        assert row["raw_ci95_low"] <= row["raw"] <= row["raw_ci95_high"]
        assert row["scaled_ci95_low"] <= row["scaled"] <= row["scaled_ci95_high"]
        assert row["difference"] == pytest.approx(row["scaled"] - row["raw"])
        assert row["difference_ci95_high"] < 0
    # the interval is the run's: strata class x fold, whole patients resampled
    strata = predictions["fold"].to_numpy() * 2 + y
    expected = stats.bootstrap_ci(y, prob, cal.expected_calibration_error, strata=strata,
                                  groups=predictions["group"].to_numpy(), n_boot=200)
    assert (raw.loc["ece", "raw_ci95_low"], raw.loc["ece", "raw_ci95_high"]) == pytest.approx(
        expected, abs=1e-12)
    plain = stats.bootstrap_ci(y, prob, cal.expected_calibration_error, strata=strata,
                               n_boot=200)  # images one by one: another interval
    assert plain != pytest.approx(expected, abs=1e-6)
    shown = cal.shown_calibration_table(table)
    assert list(shown.columns) == ["metric", "raw [95 % CI]", "temperature-scaled [95 % CI]",
                                   "Δ scaled - raw [95 % CI]"]
    raw_only = cal.calibration_table(predictions, names, n_boot=50)
    assert "scaled" not in raw_only and len(cal.shown_calibration_table(raw_only).columns) == 2


def test_scaled_predictions_keep_the_arg_max_and_need_every_fold():
    predictions, names = run_predictions()
    scaled = cal.scaled_predictions(predictions, names, {0: 3.0, 1: 0.5, 2: 1.0})
    assert (scaled["pred"] == predictions[["prob_hem", "prob_all"]].to_numpy().argmax(1)).all()
    assert (scaled["pred_class"] == np.array(names)[scaled["pred"]]).all()
    fold2 = predictions["fold"] == 2
    np.testing.assert_array_equal(scaled.loc[fold2, "prob_all"], predictions.loc[fold2, "prob_all"])
    np.testing.assert_allclose(scaled[["prob_hem", "prob_all"]].sum(axis=1), 1.0)
    assert not np.allclose(scaled.loc[~fold2, "prob_all"], predictions.loc[~fold2, "prob_all"])
    with pytest.raises(ValueError, match="fold.s. 1, 2"):
        cal.scaled_predictions(predictions, names, {0: 2.0})


def test_reliability_diagram_is_written_with_its_title(tmp_path):
    predictions, names = run_predictions()
    path = cal.plot_reliability_diagram(predictions, names, tmp_path / "reliability.png",
                                        temperatures={0: 5.0, 1: 5.0, 2: 5.0},
                                        title_suffix=" [LEAKY]")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert "Reliability" in image.text["Title"] and "LEAKY" in image.text["Title"]
    assert not list(tmp_path.glob(".*.tmp"))
    # a run whose every image is right still draws (one class of correctness only)
    perfect = predictions.assign(label=predictions[["prob_hem", "prob_all"]].to_numpy().argmax(1))
    cal.plot_reliability_diagram(perfect, names, tmp_path / "perfect.png")
    assert (tmp_path / "perfect.png").stat().st_size > 0
