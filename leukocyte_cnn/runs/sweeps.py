"""Hyperparameter sweeps: a grid over a script's knobs, one subprocess per point, one table.

``sweep.py`` is the command; this module holds its parts:

- :func:`parse_grid` turns ``--set NAME=v1,v2`` options into typed values per knob (the type
  of each knob's default, :mod:`leukocyte_cnn.base.knobs`), refusing unknown names and bad values;
  :func:`grid_points` is their Cartesian product (first knob slowest) or a seeded random draw.
- :func:`point_name` names a point's run folder by its knob values
  (``LEARNING_RATE=0.001,BATCH_SIZE=8``).
- :func:`run_point` runs the script once in a fresh Python process with the point's knobs in
  ``$LEUKOCYTE_KNOBS`` (Keras leaks memory across repeated ``fit`` calls in one process, and a
  crash then loses one point, not the sweep) and marks the point finished
  (``sweep_point.json``) when the process succeeds. The script's own fold-level resume makes
  a killed point continue where it stopped.
- :func:`collect_results` pools each finished point's ``fold_*/predictions.csv`` (and, for
  study scripts, each setting's trials) and :func:`point_metrics` gives every metric with
  its seeded bootstrap interval (:mod:`leukocyte_cnn.reporting.stats`); :func:`write_report` writes
  ``sweep.csv/.md/.png``.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import read_json, write_csv, write_json, write_text
from leukocyte_cnn.base.knobs import ENV_VAR, parse_text
from leukocyte_cnn.base.run_folder import run_lock

SWEEP_FILE = "sweep.json"        # the sweep's script, script options and grid
POINT_DONE = "sweep_point.json"  # written into a point's run folder when it finished
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")


# --------------------------------------------------------------------------- the grid


def split_values(text: str) -> list[str]:
    """``0.1,0.01`` → two values; commas inside brackets or quotes stay (``[4,8],[8,16]``)."""
    values, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    return [v.strip() for v in values]


def parse_grid(script: str, knobs: Mapping[str, Any], options: Sequence[str]
               ) -> dict[str, list]:
    """``["LEARNING_RATE=1e-3,1e-2", "BATCH_SIZE=8,16"]`` → ``{name: [typed values]}``.

    One line naming the script's knobs for an unknown name, a repeated name, a missing ``=``
    or a value that does not parse as the type of the knob's default.
    """
    listing = ", ".join(sorted(knobs))
    grid: dict[str, list] = {}
    for option in options:
        name, sep, text = option.partition("=")
        name = name.strip()
        if not sep or not text.strip():
            raise InputError(f"--set {option}: expected NAME=value[,value...]; "
                             f"{script}'s knobs: {listing}")
        if name not in knobs:
            raise InputError(f"--set {option}: {script} has no knob {name}; its knobs: {listing}")
        if name in grid:
            raise InputError(f"--set {option}: {name} is set twice; give all its values in one "
                             "--set")
        try:
            values = [parse_text(name, value, knobs[name]) for value in split_values(text)]
        except ValueError as exc:
            raise InputError(f"--set {option}: {exc}") from None
        unique = []
        for value in values:
            if value not in unique:
                unique.append(value)
        grid[name] = unique
    if not grid:
        raise InputError(f"{script}: nothing to sweep; give --set NAME=v1,v2 (knobs: {listing})")
    return grid


def grid_points(grid: Mapping[str, list], random_draws: int | None = None,
                seed: int = 0) -> list[dict]:
    """Every combination (first knob varies slowest), or ``random_draws`` distinct ones
    drawn with ``seed`` (kept in grid order, so point numbers do not depend on the draw)."""
    names = list(grid)
    points = [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]
    if random_draws is not None:
        if not 1 <= random_draws <= len(points):
            raise InputError(f"--random {random_draws}: the grid has {len(points)} points; "
                             f"draw 1..{len(points)}")
        chosen = sorted(random.Random(seed).sample(range(len(points)), random_draws))
        points = [points[i] for i in chosen]
    return points


def _token(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_token(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def point_name(point: Mapping[str, Any]) -> str:
    """The run-folder name of a point: ``LEARNING_RATE=0.001,BATCH_SIZE=8``."""
    name = ",".join(f"{key}={_token(value)}" for key, value in point.items())
    return re.sub(r"[^A-Za-z0-9._+=,-]", "_", name)


def check_names_unique(points: Sequence[Mapping[str, Any]]) -> None:
    names = [point_name(p) for p in points]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise InputError(f"points {', '.join(clash)}: different values give the same folder "
                         "name; write the values differently")


def select_points(n_points: int, points: str | None = None, shard: str | None = None
                  ) -> list[int]:
    """Indexes of the points to run here: all, ``--points 3,4`` / ``0-2``, or ``--shard i/n``
    (points ``i, i+n, i+2n, ...``; i counts from 0, like a SLURM array task id)."""
    if points and shard:
        raise InputError("--points and --shard: give one of them")
    if shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if not match or not 0 <= int(match[1]) < int(match[2]):
            raise InputError(f"--shard {shard}: expected i/n with 0 <= i < n, e.g. 0/4")
        i, n = int(match[1]), int(match[2])
        return list(range(i, n_points, n))
    if points:
        from leukocyte_cnn.runs.cross_validation import parse_fold_list

        try:
            return parse_fold_list(points, range(n_points))
        except InputError as exc:
            raise InputError(str(exc).replace("--folds", "--points")
                             .replace("folds", "points").replace("split", "sweep")) from None
    return list(range(n_points))


# --------------------------------------------------------------------------- the sweep folder


def open_sweep(sweep_dir: Path, script: str, script_args: Sequence[str],
               grid: Mapping[str, list]) -> Path:
    """Create or re-open a sweep folder; refuse one made with another script or options.

    A grid that grows or shrinks is the same sweep (points are keyed by their values and
    finished points are kept); other script options would mix different experiments.
    """
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {"script": script, "script_args": list(script_args),
              "grid": {k: list(v) for k, v in grid.items()}}
    path = sweep_dir / SWEEP_FILE
    with run_lock(sweep_dir):  # shards started together: one checks and writes at a time
        if path.exists():
            previous = read_json(path)
            for key in ("script", "script_args"):
                if previous.get(key) != record[key]:
                    raise InputError(f"{sweep_dir}: holds a sweep of {previous.get('script')} "
                                     f"with options "
                                     f"{' '.join(previous.get('script_args', []))!r}; "
                                     "use another --sweep-dir")
        write_json(path, json.loads(json.dumps(record)))
    return sweep_dir


def point_is_done(sweep_dir: Path, point: Mapping[str, Any], script_args: Sequence[str]
                  ) -> bool:
    marker = sweep_dir / point_name(point) / POINT_DONE
    if not marker.exists():
        return False
    done = read_json(marker)
    return (done.get("knobs") == json.loads(json.dumps(dict(point)))
            and done.get("script_args") == list(script_args))


def point_command(script_path: Path, script_args: Sequence[str], sweep_dir: Path,
                  point: Mapping[str, Any]) -> list[str]:
    return [sys.executable, str(script_path), *script_args,
            "--results-dir", str(sweep_dir), "--run-name", point_name(point)]


def run_point(script_path: Path, script_args: Sequence[str], sweep_dir: Path,
              point: Mapping[str, Any]) -> int:
    """Run the script for one point in its own process; mark the point done on success."""
    env = {**os.environ, ENV_VAR: json.dumps(dict(point))}
    result = subprocess.run(point_command(script_path, script_args, sweep_dir, point), env=env,
                            stdin=subprocess.DEVNULL)
    if result.returncode == 0:
        write_json(sweep_dir / point_name(point) / POINT_DONE,
                   json.loads(json.dumps({"knobs": dict(point),
                                          "script_args": list(script_args)})))
    return result.returncode


# --------------------------------------------------------------------------- results


def point_metrics(predictions: pd.DataFrame, class_names: Sequence[str]) -> dict:
    """Each of :data:`METRICS` of pooled test predictions with its 95 % interval:
    ``{metric: (value, low, high)}``, from :mod:`leukocyte_cnn.reporting.stats` (a seeded bootstrap
    over test images, stratified by class and fold, whole groups where groups repeat), so
    the same predictions always give the same interval."""
    from leukocyte_cnn.reporting.stats import METRICS as METRIC_FUNCTIONS
    from leukocyte_cnn.reporting.stats import metric_intervals

    y = predictions["label"].to_numpy(dtype=int)
    prob = predictions[[f"prob_{c}" for c in class_names]].to_numpy(dtype=np.float64)
    intervals = metric_intervals(predictions, class_names, METRICS)
    return {m: (float(METRIC_FUNCTIONS[m](y, prob)), *map(float, intervals[m])) for m in METRICS}


def _runs_of_point(point_dir: Path) -> dict[str, list[Path]]:
    """The run folders (with finished folds) inside a point's folder, grouped by setting.

    A cross-validation script's point is one run (setting ``""``); a study script's point
    holds ``<setting>/trial_NN`` runs, whose trials are pooled per setting.
    """
    groups: dict[str, list[Path]] = {}
    for predictions in sorted(point_dir.rglob("fold_*/predictions.csv")):
        run = predictions.parent.parent
        parts = run.relative_to(point_dir).parts
        setting = "/".join(p for p in parts if not re.fullmatch(r"trial_\d+", p))
        groups.setdefault(setting, [])
        if run not in groups[setting]:
            groups[setting].append(run)
    return groups


def collect_results(sweep_dir: Path, points: Sequence[Mapping[str, Any]],
                    script_args: Sequence[str]) -> pd.DataFrame:
    """One row per finished point (and setting): its knobs, test images, folds, and every
    metric of the pooled test predictions with its bootstrap interval."""
    from leukocyte_cnn.base.run_folder import load_predictions, read_settings

    rows = []
    for index, point in enumerate(points):
        if not point_is_done(sweep_dir, point, script_args):
            continue
        point_dir = sweep_dir / point_name(point)
        for setting, runs in _runs_of_point(point_dir).items():
            class_names = read_settings(runs[0])["config"]["class_names"]
            tables = [load_predictions(run) for run in runs]
            pooled = pd.concat(tables, ignore_index=True)
            intervals = point_metrics(pooled, class_names)
            row = {"point": index, **{k: _token(v) if isinstance(v, (list, tuple)) else v
                                      for k, v in point.items()}}
            if setting:
                row["setting"] = setting
            row.update({"n_images": len(pooled), "n_folds": sum(t["fold"].nunique()
                                                                for t in tables)})
            for metric, (value, low, high) in intervals.items():
                row.update({metric: value, f"{metric}_low": low, f"{metric}_high": high})
            row["run"] = str(runs[0].relative_to(sweep_dir)) if len(runs) == 1 else \
                str(Path(point_name(point)) / setting)
            rows.append(row)
    return pd.DataFrame(rows)


def rank(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Sorted by ``metric`` (best first, NaN last, ties by point), the best row marked."""
    if table.empty:
        return table
    table = table.sort_values([metric, "point"], ascending=[False, True], kind="stable",
                              na_position="last").reset_index(drop=True)
    table.insert(0, "best", [i == 0 and not math.isnan(table[metric].iloc[0])
                             for i in range(len(table))])
    return table


