"""sweep.py and the knob overrides behind it (issue 17).

Most tests sweep a tiny stand-in script (no TensorFlow; its "predictions" depend on its
knobs) so the sweep's mechanics cost seconds; one test sweeps the real linear CNN, kills the
sweep after its first point and checks the restarted sweep's table equals an uninterrupted
one.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import sweep
from leukocyte_cnn.base import knobs as knob_overrides
from leukocyte_cnn.base.cli import run_main
from leukocyte_cnn.base.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]

FAKE_SCRIPT = '''
"""A stand-in experiment: one fold of predictions whose quality depends on its knobs."""
import argparse
from pathlib import Path

LEARNING_RATE = 0.001  # every knob is read through the resolved settings
BATCH_SIZE = 8         # QUICK changes it
FLIPS = True
OPTIMIZER = "adam"
FILTERS = (4, 8)
QUICK = dict(BATCH_SIZE=4)


def parse_args(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--run-name", default="fake")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fail-if-batch", type=int, default=None)
    return parser.parse_args(argv)


def main(args):
    import sys

    sys.modules.update(dict.fromkeys(["tensorflow", "keras", "sklearn", "skimage"]))  # fast:
    # provenance() then skips their versions
    import numpy as np
    import pandas as pd
    from leukocyte_cnn.base.io import write_csv
    from leukocyte_cnn.base.knobs import resolve_settings
    from leukocyte_cnn.base.run_folder import prepare_run_dir

    settings = resolve_settings(sys.modules[__name__], args)
    run_dir = prepare_run_dir(Path(args.results_dir) / args.run_name,
                              {"knobs": settings.recorded(), "class_names": ["a", "b"]},
                              overrides=settings.overrides())
    with open(Path(args.results_dir) / "calls.log", "a") as log:
        log.write(run_dir.name + "\\n")
    if settings["BATCH_SIZE"] == args.fail_if_batch:
        raise SystemExit(3)
    n = 40
    labels = np.arange(n) % 2
    # wrong on a number of images that grows with the learning rate and the batch size
    wrong = int(round(settings["LEARNING_RATE"] * 1000)) + settings["BATCH_SIZE"] // 4
    prob_b = np.where(labels == 1, 0.9, 0.1)
    prob_b[:wrong] = 1 - prob_b[:wrong]
    table = pd.DataFrame({"fold": 0, "image": [f"im{i:02d}" for i in range(n)],
                          "label": labels, "class_name": np.where(labels, "b", "a"),
                          "group": [f"im{i:02d}" for i in range(n)],
                          "prob_a": 1 - prob_b, "prob_b": prob_b,
                          "pred": (prob_b >= 0.5).astype(int)})
    write_csv(run_dir / "fold_00" / "predictions.csv", table)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The stand-in script, and children that find ``leukocyte_cnn``."""
    path = tmp_path / "fake_experiment.py"
    path.write_text(FAKE_SCRIPT)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return path


def run_sweep(argv: list[str], capsys) -> tuple[int, str, str]:
    """``sweep.py argv`` in this process (its points still run as child processes)."""
    capsys.readouterr()
    try:
        run_main(lambda: sys.exit(sweep.main(*sweep.parse_args(argv))))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def calls(sweep_dir: Path) -> list[str]:
    log = sweep_dir / "calls.log"
    return log.read_text().split() if log.exists() else []


# ----------------------------------------------------------------------------- knob overrides


def test_values_are_parsed_as_the_type_of_the_knob_default():
    assert knob_overrides.parse_text("LR", "1e-3", 0.1) == 0.001
    assert knob_overrides.parse_text("LR", "1", 0.1) == 1.0
    assert isinstance(knob_overrides.parse_text("LR", "1", 0.1), float)
    assert knob_overrides.parse_text("B", "16", 5) == 16
    assert knob_overrides.parse_text("F", "no", True) is False
    assert knob_overrides.parse_text("O", "sgd", "adam") == "sgd"
    assert knob_overrides.parse_text("S", "[96,128]", (120, 160)) == (96, 128)
    for name, text, default in [("B", "1.5", 5), ("B", "x", 5), ("F", "maybe", True),
                                ("LR", "fast", 0.1), ("S", "[1.5,2]", (1, 2)), ("S", "3", (1, 2)),
                                ("B", "true", 5)]:
        with pytest.raises(ValueError, match=name):
            knob_overrides.parse_text(name, text, default)


