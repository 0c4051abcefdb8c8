"""Pieces every network of the repository is built from: the input, its scaling, the head.

Each builder returns an uncompiled ``keras.Model`` that takes float32 pixels in [0, 255] and
carries its own preprocessing as its first layer(s) (:func:`model_input`), so a saved
``.keras`` checkpoint needs no guesswork to be served. The classification layer is always
named ``head_dense`` (:func:`classifier_head`) and built with ``dtype="float32"``: under a
``mixed_float16`` policy, set by the caller, the softmax or sigmoid is then computed in
float32 and the loss stays stable.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

DEFAULT_INPUT_SCALING = 1.0 / 255.0

Shape = tuple[int, int, int]


def trainable_param_count(model: keras.Model) -> int:
    """Number of trainable scalars (what papers call "trainable parameters")."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def model_input(
    input_shape: Sequence[int], input_scaling: float | None, name: str = "pixels"
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """``keras.Input`` plus the scaling layer; returns ``(input, scaled tensor)``.

    The ``Rescaling`` layer has no parameters, so it does not change any pinned count.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}")
    inputs = keras.Input(shape=tuple(input_shape), name=name)
    if input_scaling is None:
        return inputs, inputs
    return inputs, layers.Rescaling(scale=input_scaling, name="input_scaling")(inputs)


def classifier_head(
    x: keras.KerasTensor, num_classes: int, *, binary_sigmoid: bool, name: str = "head_dense"
) -> keras.KerasTensor:
    """The output layer: Dense(1, sigmoid) for two classes when asked, else Dense(n, softmax).

    ``dtype="float32"`` keeps the output (and the loss computed from it) in float32 under a
    mixed-precision policy.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if binary_sigmoid and num_classes == 2:
        return layers.Dense(1, activation="sigmoid", dtype="float32", name=name)(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name=name)(x)


def check_min_size(input_shape: Sequence[int], min_size: int, network: str) -> None:
    """Refuse an input that the network's poolings would shrink to nothing."""
    if min(input_shape[:2]) < min_size:
        raise ValueError(
            f"{network} needs images of at least {min_size}x{min_size} px, got "
            f"{input_shape[0]}x{input_shape[1]}")


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """A ``UserWarning`` once per process: a script builds the same network for every fold,
    and Keras/TensorFlow reset Python's own once-per-location registry between folds."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)
