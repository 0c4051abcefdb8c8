"""Leukocyte classes: a ResNeXt pretrained on another blood-cell dataset, fine-tuned with CV.

Reproduces ``ResNext_Transfer_Learning.py`` of the Helmholtz externship (Schouten): a ResNeXt
trained for a similar task on other images is fine-tuned on ALL-IDB-like single cells with the
same five-fold cross-validation, class-balanced folds and outputs as ``resnext_from_scratch.py``;
the thesis' ``retrainBlock`` chose how much of the network is retrained, here ``RETRAIN``
(``head``: a linear probe; ``last_stage``; ``last_two_stages``; ``all``), the unfrozen
pretrained layers learning at ``PRETRAINED_LR_FACTOR`` of the new head's rate
(``settings.json`` records, per stage, what trained at which rate). Three modes:

* ``--pretrain``: train the source model on another dataset (``--source-dataset``, default
  ``synthetic_kaggle``: four white-cell classes in another layout and image size; real:
  ``--source-dataset pbc --source-data-root PBC``): a held-out part of it (the owner's TEST
  split when it has one, else one stratified fold, by patient where there are patients) is
  never trained on and measures the source model; early stopping and learning-rate drops
  watch a validation share of the training images. Saves
  ``<results-dir>/checkpoints/<name>.keras`` with ``<name>.json`` (classes, input size,
  preprocessing, architecture, source data and hash, seed, held-out accuracy with its 95 %
  interval) and ``<name>.images.csv`` (digests of the source images). Killed, the same
  command resumes from its last finished epoch (weights, optimizer, early-stopping and
  learning-rate state, epoch log and random streams) to the same weights.
* default: fine-tune ``--source-checkpoint`` on every fold: the head replaced for the target
  classes, ``RETRAIN`` unfrozen, a fresh copy of the source weights loaded for each fold.
* ``--train-sizes 5,10,20,40``: the learning curve: for each size and fold, that many training
  images per class (nested seeded subsets of the fold's training images; validation and test
  images untouched), trained from scratch (the source's architecture, the from-scratch
  script's fold function) and fine-tuned in every mode of ``CURVE_ARMS``;
  ``learning_curve.csv/.md/.png`` with each mode paired to scratch. A subset smaller
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

# --- data and split protocol of the target (stratified k-fold; a --split file brings its own)
SPLIT_METHOD = "kfold"     # kfold: stratified k-fold, by group where images share one;
                           # predefined: the owner's TRAIN/TEST (validation from TRAIN)
K = 5                      # folds of the target's stratified k-fold split (thesis: 5)
VAL_FRACTION = 0.2         # validation share of each fold's non-test images (early stopping)
MIN_IMAGES = 5             # target classes with fewer images are excluded
EXCLUDE_CLASSES = ("thrombocyte",)  # set aside by name (not leukocytes)
IMAGE_SIZE = 96            # input side in px; must equal the checkpoint's
COLOR_MODE = "rgb"         # rgb, or grayscale: ITU-R 601 luminance in all 3 channels
CACHE_MB = 512             # decoded images kept in memory per set; larger sets stream (speed)
# --- the source task (--pretrain)
SOURCE_DATASET = "synthetic_kaggle"  # pretraining data: a similar task, never the target data
SOURCE_HELD_OUT_FOLDS = 5  # without an owner's TEST split: hold out 1 of this many folds
SOURCE_MIN_IMAGES = 5      # source classes with fewer images are left out
SOURCE_VAL_FRACTION = 0.1  # share of the source's training images for early stopping (the
                           # held-out part only measures the finished model)
SOURCE_LR_DROP_PATIENCE = 3  # pretraining: epochs without validation-loss improvement before
                           # the learning rate drops (0: a constant rate)
SOURCE_LR_DROP_FACTOR = 0.2  # pretraining: the rate is multiplied by this at each drop
# --- class balancing of each target fold's training images (as linear_cnn_da.py)
TARGET_PER_CLASS = 150     # images per class after balancing (thesis: 150); 0: no
                           # balancing, every training image of the fold as it is
SHIFT_FRACTION = 0.0       # max random shift as a fraction of the image side (thesis: 0)
ZOOM_FRACTION = 0.0        # max random zoom in/out (thesis: 0)
STAIN_JITTER = 0.0         # max hue/saturation/brightness jitter (thesis: 0)
BALANCED_IMAGE_SIZE = None  # (height, width) the balanced images are written at; None: own
# --- architecture of the source model (--pretrain), and of the learning curve's from-scratch
# arm when the checkpoint does not record its own: resnext_from_scratch.py's ResNeXt-29
STAGE_DEPTHS = (3, 3, 3)   # bottleneck blocks per stage (depth 3 x 9 + 2 = 29)
CARDINALITY = 8            # groups of every 3x3 convolution
BOTTLENECK_WIDTH = 4       # channels per group in the first stage, doubled per stage
WIDTH = 64                 # first-stage output channels, doubled per stage
STEM_FILTERS = 32          # filters of the stem convolution
SMALL_INPUT_STEM = True    # one 3x3 stride-1 stem conv (cell crops), not ImageNet's 7x7/2 + pool
BN_MOMENTUM = 0.9          # not Keras' 0.99: moving statistics must converge on few updates
# --- optimisation
RETRAIN = "last_stage"     # fine-tuning mode (thesis: retrainBlock): head (a linear probe of
                           # the frozen features), last_stage, last_two_stages or all
PRETRAINED_LR_FACTOR = {"head": 1.0, "last_stage": 1.0, "last_two_stages": 1.0, "all": 0.1}
                           # per mode, the learning rate of the unfrozen pretrained layers as a
                           # fraction of FINE_TUNE_LEARNING_RATE (the new head: the full rate);
                           # "all" adjusts the source features rather than overwriting them
OPTIMIZER = "adam"         # Adam for pretraining, fine-tuning and the from-scratch arm
LEARNING_RATE = 1e-3       # pretraining and from-scratch training
FINE_TUNE_LEARNING_RATE = 1e-3  # fine-tuning (the new head starts from random weights)
BATCH_SIZE = 32            # images per step
EPOCHS = 100               # upper bound; early stopping ends most runs sooner
PATIENCE = 15              # epochs without validation-loss improvement before stopping
CURVE_ARMS = ("scratch", "head", "last_stage", "all")  # learning curve: from scratch and each
                           # fine-tuning mode (RETRAIN values) at every size, paired to scratch
CURVE_EPOCH_IMAGES = 300   # learning curve: an epoch shows at least this many training images
                           # (a subset of N per class is repeated, each repeat another online
                           # view), so tiny sets get the updates of a balanced fold (150 a class)
# --- augmentation (online, training batches only)
ROTATION_DEGREES = 359     # rotation range
FLIPS = True               # horizontal and vertical flips
AUGMENT_IN = "step"        # where it runs: "step" (Keras layers inside the training step, on
                           # the GPU when one trains) or "pipeline" (tf.data, CPU: the old path)
# --quick: a narrow ResNeXt-14 at 48 px, few epochs, three target folds, 40 balanced 64 px
# images per class
QUICK = dict(STAGE_DEPTHS=(1, 1, 2), IMAGE_SIZE=48, CARDINALITY=4, WIDTH=32, STEM_FILTERS=16,
             EPOCHS=6, PATIENCE=3, BATCH_SIZE=16, K=3, TARGET_PER_CLASS=40,
             BALANCED_IMAGE_SIZE=(64, 64))


def _arms(text: str) -> tuple[str, ...]:
    from leukocyte_cnn.models.resnext import RETRAIN_CHOICES

    arms = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [arm for arm in arms if arm not in ("scratch", *RETRAIN_CHOICES)]
    if unknown or not arms:
        raise argparse.ArgumentTypeError(f"{text!r}: arms are scratch and "
                                         f"{', '.join(RETRAIN_CHOICES)}")
    return arms


def _every_mode(text: str) -> dict[str, float]:
    from leukocyte_cnn.models.resnext import RETRAIN_CHOICES

    try:
        factor = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number like 0.1") from None
    return {mode: factor for mode in RETRAIN_CHOICES}


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.devices import add_gpu_arguments
    from leukocyte_cnn.base.knobs import knob_argument
    from leukocyte_cnn.models.resnext import RETRAIN_CHOICES
    from leukocyte_cnn.runs.experiment import add_common_arguments
    from leukocyte_cnn.runs.resnext import add_resnext_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_multiclass")
    parser.add_argument("--pretrain", action="store_true",
                        help="train and save the source model instead of fine-tuning")
    knob_argument(parser, "--source-dataset", knob="SOURCE_DATASET",
                  help=f"--pretrain: dataset reader of the source data (SOURCE_DATASET, "
                       f"default {SOURCE_DATASET}), e.g. pbc, folder, kaggle, bloodmnist")
    parser.add_argument("--source-data-root", default=None,
                        help="--pretrain: folder of the source dataset (not needed for "
                             "synthetic_* sets)")
    parser.add_argument("--checkpoint-name", default=None,
                        help="--pretrain: file name (without .keras) under "
                             "<results-dir>/checkpoints (default: from source, depth, size "
                             "and seed)")
    parser.add_argument("--source-checkpoint", default=None,
                        help="the pretrained .keras model to fine-tune (required unless "
                             "--pretrain); its .json sidecar is read from beside it")
    knob_argument(parser, "--retrain", knob="RETRAIN", choices=RETRAIN_CHOICES,
                  help=f"part of the network fine-tuned (RETRAIN, default {RETRAIN})")
    knob_argument(parser, "--source-lr-drop-patience", knob="SOURCE_LR_DROP_PATIENCE",
                  type=int, help=f"--pretrain: epochs without validation-loss improvement "
                                 f"before the learning rate drops (SOURCE_LR_DROP_PATIENCE, "
                                 f"default {SOURCE_LR_DROP_PATIENCE}; 0: a constant rate)")
    knob_argument(parser, "--pretrained-lr-factor", knob="PRETRAINED_LR_FACTOR",
                  type=_every_mode,
                  help="learning rate of the unfrozen pretrained layers as a fraction of the "
                       "fine-tuning rate, in every mode (PRETRAINED_LR_FACTOR: per mode, "
                       f"default {PRETRAINED_LR_FACTOR})")
    knob_argument(parser, "--curve-arms", knob="CURVE_ARMS", type=_arms,
                  help=f"learning curve: comma-separated arms, scratch and RETRAIN modes "
                       f"(CURVE_ARMS, default {','.join(CURVE_ARMS)})")
    knob_argument(parser, "--fine-tune-learning-rate", knob="FINE_TUNE_LEARNING_RATE",
                  type=float, help=f"learning rate of fine-tuning (FINE_TUNE_LEARNING_RATE, "
                                   f"default {FINE_TUNE_LEARNING_RATE})")
    knob_argument(parser, "--curve-epoch-images", knob="CURVE_EPOCH_IMAGES", type=int,
                  help=f"learning curve: training images per epoch at least, by repeating a "
                       f"small subset (CURVE_EPOCH_IMAGES, default {CURVE_EPOCH_IMAGES}; 0: no "
                       "repeats)")
    parser.add_argument("--train-sizes", default=None,
                        help="learning curve instead of one CV: training images per class, "
                             "e.g. 10,20,5,40 (trained in this order), each in every arm of "
                             "CURVE_ARMS")
    add_resnext_arguments(parser)
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- pretraining


def source_parts(source_dataset: str, source_data_root, seed: int, s):
    """The source data: (training rows, held-out rows, class names, dataset hash, method).

    Held out: the owner's TEST split (or first ``fold_k``) when the data ships one, else one
    stratified fold of ``SOURCE_HELD_OUT_FOLDS``, by group when images share patients or cells.
    The training rows carry ``role`` ``train`` or ``val`` (``SOURCE_VAL_FRACTION`` of them, by
    group: early stopping); the held-out rows are only predicted once, at the end.
    """
    from leukocyte_cnn.data.datasets import dataset_hash, read_dataset
    from leukocyte_cnn.splits.plans import make_split
    from leukocyte_cnn.splits.policy import has_real_groups, joins_copies, predefined_variant

    table = read_dataset(source_dataset, source_data_root)
    if predefined_variant(table) != "none":
        method = "predefined"
    else:
        method = "group_kfold" if has_real_groups(table) else "kfold"
    if joins_copies("auto", method, source_dataset, table):  # Kaggle: copies held out together
        from leukocyte_cnn.splits.copies import near_duplicate_groups

        table, _ = near_duplicate_groups(table)
    rows = make_split(table, method, k=s["SOURCE_HELD_OUT_FOLDS"], seed=seed,
                      val_fraction=s["SOURCE_VAL_FRACTION"],
                      min_images=s["SOURCE_MIN_IMAGES"], where=source_data_root or source_dataset)
    rows = rows[rows["fold"] == rows.loc[rows["fold"] >= 0, "fold"].min()]
    names = [name for _, name in sorted({(int(label), str(name)) for label, name in
                                         zip(rows["label"], rows["class_name"], strict=True)})]
    index = {name: i for i, name in enumerate(names)}
    paths = dict(zip(table["image"], table["path"], strict=True))
    rows = rows.assign(path=rows["image"].map(paths), label=rows["class_name"].map(index))
    train = rows[rows["role"].isin(("train", "val"))].reset_index(drop=True)
    held_out = rows[rows["role"] == "test"].reset_index(drop=True)
    return train, held_out, names, dataset_hash(table), method


# Knobs that decide the source model (part of its checkpoint's fingerprint); the others
# (fine-tuning, the target's split and balancing, caching) never reach pretraining.
_PRETRAINING_KNOBS = ("SOURCE_DATASET", "SOURCE_HELD_OUT_FOLDS", "SOURCE_MIN_IMAGES",
                      "SOURCE_VAL_FRACTION", "SOURCE_LR_DROP_PATIENCE",
                      "SOURCE_LR_DROP_FACTOR", "IMAGE_SIZE",
                      "COLOR_MODE", "OPTIMIZER", "LEARNING_RATE", "BATCH_SIZE", "EPOCHS",
                      "PATIENCE", "ROTATION_DEGREES", "FLIPS", "AUGMENT_IN")


def source_lr_drop(s) -> dict | None:
    """Pretraining's learning-rate drop on plateaus of the validation loss (``None``: off)."""
    if not s["SOURCE_LR_DROP_PATIENCE"]:
        return None
    return {"patience": s["SOURCE_LR_DROP_PATIENCE"], "factor": s["SOURCE_LR_DROP_FACTOR"]}


