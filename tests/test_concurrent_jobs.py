"""Fold jobs that start at the same moment on a fresh checkout (issue 25, part 3).

``docs/gpu_and_cluster.md`` runs one array task per fold, all writing into one run folder, and
each task resolves the default synthetic set, split, balanced-fold folder and run folder itself.
Here three processes (``--folds 0``, ``--folds 1``, ``--folds 2``) are launched before any is
waited for, in a fresh working folder (empty ``data/`` and ``results/``), as a SLURM array
starts them. Every job must succeed; each shared artifact must be made by one job and reused
by the others (the lock in ``leukocyte_cnn.base.locks``); and the run's summary must pool all
three folds, built from finished figures and tables only (no job may read another job's
temporary file).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FOLDS = ("0", "1", "2")


def _start_fold_jobs(script: str, cwd: Path, options: list[str]) -> list[tuple]:
    """One process per fold, all started before any is waited for; (folds, process, log)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg",
           "CUDA_VISIBLE_DEVICES": ""}
    env.pop("LEUKOCYTE_KNOBS", None)
    jobs = []
    for folds in FOLDS:
        log = open(cwd / f"job_{folds}.log", "w+", encoding="utf-8")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, str(REPO_ROOT / script), "--quick",
                                 "--folds", folds, *options], cwd=cwd, env=env,
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        jobs.append((folds, proc, log))
    return jobs


def _wait(jobs: list[tuple], timeout: float = 900) -> dict[str, tuple[int, str]]:
    deadline = time.monotonic() + timeout
    results = {}
    for folds, proc, log in jobs:
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.seek(0)
        results[folds] = (code, log.read())
        log.close()
    return results


def _count(results: dict, text: str) -> int:
    """How many jobs' logs hold ``text``."""
    return sum(text in output for _, output in results.values())


def _check_concurrent_fold_jobs(cwd: Path, script: str, run_name: str, options: list[str]):
    """Start the three fold jobs at once in ``cwd`` and check every shared artifact."""
    results = _wait(_start_fold_jobs(script, cwd, options))
    logs = "\n".join(f"===== --folds {f} (exit {code})\n{out[-4000:]}"
                     for f, (code, out) in results.items())
    problems = [f"--folds {f} exited {code}" for f, (code, _) in results.items() if code != 0]

    # The synthetic set and the split: made by one job, reused by the others.
    made_set = _count(results, "generated synthetic multiclass set")
    if made_set != 1:
        problems.append(f"{made_set} jobs generated the synthetic set (expected 1)")
    made_split = _count(results, "wrote data/splits/")
    if made_split != 1:
        problems.append(f"{made_split} jobs wrote the split file (expected 1)")
    reused_split = _count(results, "already made from the same images and settings")
    if reused_split != len(FOLDS) - 1:
        problems.append(f"{reused_split} jobs reused the split (expected {len(FOLDS) - 1})")
    made_settings = _count(results, "settings.json: written")
    if made_settings != 1:
        problems.append(f"{made_settings} jobs wrote the run's settings.json (expected 1)")

    splits = sorted((cwd / "data" / "splits").glob("*.csv"))
    balanced = sorted(p for p in (cwd / "data" / "augmented").glob("*_balanced_*") if p.is_dir())
    run_dir = cwd / "results" / run_name
    if len(splits) != 1 or len(balanced) != 1:
        problems.append(f"split files {[p.name for p in splits]}, balanced folders "
                        f"{[p.name for p in balanced]} (expected one each)")
    leftovers = [p.relative_to(cwd).as_posix() for p in cwd.rglob("*")
                 if ".tmp" in p.name or ".write-test-" in p.name]
    if leftovers:
        problems.append(f"temporary files left behind: {leftovers[:5]}")
    assert not problems, "; ".join(problems) + "\n" + logs
    try:
        _check_records_and_summary(cwd, run_dir, splits[0], balanced[0])
    except AssertionError as failed:
        raise AssertionError(f"{failed}\n{logs}") from None
    return results


