"""What the two ResNeXt scripts share: their options, architecture, split and fold body.

``resnext_from_scratch.py`` and ``resnext_transfer_learning.py`` each hold the same block of
architecture, optimisation and augmentation knobs (each script's own: editing one changes that
experiment only). This module turns those knobs into the network
(:func:`architecture`, :func:`build_model`), makes their split (the linear CNN's multiclass
protocol, stratified k-fold) and trains a fold with online flips and rotations on the
class-balanced folds (:func:`train_resnext_fold`), for from-scratch training, fine-tuning and
both arms of the learning curve alike.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping

from leukocyte_cnn.base.knobs import knob_argument
from leukocyte_cnn.models.resnext import VARIANT_ARCHITECTURES, depth_name

# knob of the script -> keyword of models.resnext.build_resnext
ARCHITECTURE_KNOBS = {"STAGE_DEPTHS": "stage_depths", "CARDINALITY": "cardinality",
                      "BOTTLENECK_WIDTH": "bottleneck_width", "WIDTH": "first_stage_channels",
                      "STEM_FILTERS": "stem_filters", "SMALL_INPUT_STEM": "small_input_stem",
                      "BN_MOMENTUM": "bn_momentum"}


def add_resnext_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options for the knobs that change per run: ``--variant`` (a named architecture for the
    architecture knobs), the widths, image size, epochs, patience, batch, learning rate, ``--k``,
    Zheng's set, the balanced folds' root and images per class."""
    parser.add_argument("--variant", choices=sorted(VARIANT_ARCHITECTURES), default=None,
                        help="a named ResNeXt for the architecture knobs (STAGE_DEPTHS, "
                             "CARDINALITY, BOTTLENECK_WIDTH, WIDTH, STEM_FILTERS, "
                             "SMALL_INPUT_STEM); options below still set single ones")
    knob_argument(parser, "--image-size", knob="IMAGE_SIZE", type=int,
                  help="input side in px (IMAGE_SIZE)")
    knob_argument(parser, "--cardinality", knob="CARDINALITY", type=int,
                  help="groups of the 3x3 convolutions (CARDINALITY)")
    knob_argument(parser, "--bottleneck-width", knob="BOTTLENECK_WIDTH", type=int,
                  help="channels per group in the first stage (BOTTLENECK_WIDTH)")
    knob_argument(parser, "--width", knob="WIDTH", type=int,
                  help="output channels of the first stage, doubled per stage (WIDTH)")
    knob_argument(parser, "--stem-filters", knob="STEM_FILTERS", type=int,
                  help="filters of the stem convolution (STEM_FILTERS)")
    knob_argument(parser, "--epochs", knob="EPOCHS", type=int, help="max epochs (EPOCHS)")
    knob_argument(parser, "--patience", knob="PATIENCE", type=int,
                  help="early-stopping patience in epochs (PATIENCE)")
    knob_argument(parser, "--batch-size", knob="BATCH_SIZE", type=int,
                  help="images per step (BATCH_SIZE)")
    knob_argument(parser, "--learning-rate", knob="LEARNING_RATE", type=float,
                  help="learning rate (LEARNING_RATE)")
    knob_argument(parser, "--k", knob="K", type=int,
                  help="folds of the stratified k-fold split (K)")
    knob_argument(parser, "--split-method", knob="SPLIT_METHOD",
                  choices=("kfold", "group_kfold", "predefined"),
                  help="kfold (stratified, by group where the data has groups), group_kfold, "
                       "or predefined: the owner's TRAIN/TEST, validation drawn from TRAIN "
                       "(SPLIT_METHOD)")
    parser.add_argument("--zheng-dataset", choices=("1", "2", "both"), default=None,
                        help="zheng2018 only: which of the two Zheng et al. sets to read "
                             "(default: the reader's, 1)")
    parser.add_argument("--augmented-dir", default="data/augmented",
                        help="root of linear_cnn_da.py's class-balanced folds "
                             "(default data/augmented)")
    knob_argument(parser, "--target", knob="TARGET_PER_CLASS", type=int,
                  help="images per class of the balanced folds (TARGET_PER_CLASS); 0: no "
                       "balancing, every training image of the fold as it is")
    return parser


def variant_knobs(args: argparse.Namespace) -> dict:
    """``--variant``'s architecture as knob values ``{knob: (value, "--variant NAME")}``, for
    ``knobs.resolve_settings(extra=...)``; a knob given by its own option keeps that value."""
    if not getattr(args, "variant", None):
        return {}
    preset = VARIANT_ARCHITECTURES[args.variant]
    return {knob: (preset[keyword], f"--variant {args.variant}")
            for knob, keyword in ARCHITECTURE_KNOBS.items()
            if keyword in preset and getattr(args, knob, None) is None}


