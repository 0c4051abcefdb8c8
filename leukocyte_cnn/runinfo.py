"""Run folders: the settings, code version and machine behind every number.

``results/<run>/settings.json`` has two parts. ``config`` is what determines the numbers
(hyperparameters, arguments, split file and its dataset hash, seed): resuming a run with a
different config is refused. ``provenance`` says where and with what it ran (git commit,
library versions, machine, time); each fold also records its own provenance, so folds that
ran on different machines stay traceable after ``summarize_results.py`` merges them.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from .errors import InputError
from .io import ensure_writable_dir, read_json, write_json

REPO_ROOT = Path(__file__).resolve().parents[1]


def knobs(namespace: Mapping[str, Any] | ModuleType) -> dict:
    """The UPPER_CASE hyperparameters of a script (its module globals), JSON-ready."""
    items = vars(namespace).items() if isinstance(namespace, ModuleType) else namespace.items()
    out = {}
    for name, value in items:
        if name.isupper() and not name.startswith("_") and _jsonable(value):
            out[name] = value
    return dict(sorted(out.items()))


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def git_commit() -> dict:
    """Commit hash of the code that runs and whether the tree had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"commit": commit or "unknown", "dirty": dirty}


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
    """Where and with what this process runs: code version, libraries, machine, time."""
    return {
        "git": git_commit(),
        "versions": library_versions(),
        "machine": {"host": platform.node(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def prepare_run_dir(run_dir: str | os.PathLike, config: dict) -> Path:
    """Create (or re-open for resume) a run folder and write its ``settings.json``.

    A folder that already holds a run with a different ``config`` is refused with one line,
    so two experiments never mix their folds in one summary.
    """
    run_dir = ensure_writable_dir(run_dir)
    settings_path = run_dir / "settings.json"
    config = json.loads(json.dumps(config, default=str, sort_keys=True))
    if settings_path.exists():
        previous = read_json(settings_path).get("config")
        if previous != config:
            changed = sorted(k for k in set(previous or {}) | set(config)
                             if (previous or {}).get(k) != config.get(k))
            raise InputError(f"{run_dir}: holds a run with different settings "
                             f"({', '.join(changed[:5])}); use another --run-name or delete it")
        return run_dir
    write_json(settings_path, {"config": config, "provenance": provenance()})
    return run_dir


def read_settings(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / "settings.json"
    if not path.exists():
        raise InputError(f"{run_dir}: not a run folder (no settings.json)")
    return read_json(path)
