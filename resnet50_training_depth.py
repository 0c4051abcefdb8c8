"""Four blood-cell classes: ResNet50 with its backbone frozen, partly trained, or fully trained.

Reproduces models 5-7 of the 4-class Kaggle blood-cell study (Roure, Louati, Duhomme,
Carriel Lopez): an ImageNet ResNet50 with global average pooling and a new softmax head,
trained at three depths:

    model 5 "no training":      backbone frozen, only the new head learns;
    model 6 "partial training": the backbone's last stage(s) learn too (UNFREEZE_FROM_STAGE),
                                their BatchNorm layers stay frozen;
    model 7 "full training":    every layer learns.

What we fixed: the study re-split the pooled, augmented images at random (copies of one cell
in training and test); here each depth trains on the dataset's own TRAIN images and is tested
on TEST (``--split-method random`` reproduces the leaky way, labelled LEAKY). Each depth and
seed builds a new model from the same starting weights. The ImageNet weights are resolved
before anything trains: ``--weights PATH`` (the ``.h5`` notop file), else Keras' cache, else
one download attempt; without weights the script stops with one line saying how to get them,
unless ``--allow-random-init``, in which case every table says "random init" (a random
ResNet50 is not the study's model).

Outputs in ``results/<run>/``: ``comparison.md/.csv`` (the three depths, mean ± std over
seeds), ``per_trial.csv``, ``val_accuracy_curves.png``, ``confusion_<depth>.png``, and a run
folder per (depth, seed) under ``<depth>/trial_NN/``.
"""
from __future__ import annotations

import argparse
import sys

