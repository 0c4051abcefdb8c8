"""ALL-IDB1 leukemia detector: the small paper CNN, offline augmentation, an honest held-out test.

Reproduces the ALL-IDB1 detector of the Peter Moss Acute Myeloid & Lymphoblastic Leukemia
project ("Acute Lymphoblastic Leukemia Tensorflow CNN 2020"), built on the network of
"Acute Leukemia Classification Using Convolution Neural Network in Clinical Decision
Support System": 100x100 input, ZeroPadding 2 -> Conv 30 5x5 -> ZeroPadding 2 -> Conv 30
5x5 -> MaxPool 2 -> Flatten -> Dense 2 softmax, Adam at 1e-4, batch 100, up to 150 epochs,
each smear written to disk as grayscale, equalised, mirrored, blurred, translated, sheared
and N = 10 times rotated copies. Its table reports 1,180 training, 404 validation and 20
test images, with accuracy = precision = recall (0.96-0.99) and ROC-AUC 0.99-1.00.

What we fixed:

- The held-out test images (fold 0 of a seeded, stratified k-fold split file) and the
  validation images for early stopping are chosen *before* any augmentation (by smear when
  the images are crops of smears: ``--reader-option crops=true``);
  only the remaining training images are augmented (``data/augmented/<split>/...`` with a
  manifest naming the source of every file), so no copy of a test or validation image is
  ever trained on. The source drew validation from the augmented pool, so copies of one
  smear were trained and validated.
- Precision, recall, F1 and ROC-AUC come from the positive-class probability against
  integer labels. The source computed them on one-hot rows, which makes precision and
  recall equal accuracy whatever the model does. The per-epoch curves use the same
  positive-class definition (``leukocyte_cnn.models.keras_metrics``).
- Seeded everything; the best checkpoint by validation loss is kept and evaluated once.

Works on ALL-IDB1 smears (``--dataset all_idb1``, label from the file name: the smear shows
blasts or not), on single-cell sets (``all_idb2``) and on the synthetic ALL-IDB1-like smears
(``synthetic_all_idb1``, the default). ``--folds 0-4`` runs every fold (5-fold CV) instead of
the one held-out test. ``serve.py --run results/<run>`` serves the checkpoint.
"""
from __future__ import annotations

import argparse
import sys
import time

# --- data and split protocol (the default split; a --split file brings its own)
K = 5                     # stratified k-fold; fold 0's test part (1/K: 22 of ALL-IDB1's 108
                          # smears, the source held out 20) is the held-out test set
