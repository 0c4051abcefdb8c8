"""Class balancing by data augmentation, per cross-validation fold (Helmholtz thesis, DA step).

For every fold of a split file, the *training* images of each class are augmented to the same
count (thesis: 150) with seeded, distinct rotations of 0-359 degrees plus flips (optionally
small shifts, zoom and stain jitter). Validation and test images are never read, so no copy of
a test cell can reach training. The images go to
``data/augmented/<split>_balanced_<fingerprint>/fold_XX/<class>/`` with a ``manifest.csv``
naming the source image and the transform of every written file; the fingerprint covers the
split file's SHA-256 and every knob below, so changing a knob (here, or ``--seed``/``--quick``)
makes a new folder instead of reusing the old one. Re-running skips folds whose manifest
exists. ``linear_cnn_multiclass_lpocv.py`` and
``resnext_from_scratch.py`` train on these folders.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

TARGET_PER_CLASS = 150     # images per class after balancing (thesis: 150)
SHIFT_FRACTION = 0.0       # max random shift as a fraction of the image side (thesis: 0)
ZOOM_FRACTION = 0.0        # max random zoom in/out (thesis: 0)
STAIN_JITTER = 0.0         # max hue/saturation/brightness jitter (thesis: 0)
IMAGE_SIZE = None          # (height, width) to resize written images to; None keeps the original
QUICK_TARGET_PER_CLASS = 40
QUICK_IMAGE_SIZE = (64, 64)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.runs.experiment import add_common_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_multiclass")
    parser.add_argument("--target", type=int, default=None,
                        help=f"images per class after balancing (default {TARGET_PER_CLASS})")
    parser.add_argument("--out-dir", default="data/augmented",
                        help="root of the augmented folders (default data/augmented)")
    return parser.parse_args(argv)


def balancing_settings(args: argparse.Namespace) -> dict:
    """This script's knobs that decide the balanced images (they key the output folder)."""
    return {"target_per_class": target_per_class(args), "seed": args.seed,
            "image_size": QUICK_IMAGE_SIZE if args.quick else IMAGE_SIZE,
            "shifts": SHIFT_FRACTION, "zoom": ZOOM_FRACTION, "stain": STAIN_JITTER}


def augmented_root(split, out_dir: str | Path, args: argparse.Namespace) -> Path:
    """``data/augmented/<split>_balanced_<fingerprint>``: one folder per split file and
    balancing settings, so folds made with other knobs are never reused."""
    from leukocyte_cnn.inputs.balancing import open_balanced_root

    return open_balanced_root(out_dir, split, **balancing_settings(args))


def target_per_class(args: argparse.Namespace) -> int:
    """Images per class of the balanced folds: ``--target``, else this script's default."""
    return args.target or (QUICK_TARGET_PER_CLASS if args.quick else TARGET_PER_CLASS)


def balanced_training_images(args: argparse.Namespace, split, fold):
    """The fold's class-balanced augmented training table, for the scripts that train on
    these folders (made here first when missing, with this script's knobs; ``--augmented-dir``,
    ``--target``)."""
    from leukocyte_cnn.base.artifacts import record_of
    from leukocyte_cnn.inputs.balancing import balanced_training_table

    root = augmented_root(split, args.augmented_dir, args)
    fold.artifacts["balanced_folds"] = record_of(root)  # recorded in the fold's timing.json
    return balanced_training_table(fold.train, fold.fold, root, **balancing_settings(args))


def main(args: argparse.Namespace) -> Path:
    from leukocyte_cnn.inputs.balancing import balance_fold
    from leukocyte_cnn.runs.cross_validation import parse_fold_list

    split = resolve_multiclass_split(args)
    balancing = balancing_settings(args)
    out_root = augmented_root(split, args.out_dir, args)
    folds = parse_fold_list(args.folds, split.folds)
    if args.quick and not args.folds:
        folds = folds[:QUICK_FOLDS]
    print(f"balancing {len(folds)} folds of {split.csv_path} to "
          f"{balancing['target_per_class']} images per class "
          f"-> {out_root}", flush=True)
    for i, k in enumerate(folds, 1):
        start = time.perf_counter()
        train = split.fold(k).query("role == 'train'")
        manifest = balance_fold(train, k, out_root, **balancing)
        counts = manifest.groupby("class_name").size().to_dict()
        print(f"fold {k} ({i}/{len(folds)}): {len(manifest)} training images {counts} "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
    return out_root


# The multiclass experiment's split: leave-5-out as in the thesis (k-fold in quick mode),
# classes with fewer than MIN_IMAGES images set aside. Shared with the multiclass script.
SPLIT_METHOD = "lpo"
LEAVE_OUT = 5              # P of leave-P-out
MIN_IMAGES = 5             # classes with fewer images are excluded (thesis: 4 or fewer)
EXCLUDE_CLASSES = ("thrombocyte",)  # set aside by name (not leukocytes)
QUICK_SPLIT_METHOD = "kfold"
QUICK_K = 3
QUICK_FOLDS = 3


def resolve_multiclass_split(args: argparse.Namespace):
    from leukocyte_cnn.runs.experiment import present_exclusions, resolve_split

    exclude = present_exclusions(args, EXCLUDE_CLASSES)  # a real set may have no thrombocytes
    if args.quick:
        return resolve_split(args, method=QUICK_SPLIT_METHOD, k=QUICK_K,
                             min_images=MIN_IMAGES, exclude_classes=exclude)
    return resolve_split(args, method=SPLIT_METHOD, p=LEAVE_OUT, min_images=MIN_IMAGES,
                         exclude_classes=exclude)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