# --- data and split protocol (the dataset's own TRAIN/TEST split; a --split file brings its own)
SPLIT_METHOD = "predefined"  # predefined: the owner's TRAIN/TEST; random: a leaky re-split
VAL_FRACTION = 0.2        # validation share carved from TRAIN (by groups of copies)
TEST_FRACTION = 0.2       # test share of SPLIT_METHOD random
MIN_IMAGES = 5            # classes with fewer images are set aside
MAX_IMAGES_PER_CLASS = None  # cap per class and role (None: all images)
IMAGE_SIZE = (120, 160)   # (height, width): the Kaggle 240x320 images halved (ResNet50 >= 32 px)
COLOR_MODE = "rgb"        # rgb, or grayscale: ITU-R 601 luminance in all 3 channels
CACHE_MB = 512            # decoded images kept in memory per set; larger sets stream (speed)
# --- architecture: ImageNet ResNet50, pooled, a new softmax head
DEPTHS = ("frozen", "partial", "full")  # models 5, 6, 7 of the study
UNFREEZE_FROM_STAGE = 5   # partial: stages >= this train (2-5; 5 = the last stage, conv5_*)
POOLING = "avg"           # pooling of the backbone's last map (study: global average)
HEAD_DROPOUT = 0.0        # dropout before the new softmax head
BN_MOMENTUM = 0.9         # trainable BatchNorm layers adapt on few updates (NOTES.md)
# --- optimisation
OPTIMIZER = "adam"        # one optimizer for all depths
LEARNING_RATES = {"frozen": 1e-3, "partial": 1e-4, "full": 1e-4}  # small steps when fine-tuning
BATCH_SIZE = 32           # images per step
EPOCHS = 30               # upper bound; early stopping on validation loss
PATIENCE = 5              # epochs without validation-loss improvement before stopping
# --- evaluation
SEEDS = 3                 # fresh trainings per depth (seed, seed+1, ...)
CONVERGENCE_ACCURACY = 0.5  # a trial "converges" when val accuracy reaches this (2x chance)
# --quick: small images, a few images per class, one seed, two epochs
QUICK = dict(IMAGE_SIZE=(48, 64), EPOCHS=2, PATIENCE=2, SEEDS=1, BATCH_SIZE=16,
             MAX_IMAGES_PER_CLASS=16)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.devices import add_gpu_arguments
    from leukocyte_cnn.base.knobs import knob_argument
    from leukocyte_cnn.runs.trials import study_parser

    parser = study_parser(__doc__, trials=SEEDS, trials_knob="SEEDS", what="fresh trainings")
    parser.add_argument("--depths", default=None,
                        help=f"comma-separated subset of {', '.join(DEPTHS)} (default: DEPTHS)")
    parser.add_argument("--weights", default=None,
                        help="'imagenet' (default: Keras' cached notop file, else one download "
                             "attempt) or the path of a weights file, e.g. resnet50_weights_tf_"
                             "dim_ordering_tf_kernels_notop.h5 copied from a machine with internet")
    parser.add_argument("--allow-random-init", action="store_true",
                        help="train from random weights when no ImageNet weights can be had "
                             "(tables then say 'random init'); without it the script stops")
    knob_argument(parser, "--epochs", knob="EPOCHS", type=int,
                  help=f"max epochs (EPOCHS, default {EPOCHS})")
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace):
    from leukocyte_cnn.runs.experiment import resolve_run

    run, s = resolve_run(args, sys.modules[__name__])  # devices first, then the knobs
    from leukocyte_cnn.base.run_folder import run_lock
    from leukocyte_cnn.models.applications import resnet50_model
    from leukocyte_cnn.models.pretrained import (
        resolve_imagenet_weights,
        weights_description,
        weights_load_errors,
    )
    from leukocyte_cnn.reporting.comparisons import Setting, report_trials, write_comparison
    from leukocyte_cnn.runs.cross_validation import parse_fold_list, train_classifier_fold
    from leukocyte_cnn.runs.experiment import start_run
    from leukocyte_cnn.runs.trials import (
        limit_fold_per_class,
        parse_names,
        resolve_study_split,
        run_trials,
    )

    depths = parse_names(args.depths, list(s["DEPTHS"]), "--depths") or list(s["DEPTHS"])
    # Settle the weights first: no training starts without them (or an explicit opt-out).
    weights = resolve_imagenet_weights("ResNet50", args.weights or "imagenet",
                                       allow_random_init=args.allow_random_init)
    init = weights_description(weights)
    split = resolve_study_split(run, s)
    class_names = split.class_names
    run_dir = start_run(run, "resnet50_training_depth", settings=s, split=split,
                        title="ResNet50, training depth", class_names=class_names,
                        extra={"init": init}, resumable=("SEEDS",))
    stage = s["UNFREEZE_FROM_STAGE"]
    setups = [Setting(depth, {"init": init, "learning_rate": s["LEARNING_RATES"][depth],
                              "trained_from": {"frozen": "head only", "partial": f"stage {stage}",
                                               "full": "stage 1"}[depth]})
              for depth in depths]
    size = tuple(s["IMAGE_SIZE"])

    def build_model(depth):
        with weights_load_errors(weights, "ResNet50"):
            return resnet50_model(input_shape=(*size, 3), num_classes=len(class_names),
                                  weights=weights, trainable=depth,
                                  unfreeze_from=f"conv{stage}_block1_1_conv",
                                  pooling=s["POOLING"], dropout=s["HEAD_DROPOUT"],
                                  bn_momentum=s["BN_MOMENTUM"])

    if weights is not None:
        build_model(depths[0])  # a weights file that does not fit fails here, before training

    def train_fold(setup, trial, fold):
        # Quick runs use fewer images per class and role: the same ones for every depth.
        limit_fold_per_class(fold, s["MAX_IMAGES_PER_CLASS"], run.seed)
        return train_classifier_fold(
            fold, lambda: build_model(setup.name), class_names=class_names, image_size=size,
            batch_size=s["BATCH_SIZE"], epochs=s["EPOCHS"], patience=s["PATIENCE"],
            optimizer=s["OPTIMIZER"], learning_rate=setup.params["learning_rate"],
            xla=run.devices.xla, color_mode=s["COLOR_MODE"], cache_mb=s["CACHE_MB"])

    folds = parse_fold_list(run.folds, split.folds)
    run_trials(split, run_dir, setups, range(s["SEEDS"]), run.seed, train_fold, folds=folds,
               knobs=s)

    # One job's summary at a time: jobs finishing together never read each other's
    # half-written files, and the last one's tables hold every finished trial.
    with run_lock(run_dir, "summary of"):
        numeric, shown = report_trials(run_dir, setups, class_names, s["CONVERGENCE_ACCURACY"])
        notes = [f"backbone weights: {init}" + (" -- NOT the study's ImageNet ResNet50; numbers "
                                                 "say nothing about transfer learning"
                                                 if weights is None else ""),
                 f"mean ± sample std [min, max] over {s['SEEDS']} seed(s) per depth; "
                 f"{s['OPTIMIZER']}, images {size[0]}x{size[1]}, batch {s['BATCH_SIZE']}, "
                 f"at most {s['EPOCHS']} epochs with early stopping on validation loss",
                 "partial: BatchNorm layers of the trained stages stay frozen (ImageNet "
                 "statistics)"]
        return write_comparison(run_dir, numeric, shown,
                                title="ResNet50: test accuracy per training depth"
                                + (" (random init)" if weights is None else ""), notes=notes)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
