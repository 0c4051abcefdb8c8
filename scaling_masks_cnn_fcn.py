"""Four blood-cell classes: pixel scaling x cell masks x CNN/FCN, over repeated trials.

Reproduces the Copenhagen study of the Kaggle blood-cell set (Garcia Vazquez, Lamaison,
Vargas, Wolf): images halved from 240x320 to 120x160; four pixel scalings fitted on the
training images (per-pixel-per-channel, global and per-channel standardisation, division by
255); no mask, Otsu masks or U-Net masks blanking the background; the deck's best CNN
(kernel 2, dropout 0.3, 3,312,964 parameters) and FCN (kernel 2, dropout 0.1, 2,853,892
parameters); Adam 1e-3, batch 128, categorical cross-entropy; ten trials per setting, reported
as accuracy mean ± std [min, max], epochs, convergence rate and model size (deck: best CNN
0.87 ± 0.02, best FCN 0.882 ± 0.007, both channel-scaled without mask).

What we fixed: the scalers are fitted on the training images only (validation and test
images never enter the statistics) and streamed batch by batch instead of holding every image
in one array (the deck's RAM crashes); the scaling is the model's first layer, so each
checkpoint takes [0, 255] pixels. Every trial is a fresh, seeded model trained on the
dataset's own TRAIN images, stopped early on validation images carved from TRAIN, tested on
TEST (``--split-method random`` reproduces a leaky image-level split, labelled LEAKY). Otsu
masks ignore the black rotation fill of the Kaggle copies (leukocyte_cnn/inputs/masks.py says how
the three channel thresholds are combined). U-Net masks come from ``unet_masks.py`` (run
here first when missing), whose U-Net never saw a test image.

Convergence: a trial converges when its validation accuracy reaches CONVERGENCE_ACCURACY
(0.5, twice chance for four classes) within the epoch budget. "Epochs to best" is the epoch
of the kept checkpoint (lowest validation loss). Model size is the saved ``.keras`` file
(weights, Adam's two slots per weight, and the scaler's statistics).

Outputs in ``results/<run>/``: ``comparison.md/.csv``, ``per_trial.csv``,
``confusion_<setting>.png``, ``val_accuracy_curves.png``, ``feature_maps_<setting>.png``
(each conv and pool layer of the best setting per network, one test image), ``scalers/``
(the fitted sums), and a run folder per (setting, trial) under ``<setting>/trial_NN/``.
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
IMAGE_SIZE = (120, 160)   # (height, width): 240x320 halved, as in the deck
COLOR_MODE = "rgb"        # rgb, or grayscale (ITU-R 601 luminance in all 3 channels; the
                          # study compared colour with grayscale inputs)
CACHE_MB = 512            # decoded images kept in memory per set; larger sets stream (speed)
DATA_DIR = "data"         # where mask sets live (data/masks/...)
# --- the grid: scalings x masks x networks
SCALINGS = ("pixel_channel", "global", "channel", "divide255")  # deck's four scalings
MASKS = ("none", "otsu", "unet")  # background blanking: none, Otsu, U-Net (unet_masks.py)
NETWORKS = ("cnn", "fcn")  # the deck's best CNN and FCN
OTSU_MIN_VOTES = 2        # channels (of 3) that must call a pixel dark for the Otsu mask
# U-Net masks, trained on each fold's training images when missing (unet_masks.py's knobs;
# the same values find the same mask set)
UNET = dict(IMAGE_SIZE=(120, 160), START_FILTERS=16, FIRST_DROPOUT=0.25, DROPOUT=0.5,
            TARGETS="auto", OPTIMIZER="adam", LEARNING_RATE=1e-3, BATCH_SIZE=32, EPOCHS=30,
            PATIENCE=5, SHUFFLE_BUFFER=1024, MASK_THRESHOLD=0.5)
# --- architecture: sections of Conv 'same' ReLU -> Dropout -> MaxPool, shared by CNN and FCN
FILTERS = (64, 128, 256, 512, 1024)  # conv widths of the five sections (deck)
FIRST_POOL = (3, 4)       # first max-pool: 120x160 -> 40x40 (deck); the others are 2x2
CNN = {"kernel": 2, "dropout": 0.3}  # best CNN of the deck (3,312,964 parameters)
CNN_DENSE_UNITS = 128     # the CNN's hidden dense layer (deck: 128)
FCN = {"kernel": 2, "dropout": 0.1, "last_pool": 5}  # best FCN (2,853,892 parameters)
FCN_CONV_UNITS = 64       # the FCN's 1x1 conv before the class map (deck: 64)
# --- optimisation
OPTIMIZER = "adam"        # deck: Adam was the most stable
LEARNING_RATE = 1e-3      # deck: 0.001 (0.01 and 0.1 useless, 0.0001 crashed)
BATCH_SIZE = 128          # deck: "reliable and fast"
EPOCHS = 60               # upper bound (deck: 30 ± 5 epochs for the best CNN)
PATIENCE = 10             # epochs without validation-loss improvement before stopping
# --- evaluation
TRIALS = 10               # fresh trainings per setting (deck: 10 trials)
CONVERGENCE_ACCURACY = 0.5  # a trial converges when val accuracy reaches this (2x chance)
FEATURE_MAP_CHANNELS = 8  # channels shown per layer in the feature-map figure
# --quick: channel scaling with and without Otsu masks, CNN and FCN, 2 trials of 3 epochs on
# 48x64 images (the FCN's last pool shrinks to 2 so that its map stays 1x1); a U-Net, if one
# is asked for, as unet_masks.py --quick trains it
QUICK = dict(IMAGE_SIZE=(48, 64), FCN={"kernel": 2, "dropout": 0.1, "last_pool": 2},
             SCALINGS=("channel",), MASKS=("none", "otsu"), EPOCHS=3, PATIENCE=3, TRIALS=2,
             BATCH_SIZE=16, MAX_IMAGES_PER_CLASS=24,
             UNET=dict(IMAGE_SIZE=(48, 64), START_FILTERS=16, FIRST_DROPOUT=0.25, DROPOUT=0.5,
                       TARGETS="auto", OPTIMIZER="adam", LEARNING_RATE=1e-3, BATCH_SIZE=8,
                       EPOCHS=15, PATIENCE=5, SHUFFLE_BUFFER=1024, MASK_THRESHOLD=0.5))

_ALL_MASKS = ("none", "otsu", "unet")
_ALL_NETWORKS = ("cnn", "fcn")


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.devices import add_gpu_arguments
    from leukocyte_cnn.base.knobs import knob_argument
    from leukocyte_cnn.inputs.scaling import SCALINGS as ALL_SCALINGS
    from leukocyte_cnn.runs.trials import study_parser

    parser = study_parser(__doc__, trials=TRIALS, trials_knob="TRIALS", what="trials")
    parser.add_argument("--scalings", default=None,
                        help=f"comma-separated subset of {', '.join(ALL_SCALINGS)} (default: "
                             "SCALINGS, all; channel with --quick)")
    parser.add_argument("--masks", default=None,
                        help=f"comma-separated subset of {', '.join(_ALL_MASKS)} (default: "
                             "MASKS, all; none,otsu with --quick)")
    parser.add_argument("--networks", default=None,
                        help=f"comma-separated subset of {', '.join(_ALL_NETWORKS)} (default: "
                             "NETWORKS, both)")
    parser.add_argument("--unet-mask-dir", default=None,
                        help="folder of U-Net masks mirroring the image tree, used for every "
                             "fold (default: the set made with UNET for this split's fold and "
                             "this seed, data/masks/unet/<split>_<fingerprint>/fold_XX; trained "
                             "here when missing)")
    knob_argument(parser, "--epochs", knob="EPOCHS", type=int,
                  help=f"max epochs (EPOCHS, default {EPOCHS})")
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def build_classifier(network: str, scaler, s, num_classes: int):
    """Input [0, 255] -> the fitted scaling layer -> the deck's CNN or FCN (a new model)."""
    import keras

    from leukocyte_cnn.models.networks import copenhagen_cnn, copenhagen_fcn

    shape = (*s["IMAGE_SIZE"], 3)
    if network == "cnn":
        net = copenhagen_cnn(input_shape=shape, num_classes=num_classes, input_scaling=None,
                             filters=s["FILTERS"], first_pool=s["FIRST_POOL"],
                             dense_units=s["CNN_DENSE_UNITS"], **s["CNN"])
    else:
        net = copenhagen_fcn(input_shape=shape, num_classes=num_classes, input_scaling=None,
                             filters=s["FILTERS"], first_pool=s["FIRST_POOL"],
                             conv_units=s["FCN_CONV_UNITS"], **s["FCN"])
    inputs = keras.Input(shape=shape, name="pixels")
    outputs = net(scaler.layer(name="scaling")(inputs))
    return keras.Model(inputs, outputs, name=f"{network}_{scaler.method}")


