"""What every training script does the same way: common options, the split, the run folder.

A script declares its knobs and its model; this module turns its command line into
:class:`RunOptions` once (the script then hands the library those and its resolved
``knobs.Settings``, never its ``argparse`` namespace), makes or finds its default split
(:mod:`leukocyte_cnn.splits.request`) and opens its run folder, so that all scripts read split
files and write run folders identically.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from leukocyte_cnn.base.devices import DeviceRequest, device_settings
from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.knobs import Settings
from leukocyte_cnn.base.run_folder import prepare_run_dir
from leukocyte_cnn.splits.request import SplitRequest, make_split_file, parse_reader_options

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
    parser.add_argument("--no-tensorboard", action="store_true",
                        help="do not write TensorBoard logs (fold_XX/tensorboard/: the scalars "
                             "of every epoch and the learning rate; on by default)")
    from leukocyte_cnn.base.progress import add_console_arguments

    add_console_arguments(parser)  # --quiet, --verbose
    return parser


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What a script's command line says about one run besides its knobs: data, split, run
    folder, folds, seed, quick mode, console and devices (:func:`add_common_arguments` and
    ``devices.add_gpu_arguments``)."""

    dataset: str
    data_root: str | None = None
    split: str | None = None
    ignore_groups: bool = False
    reader_options: tuple[str, ...] = ()
    zheng_dataset: str | None = None
    run_name: str | None = None
    results_dir: str = str(RESULTS_DIR)
    folds: str | None = None
    seed: int = 0
    quick: bool = False
    quiet: bool = False
    tensorboard: bool = True
    devices: DeviceRequest = DeviceRequest()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        return cls(dataset=args.dataset, data_root=args.data_root, split=args.split,
                   ignore_groups=bool(getattr(args, "ignore_groups", False)),
                   reader_options=tuple(getattr(args, "reader_option", None) or ()),
                   zheng_dataset=getattr(args, "zheng_dataset", None),
                   run_name=args.run_name, results_dir=args.results_dir,
                   folds=getattr(args, "folds", None), seed=args.seed, quick=bool(args.quick),
                   quiet=bool(getattr(args, "quiet", False)),
                   tensorboard=not getattr(args, "no_tensorboard", False),
                   devices=DeviceRequest.from_args(args))

    def with_changes(self, **changes) -> RunOptions:
        return dataclasses.replace(self, **changes)

    def parsed_reader_options(self) -> dict:
        """The reader options of the default split (``--reader-option``, ``--zheng-dataset``)."""
        return parse_reader_options(self.reader_options, self.zheng_dataset)

    def run_dir(self, script: str) -> Path:
        """``<results-dir>/<run-name>``, by default ``<script>_<dataset>[_quick]``."""
        name = self.run_name or "_".join([script, self.dataset] + (["quick"] if self.quick
                                                                    else []))
        return Path(self.results_dir) / name


def resolve_run(args: argparse.Namespace, module, *, extra: dict | None = None
                ) -> tuple[RunOptions, Settings]:
    """A training script's first step: its :class:`RunOptions`, its devices set up (before any
    TensorFlow op: GPUs, memory growth and replicas are fixed then) and its knobs resolved into
    ``Settings`` (``knobs.resolve_settings``; ``extra`` as there, e.g. a ``--variant`` preset)."""
    from leukocyte_cnn.base.devices import setup_devices
    from leukocyte_cnn.base.knobs import resolve_settings

    run = RunOptions.from_args(args)
    setup_devices(run.devices)
    return run, resolve_settings(module, args, extra=extra)


def split_request(run: RunOptions, *, method: str | None, val_fraction: float,
                  min_images: int, data_dir: Path = DATA_DIR, **options) -> SplitRequest:
    """The :class:`SplitRequest` of a script's default split: the run's data, seed and
    ``--ignore-groups``/``--reader-option``, the script's protocol (``method`` and its knobs:
    ``k``, ``p``, ``test_fraction``, ``exclude``, ``test_sources``, ...)."""
    if "exclude" in options:
        options["exclude"] = tuple(options["exclude"])
    return SplitRequest(dataset=run.dataset, data_root=run.data_root, method=method,
                        seed=run.seed, val_fraction=val_fraction, min_images=min_images,
                        reader_options=run.parsed_reader_options(),
                        ignore_groups=run.ignore_groups, out_dir=str(data_dir / "splits"),
                        **options)


def given_split(run: RunOptions):
    """The split file given with ``--split``, loaded and checked against the data, or
    ``None``. A given file records its own protocol, so the script's split knobs are not read
    (they show as unused in a run that sets them)."""
    from leukocyte_cnn.splits.split_files import load_split

    if not run.split:
        return None
    refuse_split_options(run)
    return load_split(run.split, data_root=run.data_root)


def resolve_split(run: RunOptions, *, method: str | None, val_fraction: float,
                  min_images: int, data_dir: Path = DATA_DIR, **options):
    """Load ``--split``, or this script's default split, writing it first if it is absent.

    The default split is exactly what ``cross_validation_splits.py`` writes with the same
    options (:func:`splits.request.make_split_file`): the file name ends in the fingerprint of
    the images and every split setting, so a split made with other settings or from other
    images (another data root under the same dataset name) lies under another name and is
    never reused or overwritten by mistake; later scripts and other machines read identical
    folds.
    """
    from leukocyte_cnn.splits.split_files import load_split

    if (split := given_split(run)) is not None:
        return split
    request = split_request(run, method=method, val_fraction=val_fraction,
                            min_images=min_images, data_dir=data_dir, **options)
    return load_split(make_split_file_once(request), data_root=run.data_root)


