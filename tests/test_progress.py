"""What a run prints (leukocyte_cnn.base.progress): one line per epoch with loss, validation loss
and accuracy, seconds per epoch and ETA; a progress bar only on terminals; nothing from
TensorFlow's C++/absl logging, no cuInit error, no retracing warning; ``--quiet`` leaves the
per-fold lines. Two tiny runs of the binary script (the main job's training step), one as a
real process started as a new user would, one --quiet; compare_runs.py compares their seeds."""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from test_helmholtz import make_split

import compare_runs
import linear_cnn_binary_lpocv
from leukocyte_cnn.base import progress

EPOCH_LINE = re.compile(r"^fold 0 \(1/1\) epoch (\d+)/2: loss \d+\.\d{3} acc \d\.\d{3} \| "
                        r"val loss \d+\.\d{3} val acc \d\.\d{3} \| \d+\.\d s/epoch"
                        r"( \| ETA fold ≤ \d+ s)?$")
TF_NOISE = re.compile(r"^[IWEF]\d{4} |absl::|cuInit|cuda_|retracing|oneDNN", re.M)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The binary linear CNN, fold 0 only, 32 px, 2 epochs: seed 0 as its own process (a new
    user's shell, so TensorFlow starts as it would for them), seed 1 with --quiet in-process
    (its stdout captured)."""
    base = tmp_path_factory.mktemp("progress")
    split = make_split(base / "data", base, "synthetic_all_idb2")
    argv = ["--dataset", "synthetic_all_idb2", "--data-root", str(base / "data"),
            "--split", str(split), "--results-dir", str(base / "results"),
            "--image-size", "32", "--epochs", "2", "--folds", "0"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "LEUKOCYTE_VERBOSE")}
    loud = subprocess.run([sys.executable, str(REPO_ROOT / "linear_cnn_binary_lpocv.py"),
                           *argv, "--run-name", "loud", "--seed", "0"],
                          cwd=base, env=env, capture_output=True, text=True, timeout=600)
    assert loud.returncode == 0, loud.stderr[-3000:]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            linear_cnn_binary_lpocv.main(linear_cnn_binary_lpocv.parse_args(
                [*argv, "--run-name", "quiet", "--seed", "1", "--quiet"]))
    finally:
        progress.set_console(quiet=False)
    return base / "results", {"loud": loud, "quiet_stdout": out.getvalue()}


def test_a_run_prints_one_line_per_epoch_with_eta_and_no_tensorflow_chatter(two_runs):
    _, outputs = two_runs
    out, err = outputs["loud"].stdout, outputs["loud"].stderr
    lines = out.splitlines()
    epochs = [m for m in map(EPOCH_LINE.match, lines) if m]
    assert [int(m.group(1)) for m in epochs] == [1, 2], out
    assert epochs[0].group(2), "the first epoch line gives the ETA of the fold"
    # the first lines say what will run: data, split, folds, device
    assert any(line.startswith("data: synthetic_all_idb2") for line in lines)
    assert any(line.startswith("split: ") and "kfold" in line for line in lines)
    assert any(line.startswith("device: ") for line in lines)
    assert any(re.match(r"fold 0 \(1/1\): train \d+ val \d+ test \d+ \| test accuracy", line)
               for line in lines)
    assert "\r" not in out  # into a file: plain lines, no progress bar
    # stderr: no TensorFlow C++/absl lines, no cuInit error, no retracing warning; the
    # blocks-dropped notice at most once
    assert not TF_NOISE.search(err), err
    assert err.count("conv blocks fit") <= 1, err


def test_quiet_keeps_the_per_fold_lines_only(two_runs):
    _, outputs = two_runs
    out = outputs["quiet_stdout"]
    assert "epoch" not in out and "device:" not in out and "will train" not in out
    assert re.search(r"^fold 0 \(1/1\): train \d+ val \d+ test \d+ \| test accuracy \d\.\d{3}",
                     out, re.M)


def test_compare_runs_on_two_seeds_writes_one_table_and_one_figure(two_runs, tmp_path):
    results, _ = two_runs
    numbers = compare_runs.main(compare_runs.parse_args(
        [str(results / "loud"), str(results / "quiet"), "--out", str(tmp_path / "cmp")]))
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == [
        "comparison.csv", "comparison.md", "comparison.png", "report.html"]
    assert len(numbers) == 2 and numbers["best"].sum() == 1
    assert numbers.loc[~numbers["best"], "accuracy_test"].item() == "exact McNemar"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream_type", [io.StringIO, _Terminal])
def test_epoch_callback_draws_a_bar_on_terminals_only(stream_type, monkeypatch):
    import keras

    monkeypatch.setattr(progress, "BAR_INTERVAL", 0.0)
    progress.set_console(quiet=False)
    stream = stream_type()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).random((40, 3)).astype("float32")
    y = (x[:, 0] > 0.5).astype("float32")
    with progress.tracking(2), progress.unit("fold 7 (1/2)"):
        model.fit(x, y, validation_data=(x, y), batch_size=8, epochs=2, verbose=0,
                  callbacks=[progress.epoch_callback(2, stream=stream)])
    text = stream.getvalue()
    lines = [line.split("\r")[-1].replace("\033[K", "") for line in text.split("\n") if line]
    assert [line.split(":")[0] for line in lines] == ["fold 7 (1/2) epoch 1/2",
                                                      "fold 7 (1/2) epoch 2/2"]
    assert "ETA fold ≤" in lines[0] and "run ≤" in lines[0]  # one more fold planned
    if stream_type is _Terminal:
        assert "5/5 [" in text and "\r" in text
    else:
        assert "\r" not in text and "[" not in text


def test_tracker_eta_counts_remaining_epochs_and_folds():
    tracker = progress.Tracker(planned=3)
    tracker.record(1, 10.0)   # the first epoch also traces graphs: kept apart
    tracker.record(2, 2.0)
    tracker.record(3, 2.0)
    fold_left, run_left = tracker.eta(3, 10)
    assert fold_left == pytest.approx(7 * 2.0)
    assert run_left == pytest.approx(14 + 2 * (10.0 + 9 * 2.0))  # 2 more folds of 10 epochs
    tracker.done, tracker.epochs_of_done = 1, [5]  # folds stop early: 5 epochs on average
    assert tracker.eta(3, 10)[1] == pytest.approx(14 + 1 * (10.0 + 4 * 2.0))
    assert progress.format_duration(42) == "42 s"
    assert progress.format_duration(185) == "3 min 05 s"
    assert progress.format_duration(7620) == "2 h 07 min"


def test_counter_speaks_for_long_steps_and_keeps_quiet_when_asked(capsys, monkeypatch):
    progress.set_console(quiet=False)
    list(progress.counted(range(5), "hashing images", interval=0.0))
    out = capsys.readouterr().out
    assert "hashing images: 1/5 (20%)" in out and "ETA" in out
    assert "hashing images: 5/5 (100%)" in out
    progress.set_console(quiet=True)
    try:
        list(progress.counted(range(5), "hashing images", interval=0.0))
        assert capsys.readouterr().out == ""
    finally:
        progress.set_console(quiet=False)


def test_filtered_stderr_drops_absl_lines_and_passes_the_rest(capfd):
    with progress.filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")
        os.write(2, b"I0000 00:00:1796092413.654457    4840 cudart_stub.cc:31] Could not find "
                    b"cuda drivers on your machine, GPU will not be used.\n")
        os.write(2, b"a line of our own\n")
    err = capfd.readouterr().err
    assert err == "a line of our own\n"


def test_verbose_switch_acts_while_parsing_before_tensorflow_is_imported(monkeypatch):
    import argparse

    monkeypatch.setitem(progress._console, "verbose", False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.delenv("LEUKOCYTE_VERBOSE", raising=False)
    parser = progress.add_console_arguments(argparse.ArgumentParser())
    args = parser.parse_args([])
    assert (args.quiet, args.verbose) == (False, False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    args = parser.parse_args(["--verbose", "--quiet"])
    assert (args.quiet, args.verbose) == (True, True)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"  # set at parse time, before any import
    assert os.environ["LEUKOCYTE_VERBOSE"] == "1"     # and for the steps it starts
    monkeypatch.setitem(progress._console, "verbose", False)
    monkeypatch.delenv("LEUKOCYTE_VERBOSE")
    progress.set_console(verbose=False)  # TensorFlow's Python logger back to errors only
