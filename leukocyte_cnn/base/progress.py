"""What a long run says while it runs: a quiet console, one line per epoch with an ETA, counters.

A researcher who starts a 40-minute training should see within a minute what will run, and
after the first epoch how long it will take. This module holds the three pieces that make that
so, for every script alike:

* **A quiet console.** TensorFlow writes C++ and absl log lines (``cudart_stub ... Could not
  find cuda drivers``, ``failed call to cuInit`` on machines without a GPU) to the process's
  standard error before any of our code can speak. :func:`quiet_tensorflow_import` (installed
  by ``leukocyte_cnn/__init__``) hides them: ``TF_CPP_MIN_LOG_LEVEL=3`` and, while
  ``import tensorflow`` runs, the error stream goes through a filter that drops absl/glog
  lines and passes everything else on. ``--verbose`` (:func:`add_console_arguments`) turns
  both off before TensorFlow is imported; a ``TF_CPP_MIN_LOG_LEVEL`` set by the user wins.
* **Epoch lines.** :func:`epoch_callback` (added by ``training.fit``) prints one line per
  epoch: what trains (fold or setting and trial, set by :func:`unit`), epoch i/N, loss,
  validation loss and accuracy, seconds per epoch, and the ETA of the fold and of the run
  (:func:`tracking` knows how many folds or trials are left). On a terminal a progress bar
  runs within the epoch; into a file only the lines are written. ``--quiet`` keeps the
  per-fold lines of ``training.run_folds`` only.
* **Counters** (:class:`Counter`) for long steps that are not training: hashing images for
  near-duplicates, balancing classes, writing masks.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence

# absl/glog lines ("I0000 00:00:1796.123 4840 cudart_stub.cc:31] ...") and absl's notice that
# it has not been initialised; everything else written while TensorFlow imports passes through.
TF_LOG_LINE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)"
                         r"|[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\])")
BAR_INTERVAL = 0.2        # seconds between redraws of the in-epoch progress bar (terminals)
COUNTER_INTERVAL = 10.0   # seconds between lines of a Counter

_console = {"quiet": False, "verbose": False, "tensorboard": True}


# --------------------------------------------------------------------------- console


def verbose() -> bool:
    return _console["verbose"] or os.environ.get("LEUKOCYTE_VERBOSE") == "1"


def quiet() -> bool:
    return _console["quiet"]


def tensorboard() -> bool:
    """Whether folds write TensorBoard logs (``fold_XX/tensorboard/``; ``--no-tensorboard``)."""
    return _console["tensorboard"]


def set_console(*, quiet: bool | None = None, verbose: bool | None = None,
                tensorboard: bool | None = None) -> None:
    """``quiet``: per-fold lines only. ``verbose``: TensorFlow's own logging too; must be set
    before TensorFlow is imported to show its C++ lines (``--verbose`` does so while parsing).
    ``tensorboard``: each fold also writes TensorBoard logs (on unless ``--no-tensorboard``)."""
    if tensorboard is not None:
        _console["tensorboard"] = bool(tensorboard)
    if quiet is not None:
        _console["quiet"] = bool(quiet)
    if verbose is not None:
        _console["verbose"] = bool(verbose)
        if verbose:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
            os.environ["LEUKOCYTE_VERBOSE"] = "1"  # child processes (run_helmholtz.py steps)
    _python_tf_logging()


def _python_tf_logging() -> None:
    """TensorFlow's Python logger and absl's: warnings and errors only with ``--verbose``."""
    import logging

    level = logging.INFO if verbose() else logging.ERROR
    logging.getLogger("tensorflow").setLevel(level)
    if "absl.logging" in sys.modules:
        sys.modules["absl.logging"].set_verbosity("info" if verbose() else "error")


class _VerboseAction(argparse.Action):
    """``--verbose``: acts while the command line is parsed, before TensorFlow is imported."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        set_console(verbose=True)