def pretrain(run, s, args: argparse.Namespace) -> Path:
    """Train the source model with early stopping on its held-out part; save the checkpoint."""
    import keras
    import pandas as pd

    from leukocyte_cnn.base import progress
    from leukocyte_cnn.base.artifacts import canonical, fingerprint, short
    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.base.io import read_json
    from leukocyte_cnn.base.locks import artifact_lock
    from leukocyte_cnn.base.provenance import provenance
    from leukocyte_cnn.base.seeding import set_seed
    from leukocyte_cnn.models.source_checkpoints import (
        PRETRAIN_CODE_VERSION,
        save_source_checkpoint,
        sidecar_path,
    )
    from leukocyte_cnn.reporting.metrics import prob_columns
    from leukocyte_cnn.reporting.stats import bootstrap_ci
    from leukocyte_cnn.runs.cross_validation import Fold
    from leukocyte_cnn.runs.resnext import architecture, build_model, train_resnext_fold

    arch = architecture(s)
    source = s["SOURCE_DATASET"]
    train, held_out, names, source_hash, method = source_parts(source, args.source_data_root,
                                                               run.seed, s)
    # The checkpoint's identity: source images, held-out rule, architecture, the knobs that
    # pretraining uses and the seed. Its name ends in their fingerprint, so other settings
    # train another checkpoint instead of silently reusing this one.
    inputs = {"artifact": "source_checkpoint", "source_dataset": source,
              "source_dataset_hash": source_hash, "held_out_method": method,
              "architecture": arch, "seed": run.seed, "code": PRETRAIN_CODE_VERSION,
              "knobs": {name: s[name] for name in _PRETRAINING_KNOBS}}
    name = args.checkpoint_name or "_".join(
        ["resnext", source, arch["variant"], f"{arch['image_size']}px", f"seed{run.seed}"]
        + (["quick"] if run.quick else []) + [short(fingerprint(inputs))])
    checkpoint = Path(run.results_dir) / "checkpoints" / f"{name}.keras"
    # Fold jobs started together pretrain once: the others wait, then reuse the checkpoint.
    with artifact_lock(checkpoint, f"source checkpoint {checkpoint}"):
        if sidecar_path(checkpoint).exists():
            done = read_json(sidecar_path(checkpoint))
            if done.get("fingerprint") != fingerprint(inputs):
                raise InputError(f"{checkpoint}: pretrained with other settings or source images "
                                 "(fingerprint differs); it is kept: choose another "
                                 "--checkpoint-name or delete it")
            print(f"{checkpoint}: pretrained earlier from the same inputs (held-out "
                  f"accuracy {done.get('held_out_accuracy', float('nan')):.3f}), kept",
                  flush=True)
            return checkpoint
        fit_rows, val = train[train["role"] == "train"], train[train["role"] == "val"]
        print(f"pretraining {arch['variant']} on {source}: {len(fit_rows)} training, "
              f"{len(val)} validation (early stopping), {len(held_out)} held-out images, "
              f"classes {', '.join(names)}", flush=True)
        fold = Fold(fold=0, train=fit_rows.reset_index(drop=True),
                    val=val.reset_index(drop=True), test=held_out,
                    directory=checkpoint.with_name(f"{name}_training"), seed=run.seed)
        fold.directory.mkdir(parents=True, exist_ok=True)
        set_seed(run.seed)
        with progress.tracking(1, f"the source model, up to {s['EPOCHS']} epochs"), \
                progress.unit("pretraining"):  # epoch lines with the ETA
            predictions = train_resnext_fold(
                fold, lambda: build_model(arch, len(names)), class_names=names, settings=s,
                train_table=fold.train, xla=run.devices.xla, resume=True,
                reduce_lr=source_lr_drop(s))
        accuracy = float((predictions["pred"] == predictions["label"]).mean())
        low, high = bootstrap_ci(predictions["label"].to_numpy(),
                                 predictions[prob_columns(names)].to_numpy(), "accuracy",
                                 strata=predictions["label"].to_numpy())
        val_accuracy = float(pd.read_csv(fold.directory / "epochs.csv")["val_accuracy"].max())
        model = keras.models.load_model(fold.directory / "model.keras", safe_mode=True)
        metadata = {"class_names": names, "architecture": arch,
                    "source_dataset": source, "source_data_root": args.source_data_root,
                    "source_dataset_hash": source_hash, "held_out_method": method,
                    "n_train": len(fit_rows), "n_val": len(val), "n_held_out": len(held_out),
                    "seed": run.seed, "held_out_accuracy": accuracy,
                    "held_out_accuracy_ci": [low, high], "val_accuracy": val_accuracy,
                    "knobs": s.recorded(),
                    "overrides": s.overrides(), "provenance": provenance(),
                    "fingerprint": fingerprint(inputs), "fingerprint_inputs": canonical(inputs)}
        save_source_checkpoint(model, checkpoint, metadata=metadata,
                               images=pd.concat([train, held_out], ignore_index=True))
        print(f"saved {checkpoint} (held-out accuracy {accuracy:.3f} [{low:.3f}, {high:.3f}] "
              f"on {len(held_out)} images); fine-tune with "
              f"--source-checkpoint {checkpoint} --image-size {arch['image_size']}", flush=True)
        return checkpoint


