"""The code version, libraries and machine behind every number (a run's ``provenance``).

Each run's ``settings.json`` and each fold's ``timing.json`` record it, so folds that ran on
different machines stay traceable after ``summarize_results.py`` merges them.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


CODE_PATHS = ("*.py", "leukocyte_cnn", "tests", "benchmarks", "requirements*.txt")


def git_commit() -> dict:
    """Commit hash of the code that runs and whether the tree had uncommitted changes.

    ``dirty`` counts modified tracked files and untracked files under the code paths
    (:data:`CODE_PATHS`: a new script or module changes what runs as much as an edit does);
    ``data/`` and ``results/`` are ignored by git and never count.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS)
    except (OSError, subprocess.SubprocessError):
        commit, changed = "", ""
    return {"commit": commit or "unknown", "dirty": bool(changed),
            **({"changed_files": len(changed.splitlines())} if changed else {})}


def library_versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for name in ("tensorflow", "keras", "numpy", "sklearn", "pandas", "PIL", "skimage"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        versions[name] = getattr(module, "__version__", "?")
    return versions


def provenance() -> dict:
    """Where and with what this process runs: code version, libraries, machine, time and the
    command line (which knobs were set from outside a script is in ``settings.json``'s
    ``overrides``, see ``knobs.Settings.overrides``)."""
    return {
        "git": git_commit(),
        "versions": library_versions(),
        "machine": {"host": platform.node(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