def add_console_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--quiet`` and ``--verbose``."""
    parser.add_argument("--quiet", action="store_true",
                        help="only one line per finished fold or trial (no epoch lines, "
                             "no progress bars, no counters)")
    parser.add_argument("--verbose", action=_VerboseAction,
                        help="also show TensorFlow's own log lines (C++ and absl), hidden by "
                             "default")
    return parser


@contextlib.contextmanager
def filtered_stderr(drop: re.Pattern = TF_LOG_LINE) -> Iterator[None]:
    """Route file descriptor 2 through a temporary file; afterwards pass on every line that
    ``drop`` does not match. C++ libraries write to the descriptor, not to ``sys.stderr``."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines()
                    if not drop.match(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of ``tensorflow`` inside :func:`filtered_stderr`."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self._loader
        with filtered_stderr():
            self._loader.exec_module(module)
        _python_tf_logging()

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as usual, once, and gives it the filtering loader."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        if verbose():
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow_import() -> None:
    """Hide TensorFlow's C++/absl start-up lines unless verbose (idempotent; see module doc).

    ``TF_CPP_MIN_LOG_LEVEL=3`` also hides the ``failed call to cuInit`` error that TensorFlow
    logs when it looks for GPUs on a machine without one. A value set by the user is kept.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose() else "3")
    if "tensorflow" in sys.modules or verbose():
        return
    if not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


# --------------------------------------------------------------------------- durations


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``; ``?`` for an unknown duration."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


# --------------------------------------------------------------------------- run tracking


@dataclasses.dataclass
class Tracker:
    """How far a run of ``planned`` fold trainings (folds, or settings x trials x folds) is.

    The ETA of the current fold assumes every remaining epoch of its budget runs (early
    stopping may end it sooner: an upper bound, shown with ``≤``); the rest of the run assumes
    each remaining fold runs as many epochs as the finished ones did on average (the full
    budget before any has finished).
    """

    planned: int
    done: int = 0
    label: str = ""
    epochs_of_done: list = dataclasses.field(default_factory=list)
    epoch_seconds: list = dataclasses.field(default_factory=list)   # 2nd epoch on
    first_epoch_seconds: list = dataclasses.field(default_factory=list)

    def record(self, epoch: int, seconds: float) -> None:
        """The first epoch of a fold also traces graphs and fills caches: kept apart."""
        (self.first_epoch_seconds if epoch == 1 else self.epoch_seconds).append(seconds)

    def seconds_per_epoch(self) -> float:
        recent = self.epoch_seconds[-20:] or self.first_epoch_seconds[-3:]
        return sum(recent) / len(recent) if recent else float("nan")

    def eta(self, epoch: int, epochs: int) -> tuple[float, float]:
        """(seconds left in this fold at most, seconds left in the run) after ``epoch``."""
        per_epoch = self.seconds_per_epoch()
        first = (sum(self.first_epoch_seconds) / len(self.first_epoch_seconds)
                 if self.first_epoch_seconds else per_epoch)
        fold_left = max(0, epochs - epoch) * per_epoch
        later = max(0, self.planned - self.done - 1)
        typical = (sum(self.epochs_of_done) / len(self.epochs_of_done)
                   if self.epochs_of_done else epochs)
        per_fold = first + max(0.0, typical - 1) * per_epoch
        return fold_left, fold_left + later * per_fold


_current: Tracker | None = None


@contextlib.contextmanager
def tracking(planned: int, what: str = "") -> Iterator[Tracker]:
    """Count the fold trainings of a run; nested calls (run_folds inside run_trials) join the
    outer count. ``what`` (e.g. ``"3 folds, up to 25 epochs each"``) is printed once."""
    global _current
    if _current is not None:
        yield _current
        return
    _current = Tracker(planned=planned)
    if what and not quiet():
        print(f"will train {what}", flush=True)
    try:
        yield _current
    finally:
        _current = None


@contextlib.contextmanager
def unit(label: str) -> Iterator[Tracker]:
    """One fold training of the current run (``label`` heads its epoch lines)."""
    with tracking(1) as tracker:
        outer = tracker.label
        tracker.label = f"{outer} {label}".strip()
        epochs_before = len(tracker.epoch_seconds) + len(tracker.first_epoch_seconds)
        try:
            yield tracker
        finally:
            tracker.epochs_of_done.append(len(tracker.epoch_seconds)
                                          + len(tracker.first_epoch_seconds) - epochs_before)
            tracker.done += 1
            tracker.label = outer


@contextlib.contextmanager
def outer_label(label: str) -> Iterator[None]:
    """A prefix for the unit labels inside (e.g. ``adam trial 2 (3/8)`` around its folds)."""
    with tracking(1) as tracker:
        previous = tracker.label
        tracker.label = label
        try:
            yield
        finally:
            tracker.label = previous


def current() -> Tracker | None:
    return _current


def epoch_line(label: str, epoch: int, epochs: int, logs: dict, seconds: float,
               tracker: Tracker | None) -> str:
    """``fold 0 (1/3) epoch 4/25: loss 0.512 acc 0.781 | val loss 0.498 val acc 0.794 |
    1.9 s/epoch | ETA fold ≤ 40 s, run ≤ 2 min 10 s``."""
    def number(key: str, name: str) -> str:
        value = logs.get(key)
        return f" {name} {float(value):.3f}" if value is not None else ""

    text = f"{label + ' ' if label else ''}epoch {epoch}/{epochs}:"
    text += number("loss", "loss") + number("accuracy", "acc")
    if "val_loss" in logs:
        text += " |" + number("val_loss", "val loss") + number("val_accuracy", "val acc")
    text += f" | {seconds:.1f} s/epoch"
    if tracker is not None:
        fold_left, run_left = tracker.eta(epoch, epochs)
        parts = [f"fold ≤ {format_duration(fold_left)}"] if epoch < epochs else []
        if tracker.planned - tracker.done > 1:
            parts.append(f"run {'≤' if not tracker.epochs_of_done else '~'} "
                         f"{format_duration(run_left)}")
        if parts:
            text += " | ETA " + ", ".join(parts)
    return text


def epoch_callback(epochs: int, stream=None):
    """A Keras callback printing :func:`epoch_line` after every epoch, and a progress bar
    within the epoch when ``stream`` (default ``sys.stdout``) is a terminal. Silent under
    ``--quiet``; the seconds of each epoch feed the run's ETA either way."""
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self._tracker = _current
            self._out = stream or sys.stdout
            self._bar = (not quiet()) and _isatty(self._out)

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()
            self._drawn = 0.0

        def on_train_batch_end(self, batch, logs=None):
            if not self._bar or time.perf_counter() - self._drawn < BAR_INTERVAL:
                return
            self._drawn = time.perf_counter()
            steps = self.params.get("steps") if self.params else None
            loss = (logs or {}).get("loss")
            self._out.write("\r\033[K" + progress_bar(batch + 1, steps)
                            + (f" loss {float(loss):.3f}" if loss is not None else ""))
            self._out.flush()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self._start
            tracker = self._tracker
            if tracker is not None:
                tracker.record(epoch + 1, seconds)
            if quiet():
                return
            if self._bar:
                self._out.write("\r\033[K")
            label = tracker.label if tracker is not None else ""
            print(epoch_line(label, epoch + 1, epochs, logs or {}, seconds, tracker),
                  file=self._out, flush=True)

    return EpochProgress()


def progress_bar(done: int, total: int | None, width: int = 24) -> str:
    """``  12/40 [=======>                ]`` (a count only when the total is unknown)."""
    if not total:
        return f"  batch {done}"
    filled = min(width, int(width * done / total))
    arrow = ">" if filled < width else ""
    return f"  {done}/{total} [" + "=" * filled + arrow + " " * (width - filled - len(arrow)) + "]"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --------------------------------------------------------------------------- counters


class Counter:
    """``what: 1,200/12,444 (10%), 14 s, ETA 2 min 10 s`` every ``interval`` seconds and at
    the end, for long steps that are not training. Silent under ``--quiet``, and for steps
    that finish before the first interval."""

    def __init__(self, total: int, what: str, interval: float = COUNTER_INTERVAL):
        self.total, self.what, self.interval = int(total), what, interval
        self.done = 0
        self.start = self._last = time.perf_counter()
        self.spoke = False

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.interval and self.done < self.total:
            self._last = now
            self._say(now)

    def _say(self, now: float, end: bool = False) -> None:
        if quiet():
            return
        elapsed = now - self.start
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        text = f"{self.what}: {self.done:,}/{self.total:,}{share}, {format_duration(elapsed)}"
        if not end and self.done:
            text += f", ETA {format_duration(elapsed / self.done * (self.total - self.done))}"
        print(text, flush=True)
        self.spoke = True

    def close(self) -> None:
        """The closing line, when an intermediate one was printed."""
        if self.spoke:
            self._say(time.perf_counter(), end=True)


def counted(items: Iterable, what: str, interval: float = COUNTER_INTERVAL,
            total: int | None = None) -> Iterator:
    """Iterate ``items`` (of ``total`` items, default ``len(items)``) with a :class:`Counter`."""
    counter = Counter(len(items) if total is None else total, what, interval)
    for item in items:
        yield item
        counter.step()
    counter.close()


# --------------------------------------------------------------------------- first lines


def device_line() -> str:
    """``device: CPU only (2 cores)`` or ``device: 1 GPU (NVIDIA H200)``."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"device: CPU only ({os.cpu_count()} cores)"
    names = []
    for gpu in gpus:
        with contextlib.suppress(Exception):
            names.append(tf.config.experimental.get_device_details(gpu).get("device_name", ""))
    names = sorted({n for n in names if n})
    return f"device: {len(gpus)} GPU{'s' if len(gpus) > 1 else ''}" + (
        f" ({', '.join(names)})" if names else "")


def split_in_words(settings: dict) -> str:
    """``kfold, k=3, 3 folds, by group`` (+ ``LEAKY``) from a split's settings JSON."""
    method = settings.get("method", "?")
    words = [str(method)]
    for key in ("k", "p"):
        if settings.get(key) is not None and method in ("kfold", "lpo", "group_kfold"):
            words.append(f"{key}={settings[key]}")
    if settings.get("n_folds") is not None:
        words.append(f"{settings['n_folds']} fold{'s' if settings['n_folds'] != 1 else ''}")
    if settings.get("grouped"):
        words.append("disjoint by group")
    if settings.get("leaky"):
        words.append("LEAKY: copies of one cell or patient can sit in training and test")
    return ", ".join(words)


def run_header(split, class_names: Sequence[str], *, dataset: str, data_root: str | None,
               folds: str | None) -> str:
    """The first lines of a training run: data, split (LEAKY or not), folds, device.
    ``folds`` is the ``--folds`` choice (``None``: all)."""
    settings = split.settings
    root = data_root or settings.get("data_root")
    n_images = settings.get("n_images")
    data = (f"data: {settings.get('dataset', dataset)}"
            + (f" ({n_images:,} images" if n_images else " (")
            + f"{'; ' if n_images else ''}classes {', '.join(map(str, class_names))})"
            + (f" from {root}" if root else ""))
    chosen = (f"folds: {folds} of {len(split.folds)}" if folds
              else f"folds: all {len(split.folds)}")
    return "\n".join([data, f"split: {split.csv_path} ({split_in_words(settings)})",
                      chosen + "; the time estimate follows the first epoch", device_line()])
