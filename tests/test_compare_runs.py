"""compare_runs.py with what issue 24 added: the calibration error with intervals and a paired
test, and, where test images share groups (patients), the group-level accuracy compared on the
same groups."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

import compare_runs

CLASSES = ["hem", "all"]


def _run(folder, prob_all: np.ndarray, labels: np.ndarray, groups: list[str]):
    (folder / "fold_00").mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps(
        {"config": {"class_names": CLASSES, "dataset_hash": "same images"}}))
    pd.DataFrame({"fold": 0, "image": [f"img{i:02d}.bmp" for i in range(len(labels))],
                  "label": labels, "class_name": [CLASSES[k] for k in labels],
                  "group": groups, "prob_hem": 1 - prob_all, "prob_all": prob_all,
                  "pred": (prob_all > 0.5).astype(int),
                  "pred_class": [CLASSES[k] for k in (prob_all > 0.5).astype(int)]}).to_csv(
        folder / "fold_00" / "predictions.csv", index=False)


def test_compare_runs_adds_the_calibration_error_and_the_group_level_accuracy(tmp_path):
    rng = np.random.default_rng(0)
    patients = [f"P{p}" for p in range(12) for _ in range(5)]  # 12 patients, 5 cells each
    labels = np.array([p % 2 for p in range(12) for _ in range(5)])
    # A: right on most cells, with honest probabilities; B: right on fewer, over-confident.
    right_a = rng.random(60) < 0.85
    right_b = rng.random(60) < 0.6
    prob_a = np.where(right_a == (labels == 1), 0.8, 0.2)
    prob_b = np.where(right_b == (labels == 1), 0.999, 0.001)
    _run(tmp_path / "a", prob_a, labels, patients)
    _run(tmp_path / "b", prob_b, labels, patients)
    out = tmp_path / "cmp"
    numbers = compare_runs.main(compare_runs.parse_args(
        [str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]))
    from leukocyte_cnn.reporting.calibration import expected_calibration_error

    stacked = {"a": np.stack([1 - prob_a, prob_a], 1), "b": np.stack([1 - prob_b, prob_b], 1)}
    for name, prob in stacked.items():
        row = numbers[numbers["name"] == name].iloc[0]
        assert row["ece"] == expected_calibration_error(labels, prob)
        assert row["ece_ci_low"] <= row["ece"] <= row["ece_ci_high"]
    worse = numbers[~numbers["best"]].iloc[0]
    assert worse["name"] == "b" and worse["ece_test"] == "paired bootstrap"
    assert worse["ece_diff"] > 0.1 and worse["ece_p"] < 0.05  # b is far worse calibrated

    groups = pd.read_csv(out / "comparison_groups.csv")
    assert list(groups["n_images"]) == [12, 12]  # one row per patient
    for name, prob in (("a", prob_a), ("b", prob_b)):
        mean = pd.Series(prob).groupby(patients).mean()
        truth = pd.Series(labels).groupby(patients).first()
        expected = float(((mean > 0.5).astype(int) == truth).mean())
        assert groups.loc[groups["name"] == name, "accuracy"].item() == expected
    assert groups.loc[~groups["best"], "accuracy_test"].item() == "exact McNemar"
    text = (out / "comparison.md").read_text()
    assert "## Per group" in text and "ECE" in text
    assert "Per group" in (out / "report.html").read_text()
