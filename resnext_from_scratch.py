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

VARIANT = "resnext29"      # resnext29 (stages 3,3,3), resnext14 (1,1,2) or resnext50_32x4d (GPU)
IMAGE_SIZE = 96            # input side in px (cells are 64-128 px crops at this resolution)
COLOR_MODE = "rgb"       # rgb, or grayscale: ITU-R 601 luminance in all 3 channels
CARDINALITY = None         # groups of every 3x3 conv; None: the variant's (8; 32 for resnext50)
BOTTLENECK_WIDTH = None    # channels per group in the first stage; None: the variant's (4)
WIDTH = None               # first-stage output channels, doubled per stage; None: variant's (64)
STEM_FILTERS = None        # filters of the stem conv; None: the variant's (32; 64 for resnext50)
OPTIMIZER = "adam"         # Adam as in the thesis' ResNeXt scripts
LEARNING_RATE = 1e-3       # Keras' Adam default
BATCH_SIZE = 32            # images per step
EPOCHS = 100               # upper bound; early stopping ends most folds sooner
PATIENCE = 15              # epochs without validation-loss improvement before stopping
ROTATION_DEGREES = 359     # on-the-fly rotation range (cells have no orientation)
FLIPS = True               # on-the-fly horizontal and vertical flips
K = 5                      # folds of the stratified k-fold cross-validation (thesis: 5)
# --quick: three folds of a narrow ResNeXt-14 at 48 px for a few epochs (minutes on 2 cores)
QUICK = dict(VARIANT="resnext14", IMAGE_SIZE=48, CARDINALITY=4, WIDTH=32, STEM_FILTERS=16,
             EPOCHS=6, PATIENCE=3, BATCH_SIZE=16, K=3)


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Network, training and data options shared by the two ResNeXt scripts."""
    parser.add_argument("--variant", choices=("resnext29", "resnext14", "resnext50_32x4d"),
                        default=None,
                        help=f"ResNeXt variant (default {VARIANT}; resnext14 with --quick)")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"input side in px (default {IMAGE_SIZE}; 48 with --quick)")
    parser.add_argument("--cardinality", type=int, default=None,
                        help="groups of the 3x3 convolutions (default: the variant's, 8)")
    parser.add_argument("--bottleneck-width", type=int, default=None,
                        help="channels per group in the first stage (default: the variant's, 4)")
    parser.add_argument("--width", type=int, default=None,
                        help="output channels of the first stage, doubled per stage "
                             "(default: the variant's, 64)")
    parser.add_argument("--stem-filters", type=int, default=None,
                        help="filters of the stem convolution (default: the variant's, 32)")
    parser.add_argument("--epochs", type=int, default=None, help=f"max epochs (default {EPOCHS})")
    parser.add_argument("--patience", type=int, default=None,
                        help=f"early-stopping patience in epochs (default {PATIENCE})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"images per step (default {BATCH_SIZE})")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help=f"learning rate (default {LEARNING_RATE})")
    parser.add_argument("--k", type=int, default=None,
                        help=f"folds of the stratified k-fold split (default {K}; 3 with --quick)")
    parser.add_argument("--zheng-dataset", choices=("1", "2", "both"), default=None,
                        help="zheng2018 only: which of the two Zheng et al. sets to read "
                             "(default: the reader's, 1)")
    parser.add_argument("--augmented-dir", default="data/augmented",
                        help="root of linear_cnn_da.py's class-balanced folds "
                             "(default data/augmented)")
    parser.add_argument("--target", type=int, default=None,
                        help="images per class when the balanced folds must be made here "
                             "(default: linear_cnn_da.py's)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.runs.experiment import add_common_arguments
    from leukocyte_cnn.base.devices import add_gpu_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_multiclass")
    add_model_arguments(parser)
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def resolve_settings(module, args: argparse.Namespace) -> dict:
    """A script's knobs, shrunk by ``--quick`` and overridden by the options given."""
    from leukocyte_cnn.runs.experiment import script_settings

    overrides = {"variant": "VARIANT", "image_size": "IMAGE_SIZE", "cardinality": "CARDINALITY",
                 "bottleneck_width": "BOTTLENECK_WIDTH", "width": "WIDTH",
                 "stem_filters": "STEM_FILTERS", "epochs": "EPOCHS", "patience": "PATIENCE",
                 "batch_size": "BATCH_SIZE", "learning_rate": "LEARNING_RATE", "k": "K"}
    settings = script_settings(module, args)
    for option, knob in overrides.items():
        if getattr(args, option, None) is not None:
            settings[knob] = getattr(args, option)
    return settings


