"""What every training script does the same way: common options, the split, the run folder.

A script adds its own knobs and model; this module gives it the dataset/split/run-folder
plumbing so that all scripts read split files and write run folders identically.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

from .errors import InputError
from .runinfo import prepare_run_dir

DATA_DIR = Path("data")
RESULTS_DIR = Path("results")


def add_common_arguments(parser: argparse.ArgumentParser, *, default_dataset: str,
                         folds: bool = True) -> argparse.ArgumentParser:
    """``--dataset --data-root --split --run-name --results-dir --folds --seed --quick``."""
    parser.add_argument("--dataset", default=default_dataset,
                        help=f"dataset reader name (default {default_dataset}; synthetic_* sets "
                             "are generated under data/ on first use)")
    parser.add_argument("--data-root", default=None,
                        help="folder of the dataset as its owners distribute it "
                             "(not needed for synthetic_* sets)")
    parser.add_argument("--split", default=None,
                        help="split CSV written by cross_validation_splits.py; default: "
                             "data/splits/<dataset>_<method>_...csv, created if missing "
                             "(with a _data-<hash> suffix when that name already holds a "
                             "split of other images)")
    parser.add_argument("--run-name", default=None,
                        help="name of the run folder under --results-dir (default: derived "
                             "from script, dataset and --quick)")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR),
                        help="where run folders go (default results/)")
    if folds:
        parser.add_argument("--folds", default=None,
                            help="run only these folds, e.g. 3,4 or 0-9 (one fold per cluster "
                                 "job; summarize_results.py merges them)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random (default 0)")
    parser.add_argument("--quick", action="store_true",
                        help="few folds, few epochs, small images: a smoke run in minutes on a CPU")
    return parser


def split_arguments(args: argparse.Namespace, *, method: str, data_dir: Path = DATA_DIR,
                    **split_options) -> list[str]:
    """The ``cross_validation_splits.py`` command line for this script's default split."""
    argv = ["--dataset", args.dataset, "--method", method, "--seed", str(args.seed),
            "--out-dir", str(data_dir / "splits")]
    if args.data_root:
        argv += ["--data-root", str(args.data_root)]
    flags = {"k": "--k", "p": "--p", "min_images": "--min-images",
             "val_fraction": "--val-fraction", "test_fraction": "--test-fraction",
             "zheng_dataset": "--zheng-dataset", "test_sources": "--test-sources"}
    for key, value in split_options.items():
        if value is None:
            continue
        if key == "exclude_classes":
            for name in value:
                argv += ["--exclude", name]
        elif key in flags:
            argv += [flags[key], str(value)]
        else:
            raise TypeError(f"unknown split option {key!r}")
    return argv


def resolve_split(args: argparse.Namespace, *, method: str, data_dir: Path = DATA_DIR,
                  **split_options):
    """Load ``--split``, or this script's default split, writing it first if it is absent.

    The default split is exactly what ``cross_validation_splits.py`` writes with the same
    options (the same code runs, and the file name encodes method, k/P, seed and exclusions),
    so later scripts and other machines read identical folds.
    """
    import cross_validation_splits as cvs
    from .folds import SplitDatasetMismatch, load_split

    if args.split:
        return load_split(args.split, data_root=args.data_root)
    cvs_args = cvs.parse_args(split_arguments(args, method=method, data_dir=data_dir,
                                              **split_options))
    name = cvs.split_file_name(cvs_args, method, cvs.reader_options(cvs_args))
    path = Path(cvs_args.out_dir) / f"{name}.csv"
    if not path.exists():
        cvs.main(cvs_args)
    try:
        return load_split(path, data_root=args.data_root)
    except SplitDatasetMismatch as mismatch:
        # The default name was taken by a split of other images under the same dataset name
        # (e.g. a low-resolution copy, or another data root): keep that one untouched and
        # use a split named after this dataset's fingerprint.
        cvs_args.name = f"{name}_data-{mismatch.current_hash[:8]}"
        other = Path(cvs_args.out_dir) / f"{cvs_args.name}.csv"
        print(f"note: {path} was made from other images; this data root uses {other}")
        if not other.exists():
            cvs.main(cvs_args)
        return load_split(other, data_root=args.data_root)


def present_exclusions(args: argparse.Namespace, exclude_classes: Sequence[str]
                       ) -> tuple[str, ...]:
    """The names in ``exclude_classes`` that are classes of ``--dataset`` (in their order).

    For a script's default split: a class set aside by name (e.g. ``thrombocyte``) may be
    absent from a real dataset, and naming it would put a pointless ``--exclude`` into the
    split's options and file name. Returns ``()`` with ``--split``: a given split file already
    records its exclusions, and the dataset is not read.
    """
    if args.split:
        return ()
    from .datasets import class_names, read_dataset

    present = set(class_names(read_dataset(args.dataset, args.data_root)))
    return tuple(c for c in exclude_classes if c in present)


def run_dir_for(args: argparse.Namespace, script: str) -> Path:
    name = args.run_name or "_".join([script, args.dataset] + (["quick"] if args.quick else []))
    return Path(args.results_dir) / name


