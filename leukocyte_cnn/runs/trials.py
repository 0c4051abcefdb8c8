"""Repeated trials of several settings on one split: study options, the split and the loop.

The four-class blood-cell studies do not cross-validate; they train one configuration
("setting": an optimizer, a training depth, a scaling × mask × network combination) several
times with different seeds on the dataset's own TRAIN/TEST split and report the spread. This
module holds the options a study script adds, its split, the per-class caps of quick runs and
the loop that trains every unfinished (setting, trial), so every study does it the same way;
the tables and figures of a study are in :mod:`leukocyte_cnn.reporting.comparisons`.

Layout: each (setting, trial) is an ordinary run folder inside the study's run folder,

```
results/<run>/settings.json                     the study's settings (start_run)
results/<run>/<setting>/trial_NN/settings.json  + setting, its parameters, trial, seed
results/<run>/<setting>/trial_NN/fold_XX/{model.keras, epochs.csv, predictions.csv, timing.json}
results/<run>/comparison.{csv,md}, per_trial.csv, confusion_<setting>.png, ...
```

so ``summarize_results.py results/<run>/<setting>/trial_NN`` works on any trial, every number
of a comparison table traces to a ``predictions.csv``, and a re-run skips finished trials
(``fold_XX/predictions.csv`` exists). Trial ``t`` is seeded with ``seed + t`` (its fold ``k``
with ``seed + t + k``, as in every run folder), and builds a fresh model.

The number of trials and the choice of settings are not part of the study's recorded config:
adding trials or settings later resumes the same study instead of being refused.
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.run_folder import (
    fold_dir,
    fold_is_done,
    load_predictions,
    prepare_run_dir,
    read_settings,
)
from leukocyte_cnn.reporting.comparisons import Setting
from leukocyte_cnn.reporting.metrics import predictions_metrics
from leukocyte_cnn.runs.cross_validation import run_folds

SPLIT_METHODS = ("predefined", "random")


# --------------------------------------------------------------------------- options, split


def add_study_arguments(parser: argparse.ArgumentParser, *, trials: int, trials_knob: str,
                        what: str = "trials") -> argparse.ArgumentParser:
    """``--split-method`` (the ``SPLIT_METHOD`` knob) and ``--trials``/``--seeds`` (the
    ``trials_knob``: repeated trainings per setting)."""
    from leukocyte_cnn.base.knobs import knob_argument

    knob_argument(
        parser, "--split-method", knob="SPLIT_METHOD", choices=SPLIT_METHODS,
        help="predefined (SPLIT_METHOD, default): the dataset's own TRAIN/TEST split, "
             "validation carved from TRAIN; random: one image-level re-split of all images, "
             "which mixes augmented copies of a cell into training and test (leaky; tables are "
             "labelled so)")
    knob_argument(parser, f"--{trials_knob.lower()}", knob=trials_knob, type=int,
                  help=f"{what} per setting, trial t seeded with --seed + t ({trials_knob}, "
                       f"default {trials}; fewer with --quick)")
    return parser


def study_parser(doc: str, *, trials: int, trials_knob: str, what: str = "trials"
                 ) -> argparse.ArgumentParser:
    """A study script's parser: its docstring's first paragraph as description, the common
    options (default dataset ``synthetic_kaggle``) and :func:`add_study_arguments`."""
    from leukocyte_cnn.runs.experiment import add_common_arguments

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_common_arguments(parser, default_dataset="synthetic_kaggle")
    return add_study_arguments(parser, trials=trials, trials_knob=trials_knob, what=what)


def resolve_study_split(run, settings):
    """The study's split: ``--split`` if given, else the owner's TRAIN/TEST split
    (``SPLIT_METHOD`` ``predefined``, TEST tested) or the leaky ``random`` one, with the
    script's ``VAL_FRACTION``, ``MIN_IMAGES`` and (random) ``TEST_FRACTION``."""
    from leukocyte_cnn.runs.experiment import given_split, resolve_split

    if (split := given_split(run)) is not None:  # the file records its own protocol
        return split
    protocol = {"val_fraction": settings["VAL_FRACTION"], "min_images": settings["MIN_IMAGES"]}
    if settings["SPLIT_METHOD"] == "random":
        return resolve_split(run, method="random", test_fraction=settings["TEST_FRACTION"],
                             **protocol)
    if settings["SPLIT_METHOD"] != "predefined":
        raise InputError(f"SPLIT_METHOD {settings['SPLIT_METHOD']!r}: choose from "
                         f"{', '.join(SPLIT_METHODS)}")
    return resolve_split(run, method="predefined", test_sources="TEST", **protocol)


