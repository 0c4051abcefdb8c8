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

IMAGE_SIZE = (120, 160)   # (height, width): the Kaggle 240x320 images halved (ResNet50 >= 32 px)
COLOR_MODE = "rgb"      # rgb, or grayscale: ITU-R 601 luminance in all 3 channels
DEPTHS = ("frozen", "partial", "full")  # models 5, 6, 7 of the study
UNFREEZE_FROM_STAGE = 5   # partial: stages >= this train (2-5; 5 = the last stage, conv5_*)
OPTIMIZER = "adam"        # one optimizer for all depths
LEARNING_RATES = {"frozen": 1e-3, "partial": 1e-4, "full": 1e-4}  # small steps when fine-tuning
HEAD_DROPOUT = 0.0        # dropout before the new softmax head
BN_MOMENTUM = 0.9         # trainable BatchNorm layers adapt on few updates (NOTES.md)
BATCH_SIZE = 32           # images per step
EPOCHS = 30               # upper bound; early stopping on validation loss
PATIENCE = 5              # epochs without validation-loss improvement before stopping
SEEDS = 3                 # fresh trainings per depth (seed, seed+1, ...)
CONVERGENCE_ACCURACY = 0.5  # a trial "converges" when val accuracy reaches this (2x chance)
MAX_IMAGES_PER_CLASS = None  # cap per class and role (None: all images)
# --quick: small images, a few images per class, one seed, two epochs
QUICK = dict(IMAGE_SIZE=(48, 64), EPOCHS=2, PATIENCE=2, SEEDS=1, BATCH_SIZE=16,
             MAX_IMAGES_PER_CLASS=16)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.devices import add_gpu_arguments
    from leukocyte_cnn.runs.studies import study_parser

    parser = study_parser(__doc__, trials=SEEDS, trials_name="seeds", what="fresh trainings")
    parser.add_argument("--depths", default=None,
                        help=f"comma-separated subset of {', '.join(DEPTHS)} (default: all)")
    parser.add_argument("--weights", default=None,
                        help="'imagenet' (default: Keras' cached notop file, else one download "
                             "attempt) or the path of a weights file, e.g. resnet50_weights_tf_"
                             "dim_ordering_tf_kernels_notop.h5 copied from a machine with internet")
    parser.add_argument("--allow-random-init", action="store_true",
                        help="train from random weights when no ImageNet weights can be had "
                             "(tables then say 'random init'); without it the script stops")
    parser.add_argument("--epochs", type=int, default=None, help=f"max epochs (default {EPOCHS})")
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace):
    from leukocyte_cnn.base.devices import setup_devices

    setup_devices(args)  # first: GPUs, memory growth and replicas are fixed at TF's first op
    from leukocyte_cnn.runs import studies
    from leukocyte_cnn.runs.experiment import (script_settings, start_training_run, train_classifier_fold)
    from leukocyte_cnn.models.networks import resnet50_model
    from leukocyte_cnn.models.pretrained import (resolve_imagenet_weights, weights_description, weights_load_errors)
    from leukocyte_cnn.runs.cross_validation import parse_fold_list

    settings = script_settings(__name__, args)
    epochs = args.epochs or settings["EPOCHS"]
    seeds = args.seeds or settings["SEEDS"]
    depths = studies.parse_names(args.depths, list(DEPTHS), "--depths") or list(DEPTHS)
    # Settle the weights first: no training starts without them (or an explicit opt-out).
    weights = resolve_imagenet_weights("ResNet50", args.weights or "imagenet",
                                       allow_random_init=args.allow_random_init)
    init = weights_description(weights)
    split = studies.resolve_study_split(args)
    class_names = split.class_names
    run_dir = start_training_run(args, "resnet50_training_depth", knobs=settings, split=split,
                                 title="ResNet50, training depth", class_names=class_names,
                                 extra={"epochs": epochs, "init": init})
    unfreeze_from = f"conv{UNFREEZE_FROM_STAGE}_block1_1_conv"
    setups = [studies.Setting(depth, {"init": init, "learning_rate": LEARNING_RATES[depth],
                                      "trained_from": {"frozen": "head only",
                                                       "partial": f"stage {UNFREEZE_FROM_STAGE}",
                                                       "full": "stage 1"}[depth]})
              for depth in depths]
    cap = settings["MAX_IMAGES_PER_CLASS"]
    size = tuple(settings["IMAGE_SIZE"])

    def build_model(depth):
        with weights_load_errors(weights, "ResNet50"):
            return resnet50_model(input_shape=(*size, 3), num_classes=len(class_names),
                                  weights=weights, trainable=depth, unfreeze_from=unfreeze_from,
                                  dropout=HEAD_DROPOUT, bn_momentum=BN_MOMENTUM)

    if weights is not None:
        build_model(depths[0])  # a weights file that does not fit fails here, before training

    def train_fold(setup, trial, fold):
        # Quick runs use fewer images per class and role: the same ones for every depth.
        studies.limit_fold_per_class(fold, cap, args.seed)
        return train_classifier_fold(
            fold, lambda: build_model(setup.name),
            class_names=class_names, image_size=size, batch_size=settings["BATCH_SIZE"],
            epochs=epochs, patience=settings["PATIENCE"], optimizer=OPTIMIZER,
            learning_rate=setup.params["learning_rate"], xla=args.xla, color_mode=COLOR_MODE)

    folds = parse_fold_list(args.folds, split.folds)
    studies.run_trials(split, run_dir, setups, range(seeds), args.seed, train_fold, folds=folds)

    numeric, shown = studies.report_trials(run_dir, setups, class_names, CONVERGENCE_ACCURACY)
    notes = [f"backbone weights: {init}" + (" -- NOT the study's ImageNet ResNet50; numbers "
                                             "say nothing about transfer learning"
                                             if weights is None else ""),
             f"mean ± sample std [min, max] over {seeds} seed(s) per depth; "
             f"{OPTIMIZER}, images {size[0]}x{size[1]}, batch {settings['BATCH_SIZE']}, "
             f"at most {epochs} epochs with early stopping on validation loss",
             "partial: BatchNorm layers of the trained stages stay frozen (ImageNet statistics)"]
    return studies.write_comparison(run_dir, numeric, shown,
                                    title="ResNet50: test accuracy per training depth"
                                    + (" (random init)" if weights is None else ""),
                                    notes=notes)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