def script_settings(script: str | ModuleType, args: argparse.Namespace) -> dict:
    """A script's hyperparameters: its UPPER_CASE module constants (:func:`runinfo.knobs`),
    updated with the script's ``QUICK`` dict under ``--quick``.

    ``script`` is the script's module or its ``__name__``. The result is what ``start_run``
    records as ``knobs``; command-line overrides stay the script's business.
    """
    from .runinfo import knobs

    module = sys.modules[script] if isinstance(script, str) else script
    settings = knobs(module)
    if args.quick:
        settings.update(module.QUICK)
    return settings


def start_training_run(args: argparse.Namespace, script: str, *, knobs: dict, split, title: str,
                       class_names: Sequence[str], extra: dict | None = None) -> Path:
    """Set up the devices for ``--mixed-precision``/``--xla`` (:func:`gpu.configure_devices`),
    then :func:`start_run`, with both switches recorded after ``extra``."""
    from .gpu import configure_devices

    configure_devices(args.mixed_precision, args.xla)
    return start_run(args, script, knobs=knobs, split=split, title=title,
                     class_names=class_names,
                     extra={**(extra or {}), "mixed_precision": args.mixed_precision,
                            "xla": args.xla})


def start_run(args: argparse.Namespace, script: str, *, knobs: dict, split, title: str,
              class_names: Sequence[str], extra: dict | None = None) -> Path:
    """Create the run folder with the settings that determine its numbers."""
    config = {"script": script, "title": title, "dataset": args.dataset,
              "data_root": args.data_root, "split_file": str(split.csv_path),
              "dataset_hash": split.settings.get("dataset_hash"),
              "split_method": split.settings.get("method"),
              "leaky": bool(split.settings.get("leaky", False)),
              "excluded_classes": split.settings.get("excluded_classes", []),
              "n_folds": len(split.folds), "class_names": list(class_names),
              "seed": args.seed, "quick": bool(args.quick), "knobs": knobs, **(extra or {})}
    run_dir = prepare_run_dir(run_dir_for(args, script), config)
    print(f"run folder {run_dir} ({title})", flush=True)
    return run_dir


def require_file(path: str | os.PathLike, what: str, hint: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {what} not found; {hint}")
    return path


def make_optimizer(name: str, learning_rate: float, **options):
    """A fresh Keras optimizer by name (``adam``, ``rmsprop``, ``sgd``, ``adamax``, …).

    ``options`` go to the optimizer's constructor (e.g. ``momentum=0.9`` for SGD).
    """
    import keras

    try:
        return keras.optimizers.get({"class_name": name,
                                     "config": {"learning_rate": learning_rate, **options}})
    except (ValueError, TypeError) as exc:
        raise InputError(f"optimizer {name!r} with {options or 'default options'}: "
                         f"not accepted by Keras ({exc})") from None


MEMORY_CACHE_LIMIT = 512 * 2**20  # bytes of decoded, resized uint8 images kept in RAM per set


def memory_cache(n_images: int, image_size: tuple[int, int]) -> str | None:
    """``"memory"`` when a set's decoded images fit the cache limit, else stream from disk.

    The pipeline caches after decoding and resizing, before shuffling and augmentation, so
    caching changes speed only: epochs after the first skip the decode. Large sets (the full
    Kaggle or C-NMC data at high resolution) stream, keeping memory bounded.
    """
    height, width = image_size
    return "memory" if n_images * height * width * 3 <= MEMORY_CACHE_LIMIT else None


def train_classifier_fold(fold, build_model, *, class_names: Sequence[str],
                          image_size: tuple[int, int], batch_size: int, epochs: int,
                          patience: int, optimizer: str, learning_rate: float, augment=None,
                          train_table=None, binary: bool = False, xla: bool = False,
                          verbose: int = 0, optimizer_options: dict | None = None,
                          mask_column: str | None = None):
    """Train a fresh classifier on one fold and write its outputs (see training.fit_and_predict).

    ``build_model()`` returns an uncompiled model taking [0, 255] pixels. ``augment`` (a Keras
    layer stack) touches training batches only. ``train_table`` replaces the fold's training
    rows (e.g. the class-balanced augmented images of that fold); validation and test rows
    always come from the split. ``optimizer_options`` go to the optimizer (e.g. SGD's
    ``momentum``). ``mask_column`` names a column of the tables holding one mask file per
    image; the pipeline then blanks every image's background (training, validation and test
    alike) before resizing.
    """
    from .gpu import compile_kwargs
    from .pipeline import make_dataset
    from .training import fit_and_predict

    train = fold.train if train_table is None else train_table
    label_mode = "binary" if binary else "int"

    def dataset(table, training: bool):
        return make_dataset(table["path"].tolist(), table["label"].astype(int).tolist(),
                            image_size, batch_size, shuffle=training,
                            augment=augment if training else None, seed=fold.seed,
                            label_mode=label_mode, cache=memory_cache(len(table), image_size),
                            masks=table[mask_column].tolist() if mask_column else None)

    model = build_model()
    model.compile(optimizer=make_optimizer(optimizer, learning_rate, **(optimizer_options or {})),
                  loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                  metrics=["accuracy"], **compile_kwargs(xla))
    return fit_and_predict(fold, model, train_ds=dataset(train, True),
                           val_ds=dataset(fold.val, False) if len(fold.val) else None,
                           test_ds=dataset(fold.test, False), class_names=class_names,
                           epochs=epochs, patience=patience, verbose=verbose)
