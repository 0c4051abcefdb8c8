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

IMAGE_SIZE = (120, 160)   # (height, width): the Kaggle 240x320 images halved, as in the deck
COLOR_MODE = "rgb"      # rgb, or grayscale: ITU-R 601 luminance in all 3 channels
FILTERS = (32, 64, 128, 256, 512)  # conv widths of the five blocks (study)
CONVS_PER_BLOCK = 3       # Conv-BN-ELU units per block (study)
DENSE_UNITS = 512         # two hidden dense layers of this width (study)
BN_MOMENTUM = 0.9         # not Keras' 0.99: moving statistics must converge on few updates
BATCH_SIZE = 32           # images per step
EPOCHS = 40               # upper bound; early stopping on validation loss ends most runs sooner
PATIENCE = 6              # epochs without validation-loss improvement before stopping
LEARNING_RATES = {"adam": 1e-3, "rmsprop": 1e-3, "sgd": 1e-2}  # Keras defaults, SGD 1e-2
SGD_MOMENTUM = 0.9        # momentum of both SGD models
DROPOUT = 0.3             # model 4: dropout after each dense layer
SEEDS = 3                 # fresh trainings per optimizer (seed, seed+1, ...)
CONVERGENCE_ACCURACY = 0.5  # a trial "converges" when val accuracy reaches this (2x chance)
MAX_IMAGES_PER_CLASS = None  # cap per class and role (None: all images)
# --quick: a narrow, shallower ELU CNN (one conv per block: building and tracing 15 conv
# layers costs more than training them on a few images), small images, 2 seeds, 3 epochs
QUICK = dict(IMAGE_SIZE=(48, 64), FILTERS=(8, 16, 32, 64, 128), CONVS_PER_BLOCK=1,
             DENSE_UNITS=64, EPOCHS=3, PATIENCE=3, SEEDS=2, BATCH_SIZE=16,
             MAX_IMAGES_PER_CLASS=24)

# model name -> (optimizer, DROPOUT after the dense layers or not); the order of the study
MODELS = {"adam": ("adam", False), "rmsprop": ("rmsprop", False), "sgd": ("sgd", False),
          "sgd_dropout": ("sgd", True)}  # True: DROPOUT, read when the run starts


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.devices import add_gpu_arguments
    from leukocyte_cnn.runs.studies import study_parser

    parser = study_parser(__doc__, trials=SEEDS, trials_name="seeds", what="fresh trainings")
    parser.add_argument("--optimizers", default=None,
                        help=f"comma-separated subset of {', '.join(MODELS)} (default: all four)")
    parser.add_argument("--epochs", type=int, default=None, help=f"max epochs (default {EPOCHS})")
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def build_elu_cnn(settings: dict, num_classes: int, dropout: float):
    """A new ELU CNN (fresh weights drawn from the current seed)."""
    from leukocyte_cnn.models.networks import elu_cnn

    return elu_cnn(input_shape=(*settings["IMAGE_SIZE"], 3), num_classes=num_classes,
                   filters=tuple(settings["FILTERS"]),
                   convs_per_block=settings["CONVS_PER_BLOCK"],
                   dense_units=settings["DENSE_UNITS"], dropout=dropout, bn_momentum=BN_MOMENTUM)


def main(args: argparse.Namespace):
    from leukocyte_cnn.base.devices import setup_devices

    setup_devices(args)  # first: GPUs, memory growth and replicas are fixed at TF's first op
    from leukocyte_cnn.runs import studies
    from leukocyte_cnn.runs.experiment import (script_settings, start_training_run, train_classifier_fold)
    from leukocyte_cnn.runs.cross_validation import parse_fold_list

    settings = script_settings(__name__, args)
    epochs = args.epochs or settings["EPOCHS"]
    seeds = args.seeds or settings["SEEDS"]
    chosen = studies.parse_names(args.optimizers, list(MODELS), "--optimizers") or list(MODELS)
    split = studies.resolve_study_split(args)
    class_names = split.class_names
    run_dir = start_training_run(args, "elu_cnn_optimizers", knobs=settings, split=split,
                                 title="ELU CNN, four optimizers", class_names=class_names,
                                 extra={"epochs": epochs})

    # One setting per model of the study; every (model, seed) builds its own network.
    setups = [studies.Setting(name, {"optimizer": MODELS[name][0],
                                     "learning_rate": LEARNING_RATES[MODELS[name][0]],
                                     "momentum": SGD_MOMENTUM if MODELS[name][0] == "sgd" else None,
                                     "dropout": DROPOUT if MODELS[name][1] else 0.0})
              for name in chosen]
    cap = settings["MAX_IMAGES_PER_CLASS"]

    def train_fold(setup, trial, fold):
        # Quick runs use fewer images per class and role: the same ones for every model.
        studies.limit_fold_per_class(fold, cap, args.seed)
        options = {"momentum": SGD_MOMENTUM} if setup.params["optimizer"] == "sgd" else {}
        return train_classifier_fold(
            fold, lambda: build_elu_cnn(settings, len(class_names), setup.params["dropout"]),
            class_names=class_names, image_size=tuple(settings["IMAGE_SIZE"]),
            batch_size=settings["BATCH_SIZE"], epochs=epochs, patience=settings["PATIENCE"],
            optimizer=setup.params["optimizer"], learning_rate=setup.params["learning_rate"],
            optimizer_options=options, xla=args.xla, color_mode=COLOR_MODE)

    folds = parse_fold_list(args.folds, split.folds)
    studies.run_trials(split, run_dir, setups, range(seeds), args.seed, train_fold, folds=folds)

    numeric, shown = studies.report_trials(run_dir, setups, class_names, CONVERGENCE_ACCURACY)
    return studies.write_comparison(
        run_dir, numeric, shown, title="ELU CNN: test accuracy per optimizer",
        notes=[f"mean ± sample std [min, max] over {seeds} seed(s) per optimizer; each seed "
               "trains a newly built model", "epochs to best: epoch of the kept checkpoint "
               f"(lowest validation loss) of at most {epochs}",
               f"images {settings['IMAGE_SIZE'][0]}x{settings['IMAGE_SIZE'][1]}, batch "
               f"{settings['BATCH_SIZE']}, SGD momentum {SGD_MOMENTUM}, dropout {DROPOUT} "
               "(sgd_dropout only)"])


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
