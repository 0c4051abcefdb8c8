"""The learning curve's runs: nested training subsets per class, and rebuilding the curve.

The learning curve trains on nested, seeded subsets of each fold's training images
(:func:`subsample_per_class`), repeated to a full epoch's worth of images
(:func:`repeat_to_epoch`), at every size of ``--train-sizes`` (:func:`parse_train_sizes`), from
scratch and by transfer; each point's folds go to
:func:`leukocyte_cnn.reporting.learning_curve.curve_dir`. :func:`rebuild_learning_curve`
writes the table and figure again from whatever points are complete
(:mod:`leukocyte_cnn.reporting.learning_curve`).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.reporting.learning_curve import (
    MODES,
    curve_dir,
    learning_curve_table,
    write_learning_curve,
)


def parse_train_sizes(text: str) -> list[int]:
    """``"10,20,5"`` -> ``[10, 20, 5]``: positive, duplicates dropped, in the order given,
    which is the order the sizes are trained in (the sizes that matter most first, on a slow
    machine); tables and figures sort them."""
    try:
        sizes = list(dict.fromkeys(int(part) for part in str(text).split(",") if part.strip()))
    except ValueError:
        raise InputError(f"--train-sizes {text}: expected whole numbers like 5,10,20") from None
    if not sizes or min(sizes) < 1:
        raise InputError(f"--train-sizes {text}: expected positive numbers of images per class")
    return sizes


def subsample_per_class(train: pd.DataFrame, n_per_class: int, *, seed: int,
                        fold: int) -> pd.DataFrame:
    """The first ``n_per_class`` training images of each class in a seeded per-fold order.

    The order is drawn once per (seed, fold) for every class, whatever ``n_per_class``, so
    the subsets are nested (the 5 images of a class are among its 10). Only ``train`` is
    read: validation and test images cannot be drawn. A class with fewer images keeps all.
    """
    if "role" in train and (train["role"] != "train").any():
        raise ValueError("subsample_per_class was given non-training images")
    rng = np.random.default_rng([seed, fold])
    parts = []
    for _, part in train.sort_values("image", kind="stable").groupby("label", sort=True):
        order = rng.permutation(len(part))
        parts.append(part.iloc[order[:n_per_class]])
    return pd.concat(parts).sort_values("image", kind="stable").reset_index(drop=True)


def repeat_to_epoch(train: pd.DataFrame, min_images: int) -> pd.DataFrame:
    """``train`` repeated whole until it holds at least ``min_images`` rows (every image the
    same number of times, so class shares stay as they are).

    An epoch of 20 images is one step at batch 32: with early stopping counted in epochs, a
    tiny training set then stops after a few dozen updates, long before it has learnt what
    it could. Repeated, with online flips and rotations making every repeat another view, an
    epoch of N images per class gets as many updates as one of the full training set.
    """
    if min_images <= len(train) or not len(train):
        return train
    times = -(-int(min_images) // len(train))  # ceiling
    return pd.concat([train] * times, ignore_index=True)


def finished_sizes(run_dir: str | os.PathLike, sizes: Sequence[int], n_folds: int,
                   modes: Sequence[str] = MODES) -> tuple[list[int], list[int]]:
    """Sizes of a learning curve whose every mode has all ``n_folds`` folds predicted, and
    the sizes that do not (yet)."""
    done, missing = [], []
    for size in sorted(sizes):
        complete = all(len(list(curve_dir(run_dir, size, mode).glob("fold_*/predictions.csv")))
                       >= n_folds for mode in modes)
        (done if complete else missing).append(int(size))
    return done, missing


def rebuild_learning_curve(run_dir: str | os.PathLike) -> pd.DataFrame:
    """``learning_curve.csv/.md/.png`` of a learning-curve run from its fold files, over the
    sizes whose points are complete (a run stopped early, or still running, gets the curve
    it has so far; the table says which sizes are missing). Folds of another split file are
    refused, as for any run."""
    from leukocyte_cnn.base.run_folder import run_lock

    with run_lock(run_dir, "learning curve of"):  # jobs finishing together: one at a time
        return _rebuild_learning_curve(Path(run_dir))


def _rebuild_learning_curve(run_dir: Path) -> pd.DataFrame:
    """:func:`rebuild_learning_curve` with the run folder's lock held."""
    from leukocyte_cnn.base.run_folder import check_fold_chain, read_settings

    config = read_settings(run_dir)["config"]
    sizes = [int(s) for s in config.get("train_sizes") or []]
    if not sizes:
        raise InputError(f"{run_dir}/settings.json: not a learning-curve run (no train_sizes)")
    modes = list(config.get("curve_arms") or MODES)  # runs before the arms were a knob: 2
    for size in sizes:
        for mode in modes:
            if curve_dir(run_dir, size, mode).is_dir():
                check_fold_chain(curve_dir(run_dir, size, mode), config.get("split_sha256"))
    done, missing = finished_sizes(run_dir, sizes, int(config["n_folds"]), modes)
    if not done:
        raise InputError(f"{run_dir}: no size of the learning curve has all "
                         f"{config['n_folds']} folds of every arm ({', '.join(modes)}) yet")
    table = learning_curve_table(run_dir, done, config["class_names"], modes)
    note = (f"Test folds of {Path(config.get('split_file', '?')).name}; mean ± sample std over "
            f"the {config['n_folds']} folds (one repeat per fold, its test images never trained "
            "on).")
    if missing:
        note += (f" Not finished, so not shown: {', '.join(map(str, missing))} training "
                 "images per class.")
    write_learning_curve(table, run_dir, title=config.get("title", "learning curve"), note=note)
    return table
