"""The CV loop's bookkeeping: fold selection, run folders, summaries from fold files."""
import json

import numpy as np
import pandas as pd
import pytest

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.knobs import script_knobs
from leukocyte_cnn.base.run_folder import fold_dir, load_predictions, prepare_run_dir
from leukocyte_cnn.reporting.summary import markdown_table, summarize_run
from leukocyte_cnn.runs.cross_validation import parse_fold_list


def test_parse_fold_list():
    assert parse_fold_list(None, [2, 0, 1]) == [0, 1, 2]
    assert parse_fold_list("3,4", range(6)) == [3, 4]
    assert parse_fold_list("0-2,5", range(6)) == [0, 1, 2, 5]
    with pytest.raises(InputError, match="folds \\[9\\] not in the split"):
        parse_fold_list("9", range(6))
    with pytest.raises(InputError, match="expected numbers"):
        parse_fold_list("a", range(6))


def test_run_folder_refuses_other_settings(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, {"seed": 0, "knobs": {"EPOCHS": 5}})
    prepare_run_dir(run, {"seed": 0, "knobs": {"EPOCHS": 5}})  # same config: resume is fine
    with pytest.raises(InputError, match="different settings \\(knob EPOCHS\\)"):
        prepare_run_dir(run, {"seed": 0, "knobs": {"EPOCHS": 6}})
    prepare_run_dir(run, {"seed": 0, "knobs": {"EPOCHS": 5, "SEEDS": 4}},
                    resumable=("SEEDS",))  # more trials extend a study: recorded, not refused
    assert json.loads((run / "settings.json").read_text())["config"]["knobs"]["SEEDS"] == 4
    settings = json.loads((run / "settings.json").read_text())
    assert settings["provenance"]["git"]["commit"]
    assert settings["provenance"]["versions"]["python"]


def test_knobs_are_the_public_upper_case_values_but_the_quick_profile():
    assert script_knobs({"EPOCHS": 3, "lower": 1, "FN": print, "SIZE": (64, 64), "_PRIVATE": 2,
                         "QUICK": {"EPOCHS": 1}}) == {"EPOCHS": 3, "SIZE": (64, 64)}


def _write_fold(run, fold, labels, p_positive):
    d = fold_dir(run, fold)
    d.mkdir(parents=True)
    prob = np.asarray(p_positive, dtype=float)
    table = pd.DataFrame({"fold": fold, "image": [f"f{fold}_{i}" for i in range(len(labels))],
                          "label": labels, "class_name": [["other", "blast"][y] for y in labels],
                          "group": "g",
                          "prob_other": 1 - prob, "prob_blast": prob})
    table["pred"] = (prob >= 0.5).astype(int)
    table["pred_class"] = [["other", "blast"][y] for y in table["pred"]]
    table.to_csv(d / "predictions.csv", index=False)
    pd.DataFrame({"epoch": [1, 2], "loss": [0.7, 0.5], "val_loss": [0.72, 0.6],
                  "accuracy": [0.5, 0.7], "val_accuracy": [0.5, 0.6]}).to_csv(
        d / "epochs.csv", index=False)


def test_summary_is_rebuilt_from_fold_files(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, {"class_names": ["other", "blast"], "n_folds": 3, "seed": 0,
                          "dataset": "x", "title": "t"})
    # fold 0: 3 of 4 right; fold 1: 4 of 4 right -> pooled accuracy 7/8
    _write_fold(run, 0, [1, 1, 0, 0], [0.9, 0.4, 0.2, 0.1])
    _write_fold(run, 1, [1, 0, 1, 0], [0.8, 0.3, 0.7, 0.2])
    summary = summarize_run(run, quiet=True).set_index("metric")
    assert summary.loc["accuracy", "pooled"] == pytest.approx(7 / 8)
    assert summary.loc["accuracy", "fold_mean"] == pytest.approx((0.75 + 1.0) / 2)
    assert summary.loc["accuracy", "fold_std"] == pytest.approx(np.std([0.75, 1.0], ddof=1))
    text = (run / "summary.md").read_text()
    assert "folds finished: 2 of 3" in text
    for figure in ("confusion_matrix.png", "roc.png", "learning_curves.png"):
        assert (run / figure).stat().st_size > 1000
    assert len(load_predictions(run)) == 8


def test_summary_without_folds_is_one_line_error(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, {"class_names": ["a", "b"]})
    with pytest.raises(InputError, match="no finished folds"):
        summarize_run(run, quiet=True)


def test_markdown_table_formats_floats_and_nan():
    text = markdown_table(pd.DataFrame({"m": ["acc"], "v": [0.91234], "w": [float("nan")]}))
    assert text.splitlines()[2] == "| acc | 0.912 | n/a |"
