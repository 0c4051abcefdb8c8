"""ResNeXt network (Xie et al., "Aggregated Residual Transformations for Deep Neural Networks",
CVPR 2017), the network of the Helmholtz thesis' ResNeXt scripts.

``build_resnext`` and the named variants ``resnext50_32x4d``, ``resnext29`` and ``resnext14``
(``build_variant`` picks one by name); ``set_retrain`` (the thesis' ``retrainBlock``) freezes
all but the chosen part for transfer learning; ``replace_head`` puts a new classifier on a
trained network. ``resnext_network.py`` prints the summary of a variant.

Every block is a bottleneck: 1x1 conv reduces to ``width`` channels, a 3x3 convolution with
``groups=cardinality`` does the aggregated transformation (real grouped convolution, not
``cardinality`` separate branches), a 1x1 conv expands to the stage's output channels; each
conv is followed by BatchNorm and ReLU (the last ReLU after the residual addition). The
shortcut is a 1x1 conv + BatchNorm where the shape changes. Convolutions have no bias because
BatchNorm adds one, which is why ResNeXt-50 32x4d has exactly 25,028,904 trainable parameters
with a 1000-class head, the count of the reference implementation.

Layer names: ``stem_*``, ``stageK_blockJ_*`` (K, J from 1) and ``head_pool``, ``head_dense``,
so transfer-learning code can find the parts by name.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import keras
from keras import layers

from leukocyte_cnn.models.parts import (
    DEFAULT_INPUT_SCALING,
    classifier_head,
    model_input,
    trainable_param_count,
)

RETRAIN_CHOICES = ("head", "last_stage", "last_two_stages", "all")

_STAGE_LAYER = re.compile(r"^stage(\d+)_")


# --------------------------------------------------------------------------- building blocks


def _conv_bn(
    x: keras.KerasTensor,
    filters: int,
    kernel: int,
    *,
    name: str,
    bn_momentum: float,
    strides: int = 1,
    groups: int = 1,
    relu: bool = True,
) -> keras.KerasTensor:
    """Conv (no bias) -> BatchNorm -> optional ReLU, with names ``name_conv/_bn/_relu``."""
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", groups=groups,
                      use_bias=False, kernel_initializer="he_normal", name=f"{name}_conv")(x)
    # epsilon 1e-5 as in the reference implementation; momentum 0.9 for small data (NOTES.md)
    x = layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_bn")(x)
    if relu:
        x = layers.Activation("relu", name=f"{name}_relu")(x)
    return x


def bottleneck_block(
    x: keras.KerasTensor,
    *,
    width: int,
    out_channels: int,
    cardinality: int,
    strides: int,
    bn_momentum: float,
    name: str,
) -> keras.KerasTensor:
    """One ResNeXt bottleneck: 1x1 reduce -> 3x3 grouped (stride here) -> 1x1 expand, + shortcut.

    ``width`` = cardinality x bottleneck width of this stage (128 for 32x4d in the first
    stage). The stride sits in the grouped 3x3 conv, as in the reference implementation.
    """
    shortcut = x
    if strides != 1 or x.shape[-1] != out_channels:
        shortcut = _conv_bn(x, out_channels, 1, strides=strides, relu=False,
                            bn_momentum=bn_momentum, name=f"{name}_shortcut")
    x = _conv_bn(x, width, 1, bn_momentum=bn_momentum, name=f"{name}_reduce")
    x = _conv_bn(x, width, 3, strides=strides, groups=cardinality, bn_momentum=bn_momentum,
                 name=f"{name}_group")
    x = _conv_bn(x, out_channels, 1, relu=False, bn_momentum=bn_momentum, name=f"{name}_expand")
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _stem(
    x: keras.KerasTensor, filters: int, small_input_stem: bool, bn_momentum: float
) -> keras.KerasTensor:
    """ImageNet stem (7x7/2 conv + 3x3/2 max-pool) or small-image stem (3x3/1 conv, no pool)."""
    if small_input_stem:
        return _conv_bn(x, filters, 3, bn_momentum=bn_momentum, name="stem")
    x = _conv_bn(x, filters, 7, strides=2, bn_momentum=bn_momentum, name="stem")
    return layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)


# --------------------------------------------------------------------------- the network


def build_resnext(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    stage_depths: Sequence[int],
    cardinality: int,
    bottleneck_width: int,
    first_stage_channels: int,
    stem_filters: int,
    small_input_stem: bool,
    bn_momentum: float,
    include_top: bool = True,
    binary_sigmoid: bool = False,
    input_scaling: float | None = DEFAULT_INPUT_SCALING,
    name: str | None = None,
) -> keras.Model:
    """A ResNeXt with ``len(stage_depths)`` stages of ``stage_depths[k]`` bottleneck blocks.

    Stage k (from 0) has grouped width ``cardinality * bottleneck_width * 2**k`` and
    ``first_stage_channels * 2**k`` output channels; every stage after the first halves the
    resolution in its first block. ``small_input_stem`` replaces the ImageNet stem (which
    divides the image by 4 before the first block) with one 3x3 conv at stride 1, as in the
    CIFAR ResNeXt-29, for 32-128 px cell crops. With ``include_top=False`` the output is the
    pooled feature vector (``head_pool``). The input is [0, 255] pixels, scaled by the first
    layer (``input_scaling``; ``None`` to leave it out).
    """
    if not stage_depths or any(depth < 1 for depth in stage_depths):
        raise ValueError(f"stage_depths must be positive block counts, got {stage_depths}")
    if cardinality < 1 or bottleneck_width < 1:
        raise ValueError(f"cardinality and bottleneck_width must be positive, got "
                         f"{cardinality} and {bottleneck_width}")
    inputs, x = model_input(input_shape, input_scaling)
    name = name or depth_name(stage_depths)
    x = _stem(x, stem_filters, small_input_stem, bn_momentum)
    for stage, depth in enumerate(stage_depths):
        for block in range(depth):
            x = bottleneck_block(
                x,
                width=cardinality * bottleneck_width * 2 ** stage,
                out_channels=first_stage_channels * 2 ** stage,
                cardinality=cardinality,
                strides=2 if stage > 0 and block == 0 else 1,
                bn_momentum=bn_momentum,
                name=f"stage{stage + 1}_block{block + 1}",
            )
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    if include_top:
        x = classifier_head(x, num_classes, binary_sigmoid=binary_sigmoid)
    return keras.Model(inputs, x, name=name)


# Named architectures, as published or scaled down for a CPU: what ``--variant`` selects and
# ``resnext_network.py`` summarises. A script's own block spells the numbers out as knobs.
VARIANT_ARCHITECTURES = {
    # ResNeXt-50 (32x4d) of the paper: ImageNet stem, 224 px, 25.0 M parameters with a
    # 1000-class head (a GPU network).
    "resnext50_32x4d": dict(stage_depths=(3, 4, 6, 3), cardinality=32, bottleneck_width=4,
                            first_stage_channels=256, stem_filters=64, small_input_stem=False),
    # The CIFAR ResNeXt-29's shape (stages 3, 3, 3, small-image stem) at cardinality 8 and
    # bottleneck width 4 (grouped widths 32/64/128), outputs 64/128/256 and a 32-filter stem:
    # 0.36 M parameters, so it trains on 64 px cells on two CPU cores. (The paper's 8x64d:
    # bottleneck_width=64, first_stage_channels=256, stem_filters=64, 34 M parameters.)
    "resnext29": dict(stage_depths=(3, 3, 3), cardinality=8, bottleneck_width=4,
                      first_stage_channels=64, stem_filters=32, small_input_stem=True),
    # 3 convs x 4 blocks + stem + head = 14 weight layers, for tests and quick runs; the extra
    # block sits in the last stage, where the map is smallest and a block is cheapest.
    "resnext14": dict(stage_depths=(1, 1, 2), cardinality=8, bottleneck_width=4,
                      first_stage_channels=64, stem_filters=32, small_input_stem=True),
}


def depth_name(stage_depths: Sequence[int]) -> str:
    """``resnext29`` for stages (3, 3, 3): three weight layers per block, plus stem and head."""
    return f"resnext{3 * sum(stage_depths) + 2}"


def build_variant(variant: str, image_size: int, num_classes: int,
                  bn_momentum: float) -> keras.Model:
    """One of :data:`VARIANT_ARCHITECTURES` at a square image size."""
    return build_resnext(input_shape=(image_size, image_size, 3), num_classes=num_classes,
                         bn_momentum=bn_momentum, name=variant, **VARIANT_ARCHITECTURES[variant])


# --------------------------------------------------------------------------- transfer learning


def stage_of_layer(layer_name: str) -> int | None:
    """Stage number of a ``stageK_...`` layer, ``None`` for stem, head and input layers."""
    match = _STAGE_LAYER.match(layer_name)
    return int(match.group(1)) if match else None


def _retrained_stages(model: keras.Model, retrain: str) -> set[int]:
    """The stage numbers that ``retrain`` unfreezes."""
    stages = {stage_of_layer(layer.name) for layer in model.layers} - {None}
    if not stages:
        raise ValueError(f"{model.name} has no stageK_* layers; not a ResNeXt of this module")
    last = max(stages)
    keep = {"head": 0, "last_stage": 1, "last_two_stages": 2, "all": len(stages)}[retrain]
    return {stage for stage in stages if stage > last - keep}


def set_retrain(model: keras.Model, retrain: str) -> int:
    """Freeze everything except the part named by ``retrain``; return the trainable parameter count.

    ``retrain`` is one of ``RETRAIN_CHOICES``: ``"head"`` (only ``head_*`` layers),
    ``"last_stage"`` / ``"last_two_stages"`` (those stages and the head) or ``"all"``. Frozen
    BatchNorm layers run in inference mode (Keras 3 does that for ``trainable=False``), so
    their statistics from the first training are kept. Compile (again) after calling this.
    Returns the number of trainable scalars, so the caller can log how much is retrained.
    """
    if retrain not in RETRAIN_CHOICES:
        raise ValueError(f"retrain must be one of {RETRAIN_CHOICES}, got {retrain!r}")
    stages = _retrained_stages(model, retrain)
    model.trainable = True  # the model's flag gates all layers; the per-layer flags decide
    for layer in model.layers:
        # every layer is set explicitly: an earlier call may have frozen it
        layer.trainable = (retrain == "all" or layer.name.startswith("head_")
                           or stage_of_layer(layer.name) in stages)
    return trainable_param_count(model)


def replace_head(
    model: keras.Model, num_classes: int, *, binary_sigmoid: bool = False
) -> keras.Model:
    """A new model sharing every backbone layer of ``model`` (same weight objects), with a new
    ``head_dense`` for ``num_classes`` classes.

    The features are the input of the old ``head_dense`` (or the output of an
    ``include_top=False`` model). Trainability flags of the shared layers are kept.
    """
    has_head = any(layer.name == "head_dense" for layer in model.layers)
    features = model.get_layer("head_dense").input if has_head else model.output
    outputs = classifier_head(features, num_classes, binary_sigmoid=binary_sigmoid)
    return keras.Model(model.input, outputs, name=model.name)
