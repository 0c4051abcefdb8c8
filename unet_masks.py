"""Cell masks from the Copenhagen study's U-Net, trained on training images only.

Reproduces the U-Net of the Copenhagen blood-cell deck (Garcia Vazquez, Lamaison, Vargas,
Wolf; Ronneberger et al. 2015): grayscale 120x160 images in, one sigmoid mask out, three
poolings, 16 filters at the first level. The deck trained it on its own Otsu masks; here it
learns from ground-truth masks where the dataset has them for every training image (the
synthetic sets, Zheng 2018) and from Otsu masks otherwise (TARGETS). It then writes a mask
for every image of the split (PNG, 0/255, at the image's own size, mirroring the image tree;
with --quick only for the few images per class that quick runs use) into
``data/masks/unet/<split>_<fingerprint>/fold_XX/``, where ``scaling_masks_cnn_fcn.py`` finds
them. The fingerprint covers the split file's SHA-256, the fold and every U-Net setting; the
folder's ``fingerprint.json`` and ``masks.csv`` name the run and checkpoint that made it.

What we fixed: the U-Net trains on the fold's training images only and stops early on its
validation images; test images are only ever predicted, so masks of test images carry no
information from test images into the classifier study. Mask quality is measured: IoU and
Dice against ground truth where it exists (and, for comparison, of the Otsu masks), and the
agreement with Otsu masks everywhere.

Outputs: the mask folder (with ``masks.csv`` and ``.complete``), and in ``results/<run>/``
``mask_summary.md/.csv`` (mean ± std IoU/Dice per role and reference), ``fold_XX/
{model.keras, epochs.csv, mask_scores.csv}`` (one row per image).
"""
from __future__ import annotations

import argparse

IMAGE_SIZE = (120, 160)   # (height, width) the U-Net sees (deck: 120x160, grayscale)
START_FILTERS = 16        # filters at the first level (deck: 16), doubling per level
TARGETS = "auto"          # auto: ground truth if every training image has one, else Otsu
OPTIMIZER = "adam"        # optimizer of the U-Net
LEARNING_RATE = 1e-3      # Adam's default
BATCH_SIZE = 32           # images per step
EPOCHS = 30               # upper bound; early stopping on validation loss
PATIENCE = 5              # epochs without validation-loss improvement before stopping
SHUFFLE_BUFFER = 1024     # (image, mask) pairs shuffled at a time (bounded memory)
MASK_THRESHOLD = 0.5      # predicted probability at or above which a pixel is "cell"
OTSU_MIN_VOTES = 2        # Otsu masks: channels (of 3) that must call a pixel dark
MAX_IMAGES_PER_CLASS = None  # cap per class and role (None: all images)
DATA_DIR = "data"         # mask sets go to data/masks/...
# --quick: 48x64 images, a few training images per class, 15 epochs of batch 8 (with fewer
# steps, or 8 start filters, the U-Net still predicted background everywhere: IoU 0)
QUICK = dict(IMAGE_SIZE=(48, 64), EPOCHS=15, PATIENCE=5, BATCH_SIZE=8, MAX_IMAGES_PER_CLASS=24)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.runs.experiment import add_common_arguments
    from leukocyte_cnn.base.devices import add_gpu_arguments
    from leukocyte_cnn.runs.studies import SPLIT_METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_kaggle")
    parser.add_argument(
        "--split-method", choices=SPLIT_METHODS, default="predefined",
        help="predefined (default): the dataset's own TRAIN/TEST split; random: a leaky "
             "image-level re-split (only to pair with a classifier study made that way)")
    parser.add_argument("--targets", choices=("auto", "truth", "otsu"), default=None,
                        help=f"what the U-Net learns from (default {TARGETS}: ground-truth "
                             "masks when every training image has one, else Otsu masks)")
    parser.add_argument("--mask-dir", default=None,
                        help="where the masks go (default data/masks/unet/<split>_<fingerprint>/"
                             "fold_XX, where scaling_masks_cnn_fcn.py looks)")
    parser.add_argument("--epochs", type=int, default=None, help=f"max epochs (default {EPOCHS})")
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


UNET_MASK_CODE_VERSION = 1  # bump when the same settings would give other masks


