"""Leukocyte classes: a ResNeXt pretrained on another blood-cell dataset, fine-tuned with CV.

Reproduces ``ResNext_Transfer_Learning.py`` of the Helmholtz externship (Schouten): a ResNeXt
trained for a similar task on other images is fine-tuned on ALL-IDB-like single cells with the
same five-fold cross-validation, class-balanced folds and outputs as ``resnext_from_scratch.py``;
the thesis' ``retrainBlock`` chose how much of the network is retrained, here ``RETRAIN``
(``head``, ``last_stage``, ``last_two_stages`` or ``all``). Three modes:

* ``--pretrain``: train the source model on another dataset (``--source-dataset``, default
  ``synthetic_kaggle``: four white-cell classes in another layout and image size; real:
  ``--source-dataset pbc --source-data-root PBC``), stopping early on a held-out part of it
  (the owner's TEST split when it has one, else one stratified fold, by patient where there
  are patients), and save ``<results-dir>/checkpoints/<name>.keras`` with ``<name>.json``
  (classes, input size, preprocessing, architecture, source data and hash, seed, validation
  accuracy) and ``<name>.images.csv`` (digests of the source images).
* default: fine-tune ``--source-checkpoint`` on every fold: the head replaced for the target
  classes, ``RETRAIN`` unfrozen, a fresh copy of the source weights loaded for each fold.
* ``--train-sizes 5,10,20,40``: the learning curve: for each size and fold, that many training
  images per class (nested seeded subsets of the fold's training images; validation and test
  images untouched), trained from scratch (the source's architecture, the from-scratch
  script's fold function) and by transfer; ``learning_curve.csv/.md/.png``. A subset smaller
  than ``CURVE_EPOCH_IMAGES`` is repeated within each epoch (every repeat another online
  view): with epochs of 20 images (one step) early stopping used to end a 10-per-class run
  after a few dozen updates.

What we fixed: the checkpoint is checked before anything trains (missing, not a Keras model,
other input size, other preprocessing, no head), a source model that has seen any target image
(the same dataset, or one identical file) is refused because its weights would carry test
images into every fold, and every fold stops early on its validation images, not its test fold.
The default source dataset differs from the default target (``synthetic_multiclass``) for the
same reason.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# network of the source model (--pretrain) and of the learning curve's from-scratch arm when
# the checkpoint does not record its own; the same as resnext_from_scratch.py
VARIANT = "resnext29"      # resnext29 (stages 3,3,3), resnext14 (1,1,2) or resnext50_32x4d (GPU)
IMAGE_SIZE = 96            # input side in px; must equal the checkpoint's
COLOR_MODE = "rgb"       # rgb, or grayscale: ITU-R 601 luminance in all 3 channels
CARDINALITY = None         # groups of every 3x3 conv; None: the variant's (8; 32 for resnext50)
BOTTLENECK_WIDTH = None    # channels per group in the first stage; None: the variant's (4)
WIDTH = None               # first-stage output channels, doubled per stage; None: variant's (64)
STEM_FILTERS = None        # filters of the stem conv; None: the variant's (32; 64 for resnext50)
RETRAIN = "last_stage"     # part fine-tuned (thesis: retrainBlock): head, last_stage,
                           # last_two_stages or all
OPTIMIZER = "adam"         # Adam for pretraining, fine-tuning and the from-scratch arm
LEARNING_RATE = 1e-3       # pretraining and from-scratch training
FINE_TUNE_LEARNING_RATE = 1e-3  # fine-tuning (the new head starts from random weights)
BATCH_SIZE = 32            # images per step
EPOCHS = 100               # upper bound; early stopping ends most runs sooner
PATIENCE = 15              # epochs without validation-loss improvement before stopping
ROTATION_DEGREES = 359     # on-the-fly rotation range
FLIPS = True               # on-the-fly horizontal and vertical flips
K = 5                      # folds of the target's stratified k-fold split (thesis: 5)
CURVE_EPOCH_IMAGES = 300   # learning curve: an epoch shows at least this many training images
                           # (a subset of N per class is repeated, each repeat another online
                           # view), so tiny sets get the updates of a balanced fold (150 a class)
SOURCE_DATASET = "synthetic_kaggle"  # pretraining data: a similar task, never the target data
SOURCE_HELD_OUT_FOLDS = 5  # without an owner's TEST split: hold out 1 of this many folds
SOURCE_MIN_IMAGES = 5      # source classes with fewer images are left out
PRETRAIN_CODE_VERSION = 2  # part of a source checkpoint's fingerprint; bump when pretraining changes
# --quick: a narrow ResNeXt-14 at 48 px, few epochs, three target folds
QUICK = dict(VARIANT="resnext14", IMAGE_SIZE=48, CARDINALITY=4, WIDTH=32, STEM_FILTERS=16,
             EPOCHS=6, PATIENCE=3, BATCH_SIZE=16, K=3)


def parse_args(argv=None) -> argparse.Namespace:
    import resnext_from_scratch as scratch
    from leukocyte_cnn.runs.experiment import add_common_arguments
    from leukocyte_cnn.base.devices import add_gpu_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_multiclass")
    parser.add_argument("--pretrain", action="store_true",
                        help="train and save the source model instead of fine-tuning")
    parser.add_argument("--source-dataset", default=SOURCE_DATASET,
                        help=f"--pretrain: dataset reader of the source data (default "
                             f"{SOURCE_DATASET}), e.g. pbc, folder, kaggle, bloodmnist")
    parser.add_argument("--source-data-root", default=None,
                        help="--pretrain: folder of the source dataset (not needed for "
                             "synthetic_* sets)")
    parser.add_argument("--checkpoint-name", default=None,
                        help="--pretrain: file name (without .keras) under "
                             "<results-dir>/checkpoints (default: from source, variant, size "
                             "and seed)")
    parser.add_argument("--source-checkpoint", default=None,
                        help="the pretrained .keras model to fine-tune (required unless "
                             "--pretrain); its .json sidecar is read from beside it")
    parser.add_argument("--retrain", choices=("head", "last_stage", "last_two_stages", "all"),
                        default=None, help=f"part of the network fine-tuned (default {RETRAIN})")
    parser.add_argument("--fine-tune-learning-rate", type=float, default=None,
                        help=f"learning rate of fine-tuning (default {FINE_TUNE_LEARNING_RATE})")
    parser.add_argument("--curve-epoch-images", type=int, default=None,
                        help=f"learning curve: training images per epoch at least, by repeating "
                             f"a small subset (default {CURVE_EPOCH_IMAGES}; 0: no repeats)")
    parser.add_argument("--train-sizes", default=None,
                        help="learning curve instead of one CV: training images per class, "
                             "e.g. 5,10,20,40, each trained from scratch and by transfer")
    scratch.add_model_arguments(parser)
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def transfer_settings(args: argparse.Namespace) -> dict:
    """The knobs, shrunk by --quick and overridden by the options given."""
    import resnext_from_scratch as scratch

    settings = scratch.resolve_settings(sys.modules[__name__], args)
    if args.retrain is not None:
        settings["RETRAIN"] = args.retrain
    if args.fine_tune_learning_rate is not None:
        settings["FINE_TUNE_LEARNING_RATE"] = args.fine_tune_learning_rate
    if args.curve_epoch_images is not None:
        settings["CURVE_EPOCH_IMAGES"] = args.curve_epoch_images
    return settings


# --------------------------------------------------------------------------- pretraining


def source_parts(args: argparse.Namespace, seed: int):
    """The source data: (training rows, held-out rows, class names, dataset hash, method).

    Held out: the owner's TEST split (or first ``fold_k``) when the data ships one, else one
    stratified fold of ``SOURCE_HELD_OUT_FOLDS``, by group when images share patients or cells.
    """
    from leukocyte_cnn.data.datasets import dataset_hash, read_dataset
    from leukocyte_cnn.splits.folds import (has_real_groups, joins_copies, make_split, predefined_variant)

    table = read_dataset(args.source_dataset, args.source_data_root)
    if predefined_variant(table) != "none":
        method = "predefined"
    else:
        method = "group_kfold" if has_real_groups(table) else "kfold"
    if joins_copies("auto", method, args.source_dataset, table):  # Kaggle: copies held out together
        from leukocyte_cnn.splits.leakage import near_duplicate_groups

        table, _ = near_duplicate_groups(table)
    rows = make_split(table, method, k=SOURCE_HELD_OUT_FOLDS, seed=seed, val_fraction=0.0,
                      min_images=SOURCE_MIN_IMAGES,
                      where=args.source_data_root or args.source_dataset)
    rows = rows[rows["fold"] == rows.loc[rows["fold"] >= 0, "fold"].min()]
    names = [name for _, name in sorted({(int(label), str(name)) for label, name in
                                         zip(rows["label"], rows["class_name"])})]
    index = {name: i for i, name in enumerate(names)}
    paths = dict(zip(table["image"], table["path"]))
    rows = rows.assign(path=rows["image"].map(paths), label=rows["class_name"].map(index))
    train = rows[rows["role"] == "train"].reset_index(drop=True)
    held_out = rows[rows["role"] == "test"].assign(role="val").reset_index(drop=True)
    return train, held_out, names, dataset_hash(table), method


def pretrain(args: argparse.Namespace, settings: dict) -> Path:
    """Train the source model with early stopping on its held-out part; save the checkpoint."""
    import keras
    import pandas as pd

    import resnext_from_scratch as scratch
    from leukocyte_cnn.base.artifacts import canonical, fingerprint, short
    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.base.io import read_json
    from leukocyte_cnn.base.provenance import provenance
    from leukocyte_cnn.base.seeding import set_seed
    from leukocyte_cnn.runs.cross_validation import Fold
    from leukocyte_cnn.runs.transfer import save_source_checkpoint, sidecar_path

    arch = scratch.architecture(settings)
    train, held_out, names, source_hash, method = source_parts(args, args.seed)
    # The checkpoint's identity: source images, held-out rule, architecture, the knobs that
    # pretraining uses and the seed. Its name ends in their fingerprint, so other settings
    # train another checkpoint instead of silently reusing this one.
    inputs = {"artifact": "source_checkpoint", "source_dataset": args.source_dataset,
              "source_dataset_hash": source_hash, "held_out_method": method,
              "architecture": arch, "seed": args.seed, "code": PRETRAIN_CODE_VERSION,
              "knobs": {k: v for k, v in settings.items()
                        if not k.startswith(("FINE_TUNE", "RETRAIN", "TRAIN_SIZES", "CURVE"))}}
    name = args.checkpoint_name or "_".join(
        ["resnext", args.source_dataset, arch["variant"], f"{arch['image_size']}px",
         f"seed{args.seed}"] + (["quick"] if args.quick else []) + [short(fingerprint(inputs))])
    checkpoint = Path(args.results_dir) / "checkpoints" / f"{name}.keras"
    if sidecar_path(checkpoint).exists():
        done = read_json(sidecar_path(checkpoint))
        if done.get("fingerprint") != fingerprint(inputs):
            raise InputError(f"{checkpoint}: pretrained with other settings or source images "
                             "(fingerprint differs); it is kept: choose another "
                             "--checkpoint-name or delete it")
        print(f"{checkpoint}: pretrained earlier from the same inputs (val accuracy "
              f"{done.get('val_accuracy', 0):.3f}), kept", flush=True)
        return checkpoint
    print(f"pretraining {arch['variant']} on {args.source_dataset}: {len(train)} training, "
          f"{len(held_out)} held-out images, classes {', '.join(names)}", flush=True)
    fold = Fold(fold=0, train=train, val=held_out, test=held_out,
                directory=checkpoint.with_name(f"{name}_training"), seed=args.seed)
    fold.directory.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)
    predictions = scratch.train_resnext_fold(
        fold, lambda: scratch.build_model(arch, len(names)), class_names=names,
        settings=settings, train_table=train, xla=args.xla)
    val_accuracy = float((predictions["pred"] == predictions["label"]).mean())
    model = keras.models.load_model(fold.directory / "model.keras", safe_mode=True)
    metadata = {"class_names": names, "architecture": arch,
                "source_dataset": args.source_dataset, "source_data_root": args.source_data_root,
                "source_dataset_hash": source_hash, "held_out_method": method,
                "n_train": len(train), "n_val": len(held_out), "seed": args.seed,
                "val_accuracy": val_accuracy, "knobs": settings, "provenance": provenance(),
                "fingerprint": fingerprint(inputs), "fingerprint_inputs": canonical(inputs)}
    save_source_checkpoint(model, checkpoint, metadata=metadata,
                           images=pd.concat([train, held_out], ignore_index=True))
    print(f"saved {checkpoint} (held-out accuracy {val_accuracy:.3f}); fine-tune with "
          f"--source-checkpoint {checkpoint} --image-size {arch['image_size']}", flush=True)
    return checkpoint


# --------------------------------------------------------------------------- fine-tuning


def checked_source_and_split(args: argparse.Namespace, settings: dict):
    """Check the checkpoint, load the target split, check they share no image: before training."""
    import resnext_from_scratch as scratch
    from leukocyte_cnn.runs.transfer import (check_source_checkpoint, check_source_disjoint, describe)

    size = int(settings["IMAGE_SIZE"])
    source = check_source_checkpoint(args.source_checkpoint, (size, size))
    split = scratch.resolve_resnext_split(args, settings["K"])
    kept = split.table[split.table["role"] != "excluded"]
    checked = check_source_disjoint(source, split.settings.get("dataset_hash"), kept)
    note = f"; none of the {checked} target images is among its source images" if checked else ""
    print(f"{source.path}: {describe(source.metadata)}{note}", flush=True)
    return source, split


def source_config(source) -> dict:
    """What the run folder records about its source model."""
    keep = ("source_dataset", "source_dataset_hash", "class_names", "architecture",
            "val_accuracy", "seed")
    return {"path": str(source.path), "sha256": source.sha256,
            "fingerprint": source.metadata.get("fingerprint"),
            **{key: source.metadata.get(key) for key in keep}}


def fine_tune(args: argparse.Namespace, settings: dict):
    """Cross-validation of the fine-tuned source model on the balanced folds."""
    import linear_cnn_da as da
    import resnext_from_scratch as scratch
    from leukocyte_cnn.runs.experiment import start_run
    from leukocyte_cnn.base.devices import device_settings
    from leukocyte_cnn.models.networks import trainable_param_count
    from leukocyte_cnn.reporting.summary import summarize_run
    from leukocyte_cnn.runs.cross_validation import parse_fold_list, run_folds

    source, split = checked_source_and_split(args, settings)
    folds = parse_fold_list(args.folds, split.folds)
    n_classes = len(split.class_names)
    probe = source.load_for(n_classes, settings["RETRAIN"])
    trainable, total = trainable_param_count(probe), probe.count_params()
    run_dir = start_run(args, "resnext_transfer", knobs=settings, split=split,
                        title=f"ResNeXt transfer learning (RETRAIN={settings['RETRAIN']}: "
                              f"{trainable:,} of {total:,} parameters)",
                        class_names=split.class_names,
                        extra={"source": source_config(source), "trainable_parameters": trainable,
                               "parameters": total,
                               "augmented_dir": str(da.augmented_root(
                                   split, args.augmented_dir, args)),
                               "balancing": da.balancing_settings(args),
                               "target_per_class": da.target_per_class(args),
                               **device_settings(args)})

    def train_fold(fold):
        fold.artifacts["source_checkpoint"] = {"path": str(source.path),
                                               "fingerprint": source.sha256}
        return scratch.train_resnext_fold(
            fold, lambda: source.load_for(n_classes, settings["RETRAIN"]),
            class_names=split.class_names, settings=settings,
            train_table=da.balanced_training_images(args, split, fold),
            learning_rate=settings["FINE_TUNE_LEARNING_RATE"], xla=args.xla)

    run_folds(split, run_dir, folds, args.seed, train_fold)
    return summarize_run(run_dir)


# --------------------------------------------------------------------------- learning curve


def learning_curve(args: argparse.Namespace, settings: dict):
    """Accuracy, macro-F1, ROC-AUC vs training images per class, from scratch and by transfer."""
    import resnext_from_scratch as scratch
    from leukocyte_cnn.runs.experiment import start_run
    from leukocyte_cnn.base.devices import device_settings
    from leukocyte_cnn.runs.cross_validation import parse_fold_list, run_folds
    from leukocyte_cnn.runs.transfer import (MODES, curve_dir, learning_curve_table, parse_train_sizes, repeat_to_epoch, subsample_per_class, write_learning_curve)

    sizes = parse_train_sizes(args.train_sizes)
    source, split = checked_source_and_split(args, settings)
    folds = parse_fold_list(args.folds, split.folds)
    n_classes = len(split.class_names)
    # the from-scratch arm gets the source model's own architecture, so only the weights differ
    scratch_arch = dict(source.metadata.get("architecture") or scratch.architecture(settings),
                        image_size=int(settings["IMAGE_SIZE"]))
    run_dir = start_run(args, "resnext_learning_curve", knobs=settings, split=split,
                        title="ResNeXt learning curve: from scratch vs transfer",
                        class_names=split.class_names,
                        extra={"source": source_config(source), "train_sizes": sizes,
                               "scratch_architecture": scratch_arch,
                               **device_settings(args)})
    for size in sizes:
        for mode in MODES:
            print(f"learning curve: {size} training images per class, {mode}", flush=True)

            def train_fold(fold, size=size, mode=mode):
                fold.train = subsample_per_class(fold.train, size, seed=args.seed, fold=fold.fold)
                if mode == "transfer":
                    fold.artifacts["source_checkpoint"] = {"path": str(source.path),
                                                           "fingerprint": source.sha256}
                    build = lambda: source.load_for(n_classes, settings["RETRAIN"])  # noqa: E731
                    rate = settings["FINE_TUNE_LEARNING_RATE"]
                else:
                    build = lambda: scratch.build_model(scratch_arch, n_classes)  # noqa: E731
                    rate = settings["LEARNING_RATE"]
                return scratch.train_resnext_fold(fold, build, class_names=split.class_names,
                                                  settings=settings, train_table=repeat_to_epoch(
                                                      fold.train, settings["CURVE_EPOCH_IMAGES"]),
                                                  learning_rate=rate, xla=args.xla)

            run_folds(split, curve_dir(run_dir, size, mode), folds, args.seed, train_fold)
    table = learning_curve_table(run_dir, sizes, split.class_names)
    write_learning_curve(
        table, run_dir, title="ResNeXt learning curve: from scratch vs transfer",
        note=(f"Test folds of {split.csv_path.name}; per fold, the first N training images of "
              f"each class in a seeded order (nested subsets; validation and test images "
              f"untouched), repeated to at least {settings['CURVE_EPOCH_IMAGES']} images per "
              f"epoch, online flips and rotations, early stopping on the fold's validation "
              f"images. Transfer: {source.path.name}, RETRAIN={settings['RETRAIN']}. "
              "Mean ± sample std over folds."))
    print(f"learning curve written to {run_dir / 'learning_curve.md'}", flush=True)
    return table


def main(args: argparse.Namespace):
    from leukocyte_cnn.base.devices import setup_devices

    setup_devices(args)  # first: GPUs, memory growth and replicas are fixed at TF's first op
    settings = transfer_settings(args)
    if args.pretrain:
        return pretrain(args, settings)
    if args.train_sizes:
        return learning_curve(args, settings)
    return fine_tune(args, settings)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
