"""Behaviour of the network builders (leukocyte_cnn.models.networks, leukocyte_cnn.models.resnext).

Parameter counts are pinned to the numbers the sources report, with the arithmetic in
comments, so a silent change of a layer shows up here. Nothing downloads weights (weights=None)
and only tiny models see data, so the file runs in well under a minute on two CPU cores.
"""
from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import reference_networks as ref

from leukocyte_cnn.models import applications, parts
from leukocyte_cnn.models import resnext as rx
from leukocyte_cnn.models.parts import trainable_param_count


def _pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random float32 pixels in [0, 255], the input contract of every model."""
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


# --------------------------------------------------------------------------- linear CNN


def test_linear_cnn_binary_257_px_has_7177_parameters_and_64_features():
    # 257 -> conv 255 -> pool 127 -> 125/62 -> 60/30 -> 28/14 -> 12/6 -> 4/2: 2x2x16 = 64.
    # conv (3*3*in + 1) * out: 3->4: 112, 4->8: 296, 8->8: 584, 8->8: 584, 8->16: 1,168,
    # 16->16: 2,320 (= 5,064); dense 64->32: 2,080; output 32->1: 33.  Total 7,177.
    model = ref.linear_cnn(input_shape=(257, 257, 3), num_classes=2)
    assert trainable_param_count(model) == 7177
    assert model.get_layer("flatten").output.shape[-1] == 64
    assert model.output.shape[-1] == 1
    assert model.get_layer("head_dense").activation is keras.activations.sigmoid


def test_linear_cnn_multiclass_has_softmax_head_and_hand_computed_count():
    # Same 7,144 parameters up to the 32-unit dense layer, then 32*5 + 5 = 165.
    model = ref.linear_cnn(input_shape=(257, 257, 3), num_classes=5)
    assert trainable_param_count(model) == 7144 + 165
    probabilities = model.predict(_pixels((2, 257, 257, 3)), verbose=0)
    assert probabilities.shape == (2, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_linear_cnn_at_64_px_drops_the_blocks_that_do_not_fit(monkeypatch):
    # 64 -> 31 -> 14 -> 6 -> 2; a fifth block would need at least 4 px.
    monkeypatch.setattr(parts, "_WARNED", set())  # a fresh process: warned once
    with pytest.warns(UserWarning, match="only 4 of 6"):
        model = ref.linear_cnn(input_shape=(64, 64, 3), num_classes=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per run, not once per fold
        ref.linear_cnn(input_shape=(64, 64, 3), num_classes=2)
    assert model.get_layer("flatten").output.shape[-1] == 2 * 2 * 8
    assert [layer.name for layer in model.layers if layer.name.endswith("_conv")] == [
        f"block{i}_conv" for i in range(1, 5)]
    assert model.predict(_pixels((1, 64, 64, 3)), verbose=0).shape == (1, 1)


def test_input_scaling_is_the_first_layer_and_can_be_left_out():
    scaled = ref.linear_cnn(input_shape=(64, 64, 3), num_classes=3, filters=(4, 8))
    raw = ref.linear_cnn(input_shape=(64, 64, 3), num_classes=3, filters=(4, 8),
                          input_scaling=None)
    assert isinstance(scaled.layers[1], keras.layers.Rescaling)
    assert not any(isinstance(layer, keras.layers.Rescaling) for layer in raw.layers)
    raw.set_weights(scaled.get_weights())  # Rescaling has no weights: same list
    pixels = _pixels((2, 64, 64, 3))
    np.testing.assert_allclose(scaled.predict(pixels, verbose=0),
                               raw.predict(pixels / 255.0, verbose=0), rtol=1e-4, atol=1e-6)


def test_output_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = ref.linear_cnn(input_shape=(64, 64, 3), num_classes=3, filters=(4, 8))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("block1_conv").compute_dtype == "float16"
    assert model.output.dtype == "float32"


# --------------------------------------------------------------------------- other small CNNs


def test_paper_cnn_shape_and_count():
    # Padding keeps 100 px through both 5x5 convs; pool -> 50x50x30 = 75,000 features.
    # conv1 (5*5*3 + 1)*30 = 2,280; conv2 (5*5*30 + 1)*30 = 22,530; dense 75,000*2 + 2 = 150,002.
    model = ref.paper_cnn(input_shape=(100, 100, 3), num_classes=2)
    assert model.output.shape == (None, 2)
    assert trainable_param_count(model) == 2280 + 22530 + 150002


def test_elu_cnn_blocks_batchnorm_momentum_dropout_and_output_shape():
    model = ref.elu_cnn(input_shape=(64, 64, 3), num_classes=4, dropout=0.3)
    assert model.predict(_pixels((2, 64, 64, 3)), verbose=0).shape == (2, 4)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [conv.filters for conv in convs] == [32] * 3 + [64] * 3 + [128] * 3 + [256] * 3 + [
        512] * 3
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 15 and {norm.momentum for norm in norms} == {0.9}
    dropouts = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert dropouts == ["dense1_dropout", "dense2_dropout"]
    plain = ref.elu_cnn(input_shape=(64, 64, 3), num_classes=4)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in plain.layers)
    with pytest.raises(ValueError, match="at least 32x32"):
        ref.elu_cnn(input_shape=(16, 16, 3))


# --------------------------------------------------------------------------- Copenhagen


def test_copenhagen_cnn_and_fcn_match_the_reported_parameter_counts():
    # Arithmetic in copenhagen_cnn's docstring: all five convs need kernel 2 for 3,312,964.
    cnn = ref.copenhagen_cnn(input_shape=(120, 160, 3), num_classes=4, kernel=2)
    fcn = ref.copenhagen_fcn(input_shape=(120, 160, 3), num_classes=4, kernel=2)
    assert trainable_param_count(cnn) == 3_312_964
    assert trainable_param_count(fcn) == 2_853_892
    # The listing's literal kernel - 1 in conv5: 3,312,964 - 2,098,176 + (512 + 1) * 1024.
    literal = ref.copenhagen_cnn(input_shape=(120, 160, 3), kernel=2, last_kernel=1)
    assert trainable_param_count(literal) == 3_312_964 - 2_098_176 + 513 * 1024


def test_copenhagen_networks_accept_standardised_input_without_rescaling():
    fcn = ref.copenhagen_fcn(input_shape=(120, 160, 3), input_scaling=None)
    cnn = ref.copenhagen_cnn(input_shape=(120, 160, 3), input_scaling=None)
    for model in (fcn, cnn):
        assert not any(isinstance(layer, keras.layers.Rescaling) for layer in model.layers)
    standardised = np.random.default_rng(1).normal(size=(2, 120, 160, 3)).astype("float32")
    probabilities = fcn.predict(standardised, verbose=0)
    assert probabilities.shape == (2, 4)  # 1x1 map at 120x160: the softmax sums to one
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------- U-Net


@pytest.mark.parametrize("height, width", [(120, 160), (64, 48)])
def test_unet_mask_has_the_input_size(height, width):
    model = ref.unet(input_shape=(height, width, 1), start_filters=4)
    mask = model.predict(_pixels((1, height, width, 1)), verbose=0)
    assert mask.shape == (1, height, width, 1)
    assert mask.min() >= 0.0 and mask.max() <= 1.0


def test_unet_refuses_sizes_not_divisible_by_8():
    with pytest.raises(ValueError, match="divisible by 8"):
        ref.unet(input_shape=(100, 100, 1))


# --------------------------------------------------------------------------- transfer learning


def test_cnmc_efficientnet_builds_offline_with_the_regularised_head():
    model = ref.cnmc_model(backbone_name="EfficientNetB3", input_shape=(32, 32, 3),
                            num_classes=2, weights=None)
    assert model.output.shape == (None, 2)
    assert model.get_layer("backbone").trainable
    first = model.get_layer("head_hidden1")
    assert first.units == 512
    assert float(first.kernel_regularizer.l2) == pytest.approx(0.016)
    assert float(first.activity_regularizer.l1) == pytest.approx(0.006)
    later = [model.get_layer(f"head_hidden{i}") for i in (2, 3, 4)]
    assert [layer.units for layer in later] == [256, 128, 64]
    assert all(layer.kernel_regularizer is None for layer in later)
    rates = [model.get_layer(f"head_dropout{i}").rate for i in (1, 2, 3, 4)]
    assert rates == sorted(rates, reverse=True) and rates[0] == 0.5 and rates[-1] == 0.1


def test_cnmc_inception_resnet_frozen_backbone_trains_only_the_head():
    model = ref.cnmc_model(backbone_name="InceptionResNetV2", input_shape=(75, 75, 3),
                            weights=None, backbone_trainable=False)
    assert model.get_layer("backbone").trainable_weights == []
    # head_bn gamma/beta 2*1536, then 1536*512+512, 512*256+256, 256*128+128, 128*64+64, 64*2+2
    head = 2 * 1536 + 786_944 + 131_328 + 32_896 + 8_256 + 130
    assert trainable_param_count(model) == head


@pytest.fixture(scope="module")
def resnet50_partial() -> keras.Model:
    return ref.resnet50_model(input_shape=(32, 32, 3), num_classes=4, weights=None,
                               trainable="partial")


def test_resnet50_applies_its_own_preprocessing_inside_the_model(resnet50_partial):
    # The model takes [0, 255] RGB; its features must equal the backbone fed the output of
    # ResNet50's preprocess_input (BGR, minus the ImageNet mean) computed outside.
    pixels = _pixels((2, 32, 32, 3))
    backbone = resnet50_partial.get_layer("backbone")
    features = keras.Model(resnet50_partial.input,
                           resnet50_partial.get_layer("head_dense").input)
    expected = backbone(keras.applications.resnet50.preprocess_input(pixels.copy()),
                        training=False)
    np.testing.assert_allclose(features(pixels, training=False), expected, rtol=1e-4,
                               atol=1e-4)


def test_resnet50_training_depths(resnet50_partial):
    backbone = resnet50_partial.get_layer("backbone")
    trainable = {layer.name for layer in backbone.layers if layer.trainable_weights}
    assert "conv5_block1_0_conv" in trainable and "conv5_block3_3_conv" in trainable
    assert "conv4_block6_3_conv" not in trainable
    assert not any(isinstance(backbone.get_layer(n), keras.layers.BatchNormalization)
                   for n in trainable)
    applications.set_resnet50_trainable(backbone, "frozen", "conv5_block1_1_conv")
    assert backbone.trainable_weights == []
    assert trainable_param_count(resnet50_partial) == 2048 * 4 + 4
    applications.set_resnet50_trainable(backbone, "full", "conv5_block1_1_conv")
    assert backbone.get_layer("conv1_conv").trainable  # re-enabled after the freeze


# --------------------------------------------------------------------------- ResNeXt


def test_resnext50_32x4d_count_and_grouped_convolutions():
    # The reference ResNeXt-50 (32x4d) with a 1000-class head has 25,028,904 parameters;
    # BatchNorm moving statistics are not trainable and not part of it.
    model = ref.resnext50_32x4d(input_shape=(224, 224, 3), num_classes=1000)
    assert trainable_param_count(model) == 25_028_904
    grouped = [layer for layer in model.layers
               if isinstance(layer, keras.layers.Conv2D) and layer.groups == 32]
    assert len(grouped) == 3 + 4 + 6 + 3
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    moving = sum(2 * norm.moving_mean.shape[0] for norm in norms)
    assert model.count_params() - trainable_param_count(model) == moving
    stage_names = {name.split("_")[0] for name in (layer.name for layer in model.layers)
                   if name.startswith("stage")}
    assert stage_names == {"stage1", "stage2", "stage3", "stage4"}
    assert model.get_layer("stage3_block6_group_conv").groups == 32


@pytest.fixture()
def small_resnext() -> keras.Model:
    keras.utils.set_random_seed(0)
    return ref.resnext14(input_shape=(32, 32, 3), num_classes=3)


def test_replace_head_keeps_the_backbone_and_changes_the_class_count(small_resnext):
    before = small_resnext.get_layer("stage2_block1_group_conv").get_weights()[0].copy()
    replaced = rx.replace_head(small_resnext, 5)
    assert small_resnext.output.shape[-1] == 3 and replaced.output.shape[-1] == 5
    after = replaced.get_layer("stage2_block1_group_conv")
    assert after is small_resnext.get_layer("stage2_block1_group_conv")
    assert np.array_equal(after.get_weights()[0], before)
    assert replaced.get_layer("head_dense").kernel.shape == (256, 5)


def test_set_retrain_head_trains_only_the_head(small_resnext):
    count = rx.set_retrain(small_resnext, "head")
    assert count == 256 * 3 + 3
    assert {w.path.split("/")[0] for w in small_resnext.trainable_weights} == {"head_dense"}
    conv = small_resnext.get_layer("stage1_block1_group_conv").kernel.numpy().copy()
    moving_mean = small_resnext.get_layer("stage1_block1_group_bn").moving_mean.numpy().copy()
    head = small_resnext.get_layer("head_dense").kernel.numpy().copy()
    small_resnext.compile(optimizer=keras.optimizers.SGD(0.1),
                          loss="sparse_categorical_crossentropy")
    small_resnext.train_on_batch(_pixels((4, 32, 32, 3)), np.array([0, 1, 2, 1]))
    assert np.array_equal(small_resnext.get_layer("stage1_block1_group_conv").kernel.numpy(), conv)
    # frozen BatchNorm runs in inference mode: its statistics do not move either
    assert np.array_equal(
        small_resnext.get_layer("stage1_block1_group_bn").moving_mean.numpy(), moving_mean)
    assert not np.array_equal(small_resnext.get_layer("head_dense").kernel.numpy(), head)


def test_set_retrain_parts_grow_and_all_undoes_a_freeze(small_resnext):
    full = trainable_param_count(small_resnext)
    counts = [rx.set_retrain(small_resnext, part) for part in rx.RETRAIN_CHOICES]
    assert counts == sorted(counts) and len(set(counts)) == 4 and counts[-1] == full
    rx.set_retrain(small_resnext, "last_stage")
    assert small_resnext.get_layer("stage3_block2_expand_conv").trainable
    assert not small_resnext.get_layer("stage2_block1_expand_conv").trainable
    with pytest.raises(ValueError, match="retrain must be one of"):
        rx.set_retrain(small_resnext, "stem")
