"""The COLOR_MODE knob (issue 17): grayscale inputs, applied in the pipeline before the cache.

``grayscale`` is the ITU-R 601 luminance (0.299 R + 0.587 G + 0.114 B) copied into all three
channels. The study scripts run end to end with it on the synthetic 4-class set, record it in
``settings.json`` and their reports, and ``serve.py`` converts uploads the same way.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import elu_cnn_optimizers as elu
import scaling_masks_cnn_fcn as copenhagen
from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.inputs import pipeline

CLASSIFIER_SCRIPTS = ["linear_cnn_binary_lpocv", "linear_cnn_multiclass_lpocv",
                      "resnext_from_scratch", "resnext_transfer_learning", "elu_cnn_optimizers",
                      "resnet50_training_depth", "scaling_masks_cnn_fcn", "all_idb1_paper_cnn",
                      "cnmc_transfer"]


@pytest.fixture
def colour_images(tmp_path):
    """Three 20x24 images of random colours (PNG, so decoding is exact)."""
    rng = np.random.default_rng(0)
    paths, pixels = [], []
    for i in range(3):
        image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        path = tmp_path / f"im{i}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
        pixels.append(image)
    return paths, np.stack(pixels)


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def test_grayscale_pipeline_yields_equal_channels_of_the_luminance(colour_images):
    paths, pixels = colour_images
    gray = pipeline.load_arrays(paths, (20, 24), color_mode="grayscale")
    rgb = pipeline.load_arrays(paths, (20, 24))
    assert gray.shape == rgb.shape == (3, 20, 24, 3)
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    np.testing.assert_allclose(gray[..., 0], luminance(pixels), atol=0.51 + 1e-3)
    np.testing.assert_array_equal(rgb, pixels)  # "rgb" leaves the pixels alone
    # the HTTP service's one-image path gives the same pixels
    np.testing.assert_array_equal(pipeline.load_image(paths[1], (20, 24),
                                                      color_mode="grayscale"), gray[1])


def test_training_batches_are_grayscale_before_augmentation_and_after_the_cache(
        colour_images, tmp_path):
    from leukocyte_cnn.inputs.augment import online_augmentation

    paths, _ = colour_images
    for cache in ("memory", str(tmp_path / "cache" / "c")):
        ds = pipeline.make_dataset(paths, [0, 1, 0], (16, 16), 2, shuffle=True, cache=cache,
                                   augment=online_augmentation(rotation_degrees=30, seed=1),
                                   color_mode="grayscale")
        for _ in range(2):  # the second epoch reads the cache
            for images, _labels in ds:
                images = images.numpy()
                np.testing.assert_allclose(images[..., 0], images[..., 1], atol=1e-3)
                np.testing.assert_allclose(images[..., 0], images[..., 2], atol=1e-3)


def test_a_file_cache_of_rgb_images_is_not_reused_for_grayscale(colour_images, tmp_path):
    paths, _ = colour_images
    prefix = tmp_path / "cache" / "c"
    for mode in ("rgb", "grayscale"):
        images = np.concatenate([b.numpy() for b, _ in pipeline.make_dataset(
            paths, [0, 1, 0], (20, 24), 3, cache=prefix, color_mode=mode)])
        same = np.array_equal(images[..., 0], images[..., 1])
        assert same == (mode == "grayscale")
    assert len({p.name.split(".")[0] for p in prefix.parent.iterdir()}) == 2


def test_an_unknown_colour_mode_is_refused_in_one_line(colour_images):
    paths, _ = colour_images
    with pytest.raises(InputError, match="COLOR_MODE 'grey': expected one of rgb, grayscale"):
        pipeline.make_dataset(paths, None, (20, 24), 2, color_mode="grey")


@pytest.mark.parametrize("name", CLASSIFIER_SCRIPTS)
def test_every_classifier_script_has_the_knob(name):
    import importlib

    module = importlib.import_module(name)
    assert module.COLOR_MODE == "rgb"
    assert 'COLOR_MODE = "rgb"' in open(module.__file__).read()  # a documented knob line


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def synthetic_kaggle_root(tmp_path_factory):
    """``--data-root`` of the synthetic 4-class set, generated once for this module."""
    return tmp_path_factory.mktemp("synthetic_kaggle")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """One working folder for both studies: the split under data/ is made once."""
    return tmp_path_factory.mktemp("studies")


@pytest.fixture
def colour_modes(monkeypatch):
    """Every colour mode the pipeline is asked for, and whether its batches were gray."""
    seen = []
    real = pipeline.make_dataset

    def spy(*args, **kwargs):
        seen.append(kwargs.get("color_mode", "rgb"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "make_dataset", spy)
    return seen


def _shrink(monkeypatch, module, **values):
    for key, value in values.items():
        monkeypatch.setitem(module.QUICK, key, value)


def _check_recorded(run, trial_dir):
    config = json.loads((run / "settings.json").read_text())["config"]
    assert config["knobs"]["COLOR_MODE"] == "grayscale"
    text = (run / "comparison.md").read_text()
    assert "input colours (COLOR_MODE): grayscale" in text
    predictions = pd.read_csv(run / trial_dir / "fold_00" / "predictions.csv")
    assert len(predictions) > 0


def test_elu_cnn_runs_grayscale_end_to_end_and_serves_grayscale(
        synthetic_kaggle_root, study_dir, tmp_path, monkeypatch, colour_modes):
    from leukocyte_cnn.service.app import decode_upload, load_classifier

    monkeypatch.chdir(study_dir)
    monkeypatch.setattr(elu, "COLOR_MODE", "grayscale")  # as the inline edit would
    _shrink(monkeypatch, elu, IMAGE_SIZE=(32, 32), FILTERS=(4, 4, 4, 4, 4), DENSE_UNITS=8,
            EPOCHS=1, PATIENCE=1, BATCH_SIZE=16, MAX_IMAGES_PER_CLASS=4)
    elu.main(elu.parse_args(["--dataset", "synthetic_kaggle", "--data-root",
                             str(synthetic_kaggle_root), "--quick", "--optimizers", "adam",
                             "--seeds", "1"]))
    run = study_dir / "results" / "elu_cnn_optimizers_synthetic_kaggle_quick"
    _check_recorded(run, "adam/trial_00")
    assert colour_modes and set(colour_modes) == {"grayscale"}

    # serve.py reads the mode from the run's settings and converts uploads alike
    trial = run / "adam" / "trial_00"
    classifier = load_classifier(trial / "fold_00" / "model.keras", trial / "settings.json")
    assert classifier.color_mode == "grayscale"
    buffer = tmp_path / "upload.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), np.uint8)
                    ).save(buffer)
    image = decode_upload(buffer.read_bytes(), "upload.png", classifier, 10**6)
    assert image.shape == (32, 32, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_copenhagen_cnn_runs_grayscale_end_to_end(synthetic_kaggle_root, study_dir, monkeypatch,
                                                  colour_modes):
    from leukocyte_cnn.inputs import scaling

    monkeypatch.chdir(study_dir)
    monkeypatch.setattr(copenhagen, "COLOR_MODE", "grayscale")
    _shrink(monkeypatch, copenhagen, EPOCHS=1, PATIENCE=1, BATCH_SIZE=16,
            MAX_IMAGES_PER_CLASS=4)
    copenhagen.main(copenhagen.parse_args([
        "--dataset", "synthetic_kaggle", "--data-root", str(synthetic_kaggle_root), "--quick",
        "--trials", "1", "--scalings", "channel", "--masks", "none", "--networks", "cnn"]))
    run = study_dir / "results" / "scaling_masks_cnn_fcn_synthetic_kaggle_quick"
    _check_recorded(run, "cnn_channel_none/trial_00")
    assert colour_modes and set(colour_modes) == {"grayscale"}
    # the scaler was fitted on grayscale training images: per pixel, equal channel sums
    saved = scaling.load_moments(run / "scalers" / "fold_00_none.npz")
    assert saved.sum.shape[-1] == 3 and saved.count > 0
    np.testing.assert_allclose(saved.sum[..., 0], saved.sum[..., 1], atol=1e-3)
    np.testing.assert_allclose(saved.sum[..., 0], saved.sum[..., 2], atol=1e-3)