def best_per_network(numeric, networks) -> dict:
    """The setting with the highest mean test accuracy for each network."""
    best = {}
    for network in networks:
        rows = numeric[numeric["network"] == network] if len(numeric) else numeric
        if len(rows):
            best[network] = rows.sort_values("accuracy_mean", ascending=False).iloc[0]["setting"]
    return best


def main(args: argparse.Namespace):
    from leukocyte_cnn.runs.experiment import resolve_run

    run, s = resolve_run(args, sys.modules[__name__])  # devices first, then the knobs
    from leukocyte_cnn.base.artifacts import record_of
    from leukocyte_cnn.base.run_folder import run_lock
    from leukocyte_cnn.inputs.masks import ensure_otsu_masks, mask_paths, otsu_mask_root
    from leukocyte_cnn.inputs.scaling import SCALINGS as ALL_SCALINGS
    from leukocyte_cnn.inputs.scaling import (
        load_moments,
        moments_of_images,
        save_moments,
        scaler_from_moments,
    )
    from leukocyte_cnn.reporting.comparisons import (
        Setting,
        plot_feature_maps,
        report_trials,
        write_comparison,
    )
    from leukocyte_cnn.reporting.summary import leaky_tag, run_config
    from leukocyte_cnn.runs.cross_validation import parse_fold_list, train_classifier_fold
    from leukocyte_cnn.runs.experiment import start_run
    from leukocyte_cnn.runs.trials import (
        limit_fold_per_class,
        parse_names,
        resolve_study_split,
        run_trials,
        trial_fold_dir,
    )
    from leukocyte_cnn.runs.unet_masks import UNetSettings, ensure_unet_masks

    scalings = parse_names(args.scalings, ALL_SCALINGS, "--scalings") or list(s["SCALINGS"])
    masks = parse_names(args.masks, _ALL_MASKS, "--masks") or list(s["MASKS"])
    networks = parse_names(args.networks, _ALL_NETWORKS, "--networks") or list(s["NETWORKS"])
    split = resolve_study_split(run, s)
    class_names = split.class_names
    size = tuple(s["IMAGE_SIZE"])
    run_dir = start_run(run, "scaling_masks_cnn_fcn", settings=s, split=split,
                        title="Scaling x masks x CNN/FCN", class_names=class_names,
                        resumable=("TRIALS",))
    grid = [Setting(f"{network}_{scaling}_{mask}",
                    {"network": network, "scaling": scaling, "mask": mask})
            for network in networks for mask in masks for scaling in scalings]
    otsu_root = otsu_mask_root(s["DATA_DIR"], run.dataset, split.settings.get("dataset_hash"),
                               s["OTSU_MIN_VOTES"])

    def unet_root(fold: int):
        """The U-Net mask folder of ``fold``: --unet-mask-dir, else made with UNET."""
        if args.unet_mask_dir:
            return args.unet_mask_dir
        unet = UNetSettings.from_knobs(s["UNET"], otsu_min_votes=s["OTSU_MIN_VOTES"],
                                       max_images_per_class=s["MAX_IMAGES_PER_CLASS"],
                                       seed=run.seed)
        return ensure_unet_masks(split, fold, unet, data_dir=s["DATA_DIR"],
                                 work_dir=run_dir / "unet_masks", data_root=run.data_root,
                                 xla=run.devices.xla)

    def masked(tables, mask: str, fold: int, artifacts: dict):
        """The tables with a ``mask`` column (one file per image), or unchanged."""
        if mask == "none":
            return list(tables)
        if mask == "otsu":
            artifacts["otsu_masks"] = record_of(otsu_root)
            return [t.assign(mask=ensure_otsu_masks(t, otsu_root, min_votes=s["OTSU_MIN_VOTES"]))
                    for t in tables]
        root = unet_root(fold)
        artifacts["unet_masks"] = record_of(root)  # recorded in the fold's timing.json
        return [t.assign(mask=mask_paths(root, t["image"], hint="run unet_masks.py on this "
                                         "split first")) for t in tables]

    def fitted_scaler(fold, train, mask: str, scaling: str):
        """The scaler fitted on this fold's (masked) training images: one streamed pass per
        mask type, kept as sums in scalers/ so every trial and scaling reuses it."""
        path = run_dir / "scalers" / f"fold_{fold.fold:02d}_{mask}.npz"
        if path.is_file():
            moments = load_moments(path)
        else:
            moments = moments_of_images(train["path"].tolist(), size, masks=train["mask"].tolist()
                                        if mask != "none" else None, color_mode=s["COLOR_MODE"])
            save_moments(path, moments)
        return scaler_from_moments(scaling, moments)

    def train_fold(setup, trial, fold):
        params = setup.params
        limit_fold_per_class(fold, s["MAX_IMAGES_PER_CLASS"], run.seed)  # quick: fewer images
        fold.train, fold.val, fold.test = masked((fold.train, fold.val, fold.test),
                                                 params["mask"], fold.fold, fold.artifacts)
        scaler = fitted_scaler(fold, fold.train, params["mask"], params["scaling"])
        return train_classifier_fold(
            fold, lambda: build_classifier(params["network"], scaler, s, len(class_names)),
            class_names=class_names, image_size=size, batch_size=s["BATCH_SIZE"],
            epochs=s["EPOCHS"], patience=s["PATIENCE"], optimizer=s["OPTIMIZER"],
            learning_rate=s["LEARNING_RATE"], xla=run.devices.xla, color_mode=s["COLOR_MODE"],
            cache_mb=s["CACHE_MB"], mask_column="mask" if params["mask"] != "none" else None)

    folds = parse_fold_list(run.folds, split.folds)
    run_trials(split, run_dir, grid, range(s["TRIALS"]), run.seed, train_fold, folds=folds,
               knobs=s)

    # One job's summary at a time: jobs finishing together never read each other's
    # half-written files, and the last one's tables hold every finished trial.
    with run_lock(run_dir, "summary of"):
        numeric, shown = report_trials(run_dir, grid, class_names, s["CONVERGENCE_ACCURACY"])
        best = best_per_network(numeric, networks)
        for network, name in best.items():
            # Feature maps of the setting's first trial for the fold's first test image (sorted
            # by name), masked as the setting was trained.
            setting = next(g for g in grid if g.name == name)
            rows = split.fold(folds[0])
            test = masked([rows[rows.role == "test"].sort_values("image").head(1)],
                          setting.params["mask"], folds[0], {})[0]
            plot_feature_maps(
                trial_fold_dir(run_dir, setting.name, 0, folds[0]) / "model.keras", test.iloc[0],
                size, run_dir / f"feature_maps_{setting.name}.png",
                channels=s["FEATURE_MAP_CHANNELS"], inner=f"copenhagen_{network}",
                color_mode=s["COLOR_MODE"],
                title=f"{setting.name}: feature maps of test image {test.iloc[0]['image']}"
                      + leaky_tag(run_config(run_dir)))
        notes = [f"mean ± sample std [min, max] over up to {s['TRIALS']} trial(s) per setting, "
                 f"each a fresh model; {s['OPTIMIZER']} {s['LEARNING_RATE']:g}, batch "
                 f"{s['BATCH_SIZE']}, images {size[0]}x{size[1]}, at most {s['EPOCHS']} "
                 "epochs, early stopping on validation loss",
                 "scalers fitted on the (masked) training images only",
                 f"converged: validation accuracy reached {s['CONVERGENCE_ACCURACY']:g} (twice "
                 "chance) within the epoch budget; epochs to best: epoch of the kept checkpoint",
                 "model MB: size of the saved .keras file (weights + Adam slots + scaler "
                 "statistics)",
                 "best per network: " + (", ".join(f"{n} {g}" for n, g in best.items()) or "none")]
        return write_comparison(run_dir, numeric, shown,
                                title="Scaling x masks x CNN/FCN: test accuracy per setting",
                                notes=notes)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
