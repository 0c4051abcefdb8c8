"""One call that makes a run repeatable: Python, NumPy and TensorFlow seeds plus op determinism."""
from __future__ import annotations

import os
import random

import numpy as np


def set_seed(seed: int, deterministic_ops: bool = True) -> None:
    """Seed Python, NumPy, TensorFlow/Keras; optionally force deterministic TF kernels.

    Deterministic kernels make two CPU runs of the same configuration give byte-identical
    predictions. On a GPU they cost some speed; pass ``deterministic_ops=False`` to trade
    repeatability for speed there, and report that in the run's settings.
    """
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # seeds python, numpy and the TF global generator
    if deterministic_ops:
        try:
            tf.config.experimental.enable_op_determinism()
        except Exception:  # pragma: no cover - very old TF
            pass
