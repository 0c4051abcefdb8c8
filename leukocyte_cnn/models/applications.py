"""Pretrained ``keras.applications`` backbones under new heads: ResNet50 at three training
depths (the 4-class study's models 5-7) and the C-NMC report's EfficientNetB3 /
InceptionResNetV2 with its regularised dense head.

The model takes [0, 255] pixels: the application's own ``preprocess_input`` is applied to
the symbolic input, so checkpoints load in safe mode and are served without guesswork.
"""
from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, regularizers

from leukocyte_cnn.models.parts import Shape, classifier_head

RESNET50_TRAINABLE_CHOICES = ("frozen", "partial", "full")
CNMC_BACKBONES = ("EfficientNetB3", "InceptionResNetV2")


def _application(backbone_name: str):
    """(constructor, preprocess_input) of a ``keras.applications`` model."""
    apps = keras.applications
    table = {
        "EfficientNetB3": (apps.EfficientNetB3, apps.efficientnet.preprocess_input),
        "InceptionResNetV2": (apps.InceptionResNetV2,
                              apps.inception_resnet_v2.preprocess_input),
        "ResNet50": (apps.ResNet50, apps.resnet50.preprocess_input),
    }
    if backbone_name not in table:
        raise ValueError(f"unknown backbone {backbone_name!r}; choose from {sorted(table)}")
    return table[backbone_name]


