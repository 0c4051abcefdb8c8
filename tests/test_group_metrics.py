"""Group-level results (leukocyte_cnn.reporting.group_metrics) on a synthetic C-NMC run,
against numbers computed by hand: per-patient mean probabilities, patient-level accuracy,
balanced accuracy and ROC-AUC beside the image-level ones; every bootstrap interval resamples
whole patients; and the synthetic C-NMC set's groups are its patients."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leukocyte_cnn.data.datasets import read_dataset
from leukocyte_cnn.data.synthetic import generate
from leukocyte_cnn.reporting import group_metrics as gm
from leukocyte_cnn.reporting import stats

NAMES = ["hem", "all"]  # C-NMC: label 1 = all (blast), 0 = hem (normal)
# Six patients in three folds; P(all) of each of their test images:
PATIENTS = [  # (fold, patient, label, P(all) per image)
    (0, "1", 1, [0.90, 0.80, 0.40]),        # mean 0.700  -> all   right
    (0, "H1", 0, [0.30, 0.60]),             # mean 0.450  -> hem   right
    (1, "2", 1, [0.30, 0.45]),              # mean 0.375  -> hem   wrong
    (1, "H2", 0, [0.20, 0.10, 0.35]),       # mean 0.2167 -> hem   right
    (2, "3", 1, [0.70, 0.95]),              # mean 0.825  -> all   right
    (2, "H3", 0, [0.55, 0.65]),             # mean 0.600  -> all   wrong
]
# Patient level, by hand:
#   accuracy 4/6; balanced: all 2/3 right (1, 3), hem 2/3 right (H1, H2) -> 2/3
#   ROC-AUC: positives 0.7, 0.375, 0.825 vs negatives 0.45, 0.2167, 0.6: pairs ranked right
#   3 + 1 + 3 = 7 of 9
GROUP = {"accuracy": 4 / 6, "balanced_accuracy": 2 / 3, "roc_auc": 7 / 9}
# Image level, by hand (P(all) > 0.5 predicts all): right per patient 2, 1, 0, 3, 2, 0 = 8/14;
#   all images 4 of 7 right, hem 4 of 7 -> balanced 4/7; ROC-AUC: each positive's negatives
#   below it (ties 1/2): 0.9: 7, 0.8: 7, 0.4: 4, 0.3: 2.5, 0.45: 4, 0.7: 7, 0.95: 7 = 38.5 / 49
IMAGE = {"accuracy": 8 / 14, "balanced_accuracy": 4 / 7, "roc_auc": 38.5 / 49}


def cnmc_predictions() -> pd.DataFrame:
    rows = []
    for fold, patient, label, p_all in PATIENTS:
        kind = "all" if label else "hem"
        for n, p in enumerate(p_all):
            rows.append({"fold": fold, "image": f"fold_{fold}/{kind}/UID_{patient}_{n + 1}_1_"
                         f"{kind}.bmp", "label": label, "class_name": NAMES[label],
                         "group": patient, "prob_hem": 1 - p, "prob_all": p,
                         "pred": int(p > 0.5), "pred_class": NAMES[int(p > 0.5)]})
    return pd.DataFrame(rows)


def test_shared_groups_are_found_only_where_a_group_holds_several_images():
    predictions = cnmc_predictions()
    assert gm.has_shared_groups(predictions)
    one_each = predictions.assign(group=predictions["image"])
    assert not gm.has_shared_groups(one_each)
    assert not gm.has_shared_groups(predictions.drop(columns="group"))


def test_group_predictions_are_the_mean_of_the_images_probabilities():
    groups = gm.group_predictions(cnmc_predictions(), NAMES)
    assert groups["group"].tolist() == ["1", "H1", "2", "H2", "3", "H3"]
    np.testing.assert_allclose(groups["prob_all"], [0.7, 0.45, 0.375, 0.65 / 3, 0.825, 0.6])
    np.testing.assert_allclose(groups["prob_hem"] + groups["prob_all"], 1.0)
    assert groups["n_images"].tolist() == [3, 2, 2, 3, 2, 2]
    assert groups["label"].tolist() == [1, 0, 1, 0, 1, 0]
    assert groups["pred_class"].tolist() == ["all", "hem", "hem", "hem", "all", "all"]
    assert groups["fold"].tolist() == [0, 0, 1, 1, 2, 2]
    assert not groups["mixed_labels"].any() and (groups["n_folds"] == 1).all()


def test_a_group_with_several_labels_takes_the_majority_and_says_so():
    predictions = cnmc_predictions()
    predictions.loc[predictions.index[2], "label"] = 0  # patient 1: all, all, hem
    groups = gm.group_predictions(predictions, NAMES).set_index("group")
    assert groups.loc["1", "label"] == 1 and groups.loc["1", "mixed_labels"]
    assert groups["mixed_labels"].sum() == 1
    table = gm.group_metrics_table(predictions, NAMES, n_boot=20)
    assert (table["n_mixed_groups"] == 1).all()


def test_group_metrics_equal_the_hand_computation_beside_the_image_ones():
    table = gm.group_metrics_table(cnmc_predictions(), NAMES, n_boot=300).set_index("metric")
    assert list(table.index) == ["accuracy", "balanced_accuracy", "roc_auc"]
    for name in GROUP:
        assert table.loc[name, "group_level"] == pytest.approx(GROUP[name], abs=1e-12), name
        assert table.loc[name, "image_level"] == pytest.approx(IMAGE[name], abs=1e-12), name
        for level in ("image", "group"):
            low, high = table.loc[name, [f"{level}_ci95_low", f"{level}_ci95_high"]]
            assert 0 <= low <= high <= 1, (name, level)
    assert (table["n_images"] == 14).all() and (table["n_groups"] == 6).all()
    # the image-level interval is the run summary's (stats.metric_intervals)
    summary = stats.metric_intervals(cnmc_predictions(), NAMES, ["accuracy"], n_boot=300)
    assert tuple(table.loc["accuracy", ["image_ci95_low", "image_ci95_high"]]) == \
        summary["accuracy"]
    shown = gm.shown_group_metrics(table.reset_index())
    assert shown.columns.tolist() == ["metric", "per image [95 % CI]", "per group [95 % CI]"]
    assert shown["per group [95 % CI]"].iloc[0].startswith("0.667 [")


def test_per_patient_table():
    table = gm.per_group_table(cnmc_predictions(), NAMES).set_index("group")
    np.testing.assert_allclose(table["image_accuracy"], [2 / 3, 1 / 2, 0, 1, 1, 0])
    assert table["correct"].tolist() == [True, True, False, True, True, False]
    assert table.loc["2", "class_name"] == "all" and table.loc["2", "pred_class"] == "hem"
    assert table.loc["H2", "prob_all"] == pytest.approx(0.65 / 3)
    assert table["n_images"].sum() == 14


def whole_groups(index: np.ndarray, groups: np.ndarray) -> bool:
    """True when a bootstrap sample holds each group's images all equally often: whole
    groups were drawn, never single images out of a group."""
    counts = pd.Series(np.bincount(index, minlength=len(groups)), index=groups)
    return bool((counts.groupby(level=0).nunique() == 1).all())


def many_patients(seed: int = 0) -> pd.DataFrame:
    """Three folds of four ALL and three normal patients, two to six images each (the
    synthetic C-NMC set's shape): strata of class x fold hold several patients."""
    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(3):
        for label, n_patients in ((1, 4), (0, 3)):
            for k in range(n_patients):
                patient = f"{'' if label else 'H'}{fold * 10 + k}"
                for n in range(rng.integers(2, 7)):
                    p = float(np.clip(rng.normal(0.35 + 0.3 * label, 0.2), 0, 1))
                    rows.append({"fold": fold, "image": f"{patient}_{n}.bmp", "label": label,
                                 "group": patient, "prob_hem": 1 - p, "prob_all": p})
    return pd.DataFrame(rows)


def test_every_bootstrap_resamples_whole_patients(monkeypatch):
    predictions = many_patients()
    n_patients = predictions["group"].nunique()
    groups = predictions["group"].to_numpy()
    drawn = []
    original = stats.resampled_indices

    def recording(y, **kwargs):
        for index in original(y, **kwargs):
            drawn.append((len(y), index))
            yield index

    monkeypatch.setattr(stats, "resampled_indices", recording)
    gm.group_metrics_table(predictions, NAMES, n_boot=50)
    image_samples = [index for n, index in drawn if n == len(predictions)]
    group_samples = [index for n, index in drawn if n == n_patients]
    assert len(image_samples) == 50 and len(group_samples) == 50
    assert all(whole_groups(index, groups) for index in image_samples)
    # some replicate leaves a patient out and another draws one twice (it resamples)
    assert any(len(index) != len(predictions) for index in image_samples)
    # the group level draws rows of the per-patient table: one row = one whole patient
    assert all(len(index) == n_patients for index in group_samples)
    assert any(len(set(index.tolist())) < n_patients for index in group_samples)
    # the check can fail: a bootstrap over single images splits patients
    plain = original(predictions["label"].to_numpy(), n_boot=20, seed=1)
    assert not all(whole_groups(index, groups) for index in plain)


def test_synthetic_cnmc_groups_are_patients(tmp_path):
    root = generate("cnmc", tmp_path / "cnmc", folds=2, all_patients=1, hem_patients=1,
                    cells=3, size=16)
    table = read_dataset("cnmc", root)
    assert len(table) == 12
    patient = table["image"].str.extract(r"UID_(H?\d+)_")[0]
    assert (table["group"] == patient).all()
    assert table.groupby("group")["label"].nunique().eq(1).all()  # one label per patient
    # a run's predictions of it: four patients of three images; group level per patient
    rng = np.random.default_rng(0)
    p_all = rng.uniform(0, 1, len(table))
    predictions = pd.DataFrame({
        "fold": table["source_split"].str.replace("fold_", "").astype(int),
        "image": table["image"], "label": table["label"], "class_name": table["class_name"],
        "group": table["group"], "prob_hem": 1 - p_all, "prob_all": p_all})
    assert gm.has_shared_groups(predictions)
    groups = gm.group_predictions(predictions, NAMES)
    assert sorted(groups["group"]) == sorted(patient.unique()) and len(groups) == 4
    assert (groups["n_images"] == 3).all() and not groups["mixed_labels"].any()
    for row in groups.itertuples():
        mine = predictions[predictions["group"] == row.group]
        assert row.prob_all == pytest.approx(mine["prob_all"].mean())
        assert row.fold == mine["fold"].iloc[0]
