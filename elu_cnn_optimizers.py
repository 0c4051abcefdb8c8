"""Four blood-cell classes: the ELU CNN trained fresh with four optimizers, over several seeds.

Reproduces models 1-4 of the 4-class Kaggle blood-cell study (Roure, Louati, Duhomme,
Carriel Lopez; network after Kandel et al., Appl. Sci. 2020): five blocks of three
Conv 3x3 'same' -> BatchNorm -> ELU, then MaxPool 2x2 (32 to 512 filters), two Dense 512 ELU
layers and a softmax, trained with

    model 1: Adam    model 2: RMSprop    model 3: SGD (momentum)    model 4: SGD + dropout 0.3
    after each of the two dense layers.

What we fixed: the study pooled TRAIN and TEST and re-split the augmented copies at random,
so copies of one cell sat on both sides and accuracy read ~0.99. Here every optimizer trains
on the dataset's own TRAIN images (validation, for early stopping, carved from TRAIN) and is
tested on its TEST images; the random re-split is still available as ``--split-method random``
and every table made that way is labelled LEAKY. Each optimizer and each seed gets a newly
built, newly seeded model (no weights carried over between optimizers), and the table reports
mean ± std over seeds instead of one run. BatchNorm momentum is 0.9 (see NOTES.md).

Outputs in ``results/<run>/``: ``comparison.md/.csv`` (test accuracy and macro-F1 per
optimizer, mean ± std over seeds), ``per_trial.csv``, ``val_accuracy_curves.png`` (validation
accuracy per epoch per optimizer), ``confusion_<optimizer>.png``; each (optimizer, seed) is a
run folder ``<optimizer>/trial_NN/`` with its predictions, epochs log and checkpoint.
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
IMAGE_SIZE = (120, 160)   # (height, width): the Kaggle 240x320 images halved, as in the deck
COLOR_MODE = "rgb"        # rgb, or grayscale: ITU-R 601 luminance in all 3 channels
CACHE_MB = 512            # decoded images kept in memory per set; larger sets stream (speed)
# --- architecture: blocks of (Conv 'same' -> BatchNorm -> ELU) x n, MaxPool; Dense ELU; softmax
FILTERS = (32, 64, 128, 256, 512)  # conv widths of the five blocks (study)
CONVS_PER_BLOCK = 3       # Conv-BN-ELU units per block (study)
KERNEL_SIZE = 3           # side of every conv kernel (study: 3x3)
POOL_SIZE = 2             # side of every max-pool (study: 2x2)
HEAD_POOLING = "global_average"  # feature vector: global_average, or flatten (size-bound head)
DENSE_UNITS = 512         # width of the hidden dense layers (study)
DENSE_LAYERS = 2          # hidden dense layers (study: 2)
BN_MOMENTUM = 0.9         # not Keras' 0.99: moving statistics must converge on few updates
DROPOUT = 0.3             # model 4: dropout after each dense layer
# --- optimisation: one setting per model of the study, in its order
MODELS = {"adam": ("adam", False), "rmsprop": ("rmsprop", False), "sgd": ("sgd", False),
          "sgd_dropout": ("sgd", True)}  # model -> (optimizer, with DROPOUT or not)
LEARNING_RATES = {"adam": 1e-3, "rmsprop": 1e-3, "sgd": 1e-2}  # Keras defaults, SGD 1e-2
SGD_MOMENTUM = 0.9        # momentum of both SGD models
BATCH_SIZE = 32           # images per step
EPOCHS = 40               # upper bound; early stopping on validation loss ends most runs sooner
PATIENCE = 6              # epochs without validation-loss improvement before stopping
# --- evaluation
SEEDS = 3                 # fresh trainings per optimizer (seed, seed+1, ...)
CONVERGENCE_ACCURACY = 0.5  # a trial "converges" when val accuracy reaches this (2x chance)
# --quick: a narrow, shallower ELU CNN (one conv per block: building and tracing 15 conv
# layers costs more than training them on a few images), small images, 2 seeds, 3 epochs
QUICK = dict(IMAGE_SIZE=(48, 64), FILTERS=(8, 16, 32, 64, 128), CONVS_PER_BLOCK=1,
             DENSE_UNITS=64, EPOCHS=3, PATIENCE=3, SEEDS=2, BATCH_SIZE=16,
             MAX_IMAGES_PER_CLASS=24)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.devices import add_gpu_arguments
    from leukocyte_cnn.base.knobs import knob_argument
    from leukocyte_cnn.runs.trials import study_parser

    parser = study_parser(__doc__, trials=SEEDS, trials_knob="SEEDS", what="fresh trainings")
    parser.add_argument("--optimizers", default=None,
                        help=f"comma-separated subset of {', '.join(MODELS)} (default: all four)")
    knob_argument(parser, "--epochs", knob="EPOCHS", type=int,
                  help=f"max epochs (EPOCHS, default {EPOCHS})")
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def build_elu_cnn(s, num_classes: int, dropout: float):
    """A new ELU CNN of the settings' architecture (fresh weights drawn from the current seed)."""
    from leukocyte_cnn.models.networks import elu_cnn

    return elu_cnn(input_shape=(*s["IMAGE_SIZE"], 3), num_classes=num_classes,
                   filters=tuple(s["FILTERS"]), convs_per_block=s["CONVS_PER_BLOCK"],
                   kernel_size=s["KERNEL_SIZE"], pool_size=s["POOL_SIZE"],
                   dense_units=s["DENSE_UNITS"], dense_layers=s["DENSE_LAYERS"],
                   dropout=dropout, bn_momentum=s["BN_MOMENTUM"],
                   head_pooling=s["HEAD_POOLING"])