def _set_bn_momentum(model: keras.Model, momentum: float) -> None:
    """Give every BatchNormalization of a backbone the same momentum (saved in its config)."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum


def backbone_features(
    backbone_name: str,
    input_shape: Shape,
    weights: str | None,
    pooling: str,
    bn_momentum: float,
) -> tuple[keras.KerasTensor, keras.Model, keras.KerasTensor]:
    """Input -> the application's own preprocessing -> backbone named ``backbone``.

    Returns ``(input, backbone, pooled features)``. The preprocessing is the application's
    ``preprocess_input`` applied to the symbolic input, so the model takes [0, 255] pixels:
    ResNet50 flips RGB to BGR and subtracts the ImageNet mean, InceptionResNetV2 maps to
    [-1, 1], and EfficientNet's is a pass-through because the network rescales internally.
    These ops are stored in the ``.keras`` file as built-in operations and load in safe mode.
    ``weights=None`` builds random weights and downloads nothing; a path loads a weights file.
    """
    constructor, preprocess_input = _application(backbone_name)
    inputs = keras.Input(shape=tuple(input_shape), name="pixels")
    x = preprocess_input(inputs)
    backbone = constructor(include_top=False, weights=weights, input_shape=tuple(input_shape),
                           pooling=pooling, name="backbone")
    _set_bn_momentum(backbone, bn_momentum)
    return inputs, backbone, backbone(x)


def transfer_head(
    features: keras.KerasTensor,
    num_classes: int,
    *,
    dense_units: Sequence[int],
    dropouts: Sequence[float],
    l2: float,
    l1: float,
    bn_momentum: float,
    binary_sigmoid: bool = False,
) -> keras.KerasTensor:
    """The C-NMC report's classification head on pooled backbone features.

    BatchNorm -> Dense(dense_units[0], ReLU, regularised) -> Dropout -> further Dense ReLU +
    Dropout pairs with decreasing rates -> softmax.

    Regularisation follows the Kaggle template the report builds on: the first dense layer has
    separate ``kernel_regularizer=L2(l2)``, ``activity_regularizer=L1(l1)`` and
    ``bias_regularizer=L1(l1)``. ``regularizers.L1L2(l1, l2)`` would be different: it puts both
    penalties on the same tensor (the kernel) and none on the layer's output.

    The report mentions "five dropout layers and four more dense layers" without code; here
    every hidden dense layer is followed by one dropout, so ``dropouts`` must be as long as
    ``dense_units``.
    """
    if len(dropouts) != len(dense_units):
        raise ValueError(f"need one dropout rate per dense layer, got {len(dropouts)} rates for "
                         f"{len(dense_units)} layers")
    x = layers.BatchNormalization(momentum=bn_momentum, name="head_bn")(features)
    for index, (units, rate) in enumerate(zip(dense_units, dropouts, strict=True), start=1):
        regularised = index == 1
        x = layers.Dense(
            units, activation="relu", name=f"head_hidden{index}",
            kernel_regularizer=regularizers.L2(l2) if regularised else None,
            activity_regularizer=regularizers.L1(l1) if regularised else None,
            bias_regularizer=regularizers.L1(l1) if regularised else None,
            # float32 under mixed precision: its activity penalty joins the float32 loss
            # (a float16 penalty stopped the first training step with a dtype error)
            dtype="float32" if regularised else None,
        )(x)
        x = layers.Dropout(rate, name=f"head_dropout{index}")(x)
    return classifier_head(x, num_classes, binary_sigmoid=binary_sigmoid)


def cnmc_model(
    *,
    backbone_name: str,
    input_shape: Shape,
    num_classes: int,
    weights: str | None,
    backbone_trainable: bool,
    pooling: str,
    dense_units: Sequence[int],
    dropouts: Sequence[float],
    l2: float,
    l1: float,
    bn_momentum: float,
    binary_sigmoid: bool = False,
    name: str | None = None,
) -> keras.Model:
    """The C-NMC 2019 transfer-learning model: pretrained backbone + regularised dense head.

    ``backbone_name`` is ``"EfficientNetB3"`` (the report's better model) or
    ``"InceptionResNetV2"`` (its first attempt); the backbone comes from ``keras.applications``
    with ``include_top=False`` and ``pooling`` (report: ``"max"``), is trainable as in the
    report (pass ``backbone_trainable=False`` to freeze it) and sits in the model as one layer
    named ``backbone``. ``weights="imagenet"`` downloads on first use; ``None`` never does.
    InceptionResNetV2 needs at least 75x75 px, EfficientNetB3 at least 32x32.
    """
    if backbone_name not in CNMC_BACKBONES:
        raise ValueError(f"backbone_name must be one of {CNMC_BACKBONES}, got {backbone_name!r}")
    inputs, backbone, features = backbone_features(
        backbone_name, input_shape, weights, pooling=pooling, bn_momentum=bn_momentum)
    backbone.trainable = backbone_trainable
    outputs = transfer_head(features, num_classes, dense_units=dense_units, dropouts=dropouts,
                            l2=l2, l1=l1, bn_momentum=bn_momentum,
                            binary_sigmoid=binary_sigmoid)
    return keras.Model(inputs, outputs, name=name or f"cnmc_{backbone_name.lower()}")


def set_resnet50_trainable(backbone: keras.Model, mode: str, unfreeze_from: str) -> None:
    """Freeze a ResNet50 backbone fully, from ``unfreeze_from`` on, or not at all.

    In ``"partial"`` mode the BatchNorm layers of the unfrozen part stay frozen, i.e. in
    inference mode with their pretrained statistics, as recommended for fine-tuning: a few
    small batches would otherwise overwrite the ImageNet statistics the kept weights rely on.
    """
    if mode not in RESNET50_TRAINABLE_CHOICES:
        raise ValueError(f"trainable must be one of {RESNET50_TRAINABLE_CHOICES}, got {mode!r}")
    names = [layer.name for layer in backbone.layers]
    if mode == "partial" and unfreeze_from not in names:
        raise ValueError(f"no layer {unfreeze_from!r} in {backbone.name}")
    start = names.index(unfreeze_from) if mode == "partial" else 0
    backbone.trainable = mode != "frozen"
    # Every layer is set explicitly: Keras does not re-propagate ``trainable = True`` to
    # sublayers that an earlier call froze while the model's own flag was already True.
    for index, layer in enumerate(backbone.layers):
        if mode == "partial":
            layer.trainable = index >= start and not isinstance(layer, layers.BatchNormalization)
        else:
            layer.trainable = mode == "full"


def resnet50_model(
    *,
    input_shape: Shape,
    num_classes: int,
    weights: str | None,
    trainable: str,
    unfreeze_from: str,
    pooling: str,
    dropout: float,
    bn_momentum: float,
    binary_sigmoid: bool = False,
    name: str = "resnet50_classifier",
) -> keras.Model:
    """ResNet50 with a new softmax head, trained at one of three depths (the ELU study's
    models 5-7: "no training", "partial training", "full training").

    ``trainable``: ``"frozen"`` trains only the head; ``"partial"`` also trains the backbone
    from the layer ``unfreeze_from`` on (default: the whole last stage, ``conv5_*``), keeping
    BatchNorm frozen; ``"full"`` trains everything. The model takes [0, 255] pixels and applies
    ResNet50's own ``preprocess_input`` (RGB->BGR, minus the ImageNet mean) inside, and pools
    the backbone's map with ``pooling`` (study: ``"avg"``). The backbone's BatchNorm momentum
    is set to ``bn_momentum`` (the study script: 0.9, for training on small data).
    Needs at least 32x32 px. Recompile after changing trainability.
    """
    inputs, backbone, features = backbone_features(
        "ResNet50", input_shape, weights, pooling=pooling, bn_momentum=bn_momentum)
    set_resnet50_trainable(backbone, trainable, unfreeze_from)
    x = features
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = classifier_head(x, num_classes, binary_sigmoid=binary_sigmoid)
    return keras.Model(inputs, outputs, name=name)
