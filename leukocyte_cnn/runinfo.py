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
    """Where and with what this process runs: code version, libraries, machine, time, and
    which knobs were set from outside the script (``$LEUKOCYTE_KNOBS``, e.g. by sweep.py)."""
    from .knobs import applied_overrides

    overrides = applied_overrides()
    return {
        **({"knob_overrides": overrides} if overrides else {}),
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


def fold_records(run_dir: str | os.PathLike) -> list[dict]:
    """Each finished fold's record (``fold_XX/timing.json``): fold, commit, dirty flag, split
    SHA-256 and artifact fingerprints, as written by ``training.finish_fold``."""
    records = []
    for path in sorted(Path(run_dir).glob("fold_*/timing.json")):
        if not (path.parent / "predictions.csv").is_file():
            continue
        record = read_json(path)
        git = (record.get("provenance") or {}).get("git") or {}
        records.append({"fold": record.get("fold"), "commit": git.get("commit", "unknown"),
                        "dirty": bool(git.get("dirty")),
                        "split_sha256": record.get("split_sha256"),
                        "artifacts": record.get("artifacts") or {}, "where": path.parent})
    return records


def check_fold_chain(run_dir: str | os.PathLike, split_sha256: str | None = None) -> dict:
    """Refuse to pool folds made from different split files or different artifacts; say which
    commits made them.

    Folds copied in from other machines (``--folds`` jobs) or resumed later must have used the
    same split file (SHA-256, and ``split_sha256`` when given: the run's own) and the same
    artifact of every kind (e.g. balanced-fold folder, mask set); otherwise one line names the
    folds that differ. Returns ``{"commits": {commit: [folds]}, "mixed": bool, "dirty": [folds]}``.
    """
    records = fold_records(run_dir)
    splits = {}
    for r in records:
        if r["split_sha256"]:
            splits.setdefault(r["split_sha256"], []).append(r["fold"])
    if split_sha256 is not None and splits and set(splits) - {split_sha256}:
        other = {k: v for k, v in splits.items() if k != split_sha256}
        folds = sorted(f for v in other.values() for f in v)
        raise InputError(f"{run_dir}: folds {folds} were made from another split file (SHA-256 "
                         f"{next(iter(other))[:12]}, not {split_sha256[:12]}); they cannot be "
                         "pooled with this run: delete them or use another --run-name")
    if len(splits) > 1:
        described = "; ".join(f"{sha[:12]}: folds {sorted(folds)}" for sha, folds in splits.items())
        raise InputError(f"{run_dir}: folds were made from different split files ({described}); "
                         "they cannot be pooled")
    kinds: dict[str, dict[str, list]] = {}
    for r in records:
        for kind, artifact in r["artifacts"].items():
            key = str((artifact or {}).get("fingerprint") if isinstance(artifact, dict)
                      else artifact)
            kinds.setdefault(kind, {}).setdefault(key, []).append(r["fold"])
    for kind, versions in kinds.items():
        if len(versions) > 1:
            described = "; ".join(f"{str(fp)[:12]}: folds {sorted(f)}"
                                  for fp, f in versions.items())
            raise InputError(f"{run_dir}: folds used different {kind} ({described}); they "
                             "cannot be pooled")
    commits: dict[str, list] = {}
    for r in records:
        commits.setdefault(r["commit"], []).append(r["fold"])
    return {"commits": commits, "mixed": len(commits) > 1,
            "dirty": sorted(r["fold"] for r in records if r["dirty"])}


def chain_lines(chain: dict) -> list[str]:
    """The ``summary.md`` lines saying which commits made the folds, flagging a mix."""
    commits = chain["commits"]
    if not commits:
        return []
    parts = [f"`{c[:12]}` (folds {', '.join(map(str, sorted(f)))})" for c, f in commits.items()]
    line = "- code: " + "; ".join(parts)
    if chain["mixed"]:
        line += (" — **MIXED: the folds were made by different commits**; compare the commits "
                 "before trusting the pooled numbers")
    if chain["dirty"]:
        line += f" (uncommitted changes in folds {', '.join(map(str, chain['dirty']))})"
    return [line]
