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
masks ignore the black rotation fill of the Kaggle copies (leukocyte_cnn/masks.py says how
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

IMAGE_SIZE = (120, 160)   # (height, width): 240x320 halved, as in the deck
COLOR_MODE = "rgb"        # rgb, or grayscale (ITU-R 601 luminance in all 3 channels; the
                          # study compared colour with grayscale inputs)
SCALINGS = ("pixel_channel", "global", "channel", "divide255")  # deck's four scalings
MASKS = ("none", "otsu", "unet")  # background blanking: none, Otsu, U-Net (unet_masks.py)
NETWORKS = ("cnn", "fcn")  # the deck's best CNN and FCN
CNN = {"kernel": 2, "dropout": 0.3}  # best CNN of the deck (3,312,964 parameters)
FCN = {"kernel": 2, "dropout": 0.1, "last_pool": 5}  # best FCN (2,853,892 parameters)
OPTIMIZER = "adam"        # deck: Adam was the most stable
LEARNING_RATE = 1e-3      # deck: 0.001 (0.01 and 0.1 useless, 0.0001 crashed)
BATCH_SIZE = 128          # deck: "reliable and fast"
EPOCHS = 60               # upper bound (deck: 30 ± 5 epochs for the best CNN)
PATIENCE = 10             # epochs without validation-loss improvement before stopping
TRIALS = 10               # fresh trainings per setting (deck: 10 trials)
CONVERGENCE_ACCURACY = 0.5  # a trial converges when val accuracy reaches this (2x chance)
OTSU_MIN_VOTES = 2        # channels (of 3) that must call a pixel dark for the Otsu mask
FEATURE_MAP_CHANNELS = 8  # channels shown per layer in the feature-map figure
MAX_IMAGES_PER_CLASS = None  # cap per class and role (None: all images)
DATA_DIR = "data"         # where mask sets live (data/masks/...)
# --quick: channel scaling with and without Otsu masks, CNN and FCN, 2 trials of 3 epochs on
# 48x64 images (the FCN's last pool shrinks to 2 so that its map stays 1x1)
QUICK = dict(IMAGE_SIZE=(48, 64), FCN={"kernel": 2, "dropout": 0.1, "last_pool": 2},
             SCALINGS=("channel",), MASKS=("none", "otsu"), EPOCHS=3, PATIENCE=3, TRIALS=2,
             BATCH_SIZE=16, MAX_IMAGES_PER_CLASS=24)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.devices import add_gpu_arguments
    from leukocyte_cnn.runs.studies import study_parser

    parser = study_parser(__doc__, trials=TRIALS, what="trials")
    parser.add_argument("--scalings", default=None,
                        help=f"comma-separated subset of {', '.join(SCALINGS)} (default: all; "
                             "channel with --quick)")
    parser.add_argument("--masks", default=None,
                        help=f"comma-separated subset of {', '.join(MASKS)} (default: all; "
                             "none,otsu with --quick)")
    parser.add_argument("--networks", default=None,
                        help=f"comma-separated subset of {', '.join(NETWORKS)} (default: both)")
    parser.add_argument("--unet-mask-dir", default=None,
                        help="folder of U-Net masks mirroring the image tree (default: what "
                             "unet_masks.py writes for this split with its knobs and this seed, "
                             "data/masks/unet/<split>_<fingerprint>/fold_XX; made here when "
                             "missing)")
    parser.add_argument("--epochs", type=int, default=None, help=f"max epochs (default {EPOCHS})")
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def build_classifier(network: str, scaler, settings: dict, num_classes: int):
    """Input [0, 255] -> the fitted scaling layer -> the deck's CNN or FCN (a new model)."""
    import keras

    from leukocyte_cnn.models.networks import copenhagen_cnn, copenhagen_fcn

    shape = (*settings["IMAGE_SIZE"], 3)
    if network == "cnn":
        net = copenhagen_cnn(input_shape=shape, num_classes=num_classes, input_scaling=None,
                             kernel=settings["CNN"]["kernel"], dropout=settings["CNN"]["dropout"])
    else:
        fcn = settings["FCN"]
        net = copenhagen_fcn(input_shape=shape, num_classes=num_classes, input_scaling=None,
                             kernel=fcn["kernel"], dropout=fcn["dropout"],
                             last_pool=fcn["last_pool"])
    inputs = keras.Input(shape=shape, name="pixels")
    outputs = net(scaler.layer(name="scaling")(inputs))
    return keras.Model(inputs, outputs, name=f"{network}_{scaler.method}")


def unet_masks_for(args, split, fold: int, quick: bool):
    """The U-Net mask folder of this split's fold, made by unet_masks.py with its knobs and
    this run's seed; trains the U-Net first when no set with that fingerprint exists."""
    import unet_masks
    from leukocyte_cnn.runs.experiment import script_settings
    from leukocyte_cnn.inputs.masks import unet_mask_inputs, unet_mask_set_is_current

    if args.unet_mask_dir:
        return args.unet_mask_dir
    argv = ["--dataset", args.dataset, "--split", str(split.csv_path), "--seed",
            str(args.seed), "--folds", str(fold), "--results-dir", args.results_dir]
    if args.data_root:
        argv += ["--data-root", str(args.data_root)]
    unet_args = unet_masks.parse_args(argv + (["--quick"] if quick else []))
    unet_settings = script_settings(unet_masks, unet_args)
    root = unet_masks.mask_root_for(unet_args, split, fold, unet_settings)
    inputs = unet_mask_inputs(split, fold, unet_masks.mask_set_settings(unet_args, unet_settings))
    if not unet_mask_set_is_current(root, inputs):
        print(f"no U-Net masks in {root} yet: running unet_masks.py on this split", flush=True)
        unet_masks.main(unet_args)
    return root


def best_per_network(numeric, networks) -> dict:
    """The setting with the highest mean test accuracy for each network."""
    best = {}
    for network in networks:
        rows = numeric[numeric["network"] == network] if len(numeric) else numeric
        if len(rows):
            best[network] = rows.sort_values("accuracy_mean", ascending=False).iloc[0]["setting"]
    return best


def draw_feature_maps(args, split, run_dir, fold: int, network: str, setting, size, otsu_root):
    """Feature maps of the setting's first trial for the fold's first test image (sorted by
    name), masked as the setting was trained."""
    from leukocyte_cnn.runs import studies
    from leukocyte_cnn.inputs.masks import ensure_otsu_masks, mask_paths
    from leukocyte_cnn.reporting.summary import leaky_tag, run_config

    rows = split.fold(fold)
    test = rows[rows.role == "test"].sort_values("image").head(1)
    if setting.params["mask"] == "otsu":
        test = test.assign(mask=ensure_otsu_masks(test, otsu_root, min_votes=OTSU_MIN_VOTES))
    elif setting.params["mask"] == "unet":
        test = test.assign(mask=mask_paths(unet_masks_for(args, split, fold, args.quick),
                                           test["image"]))
    return studies.plot_feature_maps(
        studies.trial_fold_dir(run_dir, setting.name, 0, fold) / "model.keras", test.iloc[0],
        size, run_dir / f"feature_maps_{setting.name}.png", channels=FEATURE_MAP_CHANNELS,
        inner=f"copenhagen_{network}", color_mode=COLOR_MODE,
        title=f"{setting.name}: feature maps of test image {test.iloc[0]['image']}"
              + leaky_tag(run_config(run_dir)))


def main(args: argparse.Namespace):
    from leukocyte_cnn.base.devices import setup_devices

    setup_devices(args)  # first: GPUs, memory growth and replicas are fixed at TF's first op
    from leukocyte_cnn.runs import studies
    from leukocyte_cnn.runs.experiment import (script_settings, start_training_run, train_classifier_fold)
    from leukocyte_cnn.base.artifacts import record_of
    from leukocyte_cnn.inputs.masks import ensure_otsu_masks, mask_paths, otsu_mask_root
    from leukocyte_cnn.inputs.scaling import (load_moments, moments_of_images, save_moments, scaler_from_moments)
    from leukocyte_cnn.runs.cross_validation import parse_fold_list

    settings = script_settings(__name__, args)
    epochs = args.epochs or settings["EPOCHS"]
    trials = args.trials or settings["TRIALS"]
    scalings = (studies.parse_names(args.scalings, list(SCALINGS), "--scalings")
                or list(settings["SCALINGS"]))
    masks = studies.parse_names(args.masks, list(MASKS), "--masks") or list(settings["MASKS"])
    networks = (studies.parse_names(args.networks, list(NETWORKS), "--networks")
                or list(settings["NETWORKS"]))
    split = studies.resolve_study_split(args)
    class_names = split.class_names
    size = tuple(settings["IMAGE_SIZE"])
    run_dir = start_training_run(args, "scaling_masks_cnn_fcn", knobs=settings, split=split,
                                 title="Scaling x masks x CNN/FCN", class_names=class_names,
                                 extra={"epochs": epochs})
    grid = [studies.Setting(f"{network}_{scaling}_{mask}",
                            {"network": network, "scaling": scaling, "mask": mask})
            for network in networks for mask in masks for scaling in scalings]
    cap = settings["MAX_IMAGES_PER_CLASS"]
    otsu_root = otsu_mask_root(DATA_DIR, args.dataset, split.settings.get("dataset_hash"),
                               OTSU_MIN_VOTES)

    def with_masks(fold, mask: str):
        """The fold's tables with a ``mask`` column (one file per image), or unchanged."""
        tables = [fold.train, fold.val, fold.test]
        if mask == "none":
            return tables
        if mask == "otsu":
            fold.artifacts["otsu_masks"] = record_of(otsu_root)
            return [t.assign(mask=ensure_otsu_masks(t, otsu_root, min_votes=OTSU_MIN_VOTES))
                    for t in tables]
        root = unet_masks_for(args, split, fold.fold, args.quick)
        fold.artifacts["unet_masks"] = record_of(root)  # recorded in the fold's timing.json
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
                                        if mask != "none" else None, color_mode=COLOR_MODE)
            save_moments(path, moments)
        return scaler_from_moments(scaling, moments)

    def train_fold(setup, trial, fold):
        params = setup.params
        studies.limit_fold_per_class(fold, cap, args.seed)  # quick runs: fewer images
        fold.train, fold.val, fold.test = with_masks(fold, params["mask"])
        scaler = fitted_scaler(fold, fold.train, params["mask"], params["scaling"])
        return train_classifier_fold(
            fold, lambda: build_classifier(params["network"], scaler, settings, len(class_names)),
            class_names=class_names, image_size=size, batch_size=settings["BATCH_SIZE"],
            epochs=epochs, patience=settings["PATIENCE"], optimizer=OPTIMIZER,
            learning_rate=LEARNING_RATE, xla=args.xla, color_mode=COLOR_MODE,
            mask_column="mask" if params["mask"] != "none" else None)

    folds = parse_fold_list(args.folds, split.folds)
    studies.run_trials(split, run_dir, grid, range(trials), args.seed, train_fold, folds=folds)

    numeric, shown = studies.report_trials(run_dir, grid, class_names, CONVERGENCE_ACCURACY)
    best = best_per_network(numeric, networks)
    for network, setting in best.items():
        draw_feature_maps(args, split, run_dir, folds[0], network,
                          next(s for s in grid if s.name == setting), size, otsu_root)
    notes = [f"mean ± sample std [min, max] over up to {trials} trial(s) per setting, each a "
             f"fresh model; Adam {LEARNING_RATE:g}, batch {settings['BATCH_SIZE']}, images "
             f"{size[0]}x{size[1]}, at most {epochs} epochs, early stopping on validation loss",
             "scalers fitted on the (masked) training images only",
             f"converged: validation accuracy reached {CONVERGENCE_ACCURACY:g} (twice chance) "
             "within the epoch budget; epochs to best: epoch of the kept checkpoint",
             "model MB: size of the saved .keras file (weights + Adam slots + scaler statistics)",
             "best per network: " + (", ".join(f"{n} {s}" for n, s in best.items()) or "none")]
    return studies.write_comparison(run_dir, numeric, shown,
                                    title="Scaling x masks x CNN/FCN: test accuracy per setting",
                                    notes=notes)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