# --------------------------------------------------------------------------- fine-tuning


def checked_source_and_split(run, s, checkpoint):
    """Check the checkpoint, load the target split, check they share no image: before training."""
    from leukocyte_cnn.models.source_checkpoints import (
        check_source_checkpoint,
        check_source_disjoint,
        describe,
    )
    from leukocyte_cnn.runs.resnext import resolve_resnext_split

    size = int(s["IMAGE_SIZE"])
    source = check_source_checkpoint(checkpoint, (size, size))
    split = resolve_resnext_split(run, s)
    kept = split.table[split.table["role"] != "excluded"]
    checked = check_source_disjoint(source, split.settings.get("dataset_hash"), kept)
    note = f"; none of the {checked} target images is among its source images" if checked else ""
    print(f"{source.path}: {describe(source.metadata)}{note}", flush=True)
    return source, split


def source_config(source) -> dict:
    """What the run folder records about its source model."""
    keep = ("source_dataset", "source_dataset_hash", "class_names", "architecture",
            "held_out_accuracy", "held_out_accuracy_ci", "val_accuracy", "seed")
    return {"path": str(source.path), "sha256": source.sha256,
            "fingerprint": source.metadata.get("fingerprint"),
            **{key: source.metadata.get(key) for key in keep}}


def fine_tuning_plan(model, mode: str, s) -> dict:
    """What ``settings.json`` records of one fine-tuning mode: the mode, the pretrained
    layers' rate factor and, per part of the network, whether it trains and at which rate."""
    from leukocyte_cnn.models.fine_tuning import describe_layers, summary_line

    factor = float(s["PRETRAINED_LR_FACTOR"][mode])
    parts = describe_layers(model, s["FINE_TUNE_LEARNING_RATE"], factor)
    print(f"fine-tuning {mode}: {summary_line(parts)}", flush=True)
    return {"mode": mode, "learning_rate": s["FINE_TUNE_LEARNING_RATE"],
            "pretrained_lr_factor": factor, "layers": parts}


