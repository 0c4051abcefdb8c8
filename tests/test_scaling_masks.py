"""Scalers, Otsu masks, overlap scores and study tables (leukocyte_cnn.inputs.scaling/masks,
reporting.comparisons, runs.trials).

Every expected number is computed by hand (or by numpy over the whole array at once, which
is what the streamed accumulation must reproduce). No training: the file runs in seconds.
"""
from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.filters import threshold_otsu

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.inputs import masks, scaling
from leukocyte_cnn.reporting import comparisons
from leukocyte_cnn.runs import trials

# --------------------------------------------------------------------------- scalers


def test_two_one_pixel_images_by_hand():
    # Pixel values (R, G, B): image a = (0, 10, 20), image b = (2, 30, 20).
    a = np.array([[[0, 10, 20]]], dtype=np.uint8)
    b = np.array([[[2, 30, 20]]], dtype=np.uint8)
    moments = scaling.accumulate([a[None], b[None]])  # two batches of one image
    fitted = {m: scaling.scaler_from_moments(m, moments) for m in scaling.SCALINGS}
    # per pixel and channel: means (1, 20, 20); population std (1, 10, 0 -> 1 like sklearn)
    np.testing.assert_allclose(fitted["pixel_channel"].mean.ravel(), [1, 20, 20])
    np.testing.assert_allclose(fitted["pixel_channel"].std.ravel(), [1, 10, 1])
    # one pixel per image: per-channel statistics equal the per-pixel ones here
    np.testing.assert_allclose(fitted["channel"].mean.ravel(), [1, 20, 20])
    # global: the six values 0, 10, 20, 2, 30, 20 -> mean 82/6, E[x^2] = 1804/6
    mean = 82 / 6
    np.testing.assert_allclose(fitted["global"].mean.ravel(), [mean])
    np.testing.assert_allclose(fitted["global"].std.ravel(), [np.sqrt(1804 / 6 - mean ** 2)])
    np.testing.assert_allclose(fitted["divide255"].apply(a).ravel(), [0, 10 / 255, 20 / 255],
                               rtol=1e-6)
    assert fitted["global"].n_images == 2


