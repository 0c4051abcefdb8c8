"""Loading a saved model: one place that checks a checkpoint before anyone predicts with it.

Every script that reads a ``.keras`` file (transfer learning, serving, evaluation) calls
:func:`load_checkpoint`. It loads in Keras' safe mode (no Python code, such as ``Lambda``
layers, is ever deserialised: a checkpoint is data, not a program) and checks that the model
predicts the number of classes and takes the image shape the caller is about to give it, so a
4-class checkpoint is never silently used on a 2-class split. Problems raise a one-line
``InputError("<path>: <problem>")``.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

from leukocyte_cnn.base.errors import InputError


def load_checkpoint(path: str | os.PathLike, num_classes: int | None = None,
                    input_shape: Sequence[int | None] | None = None, *, compile: bool = False):
    """Load a ``.keras`` checkpoint in safe mode and check its classes and input shape.

    ``num_classes``: the classes the caller expects (a binary model with one sigmoid unit
    counts as 2). ``input_shape``: ``(height, width)`` or ``(height, width, channels)``; a
    ``None`` on either side matches any size. ``compile=False`` (the default) skips the
    optimizer state, which prediction does not need.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a .keras checkpoint file")
    if path.suffix != ".keras":
        raise InputError(f"{path}: not a Keras checkpoint (expected a .keras file, got "
                         f"{path.suffix or 'no suffix'})")
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a Keras checkpoint (not a .keras zip archive: empty, "
                         "truncated or another format)")
    import keras

    try:
        model = keras.models.load_model(path, compile=compile, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError/TypeError/KeyError/OSError by case
        text = " ".join(str(exc).split())
        if "safe_mode" in text or "safe mode" in text:
            raise InputError(f"{path}: checkpoint contains Python code (e.g. a Lambda layer); "
                             "refused in safe mode") from None
        raise InputError(f"{path}: cannot load Keras checkpoint ({type(exc).__name__}: "
                         f"{text[:200]})") from None
    found = checkpoint_class_count(model)
    if num_classes is not None and found != int(num_classes):
        raise InputError(f"{path}: checkpoint predicts {found} classes, expected {num_classes}")
    if input_shape is not None:
        _check_input_shape(path, model, input_shape)
    return model


def checkpoint_class_count(model) -> int:
    """Classes a classifier predicts: its output width, 2 for a single sigmoid unit."""
    shape = model.outputs[0].shape if getattr(model, "outputs", None) else model.output_shape
    width = int(shape[-1])
    return 2 if width == 1 else width


def _check_input_shape(path: Path, model, expected: Sequence[int | None]) -> None:
    have = tuple(model.inputs[0].shape[1:])
    want = tuple(expected)
    if len(want) == 2:
        want = (*want, have[-1] if len(have) == 3 else 3)
    mismatch = len(have) != len(want) or any(
        h is not None and w is not None and int(h) != int(w)
        for h, w in zip(have, want, strict=True))
    if mismatch:
        show = lambda s: "×".join("any" if v is None else str(int(v)) for v in s)  # noqa: E731
        raise InputError(f"{path}: checkpoint takes {show(have)} inputs, expected {show(want)}")