def mask_set_settings(args: argparse.Namespace, settings: dict) -> dict:
    """What decides a fold's U-Net masks besides the split: the U-Net's knobs, targets, epochs
    and seed (the fingerprint inputs of the mask set, with the split's SHA-256 and fold)."""
    names = ("IMAGE_SIZE", "START_FILTERS", "OPTIMIZER", "LEARNING_RATE", "BATCH_SIZE",
             "PATIENCE", "MASK_THRESHOLD", "OTSU_MIN_VOTES", "MAX_IMAGES_PER_CLASS")
    return {"unet": {name: settings[name] for name in names},
            "epochs": args.epochs or settings["EPOCHS"], "targets": args.targets or TARGETS,
            "seed": args.seed, "code": UNET_MASK_CODE_VERSION}


def mask_root_for(args: argparse.Namespace, split, fold: int, settings: dict):
    """The mask folder of ``fold``: ``--mask-dir/fold_XX``, else the fingerprinted default
    ``data/masks/unet/<split>_<fingerprint>/fold_XX`` (see masks.unet_mask_root)."""
    from pathlib import Path

    from leukocyte_cnn.inputs.masks import unet_mask_root

    if args.mask_dir:
        return Path(args.mask_dir) / f"fold_{fold:02d}"
    return unet_mask_root(DATA_DIR, split, fold, mask_set_settings(args, settings))


def to_gray(images):
    """RGB batch (B, H, W, 3) in [0, 255] -> luminance (B, H, W, 1), as the deck's U-Net saw."""
    import tensorflow as tf

    return tf.image.rgb_to_grayscale(images)


def pair_dataset(table, target_column: str, size, batch_size: int, *, shuffle: bool, seed: int):
    """Batches of (grayscale image, 0/1 mask) at ``size``; masks resized nearest-neighbour.

    Images and masks come from two unshuffled pipelines zipped image by image, so a pair can
    never be mismatched; shuffling then happens on the pairs (bounded buffer).
    """
    import tensorflow as tf

    from leukocyte_cnn.inputs.pipeline import make_dataset

    images = make_dataset(table["path"].tolist(), None, size, 1).unbatch()
    masks = make_dataset(table[target_column].tolist(), None, size, 1,
                         resize_method="nearest").unbatch()
    pairs = tf.data.Dataset.zip((images, masks)).map(
        lambda image, mask: (to_gray(image[None])[0], tf.cast(mask[..., :1] > 0, tf.float32)))
    pairs = pairs.apply(tf.data.experimental.assert_cardinality(len(table)))  # epoch length
    if shuffle:
        pairs = pairs.shuffle(min(SHUFFLE_BUFFER, max(len(table), 1)), seed=seed,
                              reshuffle_each_iteration=True)
    return pairs.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict_masks(model, table, size, batch_size: int, threshold: float):
    """Yield (row, boolean mask at the image's own size) for every row of ``table``."""
    import numpy as np
    import tensorflow as tf

    from leukocyte_cnn.data.images import image_mode_info
    from leukocyte_cnn.inputs.pipeline import make_dataset

    rows = table.itertuples(index=False)
    for batch in make_dataset(table["path"].tolist(), None, size, batch_size):
        probabilities = model(to_gray(batch), training=False)
        for probability in probabilities:
            row = next(rows)
            width, height = image_mode_info(row.path)[:2]
            full = tf.image.resize(probability, (height, width), method="bilinear")
            yield row, np.asarray(full)[..., 0] >= threshold


def score_rows(role: str, key: str, unet_mask, otsu_path: str, truth_path: str) -> dict:
    """IoU/Dice of the U-Net mask against ground truth and Otsu, and of Otsu against truth."""
    from leukocyte_cnn.inputs.masks import dice, iou, read_mask

    otsu = read_mask(otsu_path)
    row = {"role": role, "image": key, "unet_vs_otsu_iou": iou(unet_mask, otsu),
           "unet_vs_otsu_dice": dice(unet_mask, otsu)}
    if truth_path:
        truth = read_mask(truth_path)
        if truth.shape != unet_mask.shape:
            from leukocyte_cnn.base.errors import InputError
            raise InputError(f"{truth_path}: mask size {truth.shape} differs from its image "
                             f"{unet_mask.shape}")
        row.update(unet_vs_truth_iou=iou(unet_mask, truth),
                   unet_vs_truth_dice=dice(unet_mask, truth),
                   otsu_vs_truth_iou=iou(otsu, truth), otsu_vs_truth_dice=dice(otsu, truth))
    return row


