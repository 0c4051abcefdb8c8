"""resnext_transfer_learning.py --pretrain killed mid-epoch (SIGKILL), then run again, saves
the weights of an uninterrupted run: the whole command, in separate processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.reliability
REPO = Path(__file__).resolve().parents[1]
CLASSES = ("basophil", "eosinophil", "monocyte", "platelet")


def _command(source: Path, results: Path, name: str) -> list[str]:
    return [sys.executable, str(REPO / "resnext_transfer_learning.py"), "--pretrain",
            "--source-dataset", "folder", "--source-data-root", str(source),
            "--results-dir", str(results), "--checkpoint-name", name, "--variant", "resnext14",
            "--image-size", "32", "--cardinality", "2", "--bottleneck-width", "2", "--width",
            "8", "--stem-filters", "8", "--epochs", "4", "--patience", "4", "--batch-size",
            "4", "--no-tensorboard"]


@pytest.mark.slow
def test_pretraining_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    import keras
    from test_resnext_scripts import write_cells

    source = write_cells(tmp_path / "source", CLASSES, per_class=30, seed=2)
    results = tmp_path / "results"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(_command(source, results, "unbroken"), check=True, env=env,
                   capture_output=True, cwd=tmp_path)

    state = results / "checkpoints" / "killed_training" / "training_state" / "state.json"
    job = subprocess.Popen(_command(source, results, "killed"), env=env, cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (state.exists() and json.loads(state.read_text())["epoch"] >= 2):
        assert job.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # into the third epoch (each takes seconds here)
    job.send_signal(signal.SIGKILL)
    job.wait()
    killed_at = json.loads(state.read_text())["epoch"]
    assert 2 <= killed_at < 4
    assert not (results / "checkpoints" / "killed.keras").exists()

    rerun = subprocess.run(_command(source, results, "killed"), check=True, env=env,
                           capture_output=True, text=True, cwd=tmp_path)
    assert f"resuming after epoch {killed_at} of 4" in rerun.stdout
    weights = [keras.models.load_model(results / "checkpoints" / f"{name}.keras",
                                       compile=False, safe_mode=True).get_weights()
               for name in ("unbroken", "killed")]
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)
    sidecars = [json.loads((results / "checkpoints" / f"{name}.json").read_text())
                for name in ("unbroken", "killed")]
    assert sidecars[0]["held_out_accuracy"] == sidecars[1]["held_out_accuracy"]
    assert sidecars[0]["fingerprint"] == sidecars[1]["fingerprint"]
