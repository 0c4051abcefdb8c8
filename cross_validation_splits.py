"""Cross-validation splits: which images train, validate and test in every fold.

Follows ``Cross_Validation_Splits.py`` of the Helmholtz externship (J. Schouten): the images
of each class are spread evenly over the folds, so every fold contains every class, and
classes with four images or fewer are set aside (fold -1). The thesis used leave-five-out
(P = 5) on ALL-IDB: 260 ALL-IDB2 images give 52 folds of 5 test images.

Writes ``data/splits/<name>.csv`` (one row per fold and image, with its role) and
``<name>.json`` (the settings and a hash of the dataset listing). Every training script reads
these files, so all experiments on a split test the same images, and a split made for another
copy of the dataset is refused.

Examples::

    python cross_validation_splits.py --dataset all_idb2 --data-root ../shared/data/all_idb2_lowres
    python cross_validation_splits.py --dataset synthetic_multiclass --exclude thrombocyte
    python cross_validation_splits.py --dataset cnmc --data-root /data/C-NMC --method group_kfold
    python cross_validation_splits.py --dataset kaggle --data-root /data/blood-cells
"""
from __future__ import annotations

import argparse
import sys

DATASET = "synthetic_all_idb2"  # reader name; synthetic_* sets are generated on first use
K = 5                     # folds of kfold / group_kfold
P = 5                     # test images per fold of lpo (the thesis' leave-five-out)
SEED = 0                  # seeds every random choice; same seed -> byte-identical files
VAL_FRACTION = 0.2        # share of each fold's non-test images used for early stopping
TEST_FRACTION = 0.2       # share of images tested by --method random
MIN_IMAGES = 5            # thesis rule: classes with fewer images are set aside
OUT_DIR = "data/splits"   # where split files go (docs/architecture.md)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.knobs import knob_argument
    from leukocyte_cnn.splits.request import METHODS, NEAR_DUPLICATE_MODES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    knob_argument(parser, "--dataset", knob="DATASET",
                  help=f"dataset reader name (DATASET, default {DATASET}), e.g. all_idb2, "
                       "kaggle, cnmc, pbc, zheng2018, synthetic_multiclass")
    parser.add_argument("--data-root", default=None,
                        help="dataset folder as its owners distribute it (stored as given; not "
                             "needed for synthetic_* sets)")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="lpo: leave-P-out as in the thesis; kfold: stratified k-fold; "
                             "group_kfold: k-fold disjoint by patient/source cell; predefined: "
                             "the owner's TEST split or fold_k folders; random: one image-level "
                             "split that ignores groups (leaky; only to reproduce published "
                             "numbers). kfold and lpo split by group when images share "
                             "patients/smears/source cells. Default: group_kfold when images "
                             "share groups, lpo for ALL-IDB-like sets, predefined when the "
                             "data ships a TEST split, else kfold")
    knob_argument(parser, "--k", knob="K", type=int,
                  help=f"folds of kfold/group_kfold (K, default {K})")
    knob_argument(parser, "--p", knob="P", type=int,
                  help=f"test images per fold of lpo (P, default {P}: ceil(N/P) folds)")
    knob_argument(parser, "--seed", knob="SEED", type=int,
                  help=f"random seed (SEED, default {SEED})")
    knob_argument(parser, "--val-fraction", knob="VAL_FRACTION", type=float,
                  help=f"validation share of each fold's non-test images, per class "
                       f"(VAL_FRACTION, default {VAL_FRACTION}; 0: no validation set)")
    knob_argument(parser, "--test-fraction", knob="TEST_FRACTION", type=float,
                  help=f"test share for --method random (TEST_FRACTION, default {TEST_FRACTION})")
    knob_argument(parser, "--min-images", knob="MIN_IMAGES", type=int,
                  help=f"classes with fewer images are set aside (MIN_IMAGES, default "
                       f"{MIN_IMAGES})")
    parser.add_argument("--exclude", action="append", default=[], metavar="CLASS",
                        help="set this class aside too (repeatable), e.g. --exclude thrombocyte")
    parser.add_argument("--test-sources", default="TEST",
                        help="predefined: comma-separated source splits that form the test set "
                             "(default TEST)")
    parser.add_argument("--val-sources", default=None,
                        help="predefined: source splits used as validation set (default: the "
                             "owner's VAL split if there is one, else carved from training)")
    parser.add_argument("--train-sources", default=None,
                        help="predefined: source splits that train (default: TRAIN if present, "
                             "else every split that is not test or validation)")
    parser.add_argument("--near-duplicates", choices=NEAR_DUPLICATE_MODES, default="auto",
                        help="join copies of one cell (identical or near-duplicate pixels) "
                             "into one group before the split, so test and validation images "
                             "are drawn by group; auto = for every method but random when the "
                             "data has no groups of its own and holds copies by nature "
                             "(Kaggle), and for predefined splits of ungrouped data. off on "
                             "Kaggle gives an image-level split, labelled LEAKY. Default auto")
    parser.add_argument("--near-threshold", type=int, default=None,
                        help="hash screen: pairs within this Hamming distance in bits are "
                             "verified on pixels as possible copies (default: the screen's "
                             "calibrated perceptual_hash.DEFAULT_THRESHOLD = 10)")
    parser.add_argument("--ignore-groups", action="store_true",
                        help="split by image even when images share patients/smears/source "
                             "cells (and do not join copies): the split is marked leaky and "
                             "every run on it is labelled LEAKY; only to reproduce published "
                             "numbers made that way")
    parser.add_argument("--name", default=None,
                        help="file name of the split (default: <dataset>_<method>_<k|p>_seed<seed>"
                             ", plus exclusions, then _<fingerprint>: the first 10 hex digits "
                             "of the hash of the images and every setting, so splits made "
                             "differently never share a file). An existing file made from other "
                             "inputs is never overwritten")
    knob_argument(parser, "--out-dir", knob="OUT_DIR",
                  help=f"output folder (OUT_DIR, default {OUT_DIR})")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave unreadable image files out (listed in the JSON) instead of "
                             "stopping")
    parser.add_argument("--no-check-images", action="store_true",
                        help="do not decode every image first (faster; bad files then surface "
                             "during training)")
    parser.add_argument("--zheng-dataset", choices=("1", "2", "both"), default=None,
                        help="zheng2018 only: which of the two Zheng et al. sets to read")
    parser.add_argument("--reader-option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra option passed to the dataset reader (repeatable)")
    parser.add_argument("--print-path", action="store_true",
                        help="end with one line holding only the split file's path (for "
                             "pipelines that run this script as a step)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace):
    """Write the split (or find the identical one already written); return its CSV path."""
    from leukocyte_cnn.base.knobs import resolve_settings
    from leukocyte_cnn.runs.experiment import make_split_file_once
    from leukocyte_cnn.splits.request import SplitRequest, parse_reader_options

    s = resolve_settings(sys.modules[__name__], args, quick=False)
    request = SplitRequest(
        dataset=s["DATASET"], data_root=args.data_root, method=args.method, seed=s["SEED"],
        val_fraction=s["VAL_FRACTION"], min_images=s["MIN_IMAGES"], k=s["K"], p=s["P"],
        test_fraction=s["TEST_FRACTION"], exclude=tuple(args.exclude),
        reader_options=parse_reader_options(args.reader_option, args.zheng_dataset),
        test_sources=args.test_sources, val_sources=args.val_sources,
        train_sources=args.train_sources, near_duplicates=args.near_duplicates,
        near_threshold=args.near_threshold, ignore_groups=args.ignore_groups, name=args.name,
        out_dir=s["OUT_DIR"], skip_bad=args.skip_bad, check_images=not args.no_check_images)
    csv_path = make_split_file_once(request)  # jobs started together write it once
    if args.print_path:
        print(csv_path, flush=True)
    return csv_path


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
