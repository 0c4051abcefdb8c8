"""One call that makes a run repeatable: Python, NumPy and TensorFlow seeds plus op determinism."""
from __future__ import annotations

import os
import random

import numpy as np


def set_seed(seed: int, deterministic_ops: bool | None = None) -> None:
    """Seed Python, NumPy, TensorFlow/Keras; switch TensorFlow's op determinism on or off.

    ``deterministic_ops=None`` (what the training loop passes) follows the script's
    ``--deterministic/--no-deterministic``/``--xla`` choice made by
    :func:`leukocyte_cnn.base.devices.configure_devices` (on when nothing was configured). On, it
    makes two CPU runs of the same configuration give byte-identical predictions; it is off
    under ``--xla``, because Keras does not compile with XLA while op determinism is on.
    """
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    import keras
    from tensorflow.python.framework import config as tf_config

    from leukocyte_cnn.base.devices import deterministic_ops as configured

    keras.utils.set_random_seed(seed)  # seeds python, numpy and the TF global generator
    on = configured() if deterministic_ops is None else bool(deterministic_ops)
    if on:
        tf_config.enable_op_determinism()
    elif tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()  # turned on by an earlier run in this process
