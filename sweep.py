"""Hyperparameter sweep over any script's UPPER_CASE knobs, one process per point, one table.

The Copenhagen study could not "properly hyperparameterize (K-Fold, Talos would crash due to
RAM limitations)" and tuned kernel size, dropout, batch size and learning rate by hand. This
runs the grid instead::

    python sweep.py linear_cnn_binary_lpocv.py --set LEARNING_RATE=1e-3,1e-2 \
        --set BATCH_SIZE=8,16 --quick

Each point (one combination of knob values) runs the script once, in its own Python process
(Keras grows memory over repeated ``fit`` calls in one process; a crash loses one point),
with the knobs set exactly as editing those UPPER_CASE lines would set them
(``$LEUKOCYTE_KNOBS``, see ``leukocyte_cnn/base/knobs.py``), into its own run folder named by its
values: ``results/sweep_<script>_<dataset>[_quick]/LEARNING_RATE=0.001,BATCH_SIZE=8/``.
Options after the sweep's own go to the script (``--quick``, ``--dataset``, ``--folds``, ...).

A killed sweep started again with the same command skips finished points and continues the
unfinished one from its finished folds. ``--points 3,4`` or ``--shard i/n`` runs a subset
(one cluster array task each; the table then holds every point finished so far). ``--random
N`` runs N points drawn (seeded) from the grid. At the end ``sweep.csv``, ``sweep.md`` and
``sweep.png`` compare all finished points: every metric with a 95 % bootstrap interval over
test images, sorted, the best point marked, and the metric against each swept knob.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from leukocyte_cnn.base.cli import run_main
from leukocyte_cnn.base.errors import InputError

RESULTS_DIR = "results"       # where a sweep's folder goes unless --sweep-dir names one
METRIC = "balanced_accuracy"  # the metric that sorts the table and picks the best point


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's options and the script's options (everything the sweep does not know)."""
    from leukocyte_cnn.base.knobs import knob_argument
    from leukocyte_cnn.runs.sweeps import METRICS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     usage="%(prog)s SCRIPT.py --set NAME=v1,v2 [--set ...] "
                                           "[sweep options] [script options]")
    parser.add_argument("script", help="the experiment script whose knobs are swept")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=V1,V2",
                        help="a knob and its values, comma-separated (lists in brackets: "
                             "FILTERS=[4,8],[8,16]); repeat for more knobs (Cartesian grid)")
    parser.add_argument("--random", type=int, default=None, metavar="N",
                        help="run N points drawn from the grid instead of all of them")
    parser.add_argument("--draw-seed", type=int, default=0,
                        help="seed of the --random draw (default 0)")
    parser.add_argument("--points", default=None,
                        help="run only these points (numbers as listed, from 0), e.g. 3,4 or 0-2")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="run points I, I+N, I+2N, ... (I from 0; one cluster array task)")
    parser.add_argument("--sweep-dir", default=None,
                        help="folder of the sweep (default results/sweep_<script>_<dataset>"
                             "[_quick])")
    knob_argument(parser, "--metric", knob="METRIC", choices=METRICS,
                  help=f"metric that sorts the table (METRIC, default {METRIC})")
    parser.add_argument("--list", action="store_true",
                        help="print the numbered points and their state, run nothing")
    args, script_args = parser.parse_known_args(argv)
    if script_args[:1] == ["--"]:
        script_args = script_args[1:]
    return args, script_args


def load_script(path: str):
    """The script as a module (its knobs and ``parse_args``), without running ``main``."""
    script = Path(path)
    if script.suffix != ".py" or not script.is_file():
        raise InputError(f"{path}: not a Python script")
    spec = importlib.util.spec_from_file_location(f"_swept_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "parse_args"):
        raise InputError(f"{path}: has no parse_args(); sweep.py runs the experiment scripts")
    return module


def default_sweep_dir(script: Path, script_options: argparse.Namespace, results_dir: str
                      ) -> Path:
    dataset = getattr(script_options, "dataset", None)
    quick = "_quick" if getattr(script_options, "quick", False) else ""
    return Path(results_dir) / f"sweep_{script.stem}{'_' + dataset if dataset else ''}{quick}"


def main(args: argparse.Namespace, script_args: list[str]) -> int:
    from leukocyte_cnn.base.knobs import resolve_settings, script_knobs
    from leukocyte_cnn.base.run_folder import run_lock
    from leukocyte_cnn.runs.sweeps import (
        check_names_unique,
        collect_results,
        grid_points,
        open_sweep,
        parse_grid,
        point_is_done,
        point_name,
        run_point,
        select_points,
        write_report,
    )

    s = resolve_settings(sys.modules[__name__], args, quick=False)
    script_path = Path(args.script)
    module = load_script(args.script)
    grid = parse_grid(script_path.name, script_knobs(module), args.sets)
    script_options = module.parse_args(script_args)  # a bad script option stops here
    for option in ("--run-name", "--results-dir"):
        if any(arg == option or arg.startswith(option + "=") for arg in script_args):
            raise InputError(f"{option}: sweep.py names each point's run folder itself; use "
                             "--sweep-dir for where they go")
    points = grid_points(grid, args.random, args.draw_seed)
    check_names_unique(points)
    chosen = select_points(len(points), args.points, args.shard)
    sweep_dir = (Path(args.sweep_dir) if args.sweep_dir
                 else default_sweep_dir(script_path, script_options, s["RESULTS_DIR"]))
    if args.list:
        for index, point in enumerate(points):
            state = "finished" if point_is_done(sweep_dir, point, script_args) else "to run"
            print(f"{index:3d}  {point_name(point)}  ({state})")
        return 0
    open_sweep(sweep_dir, script_path.name, script_args, grid)

    failed = []
    for number, index in enumerate(chosen, 1):
        point = points[index]
        name = point_name(point)
        if point_is_done(sweep_dir, point, script_args):
            print(f"point {index} ({number}/{len(chosen)}) {name}: finished earlier, kept",
                  flush=True)
            continue
        print(f"point {index} ({number}/{len(chosen)}) {name}", flush=True)
        code = run_point(script_path, script_args, sweep_dir, point)
        if code:
            print(f"point {index} {name}: the script failed (exit {code}); the sweep goes on",
                  flush=True)
            failed.append(index)

    with run_lock(sweep_dir, "summary of"):  # shards finishing together: one at a time
        table = collect_results(sweep_dir, points, script_args)
        table = write_report(sweep_dir, table, list(grid), s["METRIC"],
                             script=script_path.name, script_args=script_args,
                             n_points=len(points))
        print((sweep_dir / "sweep.md").read_text())
    if failed:
        print(f"points {', '.join(map(str, failed))} failed; run the same command again to "
              "retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(lambda: sys.exit(main(*parse_args())))
