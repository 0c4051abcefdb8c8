"""Derived files keyed by what made them: one fingerprint mechanism for every artifact.

A split file, a class-balanced fold folder, a paper-augmentation folder, a mask set or a
source checkpoint is made from inputs (image files, a split file, a checkpoint) and settings
(target per class, seed, image size, thresholds, …) by some version of the code. Its
*fingerprint* is the SHA-256 of all of those, written as canonical JSON. The fingerprint is

* part of the artifact's path (``<readable name>_<first 10 hex digits>``), so two artifacts
  made differently never share a path and nothing is overwritten in place, and
* stored beside it in a JSON sidecar (``<artifact>.fingerprint.json`` for a file, or
  ``fingerprint.json`` inside a folder) together with the inputs it was computed from, so a
  researcher can read what made it.

A consumer asks for an artifact *by its inputs*: :func:`keyed_path` gives the path, and
:func:`matches` says whether what lies there was made from exactly those inputs. Anything
else (a missing or foreign sidecar) is made anew under its own path, or refused with one line
naming the settings that differ (:func:`describe_difference`) where making it is not the
caller's job.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import _json_default, read_json, write_json
from leukocyte_cnn.base.locks import artifact_lock

SIDECAR = "fingerprint.json"
SHORT = 10  # hex digits of the fingerprint in paths (40 bits: no accidental clash in practice)


def canonical(inputs: Mapping[str, Any]) -> dict:
    """``inputs`` as plain JSON types (tuples → lists, numpy → Python, paths → str)."""
    return json.loads(json.dumps(dict(inputs), sort_keys=True, default=_json_default))


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``inputs``: the artifact's identity."""
    text = json.dumps(canonical(inputs), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short(digest: str) -> str:
    return str(digest)[:SHORT]


def readable(text: str) -> str:
    """A file-name-safe version of a human-readable artifact name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "artifact"


def keyed_path(base: str | os.PathLike, name: str, inputs: Mapping[str, Any],
               suffix: str = "") -> Path:
    """``<base>/<name>_<fingerprint[:10]><suffix>``: where the artifact made from ``inputs``
    lives. ``suffix`` is e.g. ``".csv"`` for a file, ``""`` for a folder."""
    return Path(base) / f"{readable(name)}_{short(fingerprint(inputs))}{suffix}"


def sidecar_path(artifact: str | os.PathLike) -> Path:
    """``<folder>/fingerprint.json`` for a folder, ``<file>.fingerprint.json`` for a file."""
    artifact = Path(artifact)
    if artifact.is_dir() or not artifact.suffix:
        return artifact / SIDECAR
    return artifact.with_name(artifact.name + "." + SIDECAR)


def write_sidecar(artifact: str | os.PathLike, kind: str, inputs: Mapping[str, Any],
                  made_by: Mapping[str, Any] | None = None) -> dict:
    """Record what made ``artifact`` beside it; returns the record. ``made_by`` is what is
    worth knowing but not part of the identity (e.g. the run and checkpoint that made it)."""
    record = {"kind": kind, "fingerprint": fingerprint(inputs), "inputs": canonical(inputs)}
    if made_by:
        record["made_by"] = canonical(made_by)
    path = sidecar_path(artifact)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return record


def read_sidecar(artifact: str | os.PathLike) -> dict | None:
    path = sidecar_path(artifact)
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except InputError:
        return None


def matches(artifact: str | os.PathLike, inputs: Mapping[str, Any]) -> bool:
    """True when ``artifact``'s sidecar says it was made from exactly ``inputs``."""
    record = read_sidecar(artifact)
    return bool(record) and record.get("fingerprint") == fingerprint(inputs)


def describe_difference(artifact: str | os.PathLike, inputs: Mapping[str, Any],
                        limit: int = 4) -> str:
    """``"seed: 0 -> 1, image_size: [64, 64] -> None"``: the inputs that differ between the
    artifact on disk and the one asked for (``"no fingerprint"`` when it has none)."""
    record = read_sidecar(artifact)
    if not record:
        return f"no {SIDECAR} beside it (made before artifacts were fingerprinted)"
    return difference(record, inputs, limit)


def difference(record: Mapping[str, Any], inputs: Mapping[str, Any], limit: int = 4) -> str:
    """The inputs that differ between a fingerprint ``record`` (``{"fingerprint", "inputs"}``,
    from a sidecar or a split's JSON) and ``inputs``, as ``"seed: 0 -> 1, ..."``."""
    old, new = record.get("inputs") or {}, canonical(inputs)
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if not changed:
        return "fingerprint differs (code version)"
    parts = [f"{k}: {_brief(old.get(k))} -> {_brief(new.get(k))}" for k in changed[:limit]]
    more = len(changed) - limit
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


def _brief(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def require_match(artifact: str | os.PathLike, inputs: Mapping[str, Any], what: str,
                  hint: str) -> dict:
    """The sidecar record of ``artifact`` when it was made from ``inputs``; otherwise one line
    (``InputError``) naming the artifact, what differs and ``hint``."""
    if not Path(artifact).exists():
        raise InputError(f"{artifact}: {what} not found; {hint}")
    if not matches(artifact, inputs):
        raise InputError(f"{artifact}: {what} was made with other settings "
                         f"({describe_difference(artifact, inputs)}); {hint}")
    return read_sidecar(artifact)


def keyed_folder(base: str | os.PathLike, name: str, inputs: Mapping[str, Any], kind: str,
                 what: str) -> Path:
    """The folder of the artifact made from ``inputs``: ``<base>/<name>_<fingerprint>``,
    created with its ``fingerprint.json`` if new (once, under its lock: jobs asking at the
    same moment wait and find it); one line (``InputError``) if the folder there was made
    from other inputs (it is kept, never overwritten)."""
    root = keyed_path(base, name, inputs)
    if root.exists() and read_sidecar(root) is not None:
        require_match(root, inputs, what, "it is kept; delete it to re-make it")
        return root
    # Jobs started together create it once: the others wait, then find its fingerprint.json.
    with artifact_lock(root, f"the {what} {root}"):
        if root.exists() and any(root.iterdir()):  # made meanwhile, or made otherwise
            require_match(root, inputs, what, "it is kept; delete it to re-make it")
        else:  # an empty folder is what a job killed right after mkdir leaves
            root.mkdir(parents=True, exist_ok=True)
            write_sidecar(root, kind, inputs)
    return root


def record_of(artifact: str | os.PathLike) -> dict:
    """What a run records of an artifact it used: path, kind and fingerprint."""
    record = read_sidecar(artifact) or {}
    return {"path": str(artifact), "kind": record.get("kind"),
            "fingerprint": record.get("fingerprint")}
