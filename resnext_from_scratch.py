"""Leukocyte classes: a ResNeXt trained from scratch, five-fold cross-validation.

Reproduces ``ResNext_From_Scratch.py`` of the Helmholtz externship (Schouten; ALL-IDB single
cells): a ResNeXt (Xie et al., CVPR 2017; ``resnext_network.py``) trained from random weights
on each fold's class-balanced augmented training images (``linear_cnn_da.py``'s output, made
here first if missing, exactly as for the linear CNN), with stratified five-fold
cross-validation (by group when images share patients, or are copies of one cell as in
Kaggle: ``--dataset cnmc``, ``kaggle``); classes with fewer than five images are set aside
as in the linear CNN.

What we fixed: the original stopped early on its test fold, so its test accuracy had chosen
its own epoch. Here every fold stops on the validation images the split carves from its
training images (role ``val``; never augmented, never trained on), and the test fold is
predicted once, by the best checkpoint. Each fold records the images it fed
(``fold_XX/inputs.csv``), so the absence of leaks can be checked from the run folder.

The default network is CPU-sized: ResNeXt-29 (3 stages x 3 blocks, small-image stem,
cardinality 8, 4-wide bottlenecks: 0.37 M parameters) at 96 px; ``--variant resnext50_32x4d
--image-size 224`` is the paper's network for a GPU. On a CPU, grouped convolutions run on
TensorFlow's own kernel instead of Keras' ~150x slower XLA path, and the strided 1x1 shortcut
convolutions avoid a oneDNN crash (``leukocyte_cnn.base.grouped_conv``, switched on by
``gpu.setup_devices`` for every training script). Outputs per fold and summary are those of
every training script here (``docs/architecture.md``).
"""
from __future__ import annotations

import argparse
import sys

# --- data and split protocol (stratified k-fold; a --split file brings its own)
SPLIT_METHOD = "kfold"     # kfold: stratified k-fold, by group where images share one;
                           # predefined: the owner's TRAIN/TEST (validation from TRAIN)
K = 5                      # folds of the stratified k-fold cross-validation (thesis: 5)
VAL_FRACTION = 0.2         # validation share of each fold's non-test images (early stopping)
MIN_IMAGES = 5             # classes with fewer images are excluded (as for the linear CNN)
EXCLUDE_CLASSES = ("thrombocyte",)  # set aside by name (not leukocytes)
IMAGE_SIZE = 96            # input side in px (cells are 64-128 px crops at this resolution)
COLOR_MODE = "rgb"         # rgb, or grayscale: ITU-R 601 luminance in all 3 channels
CACHE_MB = 512             # decoded images kept in memory per set; larger sets stream (speed)
# --- class balancing of each fold's training images (as linear_cnn_da.py)
TARGET_PER_CLASS = 150     # images per class after balancing (thesis: 150); 0: no
                           # balancing, every training image of the fold as it is
SHIFT_FRACTION = 0.0       # max random shift as a fraction of the image side (thesis: 0)
ZOOM_FRACTION = 0.0        # max random zoom in/out (thesis: 0)
STAIN_JITTER = 0.0         # max hue/saturation/brightness jitter (thesis: 0)
BALANCED_IMAGE_SIZE = None  # (height, width) the balanced images are written at; None: own
# --- architecture: a ResNeXt-29 for a CPU (--variant resnext50_32x4d: the paper's, for a GPU)
STAGE_DEPTHS = (3, 3, 3)   # bottleneck blocks per stage (depth 3 x 9 + 2 = 29)
CARDINALITY = 8            # groups of every 3x3 convolution
BOTTLENECK_WIDTH = 4       # channels per group in the first stage, doubled per stage
WIDTH = 64                 # first-stage output channels, doubled per stage
STEM_FILTERS = 32          # filters of the stem convolution
SMALL_INPUT_STEM = True    # one 3x3 stride-1 stem conv (cell crops), not ImageNet's 7x7/2 + pool
BN_MOMENTUM = 0.9          # not Keras' 0.99: moving statistics must converge on few updates
# --- optimisation
OPTIMIZER = "adam"         # Adam as in the thesis' ResNeXt scripts
LEARNING_RATE = 1e-3       # Keras' Adam default
BATCH_SIZE = 32            # images per step
EPOCHS = 100               # upper bound; early stopping ends most folds sooner
PATIENCE = 15              # epochs without validation-loss improvement before stopping
# --- augmentation (online, training batches only)
ROTATION_DEGREES = 359     # rotation range (cells have no orientation)
FLIPS = True               # horizontal and vertical flips
AUGMENT_IN = "step"        # where it runs: "step" (Keras layers inside the training step, on
                           # the GPU when one trains) or "pipeline" (tf.data, CPU: the old path)
# --quick: three folds of a narrow ResNeXt-14 at 48 px for a few epochs (minutes on 2 cores),
# 40 balanced 64 px images per class
QUICK = dict(STAGE_DEPTHS=(1, 1, 2), IMAGE_SIZE=48, CARDINALITY=4, WIDTH=32, STEM_FILTERS=16,
             EPOCHS=6, PATIENCE=3, BATCH_SIZE=16, K=3, TARGET_PER_CLASS=40,
             BALANCED_IMAGE_SIZE=(64, 64))


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.devices import add_gpu_arguments
    from leukocyte_cnn.runs.experiment import add_common_arguments
    from leukocyte_cnn.runs.resnext import add_resnext_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_multiclass")
    add_resnext_arguments(parser)
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace):
    from leukocyte_cnn.runs.experiment import resolve_run
    from leukocyte_cnn.runs.resnext import variant_knobs

    run, s = resolve_run(args, sys.modules[__name__], extra=variant_knobs(args))  # devices first
    from leukocyte_cnn.reporting.summary import summarize_run
    from leukocyte_cnn.runs.cross_validation import parse_fold_list, run_folds
    from leukocyte_cnn.runs.experiment import start_run
    from leukocyte_cnn.runs.resnext import (
        architecture,
        build_model,
        fold_training_images,
        resolve_resnext_split,
        train_resnext_fold,
    )

    arch = architecture(s)
    split = resolve_resnext_split(run, s)
    folds = parse_fold_list(run.folds, split.folds)
    n_params = build_model(arch, len(split.class_names)).count_params()
    run_dir = start_run(run, "resnext_from_scratch", settings=s, split=split,
                        title=f"ResNeXt from scratch ({arch['variant']}, {n_params:,} parameters, "
                              f"{arch['image_size']} px)",
                        class_names=split.class_names,
                        extra={"architecture": arch, "parameters": n_params,
                               "augmented_dir": args.augmented_dir})

    def train_fold(fold):
        return train_resnext_fold(
            fold, lambda: build_model(arch, len(split.class_names)),
            class_names=split.class_names, settings=s, xla=run.devices.xla,
            train_table=fold_training_images(fold, split, s, run.seed, args.augmented_dir))

    run_folds(split, run_dir, folds, run.seed, train_fold, settings=s)
    return summarize_run(run_dir)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
