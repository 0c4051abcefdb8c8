"""Shared test fixtures: the repository root, the real datasets beside it, quiet TensorFlow."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep test output readable (no cuInit)
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as leukocyte_cnn sets it (AMD CPUs)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the repository; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not available ({SHARED_DATA} is absent; "
                    "only the project's CI machine has them)")
    return SHARED_DATA


def shared_dataset(name: str) -> Path:
    """Path of one real dataset under ``../shared/data``, or skip with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name!r} not available at {path}")
    return path


@pytest.fixture
def kaggle_with_copies(tmp_path):
    """A Kaggle-layout set with copies of cells in TRAIN and one rotated copy of a TRAIN cell
    in TEST (``test_leakage.make_kaggle_with_copies``)."""
    from test_leakage import make_kaggle_with_copies

    return make_kaggle_with_copies(tmp_path)
