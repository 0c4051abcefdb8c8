"""Grad-CAM (Selvaraju et al., ICCV 2017): where in the image a classifier found its evidence.

For a class c, Grad-CAM weighs each channel k of a convolutional layer's map A (the last one
with a spatial layout, :func:`last_conv_layer`) by the mean gradient of the class score over
the map, ``w_k = mean_ij dS_c / dA_ij^k``, and keeps the positive part of the weighted sum,
``ReLU(sum_k w_k A^k)``, upsampled (bilinear) to the input and scaled to [0, 1] by its maximum.

Choices, each for a network of this repository:

- The layer (:func:`last_conv_layer`): the last layer with a spatial map that everything up
  to the head is computed from (a residual block's output, not a convolution inside it; a
  whole Inception block, not one branch), skipping poolings, dropouts, paddings and
  ``head_*`` layers (the FCN's ``head_conv`` is its softmax head), descending into nested
  models (the ``keras.applications`` backbone of ``resnet50_model``/``cnmc_model``, the
  Copenhagen network inside the scaling study's model), and whose map is at least
  ``MIN_MAP_SIDE`` = 7 pixels a side: the resolution of the last block of the ImageNet
  networks at 224 px, where Grad-CAM was made. A coarser map cannot tell a cell from its
  neighbours (ResNet50's last block is 2x2 at 64 px, 4x5 at 120x160; on synthetic cells its
  heatmap then spread evenly, 1.1x the cell's share, against 2.9x one stage earlier at 8x8),
  so the last map that still has 7 pixels a side is used; ``min_side=2`` gives the very last
  block. With the studies' full-size inputs this is: ``block5_conv`` of the thesis linear CNN
  at 257 px (12x12; ``block6`` is 4x4), the last ``*_elu`` of the ELU CNN, ``block2_conv``
  of the paper CNN, ``block4_conv`` of the Copenhagen CNN/FCN (10x10), the last
  ``stage*_block*_out`` of a ResNeXt at 96 px, ResNet50's ``conv4_block6_out`` at 120x160
  (``conv5_block3_out`` from 224 px), EfficientNetB3's ``top_activation`` at 224 px and
  InceptionResNetV2's ``block17_20_ac`` at 224 px (``conv_7b_ac`` from 299 px). The chosen
  layer's name is in every figure's title.
- The score: the class logit, not the probability. The head's softmax or sigmoid is switched
  to linear for the computation (and back), because a confident softmax output is saturated:
  in float32 a probability of exactly 1.0 has a zero gradient and the map would be empty. For a
  one-unit sigmoid head the score of the positive class is the logit z and that of the
  negative class is -z.
- The map is captured while the model runs as it is (its own graph, nested models included),
  by wrapping the chosen layer's ``call`` for the duration of the computation, so no model is
  rebuilt and the ResNeXt grouped convolutions run on whatever path the process uses.
  Gradients and maps are cast to float32 (mixed-precision checkpoints compute in float16).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np

# Layers that move or thin a map without computing new features: Grad-CAM uses the map that
# went into them (a higher-resolution view of the same evidence).
_PASS_THROUGH = {"Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise",
                 "AlphaDropout", "ZeroPadding2D", "Cropping2D", "Rescaling", "Normalization",
                 "InputLayer", "ActivityRegularization", "Identity"}
_HEAD_ACTIVATIONS = ("softmax", "sigmoid")
MIN_MAP_SIDE = 7  # coarsest map worth explaining: ImageNet networks' last block at 224 px
BATCH_SIZE = 16   # images per forward/backward pass


def _output_shape(layer) -> tuple | None:
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError, RuntimeError):  # never called, or shared
        return None


def _is_model(layer) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs")


def _spatial(shape: tuple | None) -> bool:
    """A 4-D map with more than one pixel (``None`` sides count as more than one)."""
    if shape is None or len(shape) != 4:
        return False
    height, width = shape[1:3]
    return height is None or width is None or height * width > 1


def _short_side(shape: tuple) -> float:
    sides = [s for s in shape[1:3] if s is not None]
    return float(min(sides)) if len(sides) == 2 else float("inf")


def _cut_operations(model) -> list:
    """The operations of ``model`` that everything after them is computed from (no skip
    connection or parallel branch passes them by), in topological order: a residual block's
    output, not a convolution inside it; a whole Inception block, not one of its branches.
    Where the graph cannot be read (a subclassed model), every layer, in order."""
    operations = list(getattr(model, "operations", None) or model.layers)
    index = {id(op): i for i, op in enumerate(operations)}
    last_use = list(range(len(operations)))
    try:
        for k, op in enumerate(operations):
            nodes = op._inbound_nodes
            if len(nodes) != 1:  # a shared layer: its uses cannot be told apart
                return list(model.layers)
            for tensor in nodes[0].input_tensors:
                j = index[id(tensor._keras_history.operation)]
                last_use[j] = max(last_use[j], k)
    except (AttributeError, KeyError, TypeError):
        return list(model.layers)
    cuts, reach = [], -1
    for i, op in enumerate(operations):
        if reach <= i:  # nothing made before it is used after it
            cuts.append(op)
        reach = max(reach, last_use[i])
    return cuts


def _candidate_layers(model) -> list:
    """Layers whose map Grad-CAM may explain, in order, nested models expanded in place."""
    found = []
    for op in _cut_operations(model):
        if _is_model(op):
            found += _candidate_layers(op)
        elif (not op.name.startswith("head_") and type(op).__name__ not in _PASS_THROUGH
              and "Pooling" not in type(op).__name__ and _spatial(_output_shape(op))):
            found.append(op)
    return found


def last_conv_layer(model, min_side: int = MIN_MAP_SIDE):
    """The layer whose map Grad-CAM explains: the last layer with a spatial (4-D) output that
    everything up to the head is computed from, inside nested models too, and whose map is at
    least ``min_side`` pixels on its short side (the last one with any spatial layout when no
    map is that fine). ``min_side=2`` gives the very last block whatever its resolution.
    ``ValueError`` when the model has none (e.g. a dense network on feature vectors)."""
    candidates = _candidate_layers(model)
    if not candidates:
        raise ValueError(f"{model.name}: no layer with a spatial map before the head; "
                         "Grad-CAM needs a convolutional network")
    fine = [layer for layer in candidates if _short_side(_output_shape(layer)) >= min_side]
    return (fine or candidates)[-1]


def _all_layers(model) -> Iterator:
    for layer in model.layers:
        yield layer
        if _is_model(layer):
            yield from _all_layers(layer)


def _activation_name(layer) -> str:
    return getattr(getattr(layer, "activation", None), "__name__", "")


def head_layer(model):
    """The layer that turns logits into probabilities: the last ``head_dense``/``head_conv``
    with a softmax or sigmoid (every network here names it so, nested models included), else
    the output layer if it has one; ``None`` otherwise (the score is then the output)."""
    named = [layer for layer in _all_layers(model)
             if layer.name in ("head_dense", "head_conv") and not _is_model(layer)
             and _activation_name(layer) in _HEAD_ACTIVATIONS]
    if named:
        return named[-1]
    last = model.layers[-1] if model.layers else None
    while last is not None and _is_model(last):
        last = last.layers[-1] if last.layers else None
    return last if last is not None and _activation_name(last) in _HEAD_ACTIVATIONS else None


def _swap_attribute(obj, name: str, value):
    """Set ``obj.name`` bypassing Keras' attribute tracking; return the undo function."""
    own = name in vars(obj)
    previous = vars(obj).get(name)
    object.__setattr__(obj, name, value)

    def undo():
        if own:
            object.__setattr__(obj, name, previous)
        else:
            object.__delattr__(obj, name)
    return undo


