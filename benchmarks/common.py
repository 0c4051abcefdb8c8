"""What every benchmark shares: the machine line, test images, timing, peak memory, verdicts.

Benchmarks print figures, the baseline measured in the same run, the ratio and one
``PASS``/``FAIL`` line per target. Absolute figures depend on the machine and on what else
runs on it; the ratios, measured side by side in one process, are what the README reports.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "benchmarks" / "out"  # git-ignored
DATA_DIR = REPO_ROOT / "data"              # git-ignored; synthetic sets are cached here

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Kaggle "blood cells" geometry: 320x240 JPEGs, trained at 120x160 (height, width).
KAGGLE_SOURCE_SIZE = (240, 320)
KAGGLE_TRAIN_SIZE = (120, 160)
KAGGLE_CLASSES = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
NOISE_SIGMA = 2.5  # pixel noise of rendered JPEGs; gives ~9 KB files like the real Kaggle ones


# --------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:
        return "n/a"


def machine_line() -> str:
    """One line: CPU, cores, TF version, date and the load average when the run started."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return (f"machine: {cpu_model()}, {os.cpu_count()} cores, "
            f"{f'{len(gpus)} GPU(s)' if gpus else 'no GPU'}; TensorFlow {tf.__version__}; "
            f"{_dt.datetime.now().isoformat(timespec='minutes')}; load average {load_average()}")


def print_header(title: str) -> None:
    print(f"== {title}")
    print(machine_line(), flush=True)


# --------------------------------------------------------------------------- test images