def make_split_file_once(request: SplitRequest, say: Callable[[str], None] = print) -> Path:
    """:func:`splits.request.make_split_file` under the lock of ``request``
    (``base.locks``): jobs started together (one per fold) that ask for the same split wait
    for the first one's file and reuse it (its fingerprint matches) instead of each writing
    it. The lock file lies beside the split folder, ``data/.splits_<dataset>_<fingerprint of
    the request>.lock``, so a split that fails (a bad file name) leaves no split folder."""
    from leukocyte_cnn.base.artifacts import keyed_path
    from leukocyte_cnn.base.locks import artifact_lock

    out_dir = Path(request.out_dir)
    fields = json.loads(json.dumps(dataclasses.asdict(request), default=str, sort_keys=True))
    key = keyed_path(out_dir.parent, f"{out_dir.name}_{request.dataset}", fields)
    with artifact_lock(key, f"the split of {request.dataset} in {request.out_dir}", say=say):
        return make_split_file(request, say=say)


def resolve_protocol_split(run: RunOptions, settings: Settings, **options):
    """:func:`resolve_split` with a script's split-protocol knobs: ``SPLIT_METHOD`` with ``K``
    (``kfold``, ``group_kfold``) or ``LEAVE_OUT`` (``lpo``), ``VAL_FRACTION``, ``MIN_IMAGES``
    and, when the script has it, ``EXCLUDE_CLASSES`` (those present in the data). Only the
    knobs the method uses are read, so the others show as unused in a run that sets them; with
    ``--split`` none is (the file records its own protocol)."""
    if (split := given_split(run)) is not None:
        return split
    method = settings["SPLIT_METHOD"]
    if method in ("kfold", "group_kfold"):
        options["k"] = settings["K"]
    elif method == "lpo":
        options["p"] = settings["LEAVE_OUT"]
    if "EXCLUDE_CLASSES" in settings:
        options["exclude"] = present_exclusions(run, settings["EXCLUDE_CLASSES"])
    return resolve_split(run, method=method, val_fraction=settings["VAL_FRACTION"],
                         min_images=settings["MIN_IMAGES"], **options)


def refuse_split_options(run: RunOptions) -> None:
    """``--ignore-groups``/``--reader-option`` shape the default split; a ``--split`` file
    already records its own: one line instead of a switch that does nothing."""
    given = [flag for flag, value in (("--ignore-groups", run.ignore_groups),
                                      ("--reader-option", run.reader_options)) if value]
    if given:
        raise InputError(f"--split {run.split}: {' and '.join(given)} shape(s) the default "
                         "split only; the split file records its own (make it with "
                         "cross_validation_splits.py)")


def present_exclusions(run: RunOptions, exclude_classes: Sequence[str]) -> tuple[str, ...]:
    """The names in ``exclude_classes`` that are classes of the run's dataset (in order).

    For a script's default split: a class set aside by name (e.g. ``thrombocyte``) may be
    absent from a real dataset, and naming it would put a pointless exclusion into the
    split's options and file name. Returns ``()`` with ``--split``: a given split file already
    records its exclusions, and the dataset is not read.
    """
    if run.split:
        return ()
    from leukocyte_cnn.data.datasets import class_names, read_dataset

    present = set(class_names(read_dataset(run.dataset, run.data_root,
                                           **run.parsed_reader_options())))
    return tuple(c for c in exclude_classes if c in present)


def start_run(run: RunOptions, script: str, *, settings: Settings, split, title: str,
              class_names: Sequence[str], extra: dict | None = None,
              resumable: Sequence[str] = ()) -> Path:
    """Create the run folder with what determines its numbers: the split file, the knobs as
    they run (``settings``; ``overrides`` says which were changed and by what), ``extra``
    (derived facts such as the model's input size or parameter count) and the device switches
    as they took effect (:func:`devices.device_settings`: precision policy, XLA, determinism,
    replicas; the devices are normally set up first thing in ``main()``). Knobs named in
    ``resumable`` may change when the run is resumed (a study's number of seeds)."""
    from leukocyte_cnn.base.io import file_sha256
    from leukocyte_cnn.base.progress import run_header, set_console

    config = {"script": script, "title": title, "dataset": run.dataset,
              "data_root": run.data_root, "split_file": str(split.csv_path),
              "split_sha256": file_sha256(split.csv_path),
              "split_fingerprint": (split.settings.get("fingerprint") or {}).get("fingerprint"),
              "dataset_hash": split.settings.get("dataset_hash"),
              "split_method": split.settings.get("method"),
              "leaky": bool(split.settings.get("leaky", False)),
              "excluded_classes": split.settings.get("excluded_classes", []),
              "n_folds": len(split.folds), "class_names": list(class_names),
              "seed": run.seed, "quick": bool(run.quick), "knobs": settings.recorded(),
              **(extra or {}), **device_settings(run.devices)}
    run_dir = prepare_run_dir(run.run_dir(script), config, overrides=settings.overrides(),
                              resumable=tuple(resumable),
                              say=lambda line: print(line, flush=True))
    set_console(quiet=run.quiet, tensorboard=run.tensorboard)
    print(f"run folder {run_dir} ({title})", flush=True)
    if not run.quiet:
        print(run_header(split, class_names, dataset=run.dataset, data_root=run.data_root,
                         folds=run.folds), flush=True)
        by_source: dict[str, list[str]] = {}
        for name, change in settings.overrides().items():
            by_source.setdefault(change["by"], []).append(
                f"{name} {json.dumps(change['value'])} (script: {json.dumps(change['default'])})")
        for source, changes in by_source.items():
            print(f"knobs set by {source}: {', '.join(changes)}", flush=True)
    return run_dir


def require_file(path: str | os.PathLike, what: str, hint: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {what} not found; {hint}")
    return path


