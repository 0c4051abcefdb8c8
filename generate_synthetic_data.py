"""Render the embedded synthetic blood-cell datasets (the repository's default data).

Writes, from one seed, byte-identical sets in the real datasets' layouts under
``data/synthetic/<kind>/``: an ALL-IDB2-like binary set, an imbalanced multiclass single-cell
set with a labels CSV, a Kaggle-like 4-class TRAIN/TEST set, ALL-IDB1-like smears with blast
centroids, and a C-NMC-like set with patient ids. Every single-cell image has a mask. Scripts
generate what they need on first use; this script (re)generates on request and can make the
large sets the benchmarks use.
"""
from __future__ import annotations

import argparse
import time

KINDS_DEFAULT = "all"      # which sets to generate
SEED = 0                   # same seed -> byte-identical files


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.synthetic import KINDS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default=KINDS_DEFAULT, choices=("all", *KINDS),
                        help="which synthetic set to generate (default all)")
    parser.add_argument("--data-dir", default="data", help="data folder (default data/)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed (default {SEED})")
    parser.add_argument("--force", action="store_true", help="regenerate even if complete")
    parser.add_argument("--kaggle-train-cells", type=int, default=None,
                        help="kaggle: source cells per class in TRAIN (default 20; 830 with "
                             "--kaggle-copies 3 gives a Kaggle-sized set of ~10,000 images)")
    parser.add_argument("--kaggle-copies", type=int, default=None,
                        help="kaggle: augmented copies per TRAIN source cell (default 3)")
    parser.add_argument("--kaggle-test-cells", type=int, default=None,
                        help="kaggle: cells per class in TEST (default 15)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    import shutil

    from leukocyte_cnn.synthetic import KINDS, ensure_synthetic, synthetic_root

    kinds = KINDS if args.kind == "all" else (args.kind,)
    for kind in kinds:
        options = {}
        if kind == "kaggle":
            options = {key: value for key, value in (
                ("train_cells", args.kaggle_train_cells), ("copies", args.kaggle_copies),
                ("test_cells", args.kaggle_test_cells)) if value is not None}
        root = synthetic_root(kind, args.data_dir, args.seed, **options)
        if args.force and root.exists():
            shutil.rmtree(root)
        start = time.perf_counter()
        ensure_synthetic(kind, args.data_dir, args.seed, **options)
        n_files = sum(1 for p in root.rglob("*") if p.is_file())
        print(f"{kind}: {root} ({n_files} files, {time.perf_counter() - start:.1f} s)", flush=True)


if __name__ == "__main__":
    from leukocyte_cnn.errors import run_main

    run_main(lambda: main(parse_args()))