def summary_table(scores):
    """Per role and comparison: images, IoU and Dice as mean ± sample std."""
    import pandas as pd

    from leukocyte_cnn.runs.studies import spread

    rows = []
    for comparison, label in (("unet_vs_truth", "U-Net vs ground truth"),
                              ("otsu_vs_truth", "Otsu vs ground truth"),
                              ("unet_vs_otsu", "U-Net vs Otsu (agreement)")):
        if f"{comparison}_iou" not in scores:
            continue
        for role in ("train", "val", "test"):
            part = scores[(scores["role"] == role) & scores[f"{comparison}_iou"].notna()]
            if len(part):
                rows.append({"comparison": label, "role": role, "images": len(part),
                             "iou_mean": part[f"{comparison}_iou"].mean(),
                             "dice_mean": part[f"{comparison}_dice"].mean(),
                             "IoU": spread(part[f"{comparison}_iou"], with_range=False),
                             "Dice": spread(part[f"{comparison}_dice"], with_range=False)})
    return pd.DataFrame(rows)


def main(args: argparse.Namespace):
    from pathlib import Path

    import keras
    import pandas as pd

    from leukocyte_cnn.base import progress
    from leukocyte_cnn.runs import studies
    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.runs.experiment import make_optimizer, script_settings, start_run
    from leukocyte_cnn.base.devices import (compile_kwargs, device_settings, model_scope, require_xla, setup_devices)
    from leukocyte_cnn.base.io import write_csv
    from leukocyte_cnn.base.artifacts import describe_difference
    from leukocyte_cnn.base.io import file_sha256
    from leukocyte_cnn.inputs.masks import (COMPLETE_MARKER, ensure_otsu_masks, mark_complete, mask_file, mask_set_is_complete, otsu_mask_root, truth_mask_column, unet_mask_inputs, unet_mask_set_is_current, write_mask)
    from leukocyte_cnn.models.networks import unet
    from leukocyte_cnn.reporting.summary import markdown_table, write_table
    from leukocyte_cnn.base.seeding import set_seed
    from leukocyte_cnn.runs.cross_validation import fit, parse_fold_list
    from leukocyte_cnn.base.run_folder import fold_dir, write_fold_inputs

    setup_devices(args)  # first: GPUs, memory growth and replicas are fixed at TF's first op
    settings = script_settings(__name__, args)
    epochs = args.epochs or settings["EPOCHS"]
    targets = args.targets or TARGETS
    size = tuple(settings["IMAGE_SIZE"])
    split = studies.resolve_study_split(args)
    folds = parse_fold_list(args.folds, split.folds)
    run_dir = start_run(args, "unet_masks", knobs=settings, split=split, title="U-Net masks",
                        class_names=split.class_names,
                        extra={"epochs": epochs, "targets": targets, "mask_dir": args.mask_dir,
                               **device_settings(args)})
    otsu_root = otsu_mask_root(DATA_DIR, args.dataset, split.settings.get("dataset_hash"),
                               OTSU_MIN_VOTES)
    cap = settings["MAX_IMAGES_PER_CLASS"]

    for k in folds:
        out = fold_dir(run_dir, k)
        mask_root = mask_root_for(args, split, k, settings)
        inputs = unet_mask_inputs(split, k, mask_set_settings(args, settings))
        if unet_mask_set_is_current(mask_root, inputs):
            if (out / "mask_scores.csv").is_file():
                print(f"fold {k}: finished earlier, kept ({mask_root})", flush=True)
                continue
        elif mask_set_is_complete(mask_root):  # made otherwise: never overwritten in place
            raise InputError(f"{mask_root}: holds U-Net masks made otherwise "
                             f"({describe_difference(mask_root, inputs)}); it is kept: choose "
                             "another --mask-dir or delete it")
        # With MAX_IMAGES_PER_CLASS (quick runs) every role is capped the way the classifier
        # scripts cap it (same function, same seed), so masks exist for the images they use.
        rows = split.fold(k)
        rows = pd.concat([studies.limit_per_class(rows[rows.role == role], cap, args.seed)
                          for role in ("train", "val", "test")], ignore_index=True)
        rows["truth"] = truth_mask_column(rows, split.settings["dataset"],
                                          args.data_root or split.settings.get("data_root"),
                                          split.settings.get("reader_options", {})).to_numpy()
        rows["otsu"] = ensure_otsu_masks(rows, otsu_root, min_votes=OTSU_MIN_VOTES)
        train, val = rows[rows.role == "train"], rows[rows.role == "val"]
        has_truth = bool(len(train)) and bool((train["truth"] != "").all())
        if targets == "truth" and not has_truth:
            raise InputError(f"{split.csv_path}: --targets truth, but not every training "
                             "image has a ground-truth mask in this dataset")
        target = "truth" if targets == "truth" or (targets == "auto" and has_truth) else "otsu"
        if target == "truth" and len(val) and (val["truth"] == "").any():
            val = val[val["truth"] != ""]
        print(f"fold {k}: U-Net on {len(train)} training images ({target} masks), "
              f"{len(val)} validation images", flush=True)

        set_seed(args.seed + k)
        with model_scope():  # several replicas: weights, optimizer state, metrics mirrored
            model = unet(input_shape=(*size, 1), start_filters=settings["START_FILTERS"])
            model.compile(optimizer=make_optimizer(OPTIMIZER, LEARNING_RATE),
                          loss="binary_crossentropy",
                          metrics=["accuracy", keras.metrics.BinaryIoU(
                              target_class_ids=[1], threshold=MASK_THRESHOLD, name="iou")],
                          **compile_kwargs(args.xla))
        require_xla(model, args.xla)
        out.mkdir(parents=True, exist_ok=True)
        write_fold_inputs(out, train, val, rows[rows.role == "test"])  # what the U-Net fed
        with progress.unit(f"U-Net fold {k}"):  # epoch lines with the fold's ETA
            fit(model, pair_dataset(train, target, size, settings["BATCH_SIZE"], shuffle=True,
                                    seed=args.seed + k),
                pair_dataset(val, target, size, settings["BATCH_SIZE"], shuffle=False, seed=0)
                if len(val) else None, epochs=epochs, patience=settings["PATIENCE"],
                fold_directory=out)

        # Masks for every image of the fold (test images are predicted, never trained on).
        # The set is marked incomplete while it is rewritten, so no study reads a mixture.
        (mask_root / COMPLETE_MARKER).unlink(missing_ok=True)
        scores, manifest = [], []
        checkpoint_sha = file_sha256(out / "model.keras")
        for row, mask in progress.counted(
                predict_masks(model, rows, size, settings["BATCH_SIZE"], MASK_THRESHOLD),
                f"fold {k}: U-Net masks written", total=len(rows)):
            path = write_mask(mask_file(mask_root, row.image), mask)
            manifest.append({"image": row.image, "mask": str(path.relative_to(mask_root)),
                             "unet_run": str(out), "unet_checkpoint_sha256": checkpoint_sha})
            scores.append(score_rows(row.role, row.image, mask, row.otsu, row.truth))
        scores = pd.DataFrame(scores).assign(fold=k, target=target)
        write_csv(out / "mask_scores.csv", scores)
        mark_complete(mask_root, pd.DataFrame(manifest), inputs,
                      made_by={"unet_run": str(out), "unet_checkpoint_sha256": checkpoint_sha})
        print(f"fold {k}: {len(manifest)} masks in {mask_root}", flush=True)

    scores = pd.concat([pd.read_csv(fold_dir(run_dir, k) / "mask_scores.csv") for k in folds],
                       ignore_index=True)
    table = summary_table(scores)
    leaky = bool(split.settings.get("leaky"))
    note = ("> **" + studies.LEAKY_WARNING + "**\n\n" if leaky else "") + (
        f"U-Net trained on {', '.join(sorted(set(scores['target'])))} masks of the training "
        f"images; IoU/Dice per image at full resolution, mean ± sample std; "
        f"threshold {MASK_THRESHOLD:g}; split `{split.csv_path}`")
    write_table(table.assign(leaky=leaky), run_dir / "mask_summary", title="U-Net mask quality",
                note=note)
    studies.write_study_report(run_dir, table[["comparison", "role", "images", "IoU", "Dice"]],
                               title="U-Net mask quality", notes=[note.split("\n\n")[-1]],
                               heading="Mask quality (IoU, Dice)")
    print(f"\n{run_dir / 'mask_summary.md'}:\n\n" + markdown_table(
        table[["comparison", "role", "images", "IoU", "Dice"]]))
    return table


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
