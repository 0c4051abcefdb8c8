"""The README's main job: the Helmholtz externship pipeline, step by step.

synthetic data -> fold files -> class balancing of training folds -> binary linear CNN
(lymphoblast vs other) -> multiclass linear CNN -> summaries. Each step is one of the
repository's scripts, run as its own process with the command line printed first, so a
researcher can re-run or change any single step. With ``--quick`` the chain uses 3-fold CV at
64 px and a few epochs (minutes on a laptop CPU); without it, the thesis settings (leave-5-out,
257 px, up to 500 epochs), which want a GPU.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3-fold CV at 64 px with few epochs (the README's main job)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every step (default 0)")
    parser.add_argument("--results-dir", default="results", help="where run folders go")
    parser.add_argument("--quiet", action="store_true",
                        help="training steps print one line per fold only (no epoch lines)")
    parser.add_argument("--verbose", action="store_true",
                        help="training steps also show TensorFlow's own log lines")
    return parser.parse_args(argv)


def split_steps(quick: bool, seed: int) -> dict[str, list[str]]:
    """The two split commands: binary (ALL-IDB2-like) and multiclass. Their files are named
    by the split's fingerprint (cross_validation_splits.py), so a changed dataset or setting
    gets a new file instead of a clash with the one an earlier run left."""
    method = ["--method", "kfold", "--k", "3"] if quick else ["--method", "lpo", "--p", "5"]
    return {
        "binary": ["cross_validation_splits.py", "--dataset", "synthetic_all_idb2", *method,
                   "--seed", str(seed)],
        "multiclass": ["cross_validation_splits.py", "--dataset", "synthetic_multiclass",
                       *method, "--min-images", "5", "--exclude", "thrombocyte",
                       "--seed", str(seed)],
    }


def training_steps(quick: bool, seed: int, results_dir: str, binary_split: str,
                   multi_split: str, console: list[str] = ()) -> list[list[str]]:
    common = ["--seed", str(seed)] + (["--quick"] if quick else []) + list(console)
    return [
        ["linear_cnn_da.py", "--dataset", "synthetic_multiclass", "--split", multi_split, *common],
        ["linear_cnn_binary_lpocv.py", "--dataset", "synthetic_all_idb2", "--split", binary_split,
         "--results-dir", results_dir, *common],
        ["linear_cnn_multiclass_lpocv.py", "--dataset", "synthetic_multiclass",
         "--split", multi_split, "--results-dir", results_dir, *common],
    ]


def run_step(i: int, step: list[str]) -> None:
    print(f"\n=== step {i}: python {' '.join(step)}", flush=True)
    result = subprocess.run([sys.executable, *step])
    if result.returncode != 0:
        sys.exit(f"step {i} failed ({step[0]} exited {result.returncode}); "
                 "fix it and run again: finished steps and folds are kept")


def split_step(i: int, step: list[str]) -> str:
    """Run a split command as its own process (its lines shown); return the split file."""
    print(f"\n=== step {i}: python {' '.join(step)}", flush=True)
    result = subprocess.run([sys.executable, *step, "--print-path"], stdout=subprocess.PIPE,
                            text=True)
    lines = result.stdout.strip().splitlines()
    print("\n".join(lines[:-1]), flush=True)
    if result.returncode != 0 or not lines:
        sys.exit(f"step {i} failed ({step[0]} exited {result.returncode}); "
                 "fix it and run again: finished steps and folds are kept")
    return lines[-1]


def main(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    console = ["--quiet"] * args.quiet + ["--verbose"] * args.verbose
    for i, kind in enumerate(("all_idb2", "multiclass"), 1):
        run_step(i, ["generate_synthetic_data.py", "--kind", kind, "--seed", str(args.seed)])
    splits = {name: split_step(i, step)
              for i, (name, step) in enumerate(split_steps(args.quick, args.seed).items(), 3)}
    for i, step in enumerate(training_steps(args.quick, args.seed, args.results_dir,
                                            splits["binary"], splits["multiclass"], console), 5):
        run_step(i, step)
    print(f"\nHelmholtz pipeline finished in {time.perf_counter() - start:.0f} s; "
          f"summaries: {args.results_dir}/linear_cnn_*/summary.md, one page each with figures: "
          f"{args.results_dir}/linear_cnn_*/report.html", flush=True)


if __name__ == "__main__":
    main(parse_args())