def render_cell_jpegs(folder: Path, n: int, size: tuple[int, int] = KAGGLE_SOURCE_SIZE,
                      seed: int = 0, quality: int = 90) -> list[Path]:
    """``n`` Kaggle-like JPEGs (pink background, red cells, one purple nucleus), rendered
    with NumPy; used when the synthetic generator is not available. Cached by count."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{KAGGLE_CLASSES[i % 4]}_{i:05d}.jpeg" for i in range(n)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if not missing:
        return paths
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    for i in missing:
        img = np.empty((h, w, 3), np.float32)
        img[:] = (235, 200, 205)
        for _ in range(12):  # red cells
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(18, 30)
            d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            ring = np.clip(1.0 - np.abs(d - r * 0.7) / (r * 0.5), 0, 1)[..., None]
            img = img * (1 - 0.5 * ring) + 0.5 * ring * np.array((215, 120, 130))
        cy, cx, r = h / 2 + rng.normal(0, 10), w / 2 + rng.normal(0, 10), rng.uniform(25, 40)
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        nucleus = np.clip((r - d) / 4, 0, 1)[..., None]
        img = img * (1 - nucleus) + nucleus * np.array((110, 60, 150))
        img += rng.normal(0, NOISE_SIGMA, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            paths[i], format="JPEG", quality=quality)
    return paths


# The Kaggle-sized synthetic set of bench_memory.py (9,960 TRAIN + 2,488 TEST images).
KAGGLE_SIZED = dict(train_cells=830, copies=3, test_cells=622)


def synthetic_kaggle(train_cells: int, copies: int, test_cells: int, seed: int = 0,
                     generate: bool = True):
    """The synthetic Kaggle set (generated once under ``data/``) as a reader table; ``None``
    when ``leukocyte_cnn.data.synthetic`` is missing or (``generate=False``) the set is not
    there."""
    try:
        from leukocyte_cnn.data.synthetic import ensure_synthetic, is_current, synthetic_root
    except ImportError:
        return None
    from leukocyte_cnn.data.datasets import read_dataset

    options = dict(train_cells=train_cells, copies=copies, test_cells=test_cells)
    if not generate and not is_current(synthetic_root("kaggle", DATA_DIR, seed, **options),
                                       "kaggle", seed, **options):
        return None
    root = ensure_synthetic("kaggle", DATA_DIR, seed, **options)
    # Point the reader at the images: from the set root it finds masks/{TRAIN,TEST} first.
    return read_dataset("kaggle", root / "dataset2-master")


def kaggle_like_files(n: int, seed: int = 0) -> tuple[list[str], list[int], str]:
    """``n`` 320x240 JPEGs with labels, and a word on where they came from.

    Prefers the Kaggle-sized synthetic set when it exists (``bench_memory.py`` makes it),
    else a synthetic set just big enough (generated once, cached); takes TRAIN images evenly
    spread over the sorted table so every class is present. Falls back to NumPy-rendered
    JPEGs under ``benchmarks/out/`` when ``leukocyte_cnn.data.synthetic`` is missing.
    """
    import numpy as np

    table = synthetic_kaggle(**KAGGLE_SIZED, seed=seed, generate=False)
    if table is None:
        cells = max(20, -(-n // (3 * 4)))  # 3 copies x 4 classes; 20 = the default set
        table = synthetic_kaggle(train_cells=cells, copies=3, test_cells=15, seed=seed)
    if table is not None:
        train = table[table["source_split"] == "TRAIN"].reset_index(drop=True)
        if len(train) >= n:
            train = train.iloc[np.linspace(0, len(train) - 1, n).round().astype(int)]
            return (train["path"].tolist(), train["label"].astype(int).tolist(),
                    f"{n} TRAIN JPEGs 320x240 of the synthetic Kaggle set data/synthetic/"
                    f"{Path(train['path'].iloc[0]).parents[4].name} ({len(table)} images)")
    paths = render_cell_jpegs(OUT_DIR / "kaggle_like_jpegs", n, seed=seed)
    return ([str(p) for p in paths], [i % 4 for i in range(n)],
            f"{n} NumPy-rendered 320x240 JPEGs (quality 90) in benchmarks/out/")


# --------------------------------------------------------------------------- timing


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def iterate(ds) -> int:
    """Pull every element of a dataset; return the number of images seen."""
    n = 0
    for batch in ds:
        x = batch[0] if isinstance(batch, tuple) else batch
        n += int(x.shape[0])
    return n


# --------------------------------------------------------------------------- peak memory


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this program's own memory.
    ``getrusage().ru_maxrss`` is not used there: it survives ``execve``, so a child started
    from a big parent reports the parent's size (at fork) as its own peak until it grows past
    it (seen here: a 1,000-image float64 load "grew" by 1.3 instead of 2.0 GiB).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_child(script: Path, args: Sequence[str], timeout: float | None = None) -> dict:
    """Run ``python script args...`` in a fresh process; its last stdout line is JSON.

    A fresh process per measurement keeps one measurement's peak out of the next one. The
    parent also watches the child's memory itself, as a check on the child's own
    ``getrusage`` figure: ``sampled_peak_rss_mib`` (the largest VmRSS read from
    /proc/<pid>/status every 20 ms) is added to the returned dict where /proc exists.
    """
    import threading

    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampled = [0.0]
    done = threading.Event()

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while not done.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        sampled[0] = max(sampled[0], int(line.split()[1]) / 1024.0)
            except (OSError, ValueError):
                pass
            done.wait(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        done.set()
        watcher.join()
    if proc.returncode != 0:
        sys.stderr.write(out[-3000:] + err[-3000:])
        raise RuntimeError(f"{script.name} {' '.join(args)}: exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    if sampled[0]:
        result["sampled_peak_rss_mib"] = sampled[0]
    return result


# --------------------------------------------------------------------------- verdicts


def verdict(name: str, ok: bool, measured: str, target: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {measured} (target {target})", flush=True)
    return ok


def script_block(script: str) -> dict:
    """A script's knobs as its block writes them (no ``--quick``), e.g. ``elu_cnn_optimizers``:
    the benchmarks build each network with the numbers its study trains."""
    import importlib

    from leukocyte_cnn.base.knobs import script_knobs

    return script_knobs(importlib.import_module(script))


def study_network(builder: str, shape: tuple[int, int, int], classes: int, **changes):
    """A fresh, uncompiled network as its study script builds it, from the script's knob block
    (``changes`` replace builder keywords, e.g. a smaller ELU CNN)."""
    from leukocyte_cnn.models import applications, networks, resnext

    if builder == "linear_cnn":
        k = script_block("linear_cnn_binary_lpocv")
        return networks.linear_cnn(**{"input_shape": shape, "num_classes": classes,
                                      "filters": k["FILTERS"], "kernel_size": k["KERNEL_SIZE"],
                                      "pool_size": k["POOL_SIZE"],
                                      "dense_units": k["DENSE_UNITS"],
                                      "binary_sigmoid": classes == 2, **changes})
    if builder == "paper_cnn":
        k = script_block("all_idb1_paper_cnn")
        return networks.paper_cnn(**{"input_shape": shape, "num_classes": classes,
                                     "filters": k["FILTERS"], "kernel_size": k["KERNEL_SIZE"],
                                     "padding": k["PADDING"], "pool_size": k["POOL_SIZE"],
                                     **changes})
    if builder == "elu_cnn":
        k = script_block("elu_cnn_optimizers")
        return networks.elu_cnn(**{
            "input_shape": shape, "num_classes": classes, "filters": k["FILTERS"],
            "convs_per_block": k["CONVS_PER_BLOCK"], "kernel_size": k["KERNEL_SIZE"],
            "pool_size": k["POOL_SIZE"], "dense_units": k["DENSE_UNITS"],
            "dense_layers": k["DENSE_LAYERS"], "dropout": 0.0, "bn_momentum": k["BN_MOMENTUM"],
            "head_pooling": k["HEAD_POOLING"], **changes})
    if builder in ("copenhagen_cnn", "copenhagen_fcn"):
        k = script_block("scaling_masks_cnn_fcn")
        common = {"input_shape": shape, "num_classes": classes, "filters": k["FILTERS"],
                  "first_pool": k["FIRST_POOL"]}
        if builder == "copenhagen_cnn":
            return networks.copenhagen_cnn(**{**common, **k["CNN"],
                                              "dense_units": k["CNN_DENSE_UNITS"], **changes})
        last_pool = 5 if shape[0] >= 120 else 2  # 5x5 fits 120x160 only
        return networks.copenhagen_fcn(**{**common, **k["FCN"], "last_pool": last_pool,
                                          "conv_units": k["FCN_CONV_UNITS"], **changes})
    if builder == "unet":
        k = script_block("unet_masks")
        return networks.unet(**{"input_shape": shape, "start_filters": k["START_FILTERS"],
                                "first_dropout": k["FIRST_DROPOUT"], "dropout": k["DROPOUT"],
                                **changes})
    if builder in resnext.VARIANT_ARCHITECTURES:
        return resnext.build_variant(builder, shape[0], classes, bn_momentum=0.9)
    if builder == "resnet50":
        k = script_block("resnet50_training_depth")
        return applications.resnet50_model(**{
            "input_shape": shape, "num_classes": classes, "weights": None, "trainable": "full",
            "unfreeze_from": f"conv{k['UNFREEZE_FROM_STAGE']}_block1_1_conv",
            "pooling": k["POOLING"], "dropout": k["HEAD_DROPOUT"],
            "bn_momentum": k["BN_MOMENTUM"], **changes})
    k = script_block("cnmc_transfer")
    return applications.cnmc_model(**{
        "backbone_name": builder, "input_shape": shape, "num_classes": classes, "weights": None,
        "backbone_trainable": k["BACKBONE_TRAINABLE"], "pooling": k["POOLING"],
        "dense_units": k["DENSE_UNITS"], "dropouts": k["DROPOUTS"], "l2": k["L2"], "l1": k["L1"],
        "bn_momentum": k["BN_MOMENTUM"], **changes})
