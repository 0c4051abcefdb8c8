"""Peak memory of a hyperparameter sweep: 6 points vs 1 point, and vs a loop in one process.

The Copenhagen study could not tune its hyperparameters because the tuner "would crash due
to RAM limitations": Keras/TensorFlow keep memory across repeated model builds and ``fit``
calls in one process. ``sweep.py`` runs every point in a fresh child process instead. This
benchmark measures what that buys:

* **1 point** and **6 points** (LEARNING_RATE 3 values x BATCH_SIZE 2 values) of
  ``sweep.py linear_cnn_binary_lpocv.py`` on the synthetic ALL-IDB2 set (quick mode, 64 px,
  one fold, a few epochs). The parent samples, every 20 ms, the summed VmRSS of the whole
  process tree (sweep.py and its running point) and reports the largest sum.
* **in one process**: the same 6 points run by one Python process that sets the knobs and
  calls the script's ``main()`` six times (what an in-process tuner does); its peak RSS
  after each point shows the growth that the per-point processes avoid.

**Target: peak RSS of the 6-point sweep <= 1.10x the 1-point sweep's.**

Run: ``.venv/bin/python benchmarks/bench_sweep_memory.py`` (a few minutes on 2 CPU cores;
``--epochs``/``--image-size`` change the per-point training).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import common

SCRIPT = "linear_cnn_binary_lpocv.py"
GRID = {"LEARNING_RATE": [0.001, 0.002, 0.004], "BATCH_SIZE": [8, 16]}  # 6 points
SINGLE = {"LEARNING_RATE": [0.001], "BATCH_SIZE": [8]}
IMAGE_SIZE = 64            # px of the linear CNN's input
EPOCHS = 3                 # epochs per point (early stopping off in effect)
TARGET_RATIO = 1.10        # 6-point sweep's peak / 1-point sweep's peak


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"per point (default {EPOCHS})")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE,
                        help=f"input side in px (default {IMAGE_SIZE})")
    parser.add_argument("--skip-in-process", action="store_true",
                        help="skip the one-process loop (halves the run time)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # internal
    return parser.parse_args(argv)


def script_options(args) -> list[str]:
    return ["--quick", "--image-size", str(args.image_size), "--epochs", str(args.epochs),
            "--folds", "0"]


def tree_rss_mib(root_pid: int) -> float:
    """Summed VmRSS of a process and all its descendants (from /proc), MiB."""
    parents: dict[int, int] = {}
    rss: dict[int, float] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines()
                          if ":" in line)
            pid = int(status.parent.name)
            parents[pid] = int(fields["PPid"])
            rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024.0
        except (OSError, ValueError, KeyError):
            continue
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(rss.get(pid, 0.0) for pid in tree)


def measure_sweep(grid: dict, sweep_dir: Path, args) -> dict:
    """Run one sweep; the largest summed RSS of its process tree and its wall time."""
    shutil.rmtree(sweep_dir, ignore_errors=True)
    sets = [f"--set={name}={','.join(map(str, values))}" for name, values in grid.items()]
    command = [sys.executable, "sweep.py", SCRIPT, *sets, "--sweep-dir", str(sweep_dir),
               *script_options(args)]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=common.REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak, done = [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_mib(proc.pid))
            done.wait(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    done.set()
    watcher.join()
    if proc.returncode != 0:
        sys.stderr.write(out[-3000:])
        raise RuntimeError(f"sweep exited {proc.returncode}")
    points = len(list(sweep_dir.glob("*/sweep_point.json")))
    return {"peak_mib": peak[0], "seconds": time.perf_counter() - start, "points": points}


def in_process_child(args) -> None:
    """The 6 points in this one process: knobs set, ``main()`` called, peak RSS after each."""
    import importlib
    import itertools

    from leukocyte_cnn.base import knobs

    module = importlib.import_module(Path(SCRIPT).stem)
    out_dir = common.OUT_DIR / "sweep_in_process"
    shutil.rmtree(out_dir, ignore_errors=True)
    peaks = []
    for values in itertools.product(*GRID.values()):
        point = dict(zip(GRID, values, strict=True))
        knobs._pending[module.__name__] = point  # as $LEUKOCYTE_KNOBS sets them
        name = ",".join(f"{k}={v}" for k, v in point.items())
        module.main(module.parse_args([*script_options(args), "--results-dir", str(out_dir),
                                       "--run-name", name]))
        peaks.append(common.peak_rss_mib())
    print(json.dumps({"peaks_mib": peaks}))


def main(args) -> int:
    if args.child:
        in_process_child(args)
        return 0
    common.print_header("peak RSS of a 6-point sweep vs 1 point (sweep.py, one process per point)")
    print(f"{SCRIPT} {' '.join(script_options(args))} on synthetic_all_idb2; grid "
          f"{' x '.join(f'{k} {v}' for k, v in GRID.items())}", flush=True)
    out = common.OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    measure_sweep(SINGLE, out / "sweep_warmup", args)  # data, split, caches made once
    single = measure_sweep(SINGLE, out / "sweep_single", args)
    six = measure_sweep(GRID, out / "sweep_six", args)
    ratio = six["peak_mib"] / single["peak_mib"]
    print(f"1-point sweep: peak {single['peak_mib']:,.0f} MiB (process tree), "
          f"{single['seconds']:.0f} s")
    print(f"6-point sweep: peak {six['peak_mib']:,.0f} MiB (process tree), "
          f"{six['seconds']:.0f} s, {six['points']} points finished")
    if not args.skip_in_process:
        loop = common.run_child(Path(__file__), ["--child", "--epochs", str(args.epochs),
                                                 "--image-size", str(args.image_size)])
        peaks = loop["peaks_mib"]
        print("same 6 points in one process, peak RSS after each: "
              + ", ".join(f"{p:,.0f}" for p in peaks) + f" MiB ({peaks[-1] / peaks[0]:.2f}x "
              f"from the first point to the last; parent-sampled peak "
              f"{loop.get('sampled_peak_rss_mib', float('nan')):,.0f} MiB)")
    ok = common.verdict("6-point sweep peak / 1-point peak", ratio <= TARGET_RATIO,
                        f"{ratio:.3f}x", f"<= {TARGET_RATIO:.2f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(parse_args()))
