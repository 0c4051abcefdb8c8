"""Rebuild a run's summary (tables and figures) from its fold folders.

Use it after folds ran as separate jobs (``--folds``), possibly on different machines: copy
their ``fold_XX`` folders into one run folder and run this script. It reads only
``settings.json`` and ``fold_XX/predictions.csv`` / ``epochs.csv``, never models or images.
"""
from __future__ import annotations

import argparse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run folder(s) under results/")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    from leukocyte_cnn.reporting import summarize_run

    for run_dir in args.run_dirs:
        summarize_run(run_dir)


if __name__ == "__main__":
    from leukocyte_cnn.errors import run_main

    run_main(lambda: main(parse_args()))
