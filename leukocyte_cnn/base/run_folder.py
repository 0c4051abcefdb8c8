"""Run folders on disk: the files every run writes and every report reads.

``results/<run>/settings.json`` has two parts. ``config`` is what determines the numbers
(the knobs as they ran, arguments, split file and its dataset hash, seed): resuming a run with
a different config is refused. ``provenance`` says where and with what it ran (git commit,
library versions, machine, time); each fold also records its own provenance, so folds that
ran on different machines stay traceable after ``summarize_results.py`` merges them.

A fold writes ``fold_XX/{inputs.csv, model.keras, epochs.csv, timing.json, predictions.csv}``;
it is finished when ``predictions.csv`` exists (written last, atomically).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import ensure_writable_dir, read_json, write_csv, write_json
from leukocyte_cnn.base.locks import artifact_lock
from leukocyte_cnn.base.provenance import provenance


def prepare_run_dir(run_dir: str | os.PathLike, config: dict,
                    overrides: dict | None = None, resumable: tuple[str, ...] = (),
                    say: Callable[[str], None] | None = None) -> Path:
    """Create (or re-open for resume) a run folder and write its ``settings.json``:
    ``config`` (what determines the numbers, the knobs as they run among it), ``overrides``
    (which knobs differ from the script's block and what set them; not compared on resume:
    the same values set another way are the same run) and ``provenance``.

    A folder that already holds a run with a different ``config`` is refused with one line,
    so two experiments never mix their folds in one summary. Knobs named in ``resumable``
    (e.g. a study's number of seeds: more trials extend the same study) may differ; the file
    then records their new values. ``settings.json`` is written once, under the run folder's
    lock (:func:`run_lock`): jobs started together (one per fold) wait for the first one's
    file and check theirs against it, as a resume does. ``say`` gets one line saying which.
    """
    run_dir = ensure_writable_dir(run_dir)
    settings_path = run_dir / "settings.json"
    config = json.loads(json.dumps(config, default=str, sort_keys=True))
    record = {"config": config, "overrides": overrides or {}, "provenance": provenance()}
    record = json.loads(json.dumps(record, default=str, sort_keys=True))
    with run_lock(run_dir):
        if settings_path.exists():
            previous_record = read_json(settings_path)
            previous = previous_record.get("config") or {}
            if _without(previous, resumable) != _without(config, resumable):
                raise InputError(f"{run_dir}: holds a run with different settings "
                                 f"({', '.join(_changed(previous, config)[:5])}); use another "
                                 "--run-name or delete it")
            if previous != config:  # only resumable knobs changed: record what runs now
                write_json(settings_path, {**previous_record, "config": config,
                                           "overrides": record["overrides"]})
            if say:
                say(f"{settings_path}: the same settings (an earlier run or another job "
                    "made it); adding to that run")
            return run_dir
        write_json(settings_path, record)
    if say:
        say(f"{settings_path}: written")
    return run_dir


def run_lock(run_dir: str | os.PathLike, what: str = "run folder"):
    """The lock of a run folder (``base.locks.artifact_lock``; the file
    ``<results>/.<run>.lock`` beside it), held while ``settings.json`` is made and while a
    summary is rebuilt: the jobs of one run never read each other's half-written tables and
    figures, and the last job's summary holds every fold. ``what`` names it in the waiting
    line (e.g. ``"summary of"``)."""
    return artifact_lock(run_dir, f"{what} {run_dir}")


def _without(config: dict, knobs: tuple[str, ...]) -> dict:
    if not knobs or not isinstance(config.get("knobs"), dict):
        return config
    return {**config, "knobs": {k: v for k, v in config["knobs"].items() if k not in knobs}}


def _changed(previous: dict, config: dict) -> list[str]:
    """Names of the config entries that differ; inside ``knobs``, the knobs themselves."""
    changed = []
    for key in sorted(set(previous) | set(config)):
        if previous.get(key) == config.get(key):
            continue
        if key == "knobs" and isinstance(previous.get(key), dict) and isinstance(config.get(key),
                                                                                  dict):
            old, new = previous[key], config[key]
            changed += [f"knob {name}" for name in sorted(set(old) | set(new))
                        if old.get(name) != new.get(name)]
        else:
            changed.append(key)
    return changed


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


PREDICTIONS = "predictions.csv"


EPOCHS = "epochs.csv"


CHECKPOINT = "model.keras"


def fold_dir(run_dir: str | os.PathLike, fold: int) -> Path:
    return Path(run_dir) / f"fold_{fold:02d}"


def fold_is_done(run_dir: str | os.PathLike, fold: int) -> bool:
    return (fold_dir(run_dir, fold) / PREDICTIONS).exists()


INPUTS = "inputs.csv"


INPUT_COLUMNS = ["role", "image", "group", "source_image", "label", "class_name", "path"]


def write_fold_inputs(directory: str | os.PathLike, train: pd.DataFrame, val: pd.DataFrame,
                      test: pd.DataFrame) -> Path:
    """``<fold directory>/inputs.csv``: one row per image a fold feeds, written before training.

    Columns: ``role`` (train/val/test), ``image`` (the split key, or an augmented file's key),
    ``group`` (patient, smear or source cell; an augmented copy's is its source's),
    ``source_image`` (the split image an augmented or class-balanced training image was made
    from; else the image itself), ``label``, ``class_name``, ``path``. ``train`` is what
    really trains (e.g. the balanced images that replace the split's training rows). With the
    split file beside it, anyone can check from the run folder alone that no image, group or
    copy of a test image was trained on.
    """
    parts = []
    for role, table in (("train", train), ("val", val), ("test", test)):
        images = table["image"].astype(str)
        sources = table["source_image"].astype(str) if "source_image" in table else images
        groups = (table["group"].astype(str) if "group" in table
                  else pd.Series([""] * len(table), index=table.index))
        parts.append(pd.DataFrame({"role": role, "image": images.to_numpy(),
                                   "group": groups.to_numpy(), "source_image": sources.to_numpy(),
                                   "label": table["label"].astype(int).to_numpy(),
                                   "class_name": table["class_name"].astype(str).to_numpy(),
                                   "path": table["path"].astype(str).to_numpy()}))
    path = Path(directory) / INPUTS
    # a training image repeated per epoch (learning curve) is one image fed: listed once
    write_csv(path, pd.concat(parts, ignore_index=True)[INPUT_COLUMNS].drop_duplicates())
    return path


def load_predictions(run_dir: str | os.PathLike) -> pd.DataFrame:
    """All finished folds' predictions of a run, pooled, sorted by fold and image."""
    files = sorted(Path(run_dir).glob(f"fold_*/{PREDICTIONS}"))
    if not files:
        raise InputError(f"{run_dir}: no finished folds (no fold_*/{PREDICTIONS})")
    table = pd.concat([pd.read_csv(f, dtype={"group": str, "image": str}) for f in files],
                      ignore_index=True)
    return table.sort_values(["fold", "image"], kind="stable").reset_index(drop=True)