def plan_rate_factors(plan: dict):
    """The fold body's ``rate_factors``: the plan's factor for every pretrained variable."""
    from leukocyte_cnn.models.fine_tuning import rate_factors

    if plan["pretrained_lr_factor"] == 1.0:
        return None
    return lambda model: rate_factors(model, plan["pretrained_lr_factor"])


def fine_tune(run, s, args: argparse.Namespace):
    """Cross-validation of the fine-tuned source model on the balanced folds."""
    from leukocyte_cnn.models.parts import trainable_param_count
    from leukocyte_cnn.reporting.summary import summarize_run
    from leukocyte_cnn.runs.cross_validation import parse_fold_list, run_folds
    from leukocyte_cnn.runs.experiment import start_run
    from leukocyte_cnn.runs.resnext import fold_training_images, train_resnext_fold

    source, split = checked_source_and_split(run, s, args.source_checkpoint)
    folds = parse_fold_list(run.folds, split.folds)
    n_classes = len(split.class_names)
    mode = s["RETRAIN"]
    probe = source.load_for(n_classes, mode)
    trainable, total = trainable_param_count(probe), probe.count_params()
    plan = fine_tuning_plan(probe, mode, s)
    run_dir = start_run(run, "resnext_transfer", settings=s, split=split,
                        title=f"ResNeXt transfer learning (RETRAIN={mode}: "
                              f"{trainable:,} of {total:,} parameters)",
                        class_names=split.class_names,
                        extra={"source": source_config(source), "trainable_parameters": trainable,
                               "parameters": total, "augmented_dir": args.augmented_dir,
                               "fine_tuning": plan})

    def train_fold(fold):
        fold.artifacts["source_checkpoint"] = {"path": str(source.path),
                                               "fingerprint": source.sha256}
        return train_resnext_fold(
            fold, lambda: source.load_for(n_classes, mode),
            class_names=split.class_names, settings=s,
            train_table=fold_training_images(fold, split, s, run.seed, args.augmented_dir),
            learning_rate=s["FINE_TUNE_LEARNING_RATE"], xla=run.devices.xla,
            rate_factors=plan_rate_factors(plan))

    run_folds(split, run_dir, folds, run.seed, train_fold, settings=s)
    return summarize_run(run_dir)