HELDOUT_FOLDS = "0"       # folds run when --folds is not given ("0-4": full cross-validation)
VAL_FRACTION = 0.2        # validation share of the non-test images, per class (by group)
MIN_IMAGES = 5            # classes with fewer images are set aside
POSITIVE_LABEL = 1        # label of the positive class (blasts / lymphoblast)
IMAGE_SIZE = 100          # input side in pixels (paper: 100x100)
COLOR_MODE = "rgb"        # rgb, or grayscale: ITU-R 601 luminance in all 3 channels
CACHE_MB = 512            # decoded images kept in memory per set; larger sets stream (speed)
# --- architecture: (ZeroPadding -> Conv ReLU) x 2 -> MaxPool -> Flatten -> Dense softmax
FILTERS = 30              # filters of both conv layers (paper: 30)
KERNEL_SIZE = 5           # side of both conv kernels (paper: 5x5)
PADDING = 2               # zero padding before each conv (paper: 2; keeps the map size)
POOL_SIZE = 2             # side of the max-pool (paper: 2)
# --- optimisation
OPTIMIZER = "adam"        # source: Adam
LEARNING_RATE = 1e-4      # source: 1e-4
BATCH_SIZE = 100          # source: 100
EPOCHS = 150              # source: 150; here an upper bound, early stopping ends most runs
PATIENCE = 20             # epochs without validation-loss improvement before stopping (ours)
# --- offline augmentation of the training images (written to disk, before training)
ROTATIONS = 10            # N rotated copies per training image, distinct seeded angles (source: 10)
BLUR_SIGMA = 1.1          # Gaussian blur sigma in pixels (what OpenCV uses for a 5x5 kernel)
MAX_SHIFT = 0.1           # translation of up to this fraction of the side, in x and y
MAX_SHEAR = 15.0          # shear of 7.5-15 degrees, random sign
# --quick: the whole chain on the synthetic smears in a few minutes on 2 CPU cores
QUICK = dict(IMAGE_SIZE=64, EPOCHS=20, PATIENCE=6, ROTATIONS=2, BATCH_SIZE=32)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.devices import add_gpu_arguments
    from leukocyte_cnn.base.knobs import knob_argument
    from leukocyte_cnn.runs.experiment import add_common_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_all_idb1")
    knob_argument(parser, "--image-size", knob="IMAGE_SIZE", type=int,
                  help=f"input side in pixels (IMAGE_SIZE, default {IMAGE_SIZE}; "
                       f"{QUICK['IMAGE_SIZE']} with --quick)")
    knob_argument(parser, "--epochs", knob="EPOCHS", type=int,
                  help=f"max epochs (EPOCHS, default {EPOCHS}; {QUICK['EPOCHS']} with --quick)")
    knob_argument(parser, "--rotations", knob="ROTATIONS", type=int,
                  help=f"rotated copies per training image (ROTATIONS, default {ROTATIONS}; "
                       f"{QUICK['ROTATIONS']} with --quick)")
    knob_argument(parser, "--batch-size", knob="BATCH_SIZE", type=int,
                  help=f"images per training step (BATCH_SIZE, default {BATCH_SIZE}; "
                       f"{QUICK['BATCH_SIZE']} with --quick)")
    parser.add_argument("--augmented-dir", default="data/augmented",
                        help="root of the augmented training images (default data/augmented)")
    add_gpu_arguments(parser)
    return parser.parse_args(argv)


def heldout_metrics(run_dir, class_names, positive_label: int):
    """Accuracy, precision, recall, F1 and ROC-AUC of the positive class per finished fold
    (plus the pooled test images when there are several folds)."""
    import pandas as pd

    from leukocyte_cnn.base.run_folder import load_predictions
    from leukocyte_cnn.reporting.metrics import predictions_metrics

    predictions = load_predictions(run_dir)
    parts = [(str(f), p) for f, p in predictions.groupby("fold")]
    if len(parts) > 1:
        parts.append(("pooled", predictions))
    positive = class_names[positive_label]
    rows = []
    for fold, part in parts:
        m = predictions_metrics(part, class_names)
        pos = m["per_class"][positive]
        rows.append({"fold": fold, "n_test": m["n"],
                     "n_positive": int((part["label"] == positive_label).sum()),
                     "accuracy": m["accuracy"], "precision": pos["precision"],
                     "recall": pos["recall"], "f1": pos["f1"], "roc_auc": m["roc_auc"]})
    return pd.DataFrame(rows)