def limit_per_class(table: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` rows per class, drawn with ``seed`` (quick runs); ``None`` keeps all."""
    if n is None:
        return table
    parts = [part.sample(n=min(n, len(part)), random_state=seed)
             for _, part in table.groupby("label", sort=True)]
    return pd.concat(parts).sort_values("image").reset_index(drop=True)


def limit_fold_per_class(fold, n: int | None, seed: int):
    """:func:`limit_per_class` on the fold's training, validation and test tables, in place
    (the same images for every setting of a study); returns the fold."""
    fold.train, fold.val, fold.test = (limit_per_class(t, n, seed)
                                       for t in (fold.train, fold.val, fold.test))
    return fold


def parse_names(text: str | None, allowed: Sequence[str], option: str) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]`` checked against ``allowed``; ``None`` stays ``None``."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise InputError(f"{option} {text}: choose from {', '.join(allowed)}")
    return names


# --------------------------------------------------------------------------- the trial loop


def trial_dir(run_dir: str | os.PathLike, setting: str, trial: int) -> Path:
    """``<run>/<setting>/trial_NN``: the run folder of one (setting, trial)."""
    return Path(run_dir) / setting / f"trial_{trial:02d}"


def trial_fold_dir(run_dir: str | os.PathLike, setting: str, trial: int, fold: int = 0) -> Path:
    """``<run>/<setting>/trial_NN/fold_XX``: where one fold of a trial keeps its files."""
    return fold_dir(trial_dir(run_dir, setting, trial), fold)


def trial_is_done(run_dir: str | os.PathLike, setting: str, trial: int,
                  folds: Sequence[int]) -> bool:
    """Whether every one of ``folds`` of the trial has its test predictions."""
    return all(fold_is_done(trial_dir(run_dir, setting, trial), k) for k in folds)


def run_trials(split, run_dir: str | os.PathLike, settings: Sequence[Setting],
               trials: Iterable[int], seed: int,
               train_fold: Callable[[Setting, int, object], pd.DataFrame],
               folds: Sequence[int] | None = None, knobs=None) -> list[tuple[str, int]]:
    """Train every (setting, trial) that is not finished; return those trained now.

    ``train_fold(setting, trial, fold)`` builds a *fresh* model, trains it on ``fold.train``,
    stops early on ``fold.val`` and returns ``fold.test``'s predictions (e.g. through
    ``cross_validation.train_classifier_fold``). ``folds`` default to all folds of the split
    (one, fold 0, for a TRAIN/TEST split). With the run's ``knobs`` (``knobs.Settings``), a
    knob set from outside the script that no trial read is named in one line at the end.
    """
    from leukocyte_cnn.base import progress
    from leukocyte_cnn.base.knobs import unused_lines

    parent = read_settings(run_dir)["config"]
    folds = list(split.folds if folds is None else folds)
    trials = list(trials)
    todo = [(s.name, t) for s in settings for t in trials
            if not trial_is_done(run_dir, s.name, t, folds)]
    total = len(settings) * len(trials)
    with progress.tracking(len(todo) * len(folds),
                           f"{len(settings)} setting(s) x {len(trials)} trial(s) = {total}, "
                           f"{len(todo)} to train" + (f", {len(folds)} folds each"
                                                     if len(folds) > 1 else "")):
        trained = _run_trials(split, run_dir, settings, trials, seed, train_fold, folds, parent,
                              [f"{s.name} trial {t}" for s in settings for t in trials])
    if trained and knobs is not None:
        for line in unused_lines(knobs):
            print(line, flush=True)
    return trained


def _run_trials(split, run_dir, settings, trials, seed, train_fold, folds, parent, order):
    """The loop of :func:`run_trials`."""
    from leukocyte_cnn.base import progress

    trained = []
    for setting in settings:
        for trial in trials:
            where = trial_dir(run_dir, setting.name, trial)
            head = f"{setting.name} trial {trial}"
            number = f"({order.index(head) + 1}/{len(order)})"
            if trial_is_done(run_dir, setting.name, trial, folds):
                print(f"{head}: finished earlier, kept", flush=True)
                continue
            title = f"{parent.get('title', '')}: {setting.name}, trial {trial}"
            config = {**parent, "title": title,
                      "setting": setting.name, "setting_params": setting.params,
                      "trial": trial, "seed": seed + trial}
            prepare_run_dir(where, config)
            start = time.perf_counter()
            with progress.outer_label(f"{head} {number}"):
                run_folds(split, where, folds, seed + trial,
                          lambda fold, s=setting, t=trial: train_fold(s, t, fold), quiet=True)
            accuracy = float(predictions_metrics(load_predictions(where),
                                                 parent["class_names"])["accuracy"])
            print(f"{head}: test accuracy {accuracy:.3f} | {time.perf_counter() - start:.1f} s",
                  flush=True)
            trained.append((setting.name, trial))
    return trained

