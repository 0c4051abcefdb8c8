"""Positive-class Keras metrics for softmax classifiers (their per-epoch figure: reporting.summary).

Keras' ``AUC``, ``Precision`` and ``Recall`` expect one probability per sample and 0/1 labels.
Fed a 2-way softmax output with one-hot labels they treat every (sample, class) cell as a
sample; both columns of a two-class softmax then count, and precision equals recall equals
accuracy (the mistake behind the identical columns of the ALL-IDB1 detector's published
table). Fed integer labels they fail or compare the wrong shapes. The metrics here take
integer labels ``(B,)``/``(B, 1)`` or one-hot labels ``(B, C)``, pick the positive-class
column of the prediction, and hand ``(label == positive, p_positive)`` to the Keras metric,
so the per-epoch curves measure the same thing as ``leukocyte_cnn.reporting.metrics`` does at
the end. A one-unit sigmoid output ``(B, 1)`` is read as the positive-class probability.

They are registered as Keras serializables (package ``leukocyte_cnn``), so a checkpoint
compiled with them reloads with its compile state once this module is imported; a server
that only predicts loads with ``compile=False`` and never needs them.
"""
from __future__ import annotations

import keras
from keras import ops


def positive_class_view(y_true, y_pred, positive_class: int = 1):
    """``(is_positive float32 (B,), p_positive (B,))`` from integer or one-hot labels."""
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    if y_pred.shape[-1] == 1:  # sigmoid unit: already the positive-class probability
        prob = ops.reshape(y_pred, (-1,))
    else:
        prob = y_pred[:, positive_class]
    if len(y_true.shape) == 2 and y_true.shape[-1] not in (None, 1):  # one-hot rows
        is_pos = y_true[:, positive_class]
    else:
        labels = ops.cast(ops.round(ops.cast(ops.reshape(y_true, (-1,)), "float32")), "int32")
        is_pos = ops.equal(labels, positive_class)
    return ops.cast(is_pos, "float32"), ops.cast(prob, "float32")


def _positive_class_metric(base: type, doc: str) -> type:
    """A subclass of ``base`` whose ``update_state`` first takes the positive-class view."""

    class Metric(base):
        def __init__(self, positive_class: int = 1, **kwargs):
            super().__init__(**kwargs)
            self.positive_class = int(positive_class)

        def update_state(self, y_true, y_pred, sample_weight=None):
            is_pos, prob = positive_class_view(y_true, y_pred, self.positive_class)
            if sample_weight is not None:
                sample_weight = ops.reshape(sample_weight, (-1,))
            return super().update_state(is_pos, prob, sample_weight=sample_weight)

        def get_config(self):
            return {**super().get_config(), "positive_class": self.positive_class}

    Metric.__name__ = Metric.__qualname__ = f"PositiveClass{base.__name__}"
    Metric.__doc__ = doc
    return keras.saving.register_keras_serializable(package="leukocyte_cnn")(Metric)


PositiveClassAUC = _positive_class_metric(
    keras.metrics.AUC, "ROC-AUC of the positive-class probability (trapezoids over "
                       "``num_thresholds`` thresholds; the final number comes from scikit-learn).")
PositiveClassPrecision = _positive_class_metric(
    keras.metrics.Precision, "Precision of the positive class at probability > 0.5 "
                             "(the arg-max of a 2-way softmax).")
PositiveClassRecall = _positive_class_metric(
    keras.metrics.Recall, "Recall (sensitivity) of the positive class at probability > 0.5.")


def positive_class_metrics(positive_class: int = 1) -> list:
    """``[AUC, Precision, Recall]`` of the positive class, named ``auc``, ``precision``,
    ``recall`` (so ``epochs.csv`` gets ``auc``/``val_auc`` … columns)."""
    return [PositiveClassAUC(positive_class, name="auc"),
            PositiveClassPrecision(positive_class, name="precision"),
            PositiveClassRecall(positive_class, name="recall")]