def main(args: argparse.Namespace):
    from leukocyte_cnn.runs.experiment import resolve_run

    run, s = resolve_run(args, sys.modules[__name__])  # devices first, then the knobs
    from leukocyte_cnn.base.run_folder import run_lock
    from leukocyte_cnn.reporting.comparisons import Setting, report_trials, write_comparison
    from leukocyte_cnn.runs.cross_validation import parse_fold_list, train_classifier_fold
    from leukocyte_cnn.runs.experiment import start_run
    from leukocyte_cnn.runs.trials import (
        limit_fold_per_class,
        parse_names,
        resolve_study_split,
        run_trials,
    )

    models = s["MODELS"]
    chosen = parse_names(args.optimizers, list(models), "--optimizers") or list(models)
    split = resolve_study_split(run, s)
    class_names = split.class_names
    run_dir = start_run(run, "elu_cnn_optimizers", settings=s, split=split,
                        title="ELU CNN, four optimizers", class_names=class_names,
                        resumable=("SEEDS",))

    # One setting per model of the study; every (model, seed) builds its own network.
    setups = []
    for name in chosen:
        optimizer, with_dropout = models[name]
        setups.append(Setting(name, {
            "optimizer": optimizer, "learning_rate": s["LEARNING_RATES"][optimizer],
            "momentum": s["SGD_MOMENTUM"] if optimizer == "sgd" else None,
            "dropout": s["DROPOUT"] if with_dropout else 0.0}))

    def train_fold(setup, trial, fold):
        # Quick runs use fewer images per class and role: the same ones for every model.
        limit_fold_per_class(fold, s["MAX_IMAGES_PER_CLASS"], run.seed)
        params = setup.params
        return train_classifier_fold(
            fold, lambda: build_elu_cnn(s, len(class_names), params["dropout"]),
            class_names=class_names, image_size=tuple(s["IMAGE_SIZE"]),
            batch_size=s["BATCH_SIZE"], epochs=s["EPOCHS"], patience=s["PATIENCE"],
            optimizer=params["optimizer"], learning_rate=params["learning_rate"],
            optimizer_options={"momentum": params["momentum"]} if params["momentum"] else {},
            xla=run.devices.xla, color_mode=s["COLOR_MODE"], cache_mb=s["CACHE_MB"])

    folds = parse_fold_list(run.folds, split.folds)
    run_trials(split, run_dir, setups, range(s["SEEDS"]), run.seed, train_fold, folds=folds,
               knobs=s)

    # One job's summary at a time: jobs finishing together never read each other's
    # half-written files, and the last one's tables hold every finished trial.
    with run_lock(run_dir, "summary of"):
        numeric, shown = report_trials(run_dir, setups, class_names, s["CONVERGENCE_ACCURACY"])
        return write_comparison(
            run_dir, numeric, shown, title="ELU CNN: test accuracy per optimizer",
            notes=[f"mean ± sample std [min, max] over {s['SEEDS']} seed(s) per optimizer; "
                   "each seed trains a newly built model", "epochs to best: epoch of the kept "
                   f"checkpoint (lowest validation loss) of at most {s['EPOCHS']}",
                   f"images {s['IMAGE_SIZE'][0]}x{s['IMAGE_SIZE'][1]}, batch "
                   f"{s['BATCH_SIZE']}, SGD momentum {s['SGD_MOMENTUM']}, dropout "
                   f"{s['DROPOUT']} (sgd_dropout only)"])


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