def test_streamed_statistics_equal_numpy_over_the_whole_array():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(7, 4, 5, 3)).astype(np.float64)
    moments = scaling.accumulate([images[:3], images[3:4], images[4:]])  # uneven batches
    pixel = scaling.scaler_from_moments("pixel_channel", moments)
    channel = scaling.scaler_from_moments("channel", moments)
    glob = scaling.scaler_from_moments("global", moments)
    np.testing.assert_allclose(pixel.mean, images.mean(axis=0))
    np.testing.assert_allclose(pixel.std, images.std(axis=0))
    np.testing.assert_allclose(channel.mean.ravel(), images.mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(channel.std.ravel(), images.std(axis=(0, 1, 2)))
    np.testing.assert_allclose(glob.mean.ravel(), [images.mean()])
    np.testing.assert_allclose(glob.std.ravel(), [images.std()])
    # the deck's scikit-learn StandardScaler on flattened images gives the same per-pixel fit
    from sklearn.preprocessing import StandardScaler

    sk = StandardScaler().fit(images.reshape(len(images), -1))
    np.testing.assert_allclose(pixel.mean.ravel(), sk.mean_)
    np.testing.assert_allclose(pixel.std.ravel(), sk.scale_)
    standardised = channel.apply(images)
    np.testing.assert_allclose(standardised.mean(axis=(0, 1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(standardised.std(axis=(0, 1, 2)), 1, atol=1e-5)


def test_scaler_layer_matches_numpy_and_survives_safe_mode_reload(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(6, 4, 5, 3)).astype(np.float32)
    moments = scaling.accumulate([images])
    for method in scaling.SCALINGS:
        scaler = scaling.scaler_from_moments(method, moments)
        inputs = keras.Input((4, 5, 3))
        model = keras.Model(inputs, scaler.layer()(inputs))
        path = tmp_path / f"{method}.keras"
        model.save(path)
        reloaded = keras.models.load_model(path, safe_mode=True)
        np.testing.assert_allclose(reloaded.predict(images, verbose=0), scaler.apply(images),
                                   rtol=1e-4, atol=1e-4, err_msg=method)


def test_moments_are_saved_and_reloaded_without_pickle(tmp_path):
    images = np.arange(2 * 2 * 3 * 3, dtype=np.float64).reshape(2, 2, 3, 3)
    moments = scaling.accumulate([images])
    path = scaling.save_moments(tmp_path / "m.npz", moments)
    again = scaling.load_moments(path)
    assert again.count == 2
    np.testing.assert_array_equal(again.sum, moments.sum)
    with pytest.raises(InputError, match="scaling 'minmax': unknown"):
        scaling.scaler_from_moments("minmax", moments)


def test_moments_of_images_see_only_the_files_they_are_given(tmp_path):
    # The classifier study fits on its training table alone: rewriting other images (the
    # test images) must not move the statistics, and the numbers equal numpy on the pixels.
    train, test = [], []
    for i in range(3):
        train.append(tmp_path / f"train{i}.png")
        Image.fromarray(np.full((6, 8, 3), 40 * i + 10, np.uint8)).save(train[-1])
        test.append(tmp_path / f"test{i}.png")
        Image.fromarray(np.full((6, 8, 3), 250, np.uint8)).save(test[-1])
    before = scaling.moments_of_images([str(p) for p in train], (6, 8), batch_size=2)
    for path in test:
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(path)
    after = scaling.moments_of_images([str(p) for p in train], (6, 8), batch_size=2)
    np.testing.assert_array_equal(before.sum, after.sum)
    channel = scaling.scaler_from_moments("channel", after)
    np.testing.assert_allclose(channel.mean.ravel(), [50.0] * 3)  # (10 + 50 + 90) / 3
    np.testing.assert_allclose(channel.std.ravel(), [np.std([10, 50, 90])] * 3)


# --------------------------------------------------------------------------- Otsu masks


def test_otsu_threshold_between_two_flat_regions():
    image = np.full((24, 32, 3), 200, np.uint8)
    image[:, :16] = 50  # a dark "cell" half and a light background half
    thresholds = masks.otsu_thresholds(image)
    for channel in range(3):
        assert 50 <= thresholds[channel] < 200
        assert thresholds[channel] == threshold_otsu(image[..., channel])
    mask = masks.otsu_mask(image, min_votes=2)
    assert mask[:, :16].all() and not mask[:, 16:].any()


def test_otsu_ignores_black_rotation_fill():
    # Three grey levels: black fill 0 (corners of a rotated copy), a pale cell at 140,
    # background at 210. Otsu on all pixels separates the fill (threshold 0: the cell would
    # count as background); on content pixels it separates the cell.
    image = np.full((24, 32, 3), 210, np.uint8)
    image[8:16, 10:20] = 140
    image[:6, :6] = 0
    image[-6:, -6:] = 0
    assert threshold_otsu(image[..., 0]) < 140
    thresholds = masks.otsu_thresholds(image)
    assert np.all((thresholds >= 140) & (thresholds < 210))
    mask = masks.otsu_mask(image, min_votes=2)
    expected = np.zeros((24, 32), bool)
    expected[8:16, 10:20] = True
    np.testing.assert_array_equal(mask, expected)  # fill is neither cell nor background


def test_channel_votes_combine_by_majority():
    # Four regions (R, G, B): background (200,200,200); purple-dark (50,50,200): dark in R
    # and G; blue-dark only (200,200,50): dark in B alone; dark everywhere (50,50,50).
    image = np.zeros((8, 32, 3), np.uint8)
    image[:, 0:8] = (200, 200, 200)
    image[:, 8:16] = (50, 50, 200)
    image[:, 16:24] = (200, 200, 50)
    image[:, 24:32] = (50, 50, 50)
    columns = lambda m: [bool(m[:, i * 8:(i + 1) * 8].all()) for i in range(4)]  # noqa: E731
    assert columns(masks.otsu_mask(image, min_votes=2)) == [False, True, False, True]
    assert columns(masks.otsu_mask(image, min_votes=1)) == [False, True, True, True]
    assert columns(masks.otsu_mask(image, min_votes=3)) == [False, False, False, True]


# --------------------------------------------------------------------------- IoU / Dice


def test_iou_and_dice_by_hand():
    pred = np.array([[1, 1, 0], [0, 0, 0]], bool)
    truth = np.array([[1, 0, 0], [1, 0, 0]], bool)
    # intersection 1 pixel, union 3, sizes 2 and 2
    assert masks.iou(pred, truth) == pytest.approx(1 / 3)
    assert masks.dice(pred, truth) == pytest.approx(2 * 1 / (2 + 2))
    assert masks.iou(pred, pred) == 1.0 and masks.dice(pred, pred) == 1.0
    empty = np.zeros_like(pred)
    assert masks.iou(empty, empty) == 1.0 and masks.dice(empty, empty) == 1.0
    assert masks.iou(pred, empty) == 0.0 and masks.dice(empty, truth) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        masks.iou(pred, truth[:, :2])


def test_mask_files_round_trip_and_zheng_grey_is_foreground(tmp_path):
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:5] = True
    path = masks.write_mask(masks.mask_file(tmp_path, "TRAIN/EOSINOPHIL/_0_1.jpeg"), mask)
    assert path == tmp_path / "TRAIN" / "EOSINOPHIL" / "_0_1.png"
    np.testing.assert_array_equal(masks.read_mask(path), mask)
    zheng = np.array([[0, 128, 255]], np.uint8)  # background, cytoplasm, nucleus
    Image.fromarray(zheng).save(tmp_path / "z.png")
    assert masks.read_mask(tmp_path / "z.png").tolist() == [[False, True, True]]
    with pytest.raises(InputError, match="missing.png: mask file not found"):
        masks.read_mask(tmp_path / "missing.png")


def test_otsu_mask_files_are_written_once_per_image(tmp_path):
    image = np.full((12, 16, 3), 210, np.uint8)
    image[3:9, 4:12] = 60
    Image.fromarray(image).save(tmp_path / "a.png")
    table = pd.DataFrame({"image": ["TEST/X/a.png"], "path": [str(tmp_path / "a.png")]})
    (path,) = masks.ensure_otsu_masks(table, tmp_path / "otsu", min_votes=2)
    np.testing.assert_array_equal(masks.read_mask(path), masks.otsu_mask(image, min_votes=2))
    stamp = (tmp_path / "otsu" / "TEST" / "X" / "a.png").stat().st_mtime_ns
    masks.ensure_otsu_masks(table, tmp_path / "otsu", min_votes=2)
    assert (tmp_path / "otsu" / "TEST" / "X" / "a.png").stat().st_mtime_ns == stamp


# --------------------------------------------------------------------------- study tables


def test_spread_and_comparison_table_by_hand():
    assert comparisons.spread([0.8, 0.9, 1.0]) == "0.900 ± 0.100 [0.800, 1.000]"
    assert comparisons.spread([0.5]) == "0.500 (1 trial)"
    assert comparisons.spread([]) == "n/a"
    per_trial = pd.DataFrame({
        "setting": ["a", "a", "a", "b"], "accuracy": [0.8, 0.9, 1.0, 0.25],
        "macro_f1": [0.7, 0.8, 0.9, 0.1], "best_epoch": [3, 5, 7, 1], "epochs_run": [8, 10, 12, 6],
        "converged": [True, True, False, False], "model_mb": [2.0, 2.0, 2.0, 1.0],
        "train_seconds": [10, 20, 30, 5]})
    settings = [comparisons.Setting("a", {"lr": 1e-4}), comparisons.Setting("b", {"lr": 1e-3})]
    numeric, shown = comparisons.comparison_table(per_trial, settings, 0.5)
    a = numeric.set_index("setting").loc["a"]
    assert a["accuracy_mean"] == pytest.approx(0.9) and a["accuracy_std"] == pytest.approx(0.1)
    assert (a["accuracy_min"], a["accuracy_max"]) == (0.8, 1.0)
    assert a["convergence_rate"] == pytest.approx(2 / 3) and a["best_epoch_mean"] == 5
    row = shown.set_index("setting").loc["a"]
    assert row["converged (val acc ≥ 0.5)"] == "2/3 (67%)"
    assert row["lr"] == "0.0001"  # parameters are shown as written, not rounded to 0.000


def test_epoch_numbers_define_convergence_and_the_kept_epoch():
    log = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_loss": [1.2, 0.8, 0.9, 0.95],
                        "val_accuracy": [0.3, 0.45, 0.55, 0.5], "monitor": "val_loss"})
    numbers = comparisons.epoch_numbers(log, 0.5)
    assert numbers["best_epoch"] == 2  # lowest validation loss: the checkpoint kept
    assert numbers["epochs_run"] == 4
    assert numbers["converged"] is True and numbers["epochs_to_threshold"] == 3
    assert numbers["best_val_accuracy"] == pytest.approx(0.55)
    assert comparisons.epoch_numbers(log, 0.6)["converged"] is False


def test_limit_per_class_is_seeded_and_capped():
    table = pd.DataFrame({"image": [f"i{i:02d}" for i in range(30)],
                          "label": [i % 3 for i in range(30)]})
    small = trials.limit_per_class(table, 4, seed=1)
    assert small.groupby("label").size().tolist() == [4, 4, 4]
    assert small.equals(trials.limit_per_class(table, 4, seed=1))
    assert trials.limit_per_class(table, None, seed=1) is table


def test_parse_names_refuses_unknown_settings():
    assert trials.parse_names("adam, sgd", ["adam", "sgd"], "--optimizers") == ["adam", "sgd"]
    assert trials.parse_names(None, ["adam"], "--optimizers") is None
    with pytest.raises(InputError, match="--optimizers nadam: choose from adam, sgd"):
        trials.parse_names("nadam", ["adam", "sgd"], "--optimizers")
