"""Every network of the repository, built in one place.

Each builder returns an uncompiled ``keras.Model`` that takes float32 pixels in [0, 255] and
carries its own preprocessing as its first layer(s) (``Rescaling`` for the networks written
here, the application's own ``preprocess_input`` for ``keras.applications`` backbones), so a
saved ``.keras`` checkpoint needs no guesswork to be served. Pass ``input_scaling=None`` to
leave the ``Rescaling`` out when the caller standardises the pixels itself (the Copenhagen
study does).

The classification layer is always named ``head_dense`` (``head_conv`` for the FCN) and built
with ``dtype="float32"``: under a ``mixed_float16`` policy, set by the caller, the softmax or
sigmoid is then computed in float32 and the loss stays stable.

Sources (``/work/shared/seeds``): the Helmholtz thesis (linear CNN), the ELU CNN study after
Kandel et al. 2020, the Copenhagen CNN/FCN/U-Net slide deck, the ALL-IDB1 paper CNN and the
C-NMC transfer-learning report. Where a source is silent or inconsistent, the docstring of the
builder says what was chosen and why.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import keras
import numpy as np
from keras import layers, regularizers

DEFAULT_INPUT_SCALING = 1.0 / 255.0
RESNET50_TRAINABLE_CHOICES = ("frozen", "partial", "full")
CNMC_BACKBONES = ("EfficientNetB3", "InceptionResNetV2")

Shape = tuple[int, int, int]


# --------------------------------------------------------------------------- shared pieces


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


def _check_min_size(input_shape: Sequence[int], min_size: int, network: str) -> None:
    """Refuse an input that the network's poolings would shrink to nothing."""
    if min(input_shape[:2]) < min_size:
        raise ValueError(
            f"{network} needs images of at least {min_size}x{min_size} px, got "
            f"{input_shape[0]}x{input_shape[1]}")


# --------------------------------------------------------------------------- linear CNN


def _valid_conv_pool_size(size: int) -> int:
    """Side length after Conv2D 3x3 'valid' and MaxPool 2x2."""
    return (size - 2) // 2