def test_environment_overrides_are_checked_taken_once_and_leave_the_module_alone(monkeypatch):
    import types

    module = types.ModuleType("demo")
    module.__file__ = "demo.py"
    module.LEARNING_RATE, module.BATCH_SIZE = 0.1, 5
    monkeypatch.setattr(knob_overrides, "_pending", {})
    monkeypatch.setenv(knob_overrides.ENV_VAR, json.dumps({"LEARNING_RATE": 1}))
    assert knob_overrides.take_environment_overrides(module) == {"LEARNING_RATE": 1.0}
    assert module.LEARNING_RATE == 0.1  # the script's block is not edited: the settings are
    assert knob_overrides.resolve_settings(module)["LEARNING_RATE"] == 1.0
    assert knob_overrides.ENV_VAR not in os.environ  # a child process must not re-apply it
    monkeypatch.setenv(knob_overrides.ENV_VAR, json.dumps({"EPOCHS": 3}))
    with pytest.raises(InputError, match="demo.py: unknown knob EPOCHS; its knobs: "
                                         "BATCH_SIZE, LEARNING_RATE"):
        knob_overrides.take_environment_overrides(module)
    monkeypatch.setenv(knob_overrides.ENV_VAR, json.dumps({"BATCH_SIZE": "big"}))
    with pytest.raises(InputError, match="BATCH_SIZE"):
        knob_overrides.take_environment_overrides(module)


def test_an_override_does_what_an_inline_edit_does_and_is_recorded(fake, tmp_path):
    """LEARNING_RATE and BATCH_SIZE (which QUICK would otherwise set) set from outside do what
    editing their lines does: settings.json shows the values, and its overrides say what set
    them."""
    edited = tmp_path / "edited_experiment.py"
    edited.write_text(FAKE_SCRIPT.replace("LEARNING_RATE = 0.001", "LEARNING_RATE = 0.003")
                      .replace("QUICK = dict(BATCH_SIZE=4)", "QUICK = dict(BATCH_SIZE=12)"))
    common = {"cwd": tmp_path, "capture_output": True, "text": True}
    by_edit = subprocess.run([sys.executable, str(edited), "--quick", "--results-dir", "r",
                              "--run-name", "edit"], **common)
    by_env = subprocess.run([sys.executable, str(fake), "--quick", "--results-dir", "r",
                             "--run-name", "env"], **common,
                            env={**os.environ, knob_overrides.ENV_VAR: json.dumps(
                                {"LEARNING_RATE": 0.003, "BATCH_SIZE": 12})})
    assert by_edit.returncode == 0 and by_env.returncode == 0, by_edit.stderr + by_env.stderr
    edit, env = (json.loads((tmp_path / "r" / n / "settings.json").read_text())
                 for n in ("edit", "env"))
    assert env["config"]["knobs"]["LEARNING_RATE"] == 0.003
    assert env["config"]["knobs"]["BATCH_SIZE"] == 12
    assert "QUICK" not in env["config"]["knobs"]  # the quick profile is not a knob
    assert env["config"]["knobs"] == edit["config"]["knobs"]
    assert env["overrides"] == {
        "BATCH_SIZE": {"value": 12, "default": 8, "by": "$LEUKOCYTE_KNOBS"},
        "LEARNING_RATE": {"value": 0.003, "default": 0.001, "by": "$LEUKOCYTE_KNOBS"}}
    assert edit["overrides"] == {"BATCH_SIZE": {"value": 12, "default": 8, "by": "--quick"}}
    read = lambda n: (tmp_path / "r" / n / "fold_00" / "predictions.csv").read_bytes()
    assert read("env") == read("edit")


def test_a_script_refuses_an_unknown_knob_in_one_line(fake, tmp_path):
    result = subprocess.run([sys.executable, str(fake)], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, knob_overrides.ENV_VAR: '{"EPOCH": 3}'})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: fake_experiment.py: unknown knob EPOCH; its knobs: BATCH_SIZE, FILTERS, FLIPS, "
        "LEARNING_RATE, OPTIMIZER"]


# ----------------------------------------------------------------------------- the sweep