def architecture(settings: Mapping) -> dict:
    """The network's build keywords from the architecture knobs, with the input side and the
    depth's name (``resnext29``): what ``settings.json`` and source checkpoints record."""
    depths = [int(depth) for depth in settings["STAGE_DEPTHS"]]
    return {"variant": depth_name(depths), "stage_depths": depths,
            "cardinality": settings["CARDINALITY"],
            "bottleneck_width": settings["BOTTLENECK_WIDTH"],
            "first_stage_channels": settings["WIDTH"], "stem_filters": settings["STEM_FILTERS"],
            "small_input_stem": settings["SMALL_INPUT_STEM"],
            "bn_momentum": settings["BN_MOMENTUM"], "image_size": int(settings["IMAGE_SIZE"])}


def architecture_of_record(recorded: Mapping) -> dict:
    """A recorded architecture (:func:`architecture`), also one written before the knobs were
    spelled out (``{"variant": "resnext14", "cardinality": 4, ...}``: the named variant's
    numbers, then those it recorded)."""
    if "stage_depths" in recorded:
        return dict(recorded)
    preset = VARIANT_ARCHITECTURES[recorded["variant"]]
    arch = {**preset, "bn_momentum": 0.9,  # the builder's value when those were written
            **{k: v for k, v in recorded.items() if k not in ("variant", "image_size")}}
    arch["stage_depths"] = list(arch["stage_depths"])
    return {"variant": recorded["variant"], **arch, "image_size": int(recorded["image_size"])}


def build_model(arch: Mapping, num_classes: int):
    """A fresh ResNeXt of ``arch`` (see :func:`architecture`) with a softmax head."""
    from leukocyte_cnn.models.resnext import build_resnext

    options = {k: v for k, v in arch.items() if k not in ("variant", "image_size")}
    size = int(arch["image_size"])
    return build_resnext(input_shape=(size, size, 3), num_classes=num_classes,
                         name=arch.get("variant"), **options)


def resolve_resnext_split(run, settings):
    """The split of ``SPLIT_METHOD``: stratified k-fold (``K``), or the owner's TRAIN/TEST
    (``predefined``), with the multiclass protocol's exclusion rule (``MIN_IMAGES``,
    ``EXCLUDE_CLASSES``) and validation share (``VAL_FRACTION``): with the same knobs, the
    very file ``cross_validation_splits.py --method <SPLIT_METHOD>`` writes.
    """
    from leukocyte_cnn.runs.experiment import resolve_protocol_split

    return resolve_protocol_split(run, settings)


def fold_training_images(fold, split, settings, seed: int, augmented_dir):
    """A fold's training table: class-balanced to ``TARGET_PER_CLASS`` by augmentation (as
    ``linear_cnn_da.py``), or with ``TARGET_PER_CLASS`` 0 every training image of the fold as
    it is (e.g. all of the owner's TRAIN; online augmentation still applies)."""
    from leukocyte_cnn.inputs.balancing import Balancing, balanced_fold_images

    if int(settings["TARGET_PER_CLASS"]) == 0:
        return fold.train
    balancing = Balancing.from_settings(settings, seed, image_size=settings["BALANCED_IMAGE_SIZE"])
    return balanced_fold_images(fold, split, augmented_dir, balancing)


def train_resnext_fold(fold, build, *, class_names, settings, train_table, xla: bool,
                       learning_rate: float | None = None, resume: bool = False,
                       rate_factors=None, reduce_lr: dict | None = None):
    """One fold: train ``build()`` with online flips and rotations (``fold_XX/inputs.csv``
    records the images fed), stop early on the fold's validation images and predict its test
    images. ``learning_rate`` defaults to the ``LEARNING_RATE`` knob (fine-tuning passes
    its own). ``resume``: a killed training goes on from its last finished epoch.
    ``rate_factors``: fine-tuning's slower pretrained layers
    (:func:`leukocyte_cnn.models.fine_tuning.rate_factors`). ``reduce_lr``: a learning-rate
    drop on plateaus of the validation loss (``cross_validation.fit``)."""
    from leukocyte_cnn.inputs.augment import online_augmentation
    from leukocyte_cnn.runs.cross_validation import train_classifier_fold

    s = settings
    size = int(s["IMAGE_SIZE"])
    return train_classifier_fold(
        fold, build, class_names=class_names, image_size=(size, size),
        batch_size=s["BATCH_SIZE"], epochs=s["EPOCHS"], patience=s["PATIENCE"],
        optimizer=s["OPTIMIZER"],
        learning_rate=s["LEARNING_RATE"] if learning_rate is None else learning_rate,
        train_table=train_table, xla=xla, color_mode=s["COLOR_MODE"], cache_mb=s["CACHE_MB"],
        resume=resume, rate_factors=rate_factors, reduce_lr=reduce_lr,
        augment=online_augmentation(rotation_degrees=s["ROTATION_DEGREES"],
                                    horizontal_flip=s["FLIPS"], vertical_flip=s["FLIPS"],
                                    seed=fold.seed, where=s["AUGMENT_IN"]))