@contextlib.contextmanager
def _linear_head(head) -> Iterator[bool]:
    """The head's activation switched to linear inside the block (yields whether it was)."""
    if head is None:
        yield False
        return
    import keras

    undo = _swap_attribute(head, "activation", keras.activations.linear)
    try:
        yield True
    finally:
        undo()


@contextlib.contextmanager
def _capturing(layer, tape, maps: list) -> Iterator[list]:
    """Every output of ``layer`` while the block runs, watched by ``tape``, in ``maps``."""
    original = layer.call

    def call(*args, **kwargs):
        out = original(*args, **kwargs)
        tape.watch(out)
        maps.append(out)
        return out

    undo = _swap_attribute(layer, "call", call)
    try:
        yield maps
    finally:
        undo()


def _class_scores(outputs, classes, linear: bool):
    """Score of each image's class: logit (``linear``), else log-probability; a one-unit
    sigmoid output scores class 1 with z and class 0 with -z."""
    import tensorflow as tf

    outputs = tf.cast(outputs, tf.float32)
    outputs = tf.reshape(outputs, (tf.shape(outputs)[0], -1))
    if outputs.shape[-1] == 1:
        z = outputs[:, 0] if linear else tf.math.log(outputs[:, 0] + 1e-7) - tf.math.log(
            1.0 - outputs[:, 0] + 1e-7)
        return tf.where(tf.equal(classes, 1), z, -z)
    picked = tf.gather(outputs, classes, axis=1, batch_dims=1)
    return picked if linear else tf.math.log(picked + 1e-7)