def fitting_block_count(input_shape: Sequence[int], n_blocks: int) -> int:
    """How many conv(3x3 valid)+pool(2x2) blocks fit before the map would drop below 1x1."""
    height, width = input_shape[:2]
    fitted = 0
    while fitted < n_blocks and min(_valid_conv_pool_size(height),
                                    _valid_conv_pool_size(width)) >= 1:
        height, width = _valid_conv_pool_size(height), _valid_conv_pool_size(width)
        fitted += 1
    return fitted


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A ``UserWarning`` once per process: a script builds the same network for every fold,
    and Keras/TensorFlow reset Python's own once-per-location registry between folds."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def linear_cnn(
    *,
    input_shape: Shape = (257, 257, 3),
    num_classes: int = 2,
    filters: Sequence[int] = (4, 8, 8, 8, 16, 16),
    dense_units: int = 32,
    binary_sigmoid: bool = True,
    input_scaling: float | None = DEFAULT_INPUT_SCALING,
    name: str = "linear_cnn",
) -> keras.Model:
    """The Helmholtz thesis' "linear" CNN: a plain stack of small conv blocks.

    Each block is Conv2D 3x3 'valid' + ReLU + MaxPool 2x2; then Flatten, Dense(dense_units,
    ReLU) and the output layer (Dense(1, sigmoid) for the binary blast-vs-other task, as in the
    thesis, or Dense(n, softmax)). At 257 px the six blocks leave a 2x2x16 map, 64 features,
    and the binary model has 7,177 parameters.

    Smaller images: six valid blocks need at least ~190 px. Trailing blocks that would shrink
    the map below 1x1 are dropped with a ``UserWarning`` (at 64 px four blocks fit, leaving
    2x2x8 = 32 features). Dropping keeps the early filters, which see the image, unchanged, so a
    quick run at 64 px is the same network with a shorter tail rather than a different one.
    """
    n_blocks = fitting_block_count(input_shape, len(filters))
    if n_blocks == 0:
        raise ValueError(f"linear_cnn: {input_shape[:2]} px is too small for one 3x3+pool block")
    if n_blocks < len(filters):
        _warn_once(
            f"linear_cnn: only {n_blocks} of {len(filters)} conv blocks fit a "
            f"{input_shape[0]}x{input_shape[1]} image; dropping the last "
            f"{len(filters) - n_blocks}")
    inputs, x = model_input(input_shape, input_scaling)
    for index, n_filters in enumerate(filters[:n_blocks], start=1):
        x = layers.Conv2D(n_filters, 3, padding="valid", activation="relu",
                          name=f"block{index}_conv")(x)
        x = layers.MaxPooling2D(2, name=f"block{index}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    outputs = classifier_head(x, num_classes, binary_sigmoid=binary_sigmoid)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- ELU CNN


def elu_cnn(
    *,
    input_shape: Shape = (120, 160, 3),
    num_classes: int = 4,
    filters: Sequence[int] = (32, 64, 128, 256, 512),
    convs_per_block: int = 3,
    dense_units: int = 512,
    dense_layers: int = 2,
    dropout: float = 0.0,
    bn_momentum: float = 0.9,
    head_pooling: str = "global_average",
    binary_sigmoid: bool = False,
    input_scaling: float | None = DEFAULT_INPUT_SCALING,
    name: str = "elu_cnn",
) -> keras.Model:
    """The ELU CNN of the 4-class blood-cell study (after Kandel et al., Appl. Sci. 2020).

    Blocks of ``convs_per_block`` x (Conv2D 3x3 'same' -> BatchNorm -> ELU), then MaxPool 2x2;
    a pooled or flattened feature vector; ``dense_layers`` x Dense(dense_units, ELU), each
    followed by Dropout when ``dropout > 0`` (the study's model 4 added exactly these two
    dropout layers); softmax output.

    Choices: convolutions have no bias because the BatchNorm right after adds its own offset.
    ``bn_momentum`` defaults to 0.9, not Keras' 0.99, because with few updates (small data
    sets) the moving statistics otherwise never converge and inference-mode accuracy collapses
    (see NOTES.md). ``head_pooling="global_average"`` is the default because it keeps the
    dense head independent of the image size (a Flatten head at 120x160 would put 7,680x512
    = 3.9 M weights in the first dense layer alone); pass ``"flatten"`` for a flatten head.
    """
    if head_pooling not in ("global_average", "flatten"):
        raise ValueError(f"head_pooling must be 'global_average' or 'flatten', got {head_pooling}")
    _check_min_size(input_shape, 2 ** len(filters), "elu_cnn")
    inputs, x = model_input(input_shape, input_scaling)
    for block, n_filters in enumerate(filters, start=1):
        for conv in range(1, convs_per_block + 1):
            prefix = f"block{block}_conv{conv}"
            x = layers.Conv2D(n_filters, 3, padding="same", use_bias=False, name=prefix)(x)
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_bn")(x)
            x = layers.Activation("elu", name=f"{prefix}_elu")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    if head_pooling == "flatten":
        x = layers.Flatten(name="flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    for index in range(1, dense_layers + 1):
        x = layers.Dense(dense_units, activation="elu", name=f"dense{index}")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"dense{index}_dropout")(x)
    outputs = classifier_head(x, num_classes, binary_sigmoid=binary_sigmoid)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- ALL-IDB1 paper CNN


def paper_cnn(
    *,
    input_shape: Shape = (100, 100, 3),
    num_classes: int = 2,
    filters: int = 30,
    binary_sigmoid: bool = False,
    input_scaling: float | None = DEFAULT_INPUT_SCALING,
    name: str = "paper_cnn",
) -> keras.Model:
    """The CNN of "Acute Leukemia Classification Using Convolution Neural Network in Clinical
    Decision Support System" as used by the ALL-IDB1 detector (seed 003).

    ZeroPadding 2 -> Conv 30 5x5 ReLU -> ZeroPadding 2 -> Conv 30 5x5 ReLU -> MaxPool 2 ->
    Flatten -> Dense(2) softmax. The padding keeps the map at the input size, so at 100 px the
    flatten layer holds 50x50x30 = 75,000 features. The source used a 2-way softmax, hence
    ``binary_sigmoid=False`` by default.
    """
    inputs, x = model_input(input_shape, input_scaling)
    for index in (1, 2):
        x = layers.ZeroPadding2D(2, name=f"block{index}_pad")(x)
        x = layers.Conv2D(filters, 5, padding="valid", activation="relu",
                          name=f"block{index}_conv")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = classifier_head(x, num_classes, binary_sigmoid=binary_sigmoid)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- Copenhagen CNN/FCN

COPENHAGEN_FILTERS = (64, 128, 256, 512, 1024)


def _copenhagen_blocks(
    x: keras.KerasTensor,
    kernels: Sequence[int],
    pools: Sequence[int | tuple[int, int]],
    dropout: float,
) -> keras.KerasTensor:
    """The five sections both Copenhagen networks share: Conv 'same' ReLU -> Dropout -> MaxPool."""
    for index, (n_filters, kernel, pool) in enumerate(
            zip(COPENHAGEN_FILTERS, kernels, pools), start=1):
        x = layers.Conv2D(n_filters, kernel, padding="same", activation="relu",
                          name=f"block{index}_conv")(x)
        x = layers.Dropout(dropout, name=f"block{index}_dropout")(x)
        x = layers.MaxPooling2D(pool, name=f"block{index}_pool")(x)
    return layers.Dropout(dropout, name="features_dropout")(x)


def copenhagen_cnn(
    *,
    input_shape: Shape = (120, 160, 3),
    num_classes: int = 4,
    kernel: int = 2,
    dropout: float = 0.3,
    first_kernel: int | None = None,
    last_kernel: int | None = None,
    first_pool: tuple[int, int] = (3, 4),
    dense_units: int = 128,
    binary_sigmoid: bool = False,
    input_scaling: float | None = DEFAULT_INPUT_SCALING,
    name: str = "copenhagen_cnn",
) -> keras.Model:
    """The Copenhagen slide deck's best CNN (kernel 2, dropout 0.3, 3,312,964 parameters).

    Five sections Conv(64/128/256/512/1024, 'same', ReLU) -> Dropout -> MaxPool, the first pool
    (3, 4) turning 120x160 into 40x40, then 2x2; a last Dropout, Flatten, Dense 128 ReLU,
    Dense softmax.

    Kernel sizes: the listing lost the first conv's kernel size and gives the last conv
    ``kernel - 1``, but the deck reports "Kernel Sizes: (2,2,2,2,2)" and 3,312,964 trainable
    parameters. Only kernel 2 in *all five* convolutions reproduces that count at 120x160x3:

        conv1  (2*2*3   + 1) * 64   =       832
        conv2  (2*2*64  + 1) * 128  =    32,896
        conv3  (2*2*128 + 1) * 256  =   131,328
        conv4  (2*2*256 + 1) * 512  =   524,800
        conv5  (2*2*512 + 1) * 1024 = 2,098,176
        dense  (2*2*1024 + 1) * 128 =   524,416   (40 -> 20 -> 10 -> 5 -> 2: 2x2x1024 flatten)
        output (128 + 1) * 4        =       516
        total                         3,312,964

    With ``kernel - 1`` = 1 in conv5 (513 * 1024 = 525,312) the rest would need the first conv
    to hold 1,573,696 = 64 * (3 k^2 + 1) weights, i.e. k^2 = 8196, not a square: no first
    kernel size fits. So ``first_kernel`` and ``last_kernel`` default to ``kernel``; pass
    ``last_kernel=kernel - 1`` to build the listing literally (1,740,100 parameters).
    """
    kernels = [kernel] * len(COPENHAGEN_FILTERS)
    kernels[0] = kernel if first_kernel is None else first_kernel
    kernels[-1] = kernel if last_kernel is None else last_kernel
    pools = [first_pool, 2, 2, 2, 2]
    if input_shape[0] // first_pool[0] < 16 or input_shape[1] // first_pool[1] < 16:
        raise ValueError(f"copenhagen_cnn: {input_shape[:2]} px shrinks below 1x1 after five "
                         f"poolings (first pool {first_pool}, then four of 2)")
    inputs, x = model_input(input_shape, input_scaling)
    x = _copenhagen_blocks(x, kernels, pools, dropout)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    outputs = classifier_head(x, num_classes, binary_sigmoid=binary_sigmoid)
    return keras.Model(inputs, outputs, name=name)


def copenhagen_fcn(
    *,
    input_shape: Shape = (120, 160, 3),
    num_classes: int = 4,
    kernel: int = 2,
    dropout: float = 0.1,
    first_pool: tuple[int, int] = (3, 4),
    last_pool: int = 5,
    conv_units: int = 64,
    input_scaling: float | None = DEFAULT_INPUT_SCALING,
    name: str = "copenhagen_fcn",
) -> keras.Model:
    """The Copenhagen slide deck's best FCN (kernel 2, dropout 0.1, 2,853,892 parameters).

    The same five sections as the CNN but the fifth pool is 5x5, which at 120x160 leaves a 1x1
    map; then Conv 1x1 (64, ReLU) -> Dropout -> Conv 1x1 (num_classes, softmax) ->
    GlobalMaxPooling. Count at 120x160x3: 832 + 32,896 + 131,328 + 524,800 + 2,098,176
    (the five convs, all kernel 2) + 65,600 (1x1, 1024 -> 64) + 260 (1x1, 64 -> 4) = 2,853,892.

    As in the source the softmax comes before the global max pooling: at 120x160 the map is 1x1
    and this is a plain softmax; on larger images the pooled scores no longer sum to one.
    """
    pools = [first_pool, 2, 2, 2, last_pool]
    if (input_shape[0] // first_pool[0] // 8 // last_pool < 1
            or input_shape[1] // first_pool[1] // 8 // last_pool < 1):
        raise ValueError(f"copenhagen_fcn: {input_shape[:2]} px shrinks below 1x1 after the "
                         f"poolings ({first_pool}, 2, 2, 2, {last_pool})")
    inputs, x = model_input(input_shape, input_scaling)
    x = _copenhagen_blocks(x, [kernel] * len(COPENHAGEN_FILTERS), pools, dropout)
    x = layers.Conv2D(conv_units, 1, activation="relu", name="conv1x1")(x)
    x = layers.Dropout(dropout, name="conv1x1_dropout")(x)
    x = layers.Conv2D(num_classes, 1, activation="softmax", dtype="float32", name="head_conv")(x)
    outputs = layers.GlobalMaxPooling2D(dtype="float32", name="head_pool")(x)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- U-Net


def _double_conv(x: keras.KerasTensor, n_filters: int, prefix: str) -> keras.KerasTensor:
    """Two Conv 3x3 'same' ReLU, the unit of every U-Net level."""
    x = layers.Conv2D(n_filters, 3, padding="same", activation="relu", name=f"{prefix}_conv1")(x)
    return layers.Conv2D(n_filters, 3, padding="same", activation="relu", name=f"{prefix}_conv2")(x)


def unet(
    *,
    input_shape: Shape = (120, 160, 1),
    start_filters: int = 16,
    out_channels: int = 1,
    first_dropout: float = 0.25,
    dropout: float = 0.5,
    output_activation: str = "sigmoid",
    input_scaling: float | None = DEFAULT_INPUT_SCALING,
    name: str = "unet",
) -> keras.Model:
    """The Copenhagen slide deck's U-Net (Ronneberger et al. 2015, three poolings).

    Encoder: three levels of two Conv 3x3 (start, 2x, 4x filters) -> MaxPool 2 -> Dropout
    (0.25 after the first pool, 0.5 after the others); middle: two Conv 3x3 with 8x filters;
    decoder: Conv2DTranspose 3x3 stride 2 (linear, as in the source) -> concatenate with the
    encoder level -> Dropout 0.5 -> two Conv 3x3; output Conv 1x1 with ``out_channels`` and a
    sigmoid (one mask per channel; pass ``output_activation="softmax"`` for exclusive classes).
    Height and width must be divisible by 8 so the upsampled maps line up with the encoder's.
    """
    if input_shape[0] % 8 or input_shape[1] % 8:
        raise ValueError(f"unet needs height and width divisible by 8, got {input_shape[:2]}")
    inputs, x = model_input(input_shape, input_scaling)
    skips = []
    for level in (1, 2, 3):
        x = _double_conv(x, start_filters * 2 ** (level - 1), f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
        x = layers.Dropout(first_dropout if level == 1 else dropout, name=f"enc{level}_dropout")(x)
    x = _double_conv(x, start_filters * 8, "middle")
    for level in (3, 2, 1):
        n_filters = start_filters * 2 ** (level - 1)
        x = layers.Conv2DTranspose(n_filters, 3, strides=2, padding="same",
                                   name=f"dec{level}_upconv")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level - 1]])
        x = layers.Dropout(dropout, name=f"dec{level}_dropout")(x)
        x = _double_conv(x, n_filters, f"dec{level}")
    outputs = layers.Conv2D(out_channels, 1, activation=output_activation, dtype="float32",
                            name="mask")(x)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- transfer learning


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
    dense_units: Sequence[int] = (512, 256, 128, 64),
    dropouts: Sequence[float] = (0.5, 0.3, 0.2, 0.1),
    l2: float = 0.016,
    l1: float = 0.006,
    bn_momentum: float = 0.9,
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
    for index, (units, rate) in enumerate(zip(dense_units, dropouts), start=1):
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
    backbone_name: str = "EfficientNetB3",
    input_shape: Shape = (224, 224, 3),
    num_classes: int = 2,
    weights: str | None = None,
    backbone_trainable: bool = True,
    dense_units: Sequence[int] = (512, 256, 128, 64),
    dropouts: Sequence[float] = (0.5, 0.3, 0.2, 0.1),
    l2: float = 0.016,
    l1: float = 0.006,
    bn_momentum: float = 0.9,
    binary_sigmoid: bool = False,
    name: str | None = None,
) -> keras.Model:
    """The C-NMC 2019 transfer-learning model: pretrained backbone + regularised dense head.

    ``backbone_name`` is ``"EfficientNetB3"`` (the report's better model) or
    ``"InceptionResNetV2"`` (its first attempt); the backbone comes from ``keras.applications``
    with ``include_top=False, pooling="max"``, is trainable as in the report (pass
    ``backbone_trainable=False`` to freeze it) and sits in the model as one layer named
    ``backbone``. ``weights="imagenet"`` downloads on first use; ``None`` (default) never does.
    InceptionResNetV2 needs at least 75x75 px, EfficientNetB3 at least 32x32.
    """
    if backbone_name not in CNMC_BACKBONES:
        raise ValueError(f"backbone_name must be one of {CNMC_BACKBONES}, got {backbone_name!r}")
    inputs, backbone, features = backbone_features(
        backbone_name, input_shape, weights, pooling="max", bn_momentum=bn_momentum)
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
    input_shape: Shape = (224, 224, 3),
    num_classes: int = 4,
    weights: str | None = None,
    trainable: str = "full",
    unfreeze_from: str = "conv5_block1_1_conv",
    dropout: float = 0.0,
    bn_momentum: float = 0.9,
    binary_sigmoid: bool = False,
    name: str = "resnet50_classifier",
) -> keras.Model:
    """ResNet50 with a new softmax head, trained at one of three depths (the ELU study's
    models 5-7: "no training", "partial training", "full training").

    ``trainable``: ``"frozen"`` trains only the head; ``"partial"`` also trains the backbone
    from the layer ``unfreeze_from`` on (default: the whole last stage, ``conv5_*``), keeping
    BatchNorm frozen; ``"full"`` trains everything. The model takes [0, 255] pixels and applies
    ResNet50's own ``preprocess_input`` (RGB->BGR, minus the ImageNet mean) inside. The
    backbone's BatchNorm momentum is set to ``bn_momentum`` (0.9) for training on small data.
    Needs at least 32x32 px. Recompile after changing trainability.
    """
    inputs, backbone, features = backbone_features(
        "ResNet50", input_shape, weights, pooling="avg", bn_momentum=bn_momentum)
    set_resnet50_trainable(backbone, trainable, unfreeze_from)
    x = features
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = classifier_head(x, num_classes, binary_sigmoid=binary_sigmoid)
    return keras.Model(inputs, outputs, name=name)
