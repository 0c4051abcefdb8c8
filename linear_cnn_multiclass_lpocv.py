"""Leukocyte classes: the linear CNN with leave-P-out cross-validation on class-balanced folds.

Reproduces the multiclass experiment of the Helmholtz externship: the same small sequential
CNN as the binary script with a softmax head, Adam, batch 15, patience 50, trained per fold on
the class-balanced augmented training images written by ``linear_cnn_da.py`` (made here first
if missing, with the balancing knobs below: the same values find the same folder), stopped
early on the fold's validation images and tested on its held-out images. Classes with fewer
than five images (and thrombocytes) sit in a separate excluded fold and are never trained or
tested.
"""
from __future__ import annotations

import argparse
import sys

# --- data and split protocol (the default split; a --split file brings its own)
SPLIT_METHOD = "lpo"      # lpo: leave-P-out as in the thesis; kfold: stratified k-fold
LEAVE_OUT = 5             # P of lpo: test images per fold (thesis: 5)
K = 5                     # folds of kfold
VAL_FRACTION = 0.2        # validation share of each fold's non-test images (early stopping)
MIN_IMAGES = 5            # classes with fewer images are excluded (thesis: 4 or fewer)
EXCLUDE_CLASSES = ("thrombocyte",)  # set aside by name (not leukocytes)
MAX_FOLDS = None          # train only the first N folds when --folds is not given (None: all)
IMAGE_SIZE = 257          # input side in pixels (thesis: 257)
COLOR_MODE = "rgb"        # rgb, or grayscale: ITU-R 601 luminance in all 3 channels
CACHE_MB = 512            # decoded images kept in memory per set; larger sets stream (speed)
# --- class balancing of each fold's training images (as linear_cnn_da.py)
TARGET_PER_CLASS = 150    # images per class after balancing (thesis: 150)
SHIFT_FRACTION = 0.0      # max random shift as a fraction of the image side (thesis: 0)
ZOOM_FRACTION = 0.0       # max random zoom in/out (thesis: 0)
STAIN_JITTER = 0.0        # max hue/saturation/brightness jitter (thesis: 0)
BALANCED_IMAGE_SIZE = None  # (height, width) the balanced images are written at; None: own
# --- architecture: blocks of Conv 'valid' + ReLU + MaxPool, then Dense and a softmax
FILTERS = (4, 8, 8, 8, 16, 16)  # conv widths, one block each (thesis)
KERNEL_SIZE = 3           # side of every conv kernel (thesis: 3x3)
POOL_SIZE = 2             # side of every max-pool (thesis: 2x2)
DENSE_UNITS = 32          # hidden dense layer (thesis: 32)
# --- optimisation
OPTIMIZER = "adam"        # thesis: Adam
LEARNING_RATE = 1e-3      # Keras' Adam default
BATCH_SIZE = 15           # thesis: 15
EPOCHS = 500              # upper bound; early stopping ends most folds much sooner
PATIENCE = 50             # epochs without val-loss improvement before stopping (thesis: 50)
# --quick: the first 3 folds of the split protocol above at 64 px, few epochs, 40 balanced
# 64 px images per class (run_helmholtz.py --quick hands it a 3-fold split instead)
QUICK = dict(IMAGE_SIZE=64, EPOCHS=25, PATIENCE=6, BATCH_SIZE=16, MAX_FOLDS=3,
             TARGET_PER_CLASS=40, BALANCED_IMAGE_SIZE=(64, 64))


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.devices import add_gpu_arguments
    from leukocyte_cnn.base.knobs import knob_argument
    from leukocyte_cnn.runs.experiment import add_common_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_multiclass")
    parser.add_argument("--augmented-dir", default="data/augmented",
                        help="root of linear_cnn_da.py's output (default data/augmented)")
    knob_argument(parser, "--target", knob="TARGET_PER_CLASS", type=int,
                  help=f"images per class of the balanced folds (TARGET_PER_CLASS, default "
                       f"{TARGET_PER_CLASS})")
    knob_argument(parser, "--image-size", knob="IMAGE_SIZE", type=int,
                  help=f"input side in pixels (IMAGE_SIZE, default {IMAGE_SIZE}; "
                       f"{QUICK['IMAGE_SIZE']} with --quick)")
    knob_argument(parser, "--epochs", knob="EPOCHS", type=int,
                  help=f"max epochs (EPOCHS, default {EPOCHS})")
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace):
    from leukocyte_cnn.runs.experiment import resolve_run

    run, s = resolve_run(args, sys.modules[__name__])  # devices first, then the knobs
    from leukocyte_cnn.inputs.balancing import Balancing, balanced_fold_images
    from leukocyte_cnn.models.networks import linear_cnn
    from leukocyte_cnn.reporting.summary import summarize_run
    from leukocyte_cnn.runs.cross_validation import (
        first_folds,
        parse_fold_list,
        run_folds,
        train_classifier_fold,
    )
    from leukocyte_cnn.runs.experiment import resolve_protocol_split, start_run

    size = s["IMAGE_SIZE"]
    split = resolve_protocol_split(run, s)
    folds = first_folds(parse_fold_list(run.folds, split.folds), s["MAX_FOLDS"], run.folds)
    balancing = Balancing.from_settings(s, run.seed, image_size=s["BALANCED_IMAGE_SIZE"])
    run_dir = start_run(run, "linear_cnn_multiclass", settings=s, split=split,
                        title="Linear CNN, leukocyte classes", class_names=split.class_names,
                        extra={"augmented_dir": args.augmented_dir})

    def build():
        return linear_cnn(input_shape=(size, size, 3), num_classes=len(split.class_names),
                          filters=s["FILTERS"], kernel_size=s["KERNEL_SIZE"],
                          pool_size=s["POOL_SIZE"], dense_units=s["DENSE_UNITS"],
                          binary_sigmoid=False)  # softmax even for two classes

    def train_fold(fold):
        train = balanced_fold_images(fold, split, args.augmented_dir, balancing)
        return train_classifier_fold(
            fold, build, class_names=split.class_names, image_size=(size, size),
            batch_size=s["BATCH_SIZE"], epochs=s["EPOCHS"], patience=s["PATIENCE"],
            optimizer=s["OPTIMIZER"], learning_rate=s["LEARNING_RATE"], train_table=train,
            xla=run.devices.xla, color_mode=s["COLOR_MODE"], cache_mb=s["CACHE_MB"])

    run_folds(split, run_dir, folds, run.seed, train_fold, settings=s)
    return summarize_run(run_dir)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