def predicted_classes(model, images: np.ndarray) -> np.ndarray:
    """The class the model predicts for each image (its own output: with the FCN's softmax
    before the global max pooling, the largest logit can name another class)."""
    outputs = np.asarray(model(images, training=False), dtype=np.float64)
    outputs = outputs.reshape(len(outputs), -1)
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > 0.5).astype(np.int32)
    return outputs.argmax(axis=1).astype(np.int32)


def _class_indices(class_index, n: int) -> np.ndarray | None:
    if class_index is None:
        return None
    if np.ndim(class_index) == 0:
        return np.full(n, int(class_index), dtype=np.int32)
    classes = np.asarray(class_index, dtype=np.int32).ravel()
    if len(classes) != n:
        raise ValueError(f"class_index: {len(classes)} classes for {n} images")
    return classes


def _batch_gradcam(model, layer, head, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    x = tf.convert_to_tensor(images, dtype=tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        maps: list = []
        with _capturing(layer, tape, maps), _linear_head(head) as linear:
            outputs = model(x, training=False)
        if not maps:
            raise ValueError(f"{layer.name} was not called when {model.name} ran")
        scores = _class_scores(outputs, tf.constant(classes), linear)
    feature_map = maps[-1]
    grads = tape.gradient(scores, feature_map)
    if grads is None:
        raise ValueError(f"{model.name}: no gradient from the class score to {layer.name}")
    feature_map = tf.cast(feature_map, tf.float32)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * feature_map, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)


def gradcam(model, images, class_index: int | Sequence[int] | None = None, *,
            layer=None, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Grad-CAM heatmaps ``(N, H, W)`` in [0, 1] for ``images`` ``(N, H, W, C)`` (float32
    pixels as the model takes them, [0, 255] for every network here), at the input size.

    ``class_index``: the class explained: ``None`` (each image's predicted class), one index
    for all images, or one per image. ``layer``: the map to explain (default
    :func:`last_conv_layer`). The model runs in inference mode. An image whose map has no
    positive evidence for the class gets an all-zero heatmap.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    classes = _class_indices(class_index, len(images))
    layer = last_conv_layer(model) if layer is None else layer
    head = head_layer(model)
    out = [np.zeros((0, *images.shape[1:3]), np.float32)]
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        batch = images[start:stop]
        chosen = predicted_classes(model, batch) if classes is None else classes[start:stop]
        out.append(_batch_gradcam(model, layer, head, batch, chosen))
    return np.concatenate(out)


def mass_ratio(heatmaps, masks) -> np.ndarray:
    """Per image: the heatmap's share of mass inside the mask divided by the mask's share of
    the image (1 = no better than spread evenly; NaN for an empty heatmap or mask).

    The acceptance measure "Grad-CAM points at the cell": at least 2 on cells whose masks are
    known (the synthetic renderer's)."""
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    masks = np.asarray(masks) > 0
    if heatmaps.shape != masks.shape:
        raise ValueError(f"heatmaps {heatmaps.shape} and masks {masks.shape} differ in shape")
    axes = tuple(range(1, heatmaps.ndim))
    total = heatmaps.sum(axis=axes)
    inside = (heatmaps * masks).sum(axis=axes)
    share = masks.mean(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = (inside / total) / share
    return np.where((total > 0) & (share > 0), ratio, np.nan)


def overlay(image, heatmap, alpha: float = 0.45) -> np.ndarray:
    """``image`` (H, W, 3, [0, 255]) with ``heatmap`` (H, W, [0, 1]) blended over it in the jet
    colour map (weight ``alpha`` where the map is 1, fading with it), as uint8."""
    from matplotlib import colormaps

    image = np.clip(np.asarray(image, dtype=np.float32), 0, 255)
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0, 1)
    colours = colormaps["jet"](heat)[..., :3].astype(np.float32) * 255.0
    weight = alpha * (0.35 + 0.65 * heat)[..., None]  # the cold part of the map stays faint
    return np.clip(image * (1 - weight) + colours * weight, 0, 255).astype(np.uint8)
