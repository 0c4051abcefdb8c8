"""Leukocyte classes: the linear CNN with leave-P-out cross-validation on class-balanced folds.

Reproduces the multiclass experiment of the Helmholtz externship: the same small sequential
CNN as the binary script with a softmax head, Adam, batch 15, patience 50, trained per fold on
the class-balanced augmented training images written by ``linear_cnn_da.py`` (made here first
if missing), stopped early on the fold's validation images and tested on its held-out images.
Classes with fewer than five images (and thrombocytes) sit in a separate excluded fold and are
never trained or tested.
"""
from __future__ import annotations

import argparse

IMAGE_SIZE = 257          # input side in pixels (thesis: 257)
COLOR_MODE = "rgb"      # rgb, or grayscale: ITU-R 601 luminance in all 3 channels
FILTERS = (4, 8, 8, 8, 16, 16)  # conv widths of the six blocks (thesis)
DENSE_UNITS = 32          # hidden dense layer
OPTIMIZER = "adam"        # thesis: Adam
LEARNING_RATE = 1e-3      # Keras' Adam default
BATCH_SIZE = 15           # thesis: 15
EPOCHS = 500              # upper bound; early stopping ends most folds much sooner
PATIENCE = 50             # epochs without val-loss improvement before stopping (thesis: 50)
# --quick: 3-fold CV at 64 px, few epochs
QUICK = dict(IMAGE_SIZE=64, EPOCHS=25, PATIENCE=6, BATCH_SIZE=16)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.runs.experiment import add_common_arguments
    from leukocyte_cnn.base.devices import add_gpu_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_multiclass")
    parser.add_argument("--augmented-dir", default="data/augmented",
                        help="root of linear_cnn_da.py's output (default data/augmented)")
    parser.add_argument("--target", type=int, default=None,
                        help="images per class when the augmented folds must be made here")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"input side in pixels (default {IMAGE_SIZE}; 64 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help=f"max epochs (default {EPOCHS})")
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace):
    from leukocyte_cnn.base.devices import setup_devices

    setup_devices(args)  # first: GPUs, memory growth and replicas are fixed at TF's first op
    import linear_cnn_da as da
    from leukocyte_cnn.runs.experiment import (script_settings, start_training_run, train_classifier_fold)
    from leukocyte_cnn.models.networks import linear_cnn
    from leukocyte_cnn.reporting.summary import summarize_run
    from leukocyte_cnn.runs.cross_validation import parse_fold_list, run_folds

    settings = script_settings(__name__, args)
    size = args.image_size or settings["IMAGE_SIZE"]
    epochs = args.epochs or settings["EPOCHS"]
    split = da.resolve_multiclass_split(args)
    folds = parse_fold_list(args.folds, split.folds)
    if args.quick and not args.folds:
        folds = folds[:da.QUICK_FOLDS]
    run_dir = start_training_run(
        args, "linear_cnn_multiclass", knobs=settings, split=split,
        title="Linear CNN, leukocyte classes", class_names=split.class_names,
        extra={"image_size": size, "epochs": epochs,
               "augmented_dir": str(da.augmented_root(split, args.augmented_dir, args)),
               "balancing": da.balancing_settings(args),
               "target_per_class": da.target_per_class(args)})

    def train_fold(fold):
        train = da.balanced_training_images(args, split, fold)
        return train_classifier_fold(
            fold, lambda: linear_cnn(input_shape=(size, size, 3),
                                     num_classes=len(split.class_names), filters=FILTERS,
                                     dense_units=DENSE_UNITS,
                                     binary_sigmoid=False),  # softmax even for two classes
            class_names=split.class_names, image_size=(size, size),
            batch_size=settings["BATCH_SIZE"], epochs=epochs, patience=settings["PATIENCE"],
            optimizer=OPTIMIZER, learning_rate=LEARNING_RATE, train_table=train, xla=args.xla,
            color_mode=COLOR_MODE)

    run_folds(split, run_dir, folds, args.seed, train_fold)
    return summarize_run(run_dir)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