def test_unknown_knob_or_bad_value_is_one_line_and_exit_2(fake, tmp_path, capsys):
    out_dir = tmp_path / "s"
    code, _, err = run_sweep([str(fake), "--set", "LEARNING_RATE=0.1", "--set", "EPOCH=1,2",
                              "--sweep-dir", str(out_dir)], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --set EPOCH=1,2: fake_experiment.py has no knob EPOCH; its knobs: BATCH_SIZE, "
        "FILTERS, FLIPS, LEARNING_RATE, OPTIMIZER"]
    code, _, err = run_sweep([str(fake), "--set", "BATCH_SIZE=8,big", "--sweep-dir",
                              str(out_dir)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "BATCH_SIZE=big: expected int like its default 8" in err
    code, _, err = run_sweep([str(fake), "--set", "BATCH_SIZE=8", "--run-name", "x"], capsys)
    assert code == 2 and "--run-name" in err
    assert not out_dir.exists()


def test_grid_runs_each_point_once_and_the_table_ranks_them(fake, tmp_path, capsys):
    out_dir = tmp_path / "s"
    argv = [str(fake), "--set", "LEARNING_RATE=0.002,0.001", "--set", "BATCH_SIZE=8,4",
            "--sweep-dir", str(out_dir), "--quick"]
    code, out, _ = run_sweep(argv, capsys)
    assert code == 0, out
    names = ["LEARNING_RATE=0.002,BATCH_SIZE=8", "LEARNING_RATE=0.002,BATCH_SIZE=4",
             "LEARNING_RATE=0.001,BATCH_SIZE=8", "LEARNING_RATE=0.001,BATCH_SIZE=4"]
    assert calls(out_dir) == names
    for name in names:  # every point's run records its own knobs
        config = json.loads((out_dir / name / "settings.json").read_text())["config"]
        assert name == f"LEARNING_RATE={config['knobs']['LEARNING_RATE']},BATCH_SIZE=" \
                       f"{config['knobs']['BATCH_SIZE']}"
    table = pd.read_csv(out_dir / "sweep.csv")
    # wrong images = 1000 * LR + BATCH_SIZE // 4: the smallest of both is best; 1 and 2 tie
    assert table["point"].tolist() == [3, 1, 2, 0]
    assert table["best"].tolist() == [True, False, False, False]
    assert table["accuracy"].tolist() == pytest.approx([1 - 2 / 40, 1 - 3 / 40, 1 - 3 / 40,
                                                        1 - 4 / 40])
    assert (table["accuracy_low"] <= table["accuracy"]).all()
    assert (table["accuracy"] <= table["accuracy_high"]).all()
    assert (table["accuracy_low"] < table["accuracy_high"]).all()
    text = (out_dir / "sweep.md").read_text()
    assert "| **best** | 3 | 0.001 | 4 |" in text and "0.950 [" in text
    assert (out_dir / "sweep.png").stat().st_size > 0

    code, out, _ = run_sweep(argv, capsys)  # started again: nothing reruns
    assert code == 0 and calls(out_dir) == names
    assert out.count("finished earlier, kept") == 4
    assert pd.read_csv(out_dir / "sweep.csv").equals(table)


def test_points_and_shards_run_subsets_that_add_up(fake, tmp_path, capsys):
    out_dir = tmp_path / "s"
    grid = [str(fake), "--set", "BATCH_SIZE=4,8,12", "--set", "OPTIMIZER=adam,sgd",
            "--sweep-dir", str(out_dir)]
    assert run_sweep([*grid, "--points", "1,4"], capsys)[0] == 0
    assert calls(out_dir) == ["BATCH_SIZE=4,OPTIMIZER=sgd", "BATCH_SIZE=12,OPTIMIZER=adam"]
    assert pd.read_csv(out_dir / "sweep.csv")["point"].tolist() == [1, 4]
    assert run_sweep([*grid, "--shard", "0/2"], capsys)[0] == 0  # points 0, 2 (4 is done)
    assert run_sweep([*grid, "--shard", "1/2"], capsys)[0] == 0  # points 3, 5 (1 is done)
    assert len(calls(out_dir)) == 6 and len(set(calls(out_dir))) == 6
    assert sorted(pd.read_csv(out_dir / "sweep.csv")["point"]) == list(range(6))
    code, _, err = run_sweep([*grid, "--shard", "2/2"], capsys)
    assert code == 2 and "--shard 2/2" in err
    code, _, err = run_sweep([*grid, "--points", "6"], capsys)
    assert code == 2 and "--points 6" in err


def test_random_draws_are_seeded(fake, tmp_path, capsys):
    grid = [str(fake), "--set", "BATCH_SIZE=4,8,12,16", "--set", "LEARNING_RATE=0.001,0.002",
            "--random", "3", "--list"]
    first = run_sweep([*grid, "--sweep-dir", str(tmp_path / "a")], capsys)[1]
    again = run_sweep([*grid, "--sweep-dir", str(tmp_path / "a")], capsys)[1]
    other = run_sweep([*grid, "--sweep-dir", str(tmp_path / "a"), "--draw-seed", "5"], capsys)[1]
    assert first == again and len(first.strip().splitlines()) == 3
    assert first != other


def test_a_failing_point_is_reported_and_the_others_still_run(fake, tmp_path, capsys):
    out_dir = tmp_path / "s"
    code, _, err = run_sweep([str(fake), "--set", "BATCH_SIZE=4,8,12", "--sweep-dir",
                              str(out_dir), "--fail-if-batch", "8"], capsys)
    assert code == 1 and "points 1 failed" in err
    assert pd.read_csv(out_dir / "sweep.csv")["point"].tolist() == [0, 2]


def test_a_sweep_folder_of_other_script_options_is_refused(fake, tmp_path, capsys):
    out_dir = tmp_path / "s"
    assert run_sweep([str(fake), "--set", "BATCH_SIZE=4", "--sweep-dir", str(out_dir)],
                     capsys)[0] == 0
    code, _, err = run_sweep([str(fake), "--set", "BATCH_SIZE=4", "--sweep-dir", str(out_dir),
                              "--quick"], capsys)
    assert code == 2 and "use another --sweep-dir" in err


# ----------------------------------------------------------------------------- the linear CNN


TINY = ["--image-size", "24", "--epochs", "2", "--k", "3", "--folds", "0"]


def _sweep_process(split_csv: Path, sweep_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1",
           "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [sys.executable, "sweep.py", "linear_cnn_binary_lpocv.py",
         "--set", "LEARNING_RATE=0.001,0.01", "--set", "BATCH_SIZE=8,16",
         "--sweep-dir", str(sweep_dir), "--dataset", "synthetic_all_idb2", "--split",
         str(split_csv), "--quick", *TINY],
        cwd=REPO_ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        start_new_session=True)


@pytest.mark.slow  # ~80 s on 2 idle cores: nine tiny trainings, each a fresh TensorFlow process
@pytest.mark.reliability
def test_linear_cnn_sweep_killed_after_its_first_point_resumes_to_the_same_table(tmp_path):
    """The 2×2 LEARNING_RATE × BATCH_SIZE acceptance sweep on the synthetic binary set:
    killed (SIGKILL, whole process group) once its first point finished, started again, its
    sweep.csv equals an uninterrupted sweep's."""
    from test_helmholtz import make_split

    split_csv = make_split(tmp_path / "data", tmp_path, "synthetic_all_idb2")
    start = time.perf_counter()
    whole = _sweep_process(split_csv, tmp_path / "whole", tmp_path / "whole.log")
    killed = _sweep_process(split_csv, tmp_path / "killed", tmp_path / "killed.log")
    first = tmp_path / "killed" / "LEARNING_RATE=0.001,BATCH_SIZE=8" / "sweep_point.json"
    while not first.exists():
        assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.perf_counter() - start < 600, "the first point never finished"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "sweep.csv").exists()
    restarted = _sweep_process(split_csv, tmp_path / "killed", tmp_path / "restarted.log")
    for process, log in ((whole, "whole.log"), (restarted, "restarted.log")):
        assert process.wait(timeout=600) == 0, (tmp_path / log).read_text()[-3000:]
    log = (tmp_path / "restarted.log").read_text()
    assert "point 0 (1/4) LEARNING_RATE=0.001,BATCH_SIZE=8: finished earlier, kept" in log
    print(f"two 2x2 sweeps and a restart: {time.perf_counter() - start:.0f} s")
    resumed = (tmp_path / "killed" / "sweep.csv").read_bytes()
    assert resumed == (tmp_path / "whole" / "sweep.csv").read_bytes()
    table = pd.read_csv(tmp_path / "whole" / "sweep.csv")
    assert sorted(table["point"]) == [0, 1, 2, 3] and table["best"].sum() == 1
    for row in table.itertuples():  # each point trained with its own knobs
        knobs = json.loads((tmp_path / "whole" / row.run / "settings.json").read_text())[
            "config"]["knobs"]
        assert (knobs["LEARNING_RATE"], knobs["BATCH_SIZE"]) == (row.LEARNING_RATE,
                                                                 row.BATCH_SIZE)


