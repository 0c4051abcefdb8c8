"""Lymphoblast vs other leukocytes: the linear CNN with leave-P-out cross-validation.

Reproduces the binary experiment of the Helmholtz externship (Schouten; ALL-IDB2, Labati et
al. 2011): a small sequential CNN (six 3x3 valid conv + ReLU + 2x2 max-pool blocks with
4-8-8-8-16-16 filters, Dense 32, one sigmoid unit), RMSprop, batch 5, on-the-fly rotations of
up to 359 degrees and flips, leave-five-out cross-validation. Unlike the original, every fold
stops early on its own validation images (never its test images), each fold's model is fresh
and seeded, and every number in the summary traces to ``fold_XX/predictions.csv``.

Datasets with more than two classes are made binary: POSITIVE_CLASS against all others.
Every knob below is what runs: ``--quick``, ``$LEUKOCYTE_KNOBS`` (``sweep.py``) and the
options ``--image-size``, ``--epochs`` and ``--k`` change them for one run, and the run's
``settings.json`` records each knob's value as it ran and what set it.
"""
from __future__ import annotations

import argparse
import sys

# --- data and split protocol (the default split; a --split file brings its own)
POSITIVE_CLASS = "lymphoblast"  # the class called positive (label 1); the others: "other"
SPLIT_METHOD = "lpo"      # lpo: leave-P-out as in the thesis; kfold: stratified k-fold
LEAVE_OUT = 5             # P of lpo: test images per fold (thesis: 5)
K = 5                     # folds of kfold (--k N sets it and SPLIT_METHOD kfold)
VAL_FRACTION = 0.2        # validation share of each fold's non-test images (early stopping)
MIN_IMAGES = 5            # classes with fewer images are set aside (thesis: 4 or fewer)
IMAGE_SIZE = 257          # input side in pixels (thesis: 257, ALL-IDB2's native size)
COLOR_MODE = "rgb"        # rgb, or grayscale: ITU-R 601 luminance in all 3 channels
CACHE_MB = 512            # decoded images kept in memory per set; larger sets stream (speed)
# --- architecture: blocks of Conv 'valid' + ReLU + MaxPool, then Dense and a sigmoid unit
FILTERS = (4, 8, 8, 8, 16, 16)  # conv widths, one block each (thesis)
KERNEL_SIZE = 3           # side of every conv kernel (thesis: 3x3)
POOL_SIZE = 2             # side of every max-pool (thesis: 2x2)
DENSE_UNITS = 32          # hidden dense layer (thesis: 32)
# --- optimisation
OPTIMIZER = "rmsprop"     # thesis: RMSprop
LEARNING_RATE = 1e-3      # Keras' RMSprop default
BATCH_SIZE = 5            # thesis: 5
EPOCHS = 500              # upper bound; early stopping ends most folds much sooner
PATIENCE = 30             # epochs without val-loss improvement before stopping (thesis: 30)
# --- augmentation (online, training batches only)
ROTATION_DEGREES = 359    # rotation range (thesis: up to 359)
FLIPS = True              # horizontal and vertical flips
AUGMENT_IN = "step"       # where it runs: "step" (Keras layers inside the training step, on
                          # the GPU when one trains) or "pipeline" (tf.data, CPU: the old path)
# --quick: a smoke run of the whole chain in a minute or two on a laptop CPU
QUICK = dict(IMAGE_SIZE=64, EPOCHS=25, PATIENCE=6, BATCH_SIZE=16, SPLIT_METHOD="kfold", K=3)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.devices import add_gpu_arguments
    from leukocyte_cnn.base.knobs import knob_argument
    from leukocyte_cnn.runs.experiment import add_common_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_all_idb2")
    knob_argument(parser, "--image-size", knob="IMAGE_SIZE", type=int,
                  help=f"input side in pixels (IMAGE_SIZE, default {IMAGE_SIZE}; "
                       f"{QUICK['IMAGE_SIZE']} with --quick)")
    knob_argument(parser, "--epochs", knob="EPOCHS", type=int,
                  help=f"max epochs (EPOCHS, default {EPOCHS})")
    knob_argument(parser, "--k", knob="K", type=int,
                  help="stratified k-fold with this k instead of leave-P-out (K, and "
                       "SPLIT_METHOD kfold)")
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
    from leukocyte_cnn.runs.experiment import resolve_run

    # devices first, then the knobs (--k also means SPLIT_METHOD kfold)
    run, s = resolve_run(args, sys.modules[__name__], extra=(
        {"SPLIT_METHOD": ("kfold", "--k")} if args.K is not None else None))
    from leukocyte_cnn.inputs.augment import online_augmentation
    from leukocyte_cnn.models.networks import linear_cnn
    from leukocyte_cnn.reporting.summary import summarize_run
    from leukocyte_cnn.runs.cross_validation import (
        parse_fold_list,
        run_folds,
        train_classifier_fold,
    )
    from leukocyte_cnn.runs.experiment import resolve_protocol_split, start_run

    size = s["IMAGE_SIZE"]
    split = resolve_protocol_split(run, s)
    class_names, relabel = binary_view(split, s["POSITIVE_CLASS"])
    run_dir = start_run(run, "linear_cnn_binary", settings=s, split=split,
                        title="Linear CNN, lymphoblast vs other", class_names=class_names)

    def build():
        return linear_cnn(input_shape=(size, size, 3), num_classes=2, filters=s["FILTERS"],
                          kernel_size=s["KERNEL_SIZE"], pool_size=s["POOL_SIZE"],
                          dense_units=s["DENSE_UNITS"])

    def train_fold(fold):
        fold.train, fold.val, fold.test = map(relabel, (fold.train, fold.val, fold.test))
        return train_classifier_fold(
            fold, build, class_names=class_names, image_size=(size, size),
            batch_size=s["BATCH_SIZE"], epochs=s["EPOCHS"], patience=s["PATIENCE"],
            optimizer=s["OPTIMIZER"], learning_rate=s["LEARNING_RATE"], binary=True,
            xla=run.devices.xla, color_mode=s["COLOR_MODE"], cache_mb=s["CACHE_MB"],
            augment=online_augmentation(rotation_degrees=s["ROTATION_DEGREES"],
                                        horizontal_flip=s["FLIPS"], vertical_flip=s["FLIPS"],
                                        seed=fold.seed, where=s["AUGMENT_IN"]))

    run_folds(split, run_dir, parse_fold_list(run.folds, split.folds), run.seed, train_fold,
              settings=s)
    return summarize_run(run_dir)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
