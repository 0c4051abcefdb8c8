"""The networks written here: linear CNN, ELU CNN, the ALL-IDB1 paper CNN, the Copenhagen
CNN/FCN and U-Net (ResNeXt: ``models.resnext``; pretrained backbones: ``models.applications``).

Every builder takes each architectural number as an argument (the scripts' knobs) and holds no
default that repeats one. The model takes float32 pixels in [0, 255] and scales them in its
first layer (``Rescaling``; pass ``input_scaling=None`` to leave it out when the caller
standardises the pixels itself, as the Copenhagen study does). The classification layer is
named ``head_dense`` (``head_conv`` for the FCN) and computed in float32 (``models.parts``).

Sources (``/work/shared/seeds``): the Helmholtz thesis (linear CNN), the ELU CNN study after
Kandel et al. 2020, the Copenhagen CNN/FCN/U-Net slide deck, the ALL-IDB1 paper CNN and the
C-NMC transfer-learning report. Where a source is silent or inconsistent, the docstring of the
builder says what was chosen and why.
"""
from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from leukocyte_cnn.models.parts import (
    DEFAULT_INPUT_SCALING,
    Shape,
    check_min_size,
    classifier_head,
    model_input,
    warn_once,
)

# --------------------------------------------------------------------------- linear CNN


def valid_conv_pool_size(size: int, kernel_size: int, pool_size: int) -> int:
    """Side length after Conv2D ``kernel_size`` 'valid' and MaxPool ``pool_size``."""
    return (size - kernel_size + 1) // pool_size


def fitting_block_count(input_shape: Sequence[int], n_blocks: int, kernel_size: int,
                        pool_size: int) -> int:
    """How many conv('valid')+pool blocks fit before the map would drop below 1x1."""
    height, width = input_shape[:2]
    fitted = 0
    while fitted < n_blocks and min(valid_conv_pool_size(height, kernel_size, pool_size),
                                    valid_conv_pool_size(width, kernel_size, pool_size)) >= 1:
        height = valid_conv_pool_size(height, kernel_size, pool_size)
        width = valid_conv_pool_size(width, kernel_size, pool_size)
        fitted += 1
    return fitted