EXPERIMENT_SCRIPTS = ["linear_cnn_binary_lpocv", "linear_cnn_multiclass_lpocv", "linear_cnn_da",
                      "resnext_from_scratch", "resnext_transfer_learning", "elu_cnn_optimizers",
                      "resnet50_training_depth", "scaling_masks_cnn_fcn", "unet_masks",
                      "all_idb1_paper_cnn", "cnmc_transfer"]


@pytest.mark.parametrize("name", EXPERIMENT_SCRIPTS)
def test_no_knob_is_computed_from_another_at_import(name):
    """Knobs are resolved after import: a constant computed at import from another knob
    (``MODELS = {...: DROPOUT}``) would keep the block's value when an override changes the
    other, silently."""
    import ast

    tree = ast.parse((REPO_ROOT / f"{name}.py").read_text())
    derived = [node.targets[0].id for node in tree.body
               if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
               and node.targets[0].id.isupper()
               and any(isinstance(n, ast.Name) and n.id.isupper() for n in ast.walk(node.value))]
    assert derived == []


def test_a_study_point_gets_one_row_per_setting_pooled_over_its_trials(tmp_path):
    """A study script's point holds <setting>/trial_NN runs: one row per setting."""
    import numpy as np

    from leukocyte_cnn.base.io import write_csv, write_json
    from leukocyte_cnn.runs.sweeps import POINT_DONE, collect_results, point_name

    point = {"COLOR_MODE": "grayscale"}
    point_dir = tmp_path / point_name(point)
    write_json(point_dir / POINT_DONE, {"knobs": point, "script_args": []})
    for setting, trials, right in (("adam", 2, 9), ("sgd", 1, 6)):
        for trial in range(trials):
            run = point_dir / setting / f"trial_{trial:02d}"
            write_json(run / "settings.json", {"config": {"class_names": ["a", "b"]}})
            labels = np.arange(10) % 2
            prob_b = np.where(np.arange(10) < right, labels, 1 - labels).astype(float)
            write_csv(run / "fold_00" / "predictions.csv", pd.DataFrame({
                "fold": 0, "image": [f"im{i}" for i in range(10)], "label": labels,
                "group": [f"im{i}" for i in range(10)], "prob_a": 1 - prob_b, "prob_b": prob_b}))
    table = collect_results(tmp_path, [point], [])
    assert table["setting"].tolist() == ["adam", "sgd"]
    assert table["n_images"].tolist() == [20, 10]
    assert table["accuracy"].tolist() == pytest.approx([0.9, 0.6])


