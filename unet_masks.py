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
import sys

# --- data and split protocol (the dataset's own TRAIN/TEST split; a --split file brings its own)
SPLIT_METHOD = "predefined"  # predefined: the owner's TRAIN/TEST; random: a leaky re-split
VAL_FRACTION = 0.2        # validation share carved from TRAIN (by groups of copies)
TEST_FRACTION = 0.2       # test share of SPLIT_METHOD random
MIN_IMAGES = 5            # classes with fewer images are set aside
MAX_IMAGES_PER_CLASS = None  # cap per class and role (None: all images)
IMAGE_SIZE = (120, 160)   # (height, width) the U-Net sees (deck: 120x160, grayscale)
OTSU_MIN_VOTES = 2        # Otsu masks: channels (of 3) that must call a pixel dark
DATA_DIR = "data"         # mask sets go to data/masks/...
# --- architecture: the deck's U-Net, three poolings
START_FILTERS = 16        # filters at the first level (deck: 16), doubling per level
FIRST_DROPOUT = 0.25      # dropout after the first pooling (deck: 0.25)
DROPOUT = 0.5             # dropout after the other poolings and in the decoder (deck: 0.5)
TARGETS = "auto"          # auto: ground truth if every training image has one, else Otsu
# --- optimisation
OPTIMIZER = "adam"        # optimizer of the U-Net
LEARNING_RATE = 1e-3      # Adam's default
BATCH_SIZE = 32           # images per step
EPOCHS = 30               # upper bound; early stopping on validation loss
PATIENCE = 5              # epochs without validation-loss improvement before stopping
SHUFFLE_BUFFER = 1024     # (image, mask) pairs shuffled at a time (bounded memory)
# --- evaluation
MASK_THRESHOLD = 0.5      # predicted probability at or above which a pixel is "cell"
# --quick: 48x64 images, a few training images per class, 15 epochs of batch 8 (with fewer
# steps, or 8 start filters, the U-Net still predicted background everywhere: IoU 0)
QUICK = dict(IMAGE_SIZE=(48, 64), EPOCHS=15, PATIENCE=5, BATCH_SIZE=8, MAX_IMAGES_PER_CLASS=24)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.devices import add_gpu_arguments
    from leukocyte_cnn.base.knobs import knob_argument
    from leukocyte_cnn.runs import unet_masks as unet_runs
    from leukocyte_cnn.runs.experiment import add_common_arguments
    from leukocyte_cnn.runs.trials import SPLIT_METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_kaggle")
    knob_argument(parser, "--split-method", knob="SPLIT_METHOD", choices=SPLIT_METHODS,
                  help="predefined (SPLIT_METHOD, default): the dataset's own TRAIN/TEST split; "
                       "random: a leaky image-level re-split (only to pair with a classifier "
                       "study made that way)")
    knob_argument(parser, "--targets", knob="TARGETS", choices=unet_runs.TARGETS,
                  help=f"what the U-Net learns from (TARGETS, default {TARGETS}: ground-truth "
                       "masks when every training image has one, else Otsu masks)")
    parser.add_argument("--mask-dir", default=None,
                        help="where the masks go (default data/masks/unet/<split>_<fingerprint>/"
                             "fold_XX, where scaling_masks_cnn_fcn.py looks)")
    knob_argument(parser, "--epochs", knob="EPOCHS", type=int,
                  help=f"max epochs (EPOCHS, default {EPOCHS})")
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace):
    from leukocyte_cnn.runs.experiment import resolve_run

    run, s = resolve_run(args, sys.modules[__name__])  # devices first, then the knobs
    import pandas as pd

    from leukocyte_cnn.base.locks import artifact_lock
    from leukocyte_cnn.base.run_folder import fold_dir, run_lock
    from leukocyte_cnn.inputs.masks import otsu_mask_root
    from leukocyte_cnn.reporting.comparisons import LEAKY_WARNING, write_study_report
    from leukocyte_cnn.reporting.summary import markdown_table, write_table
    from leukocyte_cnn.runs.cross_validation import parse_fold_list
    from leukocyte_cnn.runs.experiment import start_run
    from leukocyte_cnn.runs.trials import resolve_study_split
    from leukocyte_cnn.runs.unet_masks import (
        UNetSettings,
        mask_root,
        mask_set_state,
        summary_table,
        train_fold_masks,
    )

    unet = UNetSettings.from_knobs(s, otsu_min_votes=s["OTSU_MIN_VOTES"],
                                   max_images_per_class=s["MAX_IMAGES_PER_CLASS"], seed=run.seed)
    split = resolve_study_split(run, s)
    folds = parse_fold_list(run.folds, split.folds)
    run_dir = start_run(run, "unet_masks", settings=s, split=split, title="U-Net masks",
                        class_names=split.class_names, extra={"mask_dir": args.mask_dir})
    otsu_root = otsu_mask_root(s["DATA_DIR"], run.dataset, split.settings.get("dataset_hash"),
                               unet.otsu_min_votes)
    for k in folds:
        out, root = fold_dir(run_dir, k), mask_root(s["DATA_DIR"], split, k, unet, args.mask_dir)
        with artifact_lock(root, f"fold {k}'s U-Net masks {root}"):  # one job per mask set
            if mask_set_state(root, split, k, unet) == "current" and \
                    (out / "mask_scores.csv").is_file():
                print(f"fold {k}: finished earlier, kept ({root})", flush=True)
                continue
            train_fold_masks(split, k, unet, out=out, root=root, otsu_root=otsu_root,
                             data_root=run.data_root, xla=run.devices.xla)

    # Every finished fold of the run folder (also those of other --folds jobs), one job's
    # summary at a time: jobs that finish together never read each other's half-written files.
    with run_lock(run_dir, "summary of"):
        scores = pd.concat([pd.read_csv(p) for p in sorted(run_dir.glob("fold_*/mask_scores.csv"))],
                           ignore_index=True)
        table = summary_table(scores)
        leaky = bool(split.settings.get("leaky"))
        note = ("> **" + LEAKY_WARNING + "**\n\n" if leaky else "") + (
            f"U-Net trained on {', '.join(sorted(set(scores['target'])))} masks of the training "
            f"images; IoU/Dice per image at full resolution, mean ± sample std; "
            f"threshold {unet.mask_threshold:g}; split `{split.csv_path}`")
        write_table(table.assign(leaky=leaky), run_dir / "mask_summary",
                    title="U-Net mask quality", note=note)
        write_study_report(run_dir, table[["comparison", "role", "images", "IoU", "Dice"]],
                           title="U-Net mask quality", notes=[note.split("\n\n")[-1]],
                           heading="Mask quality (IoU, Dice)")
    print(f"\n{run_dir / 'mask_summary.md'}:\n\n" + markdown_table(
        table[["comparison", "role", "images", "IoU", "Dice"]]))
    return table


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
