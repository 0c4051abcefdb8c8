"""C-NMC 2019: leukemic blasts ("all") vs normal cells ("hem") by transfer learning, by patient.

Reproduces the C-NMC 2019 study (Samsel 2024, Kaggle; data: Mourya et al. 2019, ISBI 2019
challenge, 10,661 training cells of 73 subjects in fold_0..2, 1,867 labelled cells of 28 other
subjects in validation_data): a ``keras.applications`` backbone, EfficientNetB3 (the report's
better model, about 0.89 accuracy) or InceptionResNetV2 (its first, 0.879), with max pooling and
trained whole, under a dense head (BatchNorm, Dense 512 with L2 0.016 on the kernel and L1
0.006 on bias and output, then smaller dense layers with dropout 0.5 down to 0.1; built by
``networks.cnmc_model``), Adamax at 1e-3, 224 px, batch 40, and on-the-fly rotation (20°),
shift, shear, zoom (0.2) and horizontal flips on training batches only.

What we fixed: the study's split was made by image (issue 7), so cells of one patient sat on
both sides of it (its reported accuracies are on validation_data). Here every fold is disjoint
by patient: by default the dataset's own folds (fold_k tests once,
the other two train), or ``--split-by patient`` (group k-fold on the patient id in the file
names). Early stopping watches patients carved from the training folds, never the test fold's.
When ``validation_data`` and its labels CSV are there, a final model is trained on all of
fold_0..2 (minus a carved-out set of validation patients) and tested once on validation_data,
in a run folder of its own with its own split file (``..._test-validation``). ``--split-by
image`` re-creates the leaky image-level split for comparison; its tables carry a LEAKY banner.
ImageNet weights must be cached, downloadable or given with ``--weights PATH``; otherwise the
script stops with one line before training, unless ``--allow-random-init`` (then every title
says "random init"). Reported: accuracy, weighted F1 (the challenge's metric), per-class
recall and the confusion matrix.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# --- data and split protocol (the default split; a --split file brings its own)
SPLIT_BY = "auto"             # folds (dataset's fold_k), patient (group k-fold), image (leaky);
                              # auto: folds when the data has fold_k folders, else patient
K = 3                         # folds of --split-by patient (C-NMC ships three)
VAL_FRACTION = 0.2            # validation share (by patient) of each fold's training cells
TEST_FRACTION = 0.2           # test share of the leaky --split-by image split
MIN_IMAGES = 5                # classes with fewer images are set aside
MAX_TRAIN_IMAGES = 0          # 0 = all; else a seeded class-stratified sample of each fold's
                              # training cells (validation and test cells are never cut)
IMAGE_SIZE = 224              # input side in pixels (report: 224; C-NMC cells are 450x450)
COLOR_MODE = "rgb"            # rgb, or grayscale: ITU-R 601 luminance in all 3 channels
CACHE_MB = 512                # decoded images kept in memory per set; larger sets stream
# --- architecture: a keras.applications backbone under the report's dense head
BACKBONE = "EfficientNetB3"   # or InceptionResNetV2 (the report's first model)
BACKBONE_TRAINABLE = True     # report: the whole backbone is fine-tuned
POOLING = "max"               # pooling of the backbone's last map (report: max)
BN_MOMENTUM = 0.9             # BatchNorm of backbone and head (0.9: small data, NOTES.md)
DENSE_UNITS = (512, 256, 128, 64)   # head: Dense 512 (regularised), then three smaller layers
DROPOUTS = (0.5, 0.3, 0.2, 0.1)     # one dropout after each dense layer, 0.5 down to 0.1
L2 = 0.016                    # L2 on the first dense layer's kernel (report's template)
L1 = 0.006                    # L1 on the first dense layer's bias and output (report's template)
# --- optimisation
OPTIMIZER = "adamax"          # report: Adamax
LEARNING_RATE = 1e-3          # report: 0.001
BATCH_SIZE = 40               # report: 40
EPOCHS = 40                   # upper bound (not stated in the report); early stopping ends sooner
PATIENCE = 5                  # epochs without val-loss improvement before stopping
# --- augmentation (online, training batches only)
ROTATION_DEGREES = 20         # rotation range, ± degrees
SHIFT = 0.2                   # translation, fraction of height/width
ZOOM = 0.2                    # zoom range, ±20 %
SHEAR_DEGREES = 0.2           # ImageDataGenerator's shear_range=0.2 is in degrees: barely any
HORIZONTAL_FLIP = True        # report: horizontal flips only
AUGMENT_IN = "step"           # where it runs: "step" (Keras layers inside the training step, on
                              # the GPU when one trains) or "pipeline" (tf.data, CPU: the old path)
# --quick: the whole chain (three folds + final test) in minutes on a 2-core CPU
QUICK = dict(IMAGE_SIZE=48, EPOCHS=3, PATIENCE=2, BATCH_SIZE=16, MAX_TRAIN_IMAGES=96)

_SPLIT_MODES = ("auto", "folds", "patient", "image")
_FINAL_TEST_CHOICES = ("auto", "no", "only")


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.devices import add_gpu_arguments
    from leukocyte_cnn.base.knobs import knob_argument
    from leukocyte_cnn.models.applications import CNMC_BACKBONES
    from leukocyte_cnn.runs.experiment import add_common_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_cnmc")
    knob_argument(parser, "--backbone", knob="BACKBONE", choices=CNMC_BACKBONES,
                  help=f"keras.applications backbone (BACKBONE, default {BACKBONE})")
    parser.add_argument("--weights", default="imagenet",
                        help="starting weights of the backbone: 'imagenet' (Keras' cached copy, "
                             "downloaded once if the machine is online; default) or the path of a "
                             "notop .h5/.weights.h5 file")
    parser.add_argument("--allow-random-init", action="store_true",
                        help="when no ImageNet weights can be had, train from random weights "
                             "instead of stopping (titles then say 'random init')")
    knob_argument(parser, "--split-by", knob="SPLIT_BY", choices=_SPLIT_MODES,
                  help="folds: the dataset's own patient-disjoint fold_k (each tests once); "
                       "patient: group k-fold on the patient id; image: one random "
                       "image-level split that mixes patients (LEAKY, for comparison "
                       "with the report); auto (SPLIT_BY, default): folds when the data has "
                       "fold_k folders, else patient. '--split image|patient|folds' is "
                       "accepted as a shorthand")
    parser.add_argument("--final-test", choices=_FINAL_TEST_CHOICES, default="auto",
                        help="auto (default): after the folds, train on all fold_k and test once "
                             "on validation_data when it is there (--split-by folds only); "
                             "no: skip it; only: run just the final test")
    knob_argument(parser, "--image-size", knob="IMAGE_SIZE", type=int,
                  help=f"input side in pixels (IMAGE_SIZE, default {IMAGE_SIZE}; "
                       f"{QUICK['IMAGE_SIZE']} with --quick; InceptionResNetV2 needs 75+)")
    knob_argument(parser, "--epochs", knob="EPOCHS", type=int,
                  help=f"max epochs (EPOCHS, default {EPOCHS}; {QUICK['EPOCHS']} with --quick)")
    add_gpu_arguments(parser)
    args = parser.parse_args(argv)
    if args.split in _SPLIT_MODES[1:]:  # "--split image": a mode, not a split file name
        if args.SPLIT_BY not in (None, args.split):
            parser.error(f"--split {args.split} contradicts --split-by {args.SPLIT_BY}")
        args.SPLIT_BY, args.split = args.split, None
    elif args.split and args.SPLIT_BY:
        parser.error("--split FILE and --split-by exclude each other (the file's method decides)")
    return args


# ----------------------------------------------------------------------------- splits

def split_mode(run, split_by: str, table) -> str | None:
    """``folds``, ``patient`` or ``image``: what ``SPLIT_BY`` asks for (``None`` when a
    ``--split`` file is given: its own method decides, see :func:`mode_of_split`)."""
    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.splits.policy import SOURCE_FOLD, has_real_groups

    if run.split:
        return None
    if split_by != "auto":
        return split_by
    if table["source_split"].astype(str).str.match(SOURCE_FOLD).any():
        return "folds"
    if has_real_groups(table):
        return "patient"
    raise InputError(f"{run.data_root or run.dataset}: no fold_k folders and no patient ids; "
                     "choose --split-by image to split by cell (leaky)")


def mode_of_split(split) -> str:
    """The mode a loaded split file implements (for titles and the final-test decision)."""
    method = split.settings.get("method")
    if method == "random":
        return "image"
    if method == "predefined" and split.settings.get("variant") == "source_folds":
        return "folds"
    if method == "group_kfold":
        return "patient"
    return str(method)


def cross_validation_split(run, mode: str | None, s):
    """The folds the script evaluates on (``--split`` or the mode's default split file).

    ``folds``: ``predefined`` with the source-folds variant: fold k tests ``fold_k``, trains on
    the other folds, validates on patients carved from them (validation_data is left out).
    ``patient``: ``group_kfold`` with K folds over every labelled cell, validation_data
    included. ``image``: ``random``, one stratified train/val/test split by cell (leaky).
    """
    from leukocyte_cnn.runs.experiment import given_split, resolve_split

    if (split := given_split(run)) is not None:  # the file records its own method
        return split
    protocol = {"val_fraction": s["VAL_FRACTION"], "min_images": s["MIN_IMAGES"]}
    if mode == "patient":
        return resolve_split(run, method="group_kfold", k=s["K"], **protocol)
    if mode == "image":
        return resolve_split(run, method="random", test_fraction=s["TEST_FRACTION"], **protocol)
    return resolve_split(run, method="predefined", **protocol)


def require_disjoint_or_leaky(split) -> None:
    """A split that mixes patients is only accepted when its file says so (``leaky``), so
    that its tables carry the LEAKY banner; e.g. a ``kfold`` file made by image is refused."""
    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.splits.split_table import check_split

    if split.settings.get("leaky"):
        return
    problems = [p for p in check_split(split.table, grouped=True, complete=False)
                if "group(s) in two roles" in p]
    if problems:
        raise InputError(f"{split.csv_path}: puts one patient in two roles ({problems[0]}) but "
                         "is not marked leaky; use a patient-disjoint split or --split-by image")


def final_test_split(run, s):
    """One fold: train on fold_0..2 (patients carved out for validation), test validation_data.

    Written by the split machinery like any other split (``predefined`` with
    ``--test-sources validation``), so the final number traces to
    ``data/splits/<dataset>_predefined_seed<seed>_test-validation.csv``. The owner's
    validation_data must not share patients with the training folds; the split refuses it.
    """
    from leukocyte_cnn.runs.experiment import resolve_split

    return resolve_split(run.with_changes(split=None), method="predefined",
                         test_sources="validation", val_fraction=s["VAL_FRACTION"],
                         min_images=s["MIN_IMAGES"])


def has_validation_data(table) -> bool:
    return bool((table["source_split"].astype(str) == "validation").any())


def stratified_sample(table, limit: int, seed: int):
    """At most ``limit`` rows, drawn per class in proportion (seeded); all rows if fewer."""
    if not limit or len(table) <= limit:
        return table
    import pandas as pd

    share = limit / len(table)
    parts = [rows.sample(n=max(1, round(share * len(rows))), random_state=seed)
             for _, rows in table.groupby("label", sort=True)]
    return pd.concat(parts).sort_values("image").reset_index(drop=True)


# ----------------------------------------------------------------------------- main

def main(args: argparse.Namespace):
    from leukocyte_cnn.runs.experiment import resolve_run

    run, s = resolve_run(args, sys.modules[__name__])  # devices first, then the knobs
    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.data.datasets import read_dataset
    from leukocyte_cnn.inputs.augment import online_augmentation
    from leukocyte_cnn.models.applications import cnmc_model
    from leukocyte_cnn.models.pretrained import (
        resolve_imagenet_weights,
        weights_description,
        weights_load_errors,
    )
    from leukocyte_cnn.reporting.summary import summarize_run
    from leukocyte_cnn.runs.cross_validation import (
        parse_fold_list,
        run_folds,
        train_classifier_fold,
    )
    from leukocyte_cnn.runs.experiment import start_run

    size, backbone = s["IMAGE_SIZE"], s["BACKBONE"]
    if backbone == "InceptionResNetV2" and size < 75:
        raise InputError(f"IMAGE_SIZE {size}: InceptionResNetV2 needs at least 75 px")

    # Starting weights are settled first: no weights means one line and no training.
    weights = resolve_imagenet_weights(backbone, args.weights, args.allow_random_init)
    init = weights_description(weights)

    def build_model():
        with weights_load_errors(weights, backbone):
            return cnmc_model(backbone_name=backbone, input_shape=(size, size, 3),
                              num_classes=2, weights=weights,
                              backbone_trainable=s["BACKBONE_TRAINABLE"], pooling=s["POOLING"],
                              dense_units=s["DENSE_UNITS"], dropouts=s["DROPOUTS"], l2=s["L2"],
                              l1=s["L1"], bn_momentum=s["BN_MOMENTUM"])

    if weights is not None and str(args.weights).lower() != "imagenet":
        build_model()  # a weights file that does not fit the backbone stops here, not in fold 0

    # Folds: disjoint by patient (or, for comparison only, the leaky split by cell).
    table = read_dataset(run.dataset, run.data_root)
    mode = split_mode(run, s["SPLIT_BY"], table)
    split = cross_validation_split(run, mode, s)
    mode = mode or mode_of_split(split)
    require_disjoint_or_leaky(split)
    want_final = args.final_test != "no" and mode == "folds" and has_validation_data(table)
    if args.final_test == "only" and not want_final:
        raise InputError(f"{run.data_root or run.dataset}: --final-test only needs the "
                         "dataset's fold_k folders and validation_data with its labels CSV")
    final = final_test_split(run, s) if want_final else None  # checked before anything trains
    class_names = split.class_names
    extra = {"initial_weights": init,
             "weights_file": None if weights is None else Path(weights).name, "split_by": mode}
    split_words = {"folds": "the dataset's patient-disjoint folds",
                   "patient": f"{s['K']}-fold by patient", "image": "image-level split (LEAKY)"}

    def train_fold(fold):
        fold.train = stratified_sample(fold.train, s["MAX_TRAIN_IMAGES"], fold.seed)
        return train_classifier_fold(
            fold, build_model, class_names=class_names, image_size=(size, size),
            batch_size=s["BATCH_SIZE"], epochs=s["EPOCHS"], patience=s["PATIENCE"],
            optimizer=s["OPTIMIZER"], learning_rate=s["LEARNING_RATE"], xla=run.devices.xla,
            color_mode=s["COLOR_MODE"], cache_mb=s["CACHE_MB"],
            augment=online_augmentation(rotation_degrees=s["ROTATION_DEGREES"],
                                        horizontal_flip=s["HORIZONTAL_FLIP"],
                                        vertical_flip=False, shift=s["SHIFT"], zoom=s["ZOOM"],
                                        shear=s["SHEAR_DEGREES"], seed=fold.seed,
                                        where=s["AUGMENT_IN"]))

    run_dirs = []
    script = f"cnmc_transfer_{backbone.lower()}_{mode}"
    if args.final_test != "only":
        run_dir = start_run(run, script, settings=s, split=split, class_names=class_names,
                            title=f"C-NMC all vs hem, {backbone} ({init}), "
                                  f"{split_words.get(mode, mode)}", extra=extra)
        run_folds(split, run_dir, parse_fold_list(run.folds, split.folds), run.seed, train_fold,
                  settings=s)
        run_dirs.append(run_dir)
    if final is not None:
        final_run = run.with_changes(run_name=f"{run.run_name}_validation_data"
                                     if run.run_name else None)
        run_dir = start_run(final_run, f"{script}_validation_data", settings=s, split=final,
                            class_names=class_names,
                            title=f"C-NMC all vs hem, {backbone} ({init}), trained on all "
                                  "folds, tested on validation_data", extra=extra)
        run_folds(final, run_dir, final.folds, run.seed, train_fold, settings=s)
        run_dirs.append(run_dir)
    elif mode == "folds" and args.final_test == "auto":
        print("no labelled validation_data: final test skipped")

    summaries = {}
    for run_dir in run_dirs:
        summary = summarize_run(run_dir).set_index("metric")
        print(f"{run_dir.name}: accuracy {summary.loc['accuracy', 'pooled']:.3f}, weighted F1 "
              f"{summary.loc['weighted_f1', 'pooled']:.3f} (the challenge's metric)"
              + ("  [LEAKY split]" if mode == "image" else ""), flush=True)
        summaries[run_dir.name] = summary
    return summaries


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
