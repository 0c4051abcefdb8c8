"""Test-time augmentation of a finished run: the same fold models, each test image predicted in
its 8 rotations/flips and the class probabilities averaged.

A blood cell on a slide has no up or left, so a classifier's prediction should not depend on
the cell's orientation; averaging over the 8 symmetries of the square (4 rotations by 90°,
each mirrored) removes that dependence at prediction time. Nothing is retrained: every fold's
``model.keras`` of RUN predicts exactly the test images that fold tested (``fold_XX/inputs.csv``),
so the new run folder differs from RUN in the prediction rule only, and both can be compared
image by image (``compare_runs.py RUN RUN_tta``: paired tests on the same test images).

Writes ``<RUN>_tta/`` (or ``--out``): ``settings.json`` (RUN's settings plus
``test_time_augmentation`` and ``source_run``), ``fold_XX/{predictions.csv, timing.json}``
and the usual summary, figures and ``report.html``. Runs of the 4-class studies (one folder
per setting and trial) are evaluated trial by trial: pass a trial folder.

Example::

    python evaluate_tta.py results/allidb2_linear_k5
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

BATCH_SIZE = 16  # test images per forward pass (times 8 views)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.knobs import knob_argument

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished run folder (fold_XX/model.keras + inputs.csv)")
    parser.add_argument("--out", default=None, help="output run folder (default <run_dir>_tta)")
    knob_argument(parser, "--batch-size", knob="BATCH_SIZE", type=int,
                  help=f"test images per forward pass, times 8 views (BATCH_SIZE, default "
                       f"{BATCH_SIZE})")
    return parser.parse_args(argv)


def image_size_of(config: dict, model) -> tuple[int, int]:
    """The run's input size: its recorded ``image_size``, else the model's input shape."""
    size = config.get("image_size")
    if size is None:
        return tuple(int(v) for v in model.input_shape[1:3])
    return (int(size), int(size)) if isinstance(size, (int, float)) else tuple(map(int, size))


def main(args: argparse.Namespace) -> Path:
    import pandas as pd

    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.base.io import read_json
    from leukocyte_cnn.base.knobs import resolve_settings
    from leukocyte_cnn.base.run_folder import (
        CHECKPOINT,
        PREDICTIONS,
        prepare_run_dir,
        read_settings,
    )
    from leukocyte_cnn.inputs.pipeline import make_dataset
    from leukocyte_cnn.models.checkpoints import load_checkpoint
    from leukocyte_cnn.reporting.summary import summarize_run
    from leukocyte_cnn.runs.cross_validation import Fold, finish_fold, predict_table

    s = resolve_settings(sys.modules[__name__], args, quick=False)
    run = Path(args.run_dir)
    config = read_settings(run)["config"]
    if config.get("test_time_augmentation"):
        raise InputError(f"{run}: already predicted with test-time augmentation")
    folds = sorted(d for d in run.glob("fold_*")
                   if (d / PREDICTIONS).is_file() and (d / CHECKPOINT).is_file())
    if not folds:
        raise InputError(f"{run}: no finished fold with {CHECKPOINT} and {PREDICTIONS} "
                         "(a study's settings are evaluated one trial folder at a time)")
    out = prepare_run_dir(args.out or f"{run}_tta", {
        **config, "test_time_augmentation": "mean of the 8 rotations/flips of each test image",
        "source_run": str(run), "title": f"{config.get('title', run.name)}, 8-view TTA"})
    class_names = list(config["class_names"])
    color_mode = (config.get("knobs") or {}).get("COLOR_MODE", "rgb")
    for directory in folds:
        fold_out = out / directory.name
        if (fold_out / PREDICTIONS).is_file():
            print(f"{directory.name}: finished earlier, kept", flush=True)
            continue
        inputs = directory / "inputs.csv"
        if not inputs.is_file():
            raise InputError(f"{inputs}: not found; the run predates per-fold input records")
        test = pd.read_csv(inputs, dtype={"image": str, "group": str})
        test = test[test["role"] == "test"].reset_index(drop=True)
        model = load_checkpoint(directory / CHECKPOINT)
        size = image_size_of(config, model)
        if size[0] != size[1]:
            raise InputError(f"{run}: {size[0]}x{size[1]} images; 90° turns need square ones")
        dataset = make_dataset(test["path"].tolist(), test["label"].astype(int).tolist(), size,
                               s["BATCH_SIZE"], color_mode=color_mode)
        timing = read_json(directory / "timing.json")
        fold = Fold(fold=int(timing["fold"]), train=test.iloc[:0], val=test.iloc[:0], test=test,
                    directory=fold_out, seed=int(timing["seed"]),
                    split_sha256=timing.get("split_sha256"),
                    artifacts={**(timing.get("artifacts") or {}),
                               "checkpoint": {"path": str(directory / CHECKPOINT)}})
        fold_out.mkdir(parents=True, exist_ok=True)
        fold.started = (time.perf_counter(), time.process_time())
        predictions = predict_table(model, dataset, test, class_names, fold.fold, tta=True)
        finish_fold(fold, predictions, class_names, {"source_fold": str(directory)})
        accuracy = float((predictions["pred"] == predictions["label"]).mean())
        print(f"{directory.name}: {len(test)} test images, 8 views each | test accuracy "
              f"{accuracy:.3f}", flush=True)
    summarize_run(out)
    return out


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
