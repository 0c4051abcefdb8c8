"""Render the embedded synthetic blood-cell datasets (the repository's default data).

Writes, from one seed, byte-identical sets in the real datasets' layouts under
``<data-dir>/synthetic/<kind>/`` (docs/architecture.md, "Synthetic data"): an ALL-IDB2-like
binary set (``all_idb2``), an imbalanced 7-class single-cell set with a labels CSV
(``multiclass``), a Kaggle-like 4-class TRAIN/TEST set of augmented copies (``kaggle``),
ALL-IDB1-like smears with blast centroids (``all_idb1``) and a C-NMC-like set of segmented
cells with patient ids and per-patient stains (``cnmc``). Every single-cell image has a
nucleus/cytoplasm mask. Scripts generate what they need on first use; this script
(re)generates on request and makes the large sets the benchmarks use, e.g.

    python generate_synthetic_data.py --kind kaggle --kaggle-train-cells 830   # ~10,000 images

Sets whose seed or sizes differ from the defaults get their own folder
(``<kind>_<hash>``), so they never mix with the default ones.
"""
from __future__ import annotations

import argparse
import sys
import time

KIND = "all"  # which set(s) to generate
DATA_DIR = "data"  # sets go to <DATA_DIR>/synthetic/<kind>
SEED = 0  # same seed -> byte-identical files
WORKERS = None  # processes; None: 2 for large sets, else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from leukocyte_cnn.base.knobs import knob_argument
    from leukocyte_cnn.data.synthetic import KINDS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    knob_argument(parser, "--kind", knob="KIND", choices=("all", *KINDS),
                  help=f"which synthetic set to generate (KIND, default {KIND})")
    knob_argument(parser, "--data-dir", knob="DATA_DIR",
                  help=f"data folder; sets go to <data-dir>/synthetic/<kind> "
                       f"(DATA_DIR, default {DATA_DIR})")
    knob_argument(parser, "--seed", knob="SEED", type=int,
                  help=f"seed; the same seed gives byte-identical files (SEED, default {SEED})")
    parser.add_argument("--force", action="store_true",
                        help="regenerate even if the set is complete (replaced atomically)")
    knob_argument(parser, "--workers", knob="WORKERS", type=int,
                  help="processes to render with (default: 2 for large sets, else 1); "
                             "the files do not depend on it")
    parser.add_argument("--all-idb2-per-class", type=int, default=None,
                        help="all_idb2: images per class (default 130)")
    parser.add_argument("--all-idb2-size", type=int, default=None,
                        help="all_idb2: image side in pixels (default 257)")
    parser.add_argument("--multiclass-size", type=int, default=None,
                        help="multiclass: image side in pixels (default 257)")
    parser.add_argument("--kaggle-train-cells", type=int, default=None,
                        help="kaggle: source cells per class in TRAIN (default 20; 830 with "
                             "3 copies gives a Kaggle-sized set of ~10,000 images)")
    parser.add_argument("--kaggle-copies", type=int, default=None,
                        help="kaggle: augmented copies per TRAIN source cell (default 3)")
    parser.add_argument("--kaggle-test-cells", type=int, default=None,
                        help="kaggle: cells per class in TEST, one copy each (default 15)")
    parser.add_argument("--all-idb1-images", type=int, default=None,
                        help="all_idb1: number of smears, half of them with blasts "
                             "(default 20)")
    parser.add_argument("--cnmc-cells", type=int, default=None,
                        help="cnmc: cells per patient (default 10)")
    return parser.parse_args(argv)


def size_options(kind: str, args: argparse.Namespace) -> dict:
    """The size options of ``kind`` that were given on the command line."""
    per_kind = {
        "all_idb2": {"n_blast": args.all_idb2_per_class, "n_other": args.all_idb2_per_class,
                     "size": args.all_idb2_size},
        "multiclass": {"size": args.multiclass_size},
        "kaggle": {"train_cells": args.kaggle_train_cells, "copies": args.kaggle_copies,
                   "test_cells": args.kaggle_test_cells},
        "all_idb1": {"n_images": args.all_idb1_images,
                     "n_with_blasts": None if args.all_idb1_images is None
                     else args.all_idb1_images // 2},
        "cnmc": {"cells": args.cnmc_cells},
    }[kind]
    return {key: value for key, value in per_kind.items() if value is not None}


def main(args: argparse.Namespace) -> None:
    from leukocyte_cnn.base.knobs import resolve_settings
    from leukocyte_cnn.data.synthetic import COMPLETE, KINDS, generate, is_current, synthetic_root

    s = resolve_settings(sys.modules[__name__], args, quick=False)
    kinds = KINDS if s["KIND"] == "all" else (s["KIND"],)
    seed = s["SEED"]
    start_all = time.perf_counter()
    for kind in kinds:
        options = size_options(kind, args)
        root = synthetic_root(kind, s["DATA_DIR"], seed, **options)
        if is_current(root, kind, seed, **options) and not args.force:
            print(f"{kind}: {root} is complete (use --force to regenerate)", flush=True)
            continue
        start = time.perf_counter()
        generate(kind, root, seed, workers=s["WORKERS"], replace=True, **options)
        n_files = sum(1 for p in root.rglob("*") if p.is_file() and p.name != COMPLETE)
        print(f"{kind}: wrote {n_files} files to {root} in {time.perf_counter() - start:.1f} s",
              flush=True)
    print(f"done in {time.perf_counter() - start_all:.1f} s", flush=True)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
