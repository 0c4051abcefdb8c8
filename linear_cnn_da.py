"""Class balancing by data augmentation, per cross-validation fold (Helmholtz thesis, DA step).

For every fold of a split file, the *training* images of each class are augmented to the same
count (thesis: 150) with seeded, distinct rotations of 0-359 degrees plus flips (optionally
small shifts, zoom and stain jitter). Validation and test images are never read, so no copy of
a test cell can reach training. The images go to
``data/augmented/<split>_balanced_<fingerprint>/fold_XX/<class>/`` with a ``manifest.csv``
naming the source image and the transform of every written file; the fingerprint covers the
split file's SHA-256, the seed and every balancing knob below, so changing a knob (here, with
``--quick``, ``$LEUKOCYTE_KNOBS`` or ``--target``) makes a new folder instead of reusing the
old one. Re-running skips folds whose manifest exists. ``linear_cnn_multiclass_lpocv.py`` and
the ResNeXt scripts train on these folders: with the same balancing knobs they find the same
folder (and make it themselves when it is missing).
"""
from __future__ import annotations

import argparse
import sys
import time

# --- data and split protocol (the default split: the multiclass experiment's)
SPLIT_METHOD = "lpo"      # lpo: leave-P-out as in the thesis; kfold: stratified k-fold
LEAVE_OUT = 5             # P of lpo: test images per fold
K = 5                     # folds of kfold
VAL_FRACTION = 0.2        # validation share of each fold's non-test images (never augmented)
MIN_IMAGES = 5            # classes with fewer images are excluded (thesis: 4 or fewer)
EXCLUDE_CLASSES = ("thrombocyte",)  # set aside by name (not leukocytes)
MAX_FOLDS = None          # balance only the first N folds when --folds is not given (None: all)
# --- class balancing
TARGET_PER_CLASS = 150    # images per class after balancing (thesis: 150)
SHIFT_FRACTION = 0.0      # max random shift as a fraction of the image side (thesis: 0)
ZOOM_FRACTION = 0.0       # max random zoom in/out (thesis: 0)
STAIN_JITTER = 0.0        # max hue/saturation/brightness jitter (thesis: 0)
IMAGE_SIZE = None         # (height, width) to resize written images to; None keeps the original
# --quick: the multiclass quick run's folds: the first 3, 40 images per class at 64x64
QUICK = dict(TARGET_PER_CLASS=40, IMAGE_SIZE=(64, 64), MAX_FOLDS=3)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.knobs import knob_argument
    from leukocyte_cnn.runs.experiment import add_common_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_multiclass")
    knob_argument(parser, "--target", knob="TARGET_PER_CLASS", type=int,
                  help=f"images per class after balancing (TARGET_PER_CLASS, default "
                       f"{TARGET_PER_CLASS})")
    parser.add_argument("--out-dir", default="data/augmented",
                        help="root of the augmented folders (default data/augmented)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace):
    from leukocyte_cnn.base.knobs import resolve_settings
    from leukocyte_cnn.inputs.balancing import Balancing, balance_fold, open_balanced_root
    from leukocyte_cnn.runs.cross_validation import first_folds, parse_fold_list
    from leukocyte_cnn.runs.experiment import RunOptions, resolve_protocol_split

    run = RunOptions.from_args(args)
    s = resolve_settings(sys.modules[__name__], args)
    split = resolve_protocol_split(run, s)
    balancing = Balancing.from_settings(s, run.seed, image_size=s["IMAGE_SIZE"])
    out_root = open_balanced_root(args.out_dir, split, **balancing.as_dict())
    folds = first_folds(parse_fold_list(run.folds, split.folds), s["MAX_FOLDS"], run.folds)
    print(f"balancing {len(folds)} folds of {split.csv_path} to "
          f"{balancing.target_per_class} images per class -> {out_root}", flush=True)
    for i, k in enumerate(folds, 1):
        start = time.perf_counter()
        train = split.fold(k).query("role == 'train'")
        manifest = balance_fold(train, k, out_root, **balancing.as_dict())
        counts = manifest.groupby("class_name").size().to_dict()
        print(f"fold {k} ({i}/{len(folds)}): {len(manifest)} training images {counts} "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
    return out_root


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