def test_a_sweep_over_the_multiclass_split_protocol_runs_both_points(tmp_path, capsys):
    """``sweep.py linear_cnn_multiclass_lpocv.py --set LEAVE_OUT=5,10 --quick`` (the split
    protocol used to live in linear_cnn_da.py, and the sweep refused LEAVE_OUT as unknown): two
    runs, each on its own leave-P-out split, P test images in its fold, P recorded."""
    sweep_dir = tmp_path / "sweep"
    code, out, err = run_sweep([
        str(REPO_ROOT / "linear_cnn_multiclass_lpocv.py"), "--set", "LEAVE_OUT=5,10",
        "--sweep-dir", str(sweep_dir), "--quick", "--data-root", str(tmp_path / "data"),
        "--image-size", "32", "--epochs", "1", "--target", "4", "--folds", "0",
        "--augmented-dir", str(tmp_path / "augmented"), "--quiet"], capsys)
    assert code == 0, err
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert sorted(table["LEAVE_OUT"]) == [5, 10]
    splits = set()
    for row in table.itertuples():
        record = json.loads((sweep_dir / row.run / "settings.json").read_text())
        assert record["config"]["knobs"]["LEAVE_OUT"] == row.LEAVE_OUT
        assert record["config"]["split_method"] == "lpo"
        assert record["overrides"]["LEAVE_OUT"]["by"] == "$LEUKOCYTE_KNOBS"
        predictions = pd.read_csv(sweep_dir / row.run / "fold_00" / "predictions.csv")
        assert len(predictions) == row.LEAVE_OUT  # P test images in the fold
        splits.add(record["config"]["split_file"])
    assert len(splits) == 2 and any("_p10_" in s for s in splits)