def linear_cnn(
    *,
    input_shape: Shape,
    num_classes: int,
    filters: Sequence[int],
    kernel_size: int,
    pool_size: int,
    dense_units: int,
    binary_sigmoid: bool = True,
    input_scaling: float | None = DEFAULT_INPUT_SCALING,
    name: str = "linear_cnn",
) -> keras.Model:
    """The Helmholtz thesis' "linear" CNN: a plain stack of small conv blocks.

    Each block is Conv2D ``kernel_size`` 'valid' + ReLU + MaxPool ``pool_size`` (thesis: 3x3
    and 2x2, one block per entry of ``filters``); then Flatten, Dense(dense_units, ReLU) and
    the output layer (Dense(1, sigmoid) for the binary blast-vs-other task, as in the thesis,
    or Dense(n, softmax)). With the thesis' numbers (filters 4-8-8-8-16-16, Dense 32) at 257 px
    the six blocks leave a 2x2x16 map, 64 features, and the binary model has 7,177 parameters.

    Smaller images: six valid 3x3 blocks need at least ~190 px. Trailing blocks that would shrink
    the map below 1x1 are dropped with a ``UserWarning`` (at 64 px four blocks fit, leaving
    2x2x8 = 32 features). Dropping keeps the early filters, which see the image, unchanged, so a
    quick run at 64 px is the same network with a shorter tail rather than a different one.
    """
    n_blocks = fitting_block_count(input_shape, len(filters), kernel_size, pool_size)
    if n_blocks == 0:
        raise ValueError(f"linear_cnn: {input_shape[:2]} px is too small for one "
                         f"{kernel_size}x{kernel_size} conv + {pool_size}x{pool_size} pool block")
    if n_blocks < len(filters):
        warn_once(
            f"linear_cnn: only {n_blocks} of {len(filters)} conv blocks fit a "
            f"{input_shape[0]}x{input_shape[1]} image; dropping the last "
            f"{len(filters) - n_blocks}")
    inputs, x = model_input(input_shape, input_scaling)
    for index, n_filters in enumerate(filters[:n_blocks], start=1):
        x = layers.Conv2D(n_filters, kernel_size, padding="valid", activation="relu",
                          name=f"block{index}_conv")(x)
        x = layers.MaxPooling2D(pool_size, name=f"block{index}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    outputs = classifier_head(x, num_classes, binary_sigmoid=binary_sigmoid)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- ELU CNN


def elu_cnn(
    *,
    input_shape: Shape,
    num_classes: int,
    filters: Sequence[int],
    convs_per_block: int,
    kernel_size: int,
    pool_size: int,
    dense_units: int,
    dense_layers: int,
    dropout: float,
    bn_momentum: float,
    head_pooling: str,
    binary_sigmoid: bool = False,
    input_scaling: float | None = DEFAULT_INPUT_SCALING,
    name: str = "elu_cnn",
) -> keras.Model:
    """The ELU CNN of the 4-class blood-cell study (after Kandel et al., Appl. Sci. 2020).

    Blocks of ``convs_per_block`` x (Conv2D ``kernel_size`` 'same' -> BatchNorm -> ELU), then
    MaxPool ``pool_size`` (study: 3 convs of 3x3, pool 2x2);
    a pooled or flattened feature vector; ``dense_layers`` x Dense(dense_units, ELU), each
    followed by Dropout when ``dropout > 0`` (the study's model 4 added exactly these two
    dropout layers); softmax output.

    Choices: convolutions have no bias because the BatchNorm right after adds its own offset.
    The study script uses ``bn_momentum`` 0.9, not Keras' 0.99, because with few updates (small data
    sets) the moving statistics otherwise never converge and inference-mode accuracy collapses
    (see NOTES.md). The script's ``head_pooling="global_average"`` keeps the dense head
    independent of the image size (a Flatten head at 120x160 would put 7,680x512
    = 3.9 M weights in the first dense layer alone); pass ``"flatten"`` for a flatten head.
    """
    if head_pooling not in ("global_average", "flatten"):
        raise ValueError(f"head_pooling must be 'global_average' or 'flatten', got {head_pooling}")
    check_min_size(input_shape, pool_size ** len(filters), "elu_cnn")
    inputs, x = model_input(input_shape, input_scaling)
    for block, n_filters in enumerate(filters, start=1):
        for conv in range(1, convs_per_block + 1):
            prefix = f"block{block}_conv{conv}"
            x = layers.Conv2D(n_filters, kernel_size, padding="same", use_bias=False,
                              name=prefix)(x)
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_bn")(x)
            x = layers.Activation("elu", name=f"{prefix}_elu")(x)
        x = layers.MaxPooling2D(pool_size, name=f"block{block}_pool")(x)
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
    input_shape: Shape,
    num_classes: int,
    filters: int,
    kernel_size: int,
    padding: int,
    pool_size: int,
    binary_sigmoid: bool = False,
    input_scaling: float | None = DEFAULT_INPUT_SCALING,
    name: str = "paper_cnn",
) -> keras.Model:
    """The CNN of "Acute Leukemia Classification Using Convolution Neural Network in Clinical
    Decision Support System" as used by the ALL-IDB1 detector (seed 003).

    ZeroPadding ``padding`` -> Conv ``filters`` ``kernel_size`` ReLU, twice -> MaxPool
    ``pool_size`` -> Flatten -> Dense(2) softmax (paper: padding 2, 30 filters of 5x5, pool 2).
    Padding 2 around a 5x5 kernel keeps the map at the input size, so at 100 px the flatten
    layer holds 50x50x30 = 75,000 features. The source used a 2-way softmax, hence
    ``binary_sigmoid=False`` by default.
    """
    inputs, x = model_input(input_shape, input_scaling)
    for index in (1, 2):
        x = layers.ZeroPadding2D(padding, name=f"block{index}_pad")(x)
        x = layers.Conv2D(filters, kernel_size, padding="valid", activation="relu",
                          name=f"block{index}_conv")(x)
    x = layers.MaxPooling2D(pool_size, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = classifier_head(x, num_classes, binary_sigmoid=binary_sigmoid)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- Copenhagen CNN/FCN

def _copenhagen_blocks(
    x: keras.KerasTensor,
    filters: Sequence[int],
    kernels: Sequence[int],
    pools: Sequence[int | tuple[int, int]],
    dropout: float,
) -> keras.KerasTensor:
    """The sections both Copenhagen networks share: Conv 'same' ReLU -> Dropout -> MaxPool."""
    for index, (n_filters, kernel, pool) in enumerate(
            zip(filters, kernels, pools, strict=True), start=1):
        x = layers.Conv2D(n_filters, kernel, padding="same", activation="relu",
                          name=f"block{index}_conv")(x)
        x = layers.Dropout(dropout, name=f"block{index}_dropout")(x)
        x = layers.MaxPooling2D(pool, name=f"block{index}_pool")(x)
    return layers.Dropout(dropout, name="features_dropout")(x)


def copenhagen_cnn(
    *,
    input_shape: Shape,
    num_classes: int,
    filters: Sequence[int],
    kernel: int,
    dropout: float,
    first_pool: tuple[int, int],
    dense_units: int,
    first_kernel: int | None = None,
    last_kernel: int | None = None,
    binary_sigmoid: bool = False,
    input_scaling: float | None = DEFAULT_INPUT_SCALING,
    name: str = "copenhagen_cnn",
) -> keras.Model:
    """The Copenhagen slide deck's best CNN (kernel 2, dropout 0.3, 3,312,964 parameters).

    One section per entry of ``filters`` (deck: 64/128/256/512/1024): Conv('same', ReLU) ->
    Dropout -> MaxPool, the first pool ``first_pool`` (deck: (3, 4), turning 120x160 into
    40x40), then 2x2; a last Dropout, Flatten, Dense ``dense_units`` (deck: 128) ReLU, Dense
    softmax.

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
    kernels = [kernel] * len(filters)
    kernels[0] = kernel if first_kernel is None else first_kernel
    kernels[-1] = kernel if last_kernel is None else last_kernel
    first_pool = tuple(first_pool)
    pools = [first_pool] + [2] * (len(filters) - 1)
    shrink = 2 ** (len(filters) - 1)
    if input_shape[0] // first_pool[0] < shrink or input_shape[1] // first_pool[1] < shrink:
        raise ValueError(f"copenhagen_cnn: {input_shape[:2]} px shrinks below 1x1 after "
                         f"{len(filters)} poolings (first pool {first_pool}, then 2s)")
    inputs, x = model_input(input_shape, input_scaling)
    x = _copenhagen_blocks(x, filters, kernels, pools, dropout)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    outputs = classifier_head(x, num_classes, binary_sigmoid=binary_sigmoid)
    return keras.Model(inputs, outputs, name=name)


def copenhagen_fcn(
    *,
    input_shape: Shape,
    num_classes: int,
    filters: Sequence[int],
    kernel: int,
    dropout: float,
    first_pool: tuple[int, int],
    last_pool: int,
    conv_units: int,
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
    first_pool = tuple(first_pool)
    pools = [first_pool] + [2] * (len(filters) - 2) + [last_pool]
    middle = 2 ** (len(filters) - 2)
    if (input_shape[0] // first_pool[0] // middle // last_pool < 1
            or input_shape[1] // first_pool[1] // middle // last_pool < 1):
        raise ValueError(f"copenhagen_fcn: {input_shape[:2]} px shrinks below 1x1 after the "
                         f"poolings ({first_pool}, {len(filters) - 2} x 2, {last_pool})")
    inputs, x = model_input(input_shape, input_scaling)
    x = _copenhagen_blocks(x, filters, [kernel] * len(filters), pools, dropout)
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
    input_shape: Shape,
    start_filters: int,
    first_dropout: float,
    dropout: float,
    out_channels: int = 1,
    output_activation: str = "sigmoid",
    input_scaling: float | None = DEFAULT_INPUT_SCALING,
    name: str = "unet",
) -> keras.Model:
    """The Copenhagen slide deck's U-Net (Ronneberger et al. 2015, three poolings).

    Encoder: three levels of two Conv 3x3 (start, 2x, 4x filters) -> MaxPool 2 -> Dropout
    (deck: 0.25 = ``first_dropout`` after the first pool, 0.5 = ``dropout`` after the others);
    middle: two Conv 3x3 with 8x filters; decoder: Conv2DTranspose 3x3 stride 2 (linear, as in
    the source) -> concatenate with the encoder level -> Dropout ``dropout`` -> two Conv 3x3;
    output Conv 1x1 with ``out_channels`` and a sigmoid (one mask per channel; pass
    ``output_activation="softmax"`` for exclusive classes). Height and width must be divisible
    by 8 so the upsampled maps line up with the encoder's.
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
