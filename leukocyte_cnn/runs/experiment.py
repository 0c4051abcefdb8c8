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

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.run_folder import prepare_run_dir

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
                             "data/splits/<dataset>_<method>_..._<fingerprint>.csv, created "
                             "if missing (the fingerprint covers the images and every split "
                             "setting, so other settings or images never reuse it)")
    parser.add_argument("--ignore-groups", action="store_true",
                        help="split the default split by image even when images share "
                             "patients/smears/source cells (and leave copies unjoined): a LEAKY "
                             "split, and every table and figure of the run says so; only to "
                             "reproduce published numbers made that way")
    parser.add_argument("--reader-option", action="append", default=[], metavar="KEY=VALUE",
                        help="option of the dataset reader for the default split (repeatable), "
                             "e.g. --reader-option crops=true for single-cell crops of "
                             "ALL-IDB1 smears")
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
    from leukocyte_cnn.base.progress import add_console_arguments

    add_console_arguments(parser)  # --quiet, --verbose
    return parser


def split_arguments(args: argparse.Namespace, *, method: str, data_dir: Path = DATA_DIR,
                    **split_options) -> list[str]:
    """The ``cross_validation_splits.py`` command line for this script's default split."""
    argv = ["--dataset", args.dataset, "--method", method, "--seed", str(args.seed),
            "--out-dir", str(data_dir / "splits")]
    if args.data_root:
        argv += ["--data-root", str(args.data_root)]
    if getattr(args, "ignore_groups", False):
        argv.append("--ignore-groups")
    for option in getattr(args, "reader_option", None) or []:
        argv += ["--reader-option", option]
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
    options: the same code runs, and the file name ends in the fingerprint of the images and
    every split setting, so a split made with other settings or from other images (another
    data root under the same dataset name) lies under another name and is never reused or
    overwritten by mistake; later scripts and other machines read identical folds.
    """
    import cross_validation_splits as cvs
    from leukocyte_cnn.splits.folds import load_split

    if args.split:
        refuse_split_options(args)
        return load_split(args.split, data_root=args.data_root)
    cvs_args = cvs.parse_args(split_arguments(args, method=method, data_dir=data_dir,
                                              **split_options))
    return load_split(cvs.main(cvs_args), data_root=args.data_root)


def refuse_split_options(args: argparse.Namespace) -> None:
    """``--ignore-groups``/``--reader-option`` shape the default split; a ``--split`` file
    already records its own: one line instead of a switch that does nothing."""
    given = [flag for flag, value in (("--ignore-groups", getattr(args, "ignore_groups", False)),
                                      ("--reader-option", getattr(args, "reader_option", None)))
             if value]
    if given:
        raise InputError(f"--split {args.split}: {' and '.join(given)} shape(s) the default "
                         "split only; the split file records its own (make it with "
                         "cross_validation_splits.py)")


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
    from leukocyte_cnn.data.datasets import class_names, read_dataset

    present = set(class_names(read_dataset(args.dataset, args.data_root,
                                           **dataset_reader_options(args))))
    return tuple(c for c in exclude_classes if c in present)


def dataset_reader_options(args: argparse.Namespace) -> dict:
    """The reader options the default split is made with (``--reader-option``,
    ``--zheng-dataset``), as ``cross_validation_splits.reader_options`` parses them."""
    import cross_validation_splits as cvs

    return cvs.reader_options(argparse.Namespace(
        zheng_dataset=getattr(args, "zheng_dataset", None),
        reader_option=getattr(args, "reader_option", None) or []))


def run_dir_for(args: argparse.Namespace, script: str) -> Path:
    name = args.run_name or "_".join([script, args.dataset] + (["quick"] if args.quick else []))
    return Path(args.results_dir) / name


def script_settings(script: str | ModuleType, args: argparse.Namespace) -> dict:
    """A script's hyperparameters: its UPPER_CASE module constants (:func:`runinfo.knobs`),
    updated with the script's ``QUICK`` dict under ``--quick``, then with the knobs set from
    outside (``$LEUKOCYTE_KNOBS``, :mod:`leukocyte_cnn.base.knobs`), which beat ``QUICK``.

    ``script`` is the script's module or its ``__name__``. The result is what ``start_run``
    records as ``knobs``; command-line overrides stay the script's business.
    """
    from leukocyte_cnn.base.knobs import overrides_of
    from leukocyte_cnn.base.knobs import knobs

    module = sys.modules[script] if isinstance(script, str) else script
    settings = knobs(module)
    if args.quick:
        settings.update(module.QUICK)
    settings.update(overrides_of(module))
    return settings


def start_training_run(args: argparse.Namespace, script: str, *, knobs: dict, split, title: str,
                       class_names: Sequence[str], extra: dict | None = None) -> Path:
    """:func:`start_run` with the device switches recorded after ``extra`` as they took effect
    (:func:`gpu.device_settings`: precision policy, XLA, determinism, replicas). The devices
    are normally set up already, first thing in ``main()`` (:func:`gpu.setup_devices`)."""
    from leukocyte_cnn.base.devices import device_settings

    return start_run(args, script, knobs=knobs, split=split, title=title,
                     class_names=class_names, extra={**(extra or {}), **device_settings(args)})


def start_run(args: argparse.Namespace, script: str, *, knobs: dict, split, title: str,
              class_names: Sequence[str], extra: dict | None = None) -> Path:
    """Create the run folder with the settings that determine its numbers."""
    from leukocyte_cnn.base.io import file_sha256

    config = {"script": script, "title": title, "dataset": args.dataset,
              "data_root": args.data_root, "split_file": str(split.csv_path),
              "split_sha256": file_sha256(split.csv_path),
              "split_fingerprint": (split.settings.get("fingerprint") or {}).get("fingerprint"),
              "dataset_hash": split.settings.get("dataset_hash"),
              "split_method": split.settings.get("method"),
              "leaky": bool(split.settings.get("leaky", False)),
              "excluded_classes": split.settings.get("excluded_classes", []),
              "n_folds": len(split.folds), "class_names": list(class_names),
              "seed": args.seed, "quick": bool(args.quick), "knobs": knobs, **(extra or {})}
    run_dir = prepare_run_dir(run_dir_for(args, script), config)
    from leukocyte_cnn.base.progress import run_header, set_console

    set_console(quiet=getattr(args, "quiet", False))
    print(f"run folder {run_dir} ({title})", flush=True)
    if not getattr(args, "quiet", False):
        print(run_header(args, split, class_names), flush=True)
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
                          mask_column: str | None = None, color_mode: str = "rgb"):
    """Train a fresh classifier on one fold and write its outputs (see training.fit_and_predict).

    ``build_model()`` returns an uncompiled model taking [0, 255] pixels. ``augment`` (a Keras
    layer stack) touches training batches only. ``train_table`` replaces the fold's training
    rows (e.g. the class-balanced augmented images of that fold); validation and test rows
    always come from the split. ``optimizer_options`` go to the optimizer (e.g. SGD's
    ``momentum``). ``mask_column`` names a column of the tables holding one mask file per
    image; the pipeline then blanks every image's background (training, validation and test
    alike) before resizing. ``color_mode`` (a script's ``COLOR_MODE`` knob: ``rgb`` or
    ``grayscale``) is applied by the pipeline to every image. ``batch_size`` is the global
    batch: under several replicas (:func:`gpu.model_scope`) each step's ``batch_size`` images
    are split over them.
    """
    from leukocyte_cnn.base.devices import (check_global_batch, compile_kwargs, model_scope, require_xla)
    from leukocyte_cnn.inputs.pipeline import make_dataset
    from leukocyte_cnn.runs.cross_validation import fit_and_predict, record_fold_inputs

    train = fold.train if train_table is None else train_table
    record_fold_inputs(fold, train)  # fold_XX/inputs.csv: what this fold feeds, before training
    label_mode = "binary" if binary else "int"

    def dataset(table, training: bool):
        return make_dataset(table["path"].tolist(), table["label"].astype(int).tolist(),
                            image_size, batch_size, shuffle=training,
                            augment=augment if training else None, seed=fold.seed,
                            label_mode=label_mode, cache=memory_cache(len(table), image_size),
                            masks=table[mask_column].tolist() if mask_column else None,
                            color_mode=color_mode)

    check_global_batch(batch_size)
    with model_scope():  # several replicas: weights, optimizer state and metrics mirrored
        model = build_model()
        model.compile(optimizer=make_optimizer(optimizer, learning_rate,
                                               **(optimizer_options or {})),
                      loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                      metrics=["accuracy"], **compile_kwargs(xla))
    require_xla(model, xla)
    return fit_and_predict(fold, model, train_ds=dataset(train, True),
                           val_ds=dataset(fold.val, False) if len(fold.val) else None,
                           test_ds=dataset(fold.test, False), class_names=class_names,
                           epochs=epochs, patience=patience, verbose=verbose)
