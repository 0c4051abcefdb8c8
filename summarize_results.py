"""Rebuild a run's summary (tables and figures) from its fold folders.

Use it after folds ran as separate jobs (``--folds``), possibly on different machines: copy
their ``fold_XX`` folders into one run folder and run this script. It reads only
``settings.json`` and ``fold_XX/predictions.csv`` / ``epochs.csv``, never models or images.
Folds made from another split file or other artifacts are refused; folds of several commits
are flagged in ``summary.md``.

A learning-curve run (``resnext_transfer_learning.py --train-sizes``) gets its
``learning_curve.csv/.md/.png`` rebuilt from the sizes whose folds are all done, so a long
curve stopped part-way (or still running) can be looked at; the table names the sizes left out.

``--results-md RESULTS.md`` regenerates the tables of RESULTS.md from the run folders its
markers name (``leukocyte_cnn.reporting.results_md``).
"""
from __future__ import annotations

import argparse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="*", help="run folder(s) under results/")
    parser.add_argument("--results-md", default=None, metavar="RESULTS.md",
                        help="rewrite the tables of this file from the run folders named in "
                             "its <!-- results: RUN --> markers (blocks whose run folders are "
                             "not here are kept)")
    args = parser.parse_args(argv)
    if not args.run_dirs and not args.results_md:
        parser.error("give run folder(s) or --results-md")
    return args


def main(args: argparse.Namespace) -> None:
    from leukocyte_cnn.base.run_folder import read_settings
    from leukocyte_cnn.reporting.summary import summarize_run
    from leukocyte_cnn.runs.learning_curve import rebuild_learning_curve

    for run_dir in args.run_dirs:
        if read_settings(run_dir)["config"].get("train_sizes"):
            rebuild_learning_curve(run_dir)
            print(f"{run_dir}: learning_curve.md rebuilt")
        else:
            summarize_run(run_dir)
    if args.results_md:
        from leukocyte_cnn.reporting.results_md import regenerate

        for note in regenerate(args.results_md):
            print(f"{args.results_md}: {note}")


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