# --------------------------------------------------------------------------- learning curve


def learning_curve(run, s, args: argparse.Namespace):
    """Accuracy, macro-F1, ROC-AUC vs training images per class, from scratch and by transfer."""
    from leukocyte_cnn.base.run_folder import run_lock
    from leukocyte_cnn.reporting.learning_curve import (
        curve_dir,
        learning_curve_table,
        write_learning_curve,
    )
    from leukocyte_cnn.runs.cross_validation import parse_fold_list, run_folds
    from leukocyte_cnn.runs.experiment import start_run
    from leukocyte_cnn.runs.learning_curve import (
        parse_train_sizes,
        repeat_to_epoch,
        subsample_per_class,
    )
    from leukocyte_cnn.runs.resnext import (
        architecture,
        architecture_of_record,
        build_model,
        train_resnext_fold,
    )

    sizes = parse_train_sizes(args.train_sizes)
    source, split = checked_source_and_split(run, s, args.source_checkpoint)
    folds = parse_fold_list(run.folds, split.folds)
    n_classes = len(split.class_names)
    # the from-scratch arm gets the source model's own architecture, so only the weights differ
    recorded = source.metadata.get("architecture")
    scratch_arch = dict(architecture_of_record(recorded) if recorded else architecture(s),
                        image_size=int(s["IMAGE_SIZE"]))
    arms = list(s["CURVE_ARMS"])
    plans = {arm: fine_tuning_plan(source.load_for(n_classes, arm), arm, s)
             for arm in arms if arm != "scratch"}
    run_dir = start_run(run, "resnext_learning_curve", settings=s, split=split,
                        title="ResNeXt learning curve: from scratch vs fine-tuned",
                        class_names=split.class_names,
                        extra={"source": source_config(source), "train_sizes": sizes,
                               "curve_arms": arms, "scratch_architecture": scratch_arch,
                               "fine_tuning": plans})
    for size in sizes:
        for arm in arms:
            print(f"learning curve: {size} training images per class, {arm}", flush=True)

            def train_fold(fold, size=size, arm=arm):
                fold.train = subsample_per_class(fold.train, size, seed=run.seed, fold=fold.fold)
                factors = None
                if arm != "scratch":
                    fold.artifacts["source_checkpoint"] = {"path": str(source.path),
                                                           "fingerprint": source.sha256}
                    build = lambda: source.load_for(n_classes, arm)  # noqa: E731
                    rate, factors = s["FINE_TUNE_LEARNING_RATE"], plan_rate_factors(plans[arm])
                else:
                    build = lambda: build_model(scratch_arch, n_classes)  # noqa: E731
                    rate = s["LEARNING_RATE"]
                return train_resnext_fold(fold, build, class_names=split.class_names,
                                          settings=s, learning_rate=rate, xla=run.devices.xla,
                                          rate_factors=factors,
                                          train_table=repeat_to_epoch(fold.train,
                                                                      s["CURVE_EPOCH_IMAGES"]))

            run_folds(split, curve_dir(run_dir, size, arm), folds, run.seed, train_fold,
                      settings=s)
    with run_lock(run_dir, "learning curve of"):  # jobs finishing together: one at a time
        table = learning_curve_table(run_dir, sizes, split.class_names, modes=arms)
        write_learning_curve(
            table, run_dir, title="ResNeXt learning curve: from scratch vs fine-tuned",
            note=(f"Test folds of {split.csv_path.name}; per fold, the first N training images "
                  f"of each class in a seeded order (nested subsets; validation and test "
                  f"images untouched), repeated to at least {s['CURVE_EPOCH_IMAGES']} images "
                  f"per epoch, online flips and rotations, early stopping on the fold's "
                  f"validation images. Fine-tuned from {source.path.name}: "
                  + "; ".join(f"{arm} (pretrained layers at x{plan['pretrained_lr_factor']:g} "
                              "the rate)" for arm, plan in plans.items())
                  + ". Mean ± sample std over folds."))
    print(f"learning curve written to {run_dir / 'learning_curve.md'}", flush=True)
    return table


def main(args: argparse.Namespace):
    from leukocyte_cnn.runs.experiment import resolve_run
    from leukocyte_cnn.runs.resnext import variant_knobs

    run, s = resolve_run(args, sys.modules[__name__], extra=variant_knobs(args))  # devices first
    if args.pretrain:
        return pretrain(run, s, args)
    if args.train_sizes:
        return learning_curve(run, s, args)
    return fine_tune(run, s, args)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
