"""Folds run as separate jobs and merged give the same summary as one run of all folds.

This is the cluster recipe of ``docs/gpu_and_cluster.md`` done for real on a tiny set:
``linear_cnn_binary_lpocv.py`` runs as separate processes ("array tasks") with ``--folds 0``
and ``--folds 1,2``, once writing into one shared run folder and once into folders on
different "machines" whose ``fold_XX`` folders (and ``settings.json``) are then copied into
one run folder; ``summarize_results.py`` must then write a ``summary.csv`` byte-identical to
the one of a single run of all folds.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "linear_cnn_binary_lpocv.py"
RUN = "scaleout"  # --run-name of every job: the folder name is the same everywhere
TRAIN_OPTIONS = ["--dataset", "folder", "--image-size", "32", "--epochs", "2", "--k", "3",
                 "--results-dir", "results", "--run-name", RUN]


def _tiny_dataset(root: Path) -> Path:
    """Two classes x 15 PNGs of 32x32 in a folder per class: dark round blobs vs pale ones."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    for label, name in enumerate(("blast", "other")):
        (root / name).mkdir(parents=True)
        for i in range(15):
            radius = rng.uniform(6, 10) + 4 * label
            cell = ((yy - 16 - rng.integers(-3, 4)) ** 2 + (xx - 16) ** 2) < radius ** 2
            image = np.full((32, 32, 3), (230, 200, 205), np.float64)
            image[cell] = (120, 60, 160) if label == 0 else (200, 140, 190)
            image += rng.normal(0, 8, image.shape)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
                root / name / f"{name}_{i:02d}.png")
    return root


def _run(args: list[str], cwd: Path) -> None:
    """One job: a fresh Python process, as on a cluster node."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg",
           "CUDA_VISIBLE_DEVICES": ""}
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def _train(cwd: Path, data_root: Path, folds: str | None = None) -> Path:
    extra = ["--folds", folds] if folds else []
    _run([str(SCRIPT), *TRAIN_OPTIONS, "--data-root", str(data_root), *extra], cwd)
    return cwd / "results" / RUN


def _summarize(run_dir: Path) -> bytes:
    """``summarize_results.py <run_dir>`` (in this process: it needs no TensorFlow)."""
    import summarize_results

    summarize_results.main(summarize_results.parse_args([str(run_dir)]))
    return (run_dir / "summary.csv").read_bytes()


def test_folds_run_as_separate_jobs_merge_to_the_single_run_summary(tmp_path):
    data_root = _tiny_dataset(tmp_path / "data_root")
    single, shared, machine_a, machine_b = (tmp_path / n for n in
                                            ("single", "shared", "machine_a", "machine_b"))

    # The reference and the array tasks run side by side, like jobs on a cluster. Each
    # "machine" writes its own (deterministic, identical) split file under its data/.
    with ThreadPoolExecutor(max_workers=3) as pool:
        jobs = [pool.submit(_train, single, data_root),
                pool.submit(_train, machine_a, data_root, "0"),
                pool.submit(_train, machine_b, data_root, "1,2")]
        reference_dir, run_a, run_b = (job.result() for job in jobs)
    # Shared file system: fold 0 runs as one more job into the folder that holds 1 and 2.
    _train(machine_b, data_root, "0")
    shared_dir = run_b

    # Different machines: copy settings.json and the fold folders into one run folder.
    merged_dir = tmp_path / "merged" / RUN
    merged_dir.mkdir(parents=True)
    shutil.copy2(run_a / "settings.json", merged_dir / "settings.json")
    shutil.copytree(run_a / "fold_00", merged_dir / "fold_00")
    for fold in ("fold_01", "fold_02"):
        shutil.copytree(run_b / fold, merged_dir / fold)

    assert sorted(p.name for p in run_a.glob("fold_*")) == ["fold_00"]
    split_files = [sorted((root / "data" / "splits").glob("*.csv")) for root in
                   (single, machine_a, machine_b)]
    assert all(len(files) == 1 for files in split_files)
    assert len({files[0].read_bytes() for files in split_files}) == 1  # same folds everywhere

    reference = (reference_dir / "summary.csv").read_bytes()
    for fold in ("fold_00", "fold_01", "fold_02"):
        expected = (reference_dir / fold / "predictions.csv").read_bytes()
        assert (merged_dir / fold / "predictions.csv").read_bytes() == expected, fold
        assert (shared_dir / fold / "predictions.csv").read_bytes() == expected, fold
    assert _summarize(merged_dir) == reference
    assert _summarize(shared_dir) == reference
    assert b"accuracy" in reference and (merged_dir / "summary.md").exists()
    n_folds_column = [line.split(b",")[-1] for line in reference.splitlines()[1:]]
    assert set(n_folds_column) == {b"3"}  # every metric pooled over all three folds


@pytest.mark.parametrize("text, folds", [("0", [0]), ("1,2", [1, 2]), ("0-2", [0, 1, 2])])
def test_fold_lists_of_the_cluster_recipe(text, folds):
    from leukocyte_cnn.runs.cross_validation import parse_fold_list

    assert parse_fold_list(text, [0, 1, 2]) == folds
