"""TensorBoard logs of a fold: the scalars of every epoch and the learning rate.

Keras' own ``keras.callbacks.TensorBoard`` writes through ``tf.summary.scalar``, which since
TensorFlow 2.21 lives in the separate ``tensorboard`` package (without it the callback fails
with ``TBNotInstalledError``). :class:`EpochScalars` writes the same event files with
TensorFlow's core summary op (``tf.summary.write`` with the scalars plugin's metadata), so the
logs need TensorFlow alone and only *viewing* them needs ``pip install tensorboard``
(``tensorboard --logdir results/<run>``). The layout is Keras': ``<log_dir>/train`` and
``<log_dir>/validation``, tags ``epoch_loss``, ``epoch_accuracy``, ... and
``epoch_learning_rate`` (train), one step per epoch.
"""
from __future__ import annotations

from pathlib import Path

import keras


class EpochScalars(keras.callbacks.Callback):
    """Write each epoch's logs (``val_*`` to ``validation/``, the rest and the optimizer's
    learning rate to ``train/``) as TensorBoard scalars under ``log_dir``."""

    def __init__(self, log_dir: str | Path):
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict = {}

    def _write(self, part: str, tag: str, value: float, step: int) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        if part not in self._writers:
            self._writers[part] = tf.summary.create_file_writer(str(self.log_dir / part))
        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        with self._writers[part].as_default():
            tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=metadata)

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            if name == "learning_rate":
                continue  # written below, from the optimizer
            part, key = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
            self._write(part, f"epoch_{key}", float(value), epoch)
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            rate = keras.ops.convert_to_numpy(optimizer.learning_rate)
            self._write("train", "epoch_learning_rate", float(rate), epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