def _check_records_and_summary(cwd: Path, run_dir: Path, split_csv: Path, balanced: Path):
    """Every fold used the very same split file and balanced folder; the summary the last job
    left pools all three folds, and its report is whole."""
    from leukocyte_cnn.base.artifacts import fingerprint
    from leukocyte_cnn.base.io import file_sha256

    settings = json.loads((run_dir / "settings.json").read_text())
    assert settings["config"]["split_sha256"] == file_sha256(split_csv)
    sidecar = json.loads((balanced / "fingerprint.json").read_text())
    assert sidecar["fingerprint"] == fingerprint(sidecar["inputs"])
    split_json = json.loads(split_csv.with_suffix(".json").read_text())
    assert split_json["fingerprint"]["fingerprint"] == fingerprint(
        split_json["fingerprint"]["inputs"])
    for folds in FOLDS:
        timing = json.loads((run_dir / f"fold_{int(folds):02d}" / "timing.json").read_text())
        assert timing["split_sha256"] == file_sha256(split_csv), folds
        assert timing["artifacts"]["balanced_folds"]["fingerprint"] == sidecar["fingerprint"]
        assert timing["artifacts"]["balanced_folds"]["path"] == str(
            balanced.relative_to(cwd)), folds

    per_fold = pd.read_csv(run_dir / "per_fold.csv")
    assert sorted(per_fold["fold"]) == [0, 1, 2]
    summary = pd.read_csv(run_dir / "summary.csv")
    assert set(summary["n_folds"]) <= {3} and (summary["n_folds"] == 3).any()
    predictions = pd.concat(pd.read_csv(p) for p in sorted(run_dir.glob("fold_*/predictions.csv")))
    assert sorted(predictions["fold"].unique()) == [0, 1, 2]
    assert "folds finished: 3 of" in (run_dir / "summary.md").read_text()
    report = (run_dir / "report.html").read_text()
    # confusion matrix, ROC, learning curves, reliability diagram, errors gallery
    assert report.count("data:image/png;base64,") == 5


_HOLD_LOCK = """
import sys, time
sys.path.insert(0, {root!r})
from leukocyte_cnn.base.locks import artifact_lock
with artifact_lock({artifact!r}, "the thing") as waited:
    print("holding", waited, flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_a_second_job_waits_for_the_lock_and_says_so(tmp_path):
    from leukocyte_cnn.base.locks import artifact_lock, lock_path

    artifact = tmp_path / "data" / "thing"
    code = _HOLD_LOCK.format(root=str(REPO_ROOT), artifact=str(artifact))
    first = subprocess.Popen([sys.executable, "-c", code, "2"], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdout.readline().strip() == "holding False"
        second = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True,
                                text=True, timeout=60)
    finally:
        first.wait(timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        f"waiting for the thing being made by another job (lock {lock_path(artifact)})",
        "holding True"]
    assert lock_path(artifact) == tmp_path / "data" / ".thing.lock"  # hidden: no glob finds it
    with artifact_lock(artifact) as waited, artifact_lock(artifact) as again:  # re-entrant
        assert (waited, again) == (False, False)


def test_temporary_files_are_hidden_from_globs_and_reports(tmp_path):
    """One job's half-written figure must not be read by another job's report (issue 25)."""
    from leukocyte_cnn.base.io import atomic_path
    from leukocyte_cnn.reporting.html_report import figures_in

    (tmp_path / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with atomic_path(tmp_path / "confusion_matrix.png") as tmp:
        tmp.write_bytes(b"half")
        assert tmp.name.startswith(".confusion_matrix.png.") and tmp.name.endswith(".tmp")
        assert list(tmp_path.glob("*.png")) == [tmp_path / "roc.png"]
        (tmp_path / ".learning_curves.png.x1.tmp.png").write_bytes(b"old style")
        assert figures_in(tmp_path) == [tmp_path / "roc.png"]
    with atomic_path(tmp_path / "model.keras", suffix=".keras") as tmp:
        assert tmp.suffix == ".keras"  # Keras needs it


def test_fold_jobs_started_together_share_each_artifact_linear_multiclass(tmp_path):
    """``linear_cnn_multiclass_lpocv.py --quick``, one job per fold, started at once."""
    _check_concurrent_fold_jobs(
        tmp_path, "linear_cnn_multiclass_lpocv.py",
        "linear_cnn_multiclass_synthetic_multiclass_quick",
        ["--epochs", "3", "--target", "12", "--quiet"])


@pytest.mark.slow
def test_fold_jobs_started_together_share_each_artifact_resnext(tmp_path):
    """``resnext_from_scratch.py --quick``, one job per fold, started at once."""
    _check_concurrent_fold_jobs(
        tmp_path, "resnext_from_scratch.py", "resnext_from_scratch_synthetic_multiclass_quick",
        ["--epochs", "2", "--target", "12", "--quiet"])
