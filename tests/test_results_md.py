"""RESULTS.md (issue 18): every table has its command and protocol, and tables are regenerated
from run folders, never typed by hand."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from leukocyte_cnn.reporting.results_md import check_tables, regenerate

REPO = Path(__file__).resolve().parents[1]


def test_every_table_in_results_md_has_its_command_and_protocol():
    text = (REPO / "RESULTS.md").read_text(encoding="utf-8")
    assert check_tables(text) == []


def test_a_table_without_command_or_protocol_is_caught():
    text = "## A study\n\nSome words.\n\n| metric | value |\n|---|---|\n| accuracy | 0.9 |\n"
    problems = check_tables(text)
    assert any("no command" in p for p in problems)
    assert any("no 'Protocol:'" in p for p in problems)
    documented = ("## A study\n\nProtocol: 5-fold.\n\n```bash\npython run.py --k 5\n```\n\n"
                  "| metric | value |\n|---|---|\n| accuracy | 0.9 |\n")
    assert check_tables(documented) == []


def _fake_run(run: Path) -> None:
    """A finished two-fold run folder as the training scripts leave it (no training)."""
    (run / "fold_00").mkdir(parents=True)
    (run / "fold_01").mkdir()
    settings = {"config": {"leaky": False, "title": "demo"},
                "provenance": {"git": {"commit": "a" * 40, "dirty": False},
                               "machine": {"cpus": 2, "platform": "Linux-x86_64"}}}
    (run / "settings.json").write_text(json.dumps(settings))
    for k, wall in ((0, 100.0), (1, 50.0)):
        (run / f"fold_{k:02d}" / "timing.json").write_text(json.dumps(
            {"fold": k, "fold_wall_seconds": wall, "fold_cpu_seconds": 2 * wall,
             "provenance": {"git": {"commit": "b" * 40}}}))
    pd.DataFrame({"metric": ["accuracy", "roc_auc", "log_loss"], "pooled": [0.9, 0.95, 0.3],
                  "ci95_low": [0.85, 0.91, 0.2], "ci95_high": [0.94, 0.98, 0.4],
                  "fold_mean": [0.9, 0.95, 0.3], "fold_std": [0.02, 0.01, 0.1],
                  "n_folds": [2, 2, 2]}).to_csv(run / "summary.csv", index=False)


def test_regenerate_fills_blocks_from_run_folders_and_keeps_absent_ones(tmp_path):
    _fake_run(tmp_path / "results" / "demo")
    md = tmp_path / "RESULTS.md"
    md.write_text("## Demo\n\n<!-- results: results/demo -->\nold table\n<!-- /results -->\n\n"
                  "## Absent\n\n<!-- results: results/nowhere -->\nkept as it is\n"
                  "<!-- /results -->\n")
    notes = regenerate(md, base=tmp_path)
    text = md.read_text()
    assert "old table" not in text and "kept as it is" in text
    assert "| accuracy | 0.900 [0.850, 0.940] | 0.900 ± 0.020 | 2 |" in text
    assert "log_loss" not in text  # only the headline metrics
    assert "commit bbbbbbbbbb · 2 trained folds · wall 2.5 min, CPU 5.0 min" in text
    assert notes[0].startswith("regenerated") and notes[1].startswith("kept")


def test_a_learning_curve_block_shows_the_curves_own_table_and_what_is_missing(tmp_path):
    """A learning-curve run's block is its learning_curve.md table (mean ± std per size and
    arm), and a curve stopped part-way says which sizes are not shown."""
    from leukocyte_cnn.reporting.results_md import run_table

    run = tmp_path / "curve"
    run.mkdir()
    (run / "settings.json").write_text(json.dumps({"config": {}, "provenance": {
        "git": {"commit": "abc"}, "machine": {"cpus": 2, "platform": "x"}}}))
    (run / "learning_curve.csv").write_text("size,mode\n10,scratch\n")
    (run / "learning_curve.md").write_text(
        "# curve\n\nTest folds of x.csv; mean. Not finished, so not shown: 20 training images "
        "per class.\n\n| size | mode | ROC-AUC |\n|---|---|---|\n"
        "| 10 | scratch | 0.918 ± 0.059 |\n")
    text = run_table(run)
    assert text.startswith("| size | mode | ROC-AUC |\n|---|---|---|\n"
                           "| 10 | scratch | 0.918 ± 0.059 |")
    assert "Not finished, so not shown: 20 training images per class." in text


def test_a_source_checkpoint_block_shows_its_held_out_accuracy(tmp_path):
    checkpoints = tmp_path / "results" / "checkpoints"
    training = checkpoints / "src_training"
    training.mkdir(parents=True)
    (checkpoints / "src.keras").write_bytes(b"model")
    (checkpoints / "src.json").write_text(json.dumps({
        "source_dataset": "pbc", "class_names": list("abcdefgh"), "n_train": 90, "n_val": 10,
        "n_held_out": 25, "held_out_accuracy": 0.96, "held_out_accuracy_ci": [0.92, 0.99],
        "architecture": {"variant": "resnext14", "image_size": 48},
        "provenance": {"git": {"commit": "c" * 40}, "machine": {"cpus": 2, "platform": "L"}}}))
    pd.DataFrame({"epoch": [1, 2, 3], "val_loss": [0.5, 0.3, 0.4]}).to_csv(
        training / "epochs.csv", index=False)
    (training / "timing.json").write_text(json.dumps({"fold_wall_seconds": 600}))
    md = tmp_path / "RESULTS.md"
    md.write_text("<!-- results: results/checkpoints/src.keras -->\nold\n<!-- /results -->\n"
                  "<!-- results: results/checkpoints/absent.keras -->\nkept\n<!-- /results -->\n")
    notes = regenerate(md, base=tmp_path)
    text = md.read_text()
    assert "| src | pbc | 8 | resnext14 48 px | 90 / 10 / 25 | 3 (2) | 0.960 [0.920, 0.990] |" \
        in text
    assert "commit cccccccccc · wall 10.0 min · 2 CPUs (L)" in text and "kept" in text
    assert notes[1].startswith("kept (checkpoint not here)")