def write_report(sweep_dir: Path, table: pd.DataFrame, knob_names: Sequence[str], metric: str,
                 *, script: str, script_args: Sequence[str], n_points: int) -> pd.DataFrame:
    """``sweep.csv`` (numbers), ``sweep.md`` (table with intervals, best marked) and
    ``sweep.png`` (the metric against each swept knob)."""
    from leukocyte_cnn.reporting.stats import N_BOOTSTRAP, SEED
    from leukocyte_cnn.reporting.summary import leaky_banner

    table = rank(table, metric)
    write_csv(sweep_dir / "sweep.csv", table)
    # A point trained on a leaky split (--ignore-groups, random) labels the whole table.
    leaky = {"leaky": any(read_json(p).get("config", {}).get("leaky")
                          for p in sweep_dir.rglob("settings.json"))}
    lines = [f"# Sweep of {script} over {' × '.join(knob_names)}", "",
             *([leaky_banner(leaky)] if leaky["leaky"] else []),
             f"- script options: `{' '.join(script_args) or '(none)'}`",
             f"- points finished: {len(set(table['point'])) if len(table) else 0} of {n_points}; "
             f"sorted by {metric}; each point's run folder is `{sweep_dir.name}/<point>/`",
             "- metrics of the pooled test predictions of all finished folds (and trials), "
             f"with 95 % percentile bootstrap intervals over test images ({N_BOOTSTRAP} "
             f"replicates, seed {SEED}; stratified by class and fold, whole groups where "
             "groups repeat)", ""]
    if len(table):
        from leukocyte_cnn.reporting.stats import format_ci
        from leukocyte_cnn.reporting.summary import leaky_tag, markdown_table

        shown = table[["point", *knob_names, *(["setting"] if "setting" in table else []),
                       "n_images"]].copy()
        for knob in knob_names:  # as the folder names write them (1e-4 is not "0.000")
            shown[knob] = [_token(v) for v in shown[knob]]
        shown.insert(0, "", ["**best**" if b else "" for b in table["best"]])
        for m in METRICS:
            shown[m] = [format_ci(*row) for row in
                        table[[m, f"{m}_low", f"{m}_high"]].itertuples(index=False)]
        lines += [markdown_table(shown)]
        plot_sweep(table, knob_names, metric, sweep_dir / "sweep.png",
                   title=f"{script}: {metric} per point" + leaky_tag(leaky))
    write_text(sweep_dir / "sweep.md", "\n".join(lines))
    return table