def main(args: argparse.Namespace):
    from leukocyte_cnn.runs.experiment import resolve_run

    run, s = resolve_run(args, sys.modules[__name__])  # devices first, then the knobs
    from leukocyte_cnn.base.artifacts import record_of
    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.inputs.paper_augmentation import (
        augmentation_root,
        training_table,
        write_training_set,
    )
    from leukocyte_cnn.models.keras_metrics import positive_class_metrics
    from leukocyte_cnn.models.networks import paper_cnn
    from leukocyte_cnn.reporting.summary import (
        leaky_banner,
        markdown_table,
        plot_epoch_metrics,
        run_config,
        summarize_run,
        write_table,
    )
    from leukocyte_cnn.runs.cross_validation import (
        parse_fold_list,
        run_folds,
        train_classifier_fold,
    )
    from leukocyte_cnn.runs.experiment import given_split, resolve_split, start_run

    size, positive = s["IMAGE_SIZE"], s["POSITIVE_LABEL"]
    # 1. Held-out test and validation images, chosen before any augmentation (by group:
    #    crops of one smear stay on one side).
    split = given_split(run) or resolve_split(run, method="kfold", k=s["K"],
                                              val_fraction=s["VAL_FRACTION"],
                                              min_images=s["MIN_IMAGES"])
    class_names = list(split.class_names)
    if len(class_names) != 2:
        raise InputError(f"{split.csv_path}: {len(class_names)} classes "
                         f"({', '.join(class_names)}); the detector needs two")
    folds = parse_fold_list(run.folds or s["HELDOUT_FOLDS"], split.folds)

    # 2. Offline augmentation settings (training images only; the folder carries their hash).
    augmentation = {"image_size": [size, size], "n_rotations": s["ROTATIONS"],
                    "blur_sigma": s["BLUR_SIGMA"], "max_shift": s["MAX_SHIFT"],
                    "max_shear": s["MAX_SHEAR"], "seed": run.seed}
    augmented_root = augmentation_root(args.augmented_dir, split, augmentation)
    run_dir = start_run(
        run, "all_idb1_paper_cnn", settings=s, split=split,
        title=f"Paper CNN detector, {class_names[1]} vs {class_names[0]}",
        class_names=class_names,
        extra={"augmentation": augmentation, "augmented_root": str(augmented_root),
               "positive_class": class_names[positive], "resize_method": "bilinear",
               "keep_aspect": False})

    def build():
        return paper_cnn(input_shape=(size, size, 3), num_classes=2, filters=s["FILTERS"],
                         kernel_size=s["KERNEL_SIZE"], padding=s["PADDING"],
                         pool_size=s["POOL_SIZE"])

    def train_fold(fold):
        start = time.perf_counter()
        fold.artifacts["paper_augmentation"] = record_of(augmented_root)
        manifest = write_training_set(fold.train, augmented_root, fold.fold,
                                      settings=augmentation, seed=run.seed)
        train = training_table(manifest, augmented_root, fold.train)
        print(f"fold {fold.fold}: {len(fold.train)} training images -> {len(train)} augmented "
              f"({time.perf_counter() - start:.1f} s, {augmented_root}); validation "
              f"{len(fold.val)}, test {len(fold.test)} (originals)", flush=True)
        # 3. A fresh paper CNN, trained with early stopping on the validation originals and
        #    evaluated once, with its best checkpoint, on the untouched test images.
        return train_classifier_fold(
            fold, build, class_names=class_names, image_size=(size, size),
            batch_size=s["BATCH_SIZE"], epochs=s["EPOCHS"], patience=s["PATIENCE"],
            optimizer=s["OPTIMIZER"], learning_rate=s["LEARNING_RATE"], train_table=train,
            xla=run.devices.xla, color_mode=s["COLOR_MODE"], cache_mb=s["CACHE_MB"],
            extra_metrics=positive_class_metrics(positive),
            timings={"augment_seconds": time.perf_counter() - start,
                     "n_train_augmented": len(train)})

    run_folds(split, run_dir, folds, run.seed, train_fold, settings=s)

    # 4. Tables and figures from the fold files.
    plot_epoch_metrics(run_dir, run_dir / "epoch_metrics.png")  # first: the report shows it
    summary = summarize_run(run_dir)
    table = heldout_metrics(run_dir, class_names, positive)
    write_table(table, run_dir / "heldout_metrics",
                title=f"Held-out test metrics (positive class: {class_names[positive]})",
                note=leaky_banner(run_config(run_dir))
                + "Precision, recall and F1 of the positive class and ROC-AUC of its "
                  "probability, against integer labels; test images never augmented, "
                  "trained on or used for early stopping.")
    print(f"\n{run_dir / 'heldout_metrics.md'}:\n\n{markdown_table(table)}")
    return summary


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
