"""The synthetic datasets: the repository's embedded default data, laid out like the real sets.

Each kind (``all_idb2``, ``multiclass``, ``kaggle``, ``all_idb1``, ``cnmc``) becomes a list of
jobs (one rendered cell or smear and its files each), run here and in helper processes
(``python -m leukocyte_cnn.data.synthetic JOBFILE``) into a temporary folder that is renamed
into place with a ``.complete`` marker; :func:`ensure_synthetic` reuses a set only when that
marker names the current format version, seed and size options. Images come from
:mod:`leukocyte_cnn.data.synthetic_render`.

Determinism: each image draws from its own generator ``default_rng([seed, kind, index])``, so
files do not depend on generation order or worker count; encoder options are fixed
(:data:`_ENCODERS`) and no file holds a time stamp. The same seed gives byte-identical files.
Layouts follow the real datasets (docs/architecture.md, "Synthetic data").
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import atomic_path, write_json, write_text
from leukocyte_cnn.base.locks import artifact_lock
from leukocyte_cnn.data.synthetic_render import CELL_CLASSES, render_cell, render_smear

KINDS = ("all_idb2", "multiclass", "kaggle", "all_idb1", "cnmc")
KAGGLE_CLASSES = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
CLASS_NAMES = {  # the class list each set's reader reports, ordered by label
    "all_idb2": ("other", "lymphoblast"),
    "multiclass": ("basophil", "eosinophil", "lymphoblast", "lymphocyte", "monocyte",
                   "neutrophil", "thrombocyte"),  # the CSV reader orders names alphabetically
    "kaggle": KAGGLE_CLASSES,
    "all_idb1": ("no_blasts", "blasts"),
    "cnmc": ("hem", "all"),
}
DEFAULTS = {  # size options of each kind; other values get their own folder
    "all_idb2": {"n_blast": 130, "n_other": 130, "size": 257},
    "multiclass": {"counts": {"lymphoblast": 60, "neutrophil": 50, "lymphocyte": 45,
                              "monocyte": 25, "eosinophil": 15, "basophil": 4,
                              "thrombocyte": 3}, "size": 257},
    "kaggle": {"train_cells": 20, "copies": 3, "test_cells": 15},
    "all_idb1": {"n_images": 20, "n_with_blasts": 10, "height": 480, "width": 640},
    "cnmc": {"folds": 3, "all_patients": 4, "hem_patients": 3, "cells": 10, "size": 128},
}
COMPLETE = ".complete"
# Version of the renderer and the folder layouts, written into the ``.complete`` marker with the
# kind, seed and size options. Bump it whenever a change alters the files of a set (drawing,
# encoder options, file names, CSV columns): sets on disk with another version (or a marker
# without one, i.e. older than this check) are then regenerated instead of silently reused.
SYNTHETIC_FORMAT_VERSION = 2
KAGGLE_SIZE = (240, 320)  # (height, width) of the real Kaggle images

# "Other" cells of the ALL-IDB2-like set, cycled by image number: mostly lymphocytes (the cell
# a blast is confused with), then the other normal leukocytes roughly by blood frequency.
ALL_IDB2_OTHER_CYCLE = ("lymphocyte", "neutrophil", "lymphocyte", "monocyte", "lymphocyte",
                        "eosinophil", "neutrophil", "lymphocyte", "basophil", "lymphocyte",
                        "neutrophil", "monocyte", "lymphocyte", "eosinophil", "lymphocyte",
                        "neutrophil", "lymphocyte", "monocyte", "neutrophil", "lymphocyte")

# ----------------------------------------------------------------------------- encoding
# Fixed encoder options per suffix (the same array always gives the same bytes), chosen like
# the real sets: ALL-IDB2 ships uncompressed TIFF, Kaggle's JPEGs are quality 75 with 4:2:0
# chroma (read from their quantisation tables), camera smears are high-quality JPEG. PNG uses
# zlib level 1 with the strategy that suits the content (measured: run-length for masks,
# 0.45 ms and smallest; Huffman-only for noisy renders, smallest and 4x faster than level 6).
_ENCODERS: dict[str, tuple[str, dict]] = {
    ".tif": ("TIFF", {"compression": "raw"}),
    ".png": ("PNG", {"compress_level": 1}),
    ".jpeg": ("JPEG", {"quality": 75, "subsampling": 2, "optimize": False}),
    ".jpg": ("JPEG", {"quality": 90, "subsampling": 2, "optimize": False}),
    ".bmp": ("BMP", {}),
}
_Z_HUFFMAN_ONLY, _Z_RLE = 2, 3  # zlib strategies


def _save(path: str | os.PathLike, image: np.ndarray | Image.Image) -> None:
    """Write an image with the fixed encoder options of its suffix, atomically."""
    image_format, options = _ENCODERS[os.path.splitext(path)[1].lower()]
    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    if image_format == "PNG":
        options = {**options, "compress_type": _Z_RLE if image.mode == "L" else _Z_HUFFMAN_ONLY}
    with atomic_path(path) as tmp:
        image.save(tmp, format=image_format, **options)


def _image_rng(seed: int, kind: str, index: int, *more: int) -> np.random.Generator:
    """The generator of one image: independent of generation order and worker count."""
    return np.random.default_rng([seed, KINDS.index(kind), index, *more])


def _augment_copy(image: Image.Image, mask: Image.Image, rng: np.random.Generator
                  ) -> tuple[Image.Image, Image.Image]:
    """A Kaggle-style augmented copy: flips, small rotation (black corners), shift."""
    w = image.width
    angle = float(rng.uniform(-20, 20))
    dx, dy = (int(k) for k in rng.integers(-int(0.06 * w), int(0.06 * w) + 1, 2))
    for flip, how in zip(rng.integers(0, 2, 2), (Image.Transpose.FLIP_LEFT_RIGHT,
                                                 Image.Transpose.FLIP_TOP_BOTTOM)):
        if flip:
            image, mask = image.transpose(how), mask.transpose(how)
    # Nearest-neighbour: 11x faster than Pillow's bilinear here, and the renders are already
    # smooth; TRAIN and TEST copies go through the same transform, so its traces say nothing
    # about the class or the split.
    image = image.rotate(angle, Image.NEAREST, translate=(dx, dy), fillcolor=(0, 0, 0))
    mask = mask.rotate(angle, Image.NEAREST, translate=(dx, dy), fillcolor=0)
    return image, mask


def _run_job(job: tuple) -> int:
    """Render and write one job's files into the temporary set folder; returns the count.

    Jobs are plain tuples so that worker processes can receive them.
    """
    task = job[0]
    if task == "cell":
        _, seed, kind, index, class_name, size, background, offset, image_path, mask_path = job
        rng = _image_rng(seed, kind, index)
        image, mask = render_cell(class_name, size, rng, background,
                                  None if offset is None else np.asarray(offset))
        _save(image_path, image)
        _save(mask_path, mask)
        return 2
    if task == "kaggle":
        _, seed, cell_id, class_name, copies, image_dir, mask_dir = job
        image, mask = render_cell(class_name, KAGGLE_SIZE, _image_rng(seed, "kaggle", cell_id))
        image, mask = Image.fromarray(image), Image.fromarray(mask)
        for copy in range(copies):
            aug_image, aug_mask = _augment_copy(image, mask,
                                                _image_rng(seed, "kaggle", cell_id, copy + 1))
            _save(os.path.join(image_dir, f"_{copy}_{cell_id}.jpeg"), aug_image)
            _save(os.path.join(mask_dir, f"_{copy}_{cell_id}.png"), aug_mask)
        return 2 * copies
    if task == "smear":
        _, seed, index, size, with_blasts, image_path = job
        rng = _image_rng(seed, "all_idb1", index)
        n_cells = int(rng.integers(6, 16))
        n_blasts = int(rng.integers(2, min(6, n_cells) + 1)) if with_blasts else 0
        image, blasts = render_smear(size, rng, n_cells, n_blasts)
        _save(image_path, image)
        write_text(Path(image_path).with_suffix(".xyc"), "".join(f"{x} {y}\n" for x, y in blasts))
        return 2
    raise ValueError(f"unknown job {task!r}")


def _jobs_all_idb2(root: Path, seed: int, n_blast: int, n_other: int, size: int) -> list:
    jobs = []
    for i in range(n_blast + n_other):
        blast = i < n_blast
        cls = "lymphoblast" if blast else ALL_IDB2_OTHER_CYCLE[(i - n_blast)
                                                                % len(ALL_IDB2_OTHER_CYCLE)]
        name = f"Im{i + 1:03d}_{int(blast)}"
        jobs.append(("cell", seed, "all_idb2", i, cls, (size, size), "smear", None,
                     str(root / f"{name}.tif"), str(root / "masks" / f"{name}.png")))
    return jobs


def _jobs_multiclass(root: Path, seed: int, counts: dict, size: int) -> list:
    jobs, lines = [], ["image,class_name"]
    index = 0
    for cls, n in counts.items():
        for _ in range(n):
            index += 1
            rel = f"images/{index:04d}.png"
            lines.append(f"{rel},{cls}")
            jobs.append(("cell", seed, "multiclass", index, cls, (size, size), "smear", None,
                         str(root / rel), str(root / "masks" / f"{index:04d}.png")))
    write_text(root / "labels.csv", "\n".join(lines) + "\n")
    return jobs


def _jobs_kaggle(root: Path, seed: int, train_cells: int, copies: int, test_cells: int
                 ) -> list:
    jobs, cell_id = [], 0
    for split, n_cells, n_copies in (("TRAIN", train_cells, copies), ("TEST", test_cells, 1)):
        for cls in KAGGLE_CLASSES:
            image_dir = root / "dataset2-master" / "images" / split / cls
            mask_dir = root / "masks" / "dataset2-master" / "images" / split / cls
            for _ in range(n_cells):
                cell_id += 1  # unique over the whole set: TEST never repeats a TRAIN cell
                jobs.append(("kaggle", seed, cell_id, cls.lower(), n_copies, str(image_dir),
                             str(mask_dir)))
    return jobs


def _jobs_cnmc(root: Path, seed: int, folds: int, all_patients: int, hem_patients: int,
               cells: int, size: int) -> list:
    jobs, index = [], 0
    numbers = {"all": 0, "hem": 0}
    for fold in range(folds):
        for label, n_patients in (("all", all_patients), ("hem", hem_patients)):
            cls = "lymphoblast" if label == "all" else "lymphocyte"
            for _ in range(n_patients):
                numbers[label] += 1
                p = numbers[label]
                pid = str(p) if label == "all" else f"H{p}"
                # The patient's stain batch: the same for all their cells, so a split that puts
                # one patient on both sides lets a model match stains instead of cells.
                offset = _image_rng(seed, "cnmc", 10 ** 6 + p, int(label == "hem")).normal(
                    0.0, 0.15, 3)
                for n in range(cells):
                    index += 1
                    name = f"UID_{pid}_{n // 3 + 1}_{n % 3 + 1}_{label}"
                    rel = Path(f"fold_{fold}") / label
                    jobs.append(("cell", seed, "cnmc", index, cls, (size, size), "black",
                                 tuple(float(x) for x in offset), str(root / rel / f"{name}.bmp"),
                                 str(root / "masks" / rel / f"{name}.png")))
    return jobs


def _jobs_all_idb1(root: Path, seed: int, n_images: int, n_with_blasts: int, height: int,
                   width: int) -> list:
    return [("smear", seed, i, (height, width), i < n_with_blasts,
             str(root / f"Im{i + 1:03d}_{int(i < n_with_blasts)}.jpg")) for i in range(n_images)]


_JOB_BUILDERS = {"all_idb2": _jobs_all_idb2, "multiclass": _jobs_multiclass,
                 "kaggle": _jobs_kaggle, "cnmc": _jobs_cnmc, "all_idb1": _jobs_all_idb1}


def _options(kind: str, size_options: dict, where: str | os.PathLike = "synthetic") -> dict:
    """Defaults of ``kind`` updated by ``size_options``, checked."""
    if kind not in KINDS:
        raise InputError(f"{where}: unknown synthetic kind {kind!r} (known: {', '.join(KINDS)})")
    unknown = sorted(set(size_options) - set(DEFAULTS[kind]))
    if unknown:
        raise InputError(f"{where}: unknown option(s) {unknown} for synthetic {kind} "
                         f"(known: {sorted(DEFAULTS[kind])})")
    options = {**DEFAULTS[kind], **size_options}
    for key, value in options.items():
        values = value.values() if isinstance(value, dict) else [value]
        if not all(isinstance(x, (int, np.integer)) and x >= 0 for x in values):
            raise InputError(f"{where}: synthetic {kind} option {key} must be non-negative "
                             f"integers, got {value!r}")
    if kind == "multiclass":
        bad = sorted(set(options["counts"]) - set(CELL_CLASSES))
        if bad:
            raise InputError(f"{where}: unknown cell classes {bad} (known: {CELL_CLASSES})")
    if kind == "all_idb1" and options["n_with_blasts"] > options["n_images"]:
        raise InputError(f"{where}: n_with_blasts > n_images")
    for key in ("size", "height", "width"):
        if key in options and options[key] < 16:
            raise InputError(f"{where}: synthetic {kind} {key} must be at least 16 pixels")
    return options


def _temp_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}.tmp-{socket.gethostname()}-"


def _remove_stale_temps(out_dir: Path) -> None:
    """Delete temporary folders left by killed generations of this set on this machine."""
    prefix = _temp_prefix(out_dir)
    if not out_dir.parent.is_dir():
        return
    for path in out_dir.parent.glob(prefix + "*"):
        pid = path.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:  # a helper's job list
                path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_jobs(jobs: list, workers: int, scratch: Path) -> int:
    """Run jobs here and in ``workers - 1`` helper processes; returns the file count.

    Helpers are plain ``python -m leukocyte_cnn.data.synthetic <jobs.json>`` processes: unlike
    multiprocessing's spawn they never re-run the caller's script (a notebook, or a script
    without a ``__main__`` guard), and unlike fork they are safe when the caller already runs
    TensorFlow's threads. Their job lists go through JSON files named ``<scratch>.jobs-K.json``.
    Each image has its own generator, so the files are the same whatever the split. A helper
    that fails has its share redone here.
    """
    if workers <= 1 or len(jobs) < 2:
        return sum(_run_job(job) for job in jobs)
    shares = [jobs[k::workers] for k in range(workers)]  # interleaved: similar work each
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    helpers = []
    try:
        for k, share in enumerate(shares[1:], 1):
            job_file = scratch.parent / f"{scratch.name}.jobs-{k}.json"
            write_text(job_file, json.dumps(share))
            proc = subprocess.Popen([sys.executable, "-m", "leukocyte_cnn.data.synthetic",
                                     str(job_file)], env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            helpers.append((proc, share, job_file))
        n_files = sum(_run_job(job) for job in shares[0])
        for proc, share, _ in helpers:
            out, err = proc.communicate()
            if proc.returncode == 0 and out.strip().isdigit():
                n_files += int(out)
            else:  # redo its share here: same files, just slower
                print(f"synthetic: a helper process failed ({err.decode(errors='replace')[-300:]}"
                      "); generating its images here", file=sys.stderr, flush=True)
                n_files += sum(_run_job(job) for job in share)
        return n_files
    finally:
        for proc, _, job_file in helpers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            job_file.unlink(missing_ok=True)


def _helper_main(job_file: str) -> None:
    """Entry of a helper process started by :func:`_run_jobs`: jobs in, file count out."""
    jobs = json.loads(Path(job_file).read_text(encoding="utf-8"))
    print(sum(_run_job(tuple(job)) for job in jobs), flush=True)


def _marker(kind: str, seed: int, options: dict, n_files: int) -> dict:
    return {"format_version": SYNTHETIC_FORMAT_VERSION, "kind": kind, "seed": int(seed),
            "options": options, "files": n_files}


def _stale_reason(root: Path, kind: str, seed: int, options: dict) -> str | None:
    """Why ``root`` is not a finished set of this kind, seed, options and format version
    (``None`` when it is one)."""
    try:
        marker = json.loads((root / COMPLETE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no .complete marker"
    except (OSError, ValueError):
        marker = None
    if not isinstance(marker, dict):
        return "marker of an older format"
    version = marker.get("format_version", 1)
    if version != SYNTHETIC_FORMAT_VERSION:
        return f"format version {version}, current {SYNTHETIC_FORMAT_VERSION}"
    wanted = {"kind": kind, "seed": int(seed), "options": options}
    if any(marker.get(key) != value for key, value in wanted.items()):
        return "made with other generation parameters"
    return None


def is_current(root: str | os.PathLike, kind: str, seed: int = 0, **size_options) -> bool:
    """Whether ``root`` holds a finished set of ``kind`` with this seed, these size options
    and the current :data:`SYNTHETIC_FORMAT_VERSION` (what :func:`ensure_synthetic` reuses)."""
    options = _options(kind, size_options, root)
    return _stale_reason(Path(root), kind, seed, options) is None


def generate(kind: str, out_dir: str | os.PathLike, seed: int = 0, workers: int | None = None,
             replace: bool = True, **size_options) -> Path:
    """Render the set ``kind`` into ``out_dir``; returns ``out_dir``.

    Files go into a temporary sibling folder that is renamed into place once complete (with
    the ``.complete`` marker written last inside it: format version, kind, seed, options and
    file count), so an interrupted generation never leaves a half set. An existing ``out_dir``
    is replaced, unless ``replace`` is False and it is a current set (:func:`is_current`:
    another process finished the same set meanwhile, same seed, same bytes).
    ``workers`` processes (default: 2 when there are many images, else 1) give the same files.
    """
    out_dir = Path(out_dir)
    options = _options(kind, size_options, out_dir)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"{out_dir}: seed must be a non-negative integer, got {seed!r}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out_dir)
    tmp = out_dir.parent / f"{_temp_prefix(out_dir)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        jobs = _JOB_BUILDERS[kind](tmp, int(seed), **options)
        if workers is None:  # two processes pay off once their start-up (~1 s) is small
            workers = min(2, os.cpu_count() or 1) if len(jobs) >= 150 else 1
        n_files = _run_jobs(jobs, workers, tmp)
        write_json(tmp / COMPLETE, _marker(kind, seed, options, n_files))
        if not replace and _stale_reason(out_dir, kind, seed, options) is None:
            return out_dir  # the finally clause drops our identical copy
        if out_dir.exists():  # replace: move the old set aside first, then drop it
            old = out_dir.parent / f"{tmp.name}-old"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def synthetic_root(kind: str, data_dir: str | os.PathLike = "data", seed: int = 0,
                   **size_options) -> Path:
    """Where a set lives: ``<data_dir>/synthetic/<kind>``, or ``<kind>_<hash>`` when the seed
    or the size options differ from the defaults, so different sets never mix."""
    options = _options(kind, size_options, Path(data_dir) / "synthetic" / kind)
    tag = ""
    if options != DEFAULTS[kind] or seed != 0:
        text = json.dumps({"seed": int(seed), "options": options}, sort_keys=True)
        tag = "_" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return Path(data_dir) / "synthetic" / f"{kind}{tag}"


def ensure_synthetic(kind: str, data_dir: str | os.PathLike = "data", seed: int = 0,
                     **size_options) -> Path:
    """The set's folder, generated first when it is not a current set: its ``.complete``
    marker is missing, or names another :data:`SYNTHETIC_FORMAT_VERSION` or other generation
    parameters (a stale set is replaced atomically, never reused)."""
    root = synthetic_root(kind, data_dir, seed, **size_options)
    options = _options(kind, size_options, root)
    if _stale_reason(root, kind, seed, options) is None:
        return root
    # Jobs started together (one per fold) wait for the first one's set instead of each
    # rendering their own (base.locks); generate() stays atomic for jobs the lock cannot see.
    with artifact_lock(root, f"synthetic {kind} set {root}") as waited:
        stale = _stale_reason(root, kind, seed, options)
        if stale is None:
            if waited:
                print(f"synthetic {kind} set in {root}: made by another job, reused", flush=True)
            return root
        if root.exists() and stale != "no .complete marker":
            print(f"synthetic {kind} set in {root} is stale ({stale}); regenerating", flush=True)
        start = time.perf_counter()
        try:
            generate(kind, root, seed, replace=False, **size_options)
        except OSError as exc:
            if _stale_reason(root, kind, seed, options) is None:  # another process was first
                return root
            raise InputError(f"{root}: cannot write the synthetic set ({exc})") from None
    print(f"generated synthetic {kind} set in {root} ({time.perf_counter() - start:.1f} s)",
          flush=True)
    return root


if __name__ == "__main__":
    _helper_main(sys.argv[1])