def plot_sweep(table: pd.DataFrame, knob_names: Sequence[str], metric: str, path: Path,
               title: str = "") -> Path:
    """One panel per swept knob: every point's ``metric`` with its interval, against the
    knob's values (other knobs' values side by side; the best point in red)."""
    from leukocyte_cnn.reporting.summary import _pyplot, save_figure

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(knob_names), figsize=(4.2 * len(knob_names), 3.6),
                             squeeze=False)
    for ax, knob in zip(axes[0], knob_names, strict=True):
        levels = sorted(set(table[knob].tolist()), key=lambda v: (str(type(v)), v))
        position = {v: i for i, v in enumerate(levels)}
        offsets = {}
        for row in table.sort_values("point", kind="stable").itertuples(index=False):
            row = row._asdict()  # by point number: the other knobs' values in grid order
            level = position[row[knob]]
            offsets[level] = offsets.get(level, -1) + 1
            x = level + 0.08 * offsets[level]
            value, low, high = row[metric], row[f"{metric}_low"], row[f"{metric}_high"]
            ax.errorbar([x], [value], yerr=[[value - low], [high - value]], fmt="o",
                        color="C3" if row["best"] else "C0", capsize=3)
        ax.set_xticks(range(len(levels)), [_token(v) for v in levels])
        ax.set_xlabel(knob)
        ax.set_ylabel(metric)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
