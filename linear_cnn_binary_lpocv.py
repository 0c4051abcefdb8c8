"""Lymphoblast vs other leukocytes: the linear CNN with leave-P-out cross-validation.

Reproduces the binary experiment of the Helmholtz externship (Schouten; ALL-IDB2, Labati et
al. 2011): a small sequential CNN (six 3x3 valid conv + ReLU + 2x2 max-pool blocks with
4-8-8-8-16-16 filters, Dense 32, one sigmoid unit), RMSprop, batch 5, on-the-fly rotations of
up to 359 degrees and flips, leave-five-out cross-validation. Unlike the original, every fold
stops early on its own validation images (never its test images), each fold's model is fresh
and seeded, and every number in the summary traces to ``fold_XX/predictions.csv``.

Datasets with more than two classes are made binary: POSITIVE_CLASS against all others.
"""
from __future__ import annotations

import argparse

IMAGE_SIZE = 257          # input side in pixels (thesis: 257, ALL-IDB2's native size)
COLOR_MODE = "rgb"      # rgb, or grayscale: ITU-R 601 luminance in all 3 channels
FILTERS = (4, 8, 8, 8, 16, 16)  # conv widths of the six blocks (thesis)
DENSE_UNITS = 32          # hidden dense layer
OPTIMIZER = "rmsprop"     # thesis: RMSprop
LEARNING_RATE = 1e-3      # Keras' RMSprop default
BATCH_SIZE = 5            # thesis: 5
EPOCHS = 500              # upper bound; early stopping ends most folds much sooner
PATIENCE = 30             # epochs without val-loss improvement before stopping (thesis: 30)
ROTATION_DEGREES = 359    # on-the-fly rotation range (thesis: up to 359)
FLIPS = True              # on-the-fly horizontal and vertical flips
POSITIVE_CLASS = "lymphoblast"  # the class called positive (label 1)
SPLIT_METHOD = "lpo"      # leave-P-out as in the thesis
LEAVE_OUT = 5             # P: test images per fold
# --quick: a smoke run of the whole chain in a minute or two on a laptop CPU
QUICK = dict(IMAGE_SIZE=64, EPOCHS=25, PATIENCE=6, BATCH_SIZE=16, SPLIT_METHOD="kfold", K=3)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.runs.experiment import add_common_arguments
    from leukocyte_cnn.base.devices import add_gpu_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_all_idb2")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"input side in pixels (default {IMAGE_SIZE}; 64 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help=f"max epochs (default {EPOCHS})")
    parser.add_argument("--k", type=int, default=None,
                        help="use stratified k-fold with this k instead of leave-P-out")
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def binary_view(split, positive: str):
    """Class names and a relabelling function for a two-class experiment."""
    names = list(split.class_names)
    if len(names) == 2:
        return names, (lambda table: table)
    if positive not in names:
        from leukocyte_cnn.base.errors import InputError
        raise InputError(f"{split.csv_path}: class {positive!r} not in the split "
                         f"(classes: {', '.join(names)})")

    def relabel(table):
        is_pos = table["class_name"] == positive
        return table.assign(label=is_pos.astype(int),
                            class_name=is_pos.map({True: positive, False: "other"}))
    return ["other", positive], relabel


def main(args: argparse.Namespace):
    from leukocyte_cnn.base.devices import setup_devices

    setup_devices(args)  # first: GPUs, memory growth and replicas are fixed at TF's first op
    from leukocyte_cnn.inputs.augment import online_augmentation
    from leukocyte_cnn.runs.experiment import (resolve_split, script_settings, start_training_run, train_classifier_fold)
    from leukocyte_cnn.models.networks import linear_cnn
    from leukocyte_cnn.reporting.summary import summarize_run
    from leukocyte_cnn.runs.cross_validation import parse_fold_list, run_folds

    settings = script_settings(__name__, args)
    size = args.image_size or settings["IMAGE_SIZE"]
    epochs = args.epochs or settings["EPOCHS"]
    if args.k or args.quick:
        split = resolve_split(args, method="kfold", k=args.k or QUICK["K"])
    else:
        split = resolve_split(args, method=SPLIT_METHOD, p=LEAVE_OUT)
    class_names, relabel = binary_view(split, POSITIVE_CLASS)
    run_dir = start_training_run(args, "linear_cnn_binary", knobs=settings, split=split,
                                 title="Linear CNN, lymphoblast vs other",
                                 class_names=class_names,
                                 extra={"image_size": size, "epochs": epochs})

    def train_fold(fold):
        fold.train, fold.val, fold.test = map(relabel, (fold.train, fold.val, fold.test))
        return train_classifier_fold(
            fold, lambda: linear_cnn(input_shape=(size, size, 3), num_classes=2,
                                     filters=FILTERS, dense_units=DENSE_UNITS),
            class_names=class_names, image_size=(size, size),
            batch_size=settings["BATCH_SIZE"], epochs=epochs, patience=settings["PATIENCE"],
            optimizer=OPTIMIZER, learning_rate=LEARNING_RATE, binary=True, xla=args.xla,
            color_mode=COLOR_MODE,
            augment=online_augmentation(rotation_degrees=ROTATION_DEGREES,
                                        horizontal_flip=FLIPS, vertical_flip=FLIPS,
                                        seed=fold.seed))

    run_folds(split, run_dir, parse_fold_list(args.folds, split.folds), args.seed, train_fold)
    return summarize_run(run_dir)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