def architecture(settings: dict) -> dict:
    """The network's build settings: variant, input size and the widths that were set."""
    arch = {"variant": settings["VARIANT"], "image_size": int(settings["IMAGE_SIZE"])}
    for knob, keyword in (("CARDINALITY", "cardinality"), ("BOTTLENECK_WIDTH", "bottleneck_width"),
                          ("WIDTH", "first_stage_channels"), ("STEM_FILTERS", "stem_filters")):
        if settings.get(knob) is not None:
            arch[keyword] = int(settings[knob])
    return arch


def build_model(arch: dict, num_classes: int):
    """A fresh ResNeXt of ``arch`` (see :func:`architecture`) with a softmax head."""
    import resnext_network as rx

    builders = {"resnext29": rx.resnext29, "resnext14": rx.resnext14,
                "resnext50_32x4d": rx.resnext50_32x4d}
    options = {k: v for k, v in arch.items() if k not in ("variant", "image_size")}
    size = arch["image_size"]
    return builders[arch["variant"]](input_shape=(size, size, 3), num_classes=num_classes,
                                     **options)


def resolve_resnext_split(args: argparse.Namespace, k: int):
    """The stratified k-fold split with the linear CNN's exclusion rule (``linear_cnn_da``).

    With ``k=3`` and ``--quick`` this is the very file the linear CNN's quick run reads.
    """
    import linear_cnn_da as da
    from leukocyte_cnn.runs.experiment import present_exclusions, resolve_split

    return resolve_split(args, method="kfold", k=k, min_images=da.MIN_IMAGES,
                         exclude_classes=present_exclusions(args, da.EXCLUDE_CLASSES),
                         zheng_dataset=args.zheng_dataset)


def train_resnext_fold(fold, build, *, class_names, settings: dict, train_table,
                       learning_rate: float | None = None, xla: bool = False):
    """One fold: train ``build()`` with online flips and rotations (``fold_XX/inputs.csv``
    records the images fed, see ``training.record_fold_inputs``), stop early on the fold's
    validation images and predict its test images.

    Shared by from-scratch training, fine-tuning and both arms of the learning curve.
    """
    from leukocyte_cnn.inputs.augment import online_augmentation
    from leukocyte_cnn.runs.experiment import train_classifier_fold

    size = int(settings["IMAGE_SIZE"])
    return train_classifier_fold(
        fold, build, class_names=class_names, image_size=(size, size),
        batch_size=settings["BATCH_SIZE"], epochs=settings["EPOCHS"],
        patience=settings["PATIENCE"], optimizer=settings["OPTIMIZER"],
        learning_rate=learning_rate or settings["LEARNING_RATE"], train_table=train_table,
        xla=xla, color_mode=settings["COLOR_MODE"],
        augment=online_augmentation(rotation_degrees=settings["ROTATION_DEGREES"],
                                    horizontal_flip=settings["FLIPS"],
                                    vertical_flip=settings["FLIPS"], seed=fold.seed))


def main(args: argparse.Namespace):
    import linear_cnn_da as da
    from leukocyte_cnn.runs.experiment import start_run
    from leukocyte_cnn.base.devices import device_settings, setup_devices
    from leukocyte_cnn.reporting.summary import summarize_run
    from leukocyte_cnn.runs.cross_validation import parse_fold_list, run_folds

    setup_devices(args)  # first: GPUs, memory growth and replicas are fixed at TF's first op
    settings = resolve_settings(sys.modules[__name__], args)
    arch = architecture(settings)
    split = resolve_resnext_split(args, settings["K"])
    folds = parse_fold_list(args.folds, split.folds)
    n_params = build_model(arch, len(split.class_names)).count_params()
    run_dir = start_run(args, "resnext_from_scratch", knobs=settings, split=split,
                        title=f"ResNeXt from scratch ({arch['variant']}, {n_params:,} parameters, "
                              f"{arch['image_size']} px)",
                        class_names=split.class_names,
                        extra={"architecture": arch, "parameters": n_params,
                               "augmented_dir": str(da.augmented_root(
                                   split, args.augmented_dir, args)),
                               "balancing": da.balancing_settings(args),
                               "target_per_class": da.target_per_class(args),
                               **device_settings(args)})

    def train_fold(fold):
        return train_resnext_fold(
            fold, lambda: build_model(arch, len(split.class_names)),
            class_names=split.class_names, settings=settings,
            train_table=da.balanced_training_images(args, split, fold), xla=args.xla)

    run_folds(split, run_dir, folds, args.seed, train_fold)
    return summarize_run(run_dir)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
