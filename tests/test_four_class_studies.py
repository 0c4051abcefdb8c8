"""The four-class blood-cell study scripts, end to end on tiny hand-made data.

A Kaggle-like set (``dataset2-master/images/{TRAIN,TEST}/<CLASS>/*.png``, 48x64 px, one
coloured "cell" per image whose colour gives the class) and a Zheng-like set with
ground-truth masks are drawn in a temporary folder; every script runs in-process with its
--quick knobs shrunk further (tiny networks, 1-8 epochs), and the tests check what the
scripts promise: fresh models per optimizer, TRAIN/TEST kept apart, scalers fitted on training
images only, the U-Net trained without test images, random splits labelled LEAKY, ResNet50
stopping with one line when no weights can be had, and tables written.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import elu_cnn_optimizers as elu
import resnet50_training_depth as resnet
import scaling_masks_cnn_fcn as copenhagen
import unet_masks
from leukocyte_cnn.base.cli import run_main
from leukocyte_cnn.inputs import masks as mask_lib
from leukocyte_cnn.inputs import scaling
from leukocyte_cnn.splits.split_files import load_split

CLASSES = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]
COLOURS = {"EOSINOPHIL": (200, 60, 60), "LYMPHOCYTE": (50, 50, 170),
           "MONOCYTE": (60, 150, 60), "NEUTROPHIL": (90, 90, 90)}
BACKGROUND = (225, 220, 215)


def _cell_image(rng, colour, size=(48, 64)):
    """A light, noisy background with one disk of ``colour``; returns (image, disk mask)."""
    height, width = size
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.integers(16, height - 16), rng.integers(16, width - 16)
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(8, 13) ** 2
    image = np.empty((height, width, 3), np.float64)
    image[:] = BACKGROUND
    image[disk] = colour
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), disk


@pytest.fixture(scope="module")
def kaggle_like(tmp_path_factory):
    """16 TRAIN and 6 TEST images per class in the Kaggle layout."""
    root = tmp_path_factory.mktemp("kaggle_like")
    rng = np.random.default_rng(0)
    for split, n in (("TRAIN", 16), ("TEST", 6)):
        for cls in CLASSES:
            folder = root / "dataset2-master" / "images" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                image, _ = _cell_image(rng, COLOURS[cls])
                Image.fromarray(image).save(folder / f"_{i % 2}_{i // 2 + 100 * len(split)}.png")
    return root


@pytest.fixture(scope="module")
def zheng_like(tmp_path_factory):
    """Zheng 2018 layout: 'Dataset 1/NNN.bmp' + mask 'NNN.png' (cell 255) + labels CSV."""
    root = tmp_path_factory.mktemp("zheng_like")
    folder = root / "Dataset 1"
    folder.mkdir()
    rng = np.random.default_rng(1)
    lines = ["image ID,class label"]
    for index in range(1, 21):
        label = (index - 1) % 4 + 1
        image, disk = _cell_image(rng, list(COLOURS.values())[label - 1])
        Image.fromarray(image).save(folder / f"{index:03d}.bmp")
        Image.fromarray(disk.astype(np.uint8) * 255).save(folder / f"{index:03d}.png")
        lines.append(f"{index},{label}")
    (root / "Class Labels of Dataset 1.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run scripts with data/ and results/ inside the test's own folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the way an offline machine does, and is counted."""
    import urllib.request

    import keras

    attempts = []

    def offline(*args, **kwargs):
        attempts.append(args)
        raise Exception("URL fetch failure on https://example.invalid: None -- "
                        "[Errno -2] Name or service not known")

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return attempts


def _shrink(monkeypatch, module, **values):
    for key, value in values.items():
        monkeypatch.setitem(module.QUICK, key, value)


# --------------------------------------------------------------------------- ELU CNN


def test_elu_study_builds_a_fresh_model_per_optimizer_and_beats_chance(
        kaggle_like, workdir, monkeypatch, capsys):
    from leukocyte_cnn.models import networks

    _shrink(monkeypatch, elu, IMAGE_SIZE=(32, 32), FILTERS=(8, 16, 16, 16, 16),
            CONVS_PER_BLOCK=1, DENSE_UNITS=16, EPOCHS=8, PATIENCE=8, BATCH_SIZE=8,
            MAX_IMAGES_PER_CLASS=None)
    built, real_builder = [], networks.elu_cnn

    def spy(**kwargs):
        model = real_builder(**kwargs)
        built.append((model, kwargs["dropout"], [w.copy() for w in model.get_weights()]))
        return model

    monkeypatch.setattr(networks, "elu_cnn", spy)
    args = elu.parse_args(["--dataset", "kaggle", "--data-root", str(kaggle_like), "--quick",
                           "--optimizers", "adam,sgd", "--seeds", "1"])
    elu.main(args)
    run = workdir / "results" / "elu_cnn_optimizers_kaggle_quick"

    # One new model per (optimizer, seed), each starting from the seed's initial weights:
    # the second optimizer does not continue from the first one's trained weights. (Same
    # architecture only: a Dropout layer draws from the seed too and shifts later weights.)
    assert len(built) == 2 and built[0][0] is not built[1][0]
    for before, after in zip(built[0][2], built[1][2], strict=True):
        np.testing.assert_array_equal(before, after)
    trained = built[0][0].get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(trained, built[0][2], strict=True))
    assert [d for _, d, _ in built] == [0.0, 0.0]
    sgd = built[1][0].optimizer
    assert type(sgd).__name__ == "SGD" and float(sgd.momentum) == elu.SGD_MOMENTUM

    # TRAIN/TEST split: the test set is exactly the TEST folder.
    predictions = pd.read_csv(run / "adam" / "trial_00" / "fold_00" / "predictions.csv")
    assert sorted(predictions["image"].str.split("/").str[0].unique()) == ["TEST"]
    assert len(predictions) == 24
    # Four coloured classes are easy: Adam must reach more than twice chance (0.25); it
    # reached 0.875 when this test was written.
    accuracy = float((predictions["pred"] == predictions["label"]).mean())
    assert accuracy >= 0.6, accuracy

    table = pd.read_csv(run / "comparison.csv")
    assert table["setting"].tolist() == ["adam", "sgd"]
    assert not table["leaky"].any()
    assert table.loc[0, "accuracy_mean"] == pytest.approx(accuracy)
    assert "LEAKY" not in (run / "comparison.md").read_text()
    assert (run / "val_accuracy_curves.png").is_file()
    assert (run / "confusion_adam.png").is_file()

    # Resume: the same command trains nothing and builds no model.
    capsys.readouterr()
    elu.main(args)
    assert len(built) == 2
    assert capsys.readouterr().out.count("finished earlier, kept") == 2


def test_model_4_adds_dropout_after_each_dense_layer():
    from leukocyte_cnn.base.knobs import script_knobs

    settings = {**script_knobs(elu), **elu.QUICK, "IMAGE_SIZE": (32, 32)}
    names = lambda model: [layer.name for layer in model.layers]  # noqa: E731
    assert elu.MODELS["sgd_dropout"] == ("sgd", True) and elu.DROPOUT == 0.3
    with_dropout = names(elu.build_elu_cnn(settings, 4, elu.DROPOUT))
    assert [n for n in with_dropout if "dropout" in n] == ["dense1_dropout", "dense2_dropout"]
    assert not [n for n in names(elu.build_elu_cnn(settings, 4, 0.0)) if "dropout" in n]


def test_random_split_is_labelled_leaky_everywhere(kaggle_like, workdir, monkeypatch, capsys):
    _shrink(monkeypatch, elu, IMAGE_SIZE=(32, 32), FILTERS=(4, 4, 4, 4, 4), CONVS_PER_BLOCK=1,
            DENSE_UNITS=8, EPOCHS=1, PATIENCE=1, BATCH_SIZE=16, MAX_IMAGES_PER_CLASS=None)
    elu.main(elu.parse_args(["--dataset", "kaggle", "--data-root", str(kaggle_like), "--quick",
                             "--optimizers", "adam", "--seeds", "1", "--split-method", "random"]))
    run = workdir / "results" / "elu_cnn_optimizers_kaggle_quick"
    config = json.loads((run / "settings.json").read_text())["config"]
    assert config["leaky"] is True and config["split_method"] == "random"
    assert "LEAKY SPLIT" in (run / "comparison.md").read_text()
    assert pd.read_csv(run / "comparison.csv")["leaky"].all()
    assert "LEAKY SPLIT" in capsys.readouterr().out
    # the random split really mixes the owner's TRAIN and TEST images into the test set
    predictions = pd.read_csv(run / "adam" / "trial_00" / "fold_00" / "predictions.csv")
    assert set(predictions["image"].str.split("/").str[0]) == {"TRAIN", "TEST"}


# --------------------------------------------------------------------------- ResNet50


def test_resnet_without_weights_stops_with_one_line_and_trains_nothing(
        kaggle_like, workdir, no_downloads, capsys):
    argv = ["--dataset", "kaggle", "--data-root", str(kaggle_like), "--quick"]
    with pytest.raises(SystemExit) as stopped:
        run_main(lambda: resnet.main(resnet.parse_args(argv)))
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5:")
    assert "--weights PATH" in err and "--allow-random-init" in err
    assert len(no_downloads) == 1  # one (failed) fetch attempt, no network reached
    assert not (workdir / "results").exists()
    # a --weights file that does not exist is refused before anything else
    with pytest.raises(SystemExit):
        run_main(lambda: resnet.main(resnet.parse_args(argv + ["--weights", "nope.h5"])))
    assert "nope.h5: weights file not found" in capsys.readouterr().err


@pytest.mark.slow  # builds and traces a full ResNet50: ~30 s of CPU even at 32x32 px
def test_resnet_random_init_run_says_so_in_its_table(kaggle_like, workdir, no_downloads,
                                                      monkeypatch):
    _shrink(monkeypatch, resnet, IMAGE_SIZE=(32, 32), EPOCHS=1, PATIENCE=1, BATCH_SIZE=16,
            MAX_IMAGES_PER_CLASS=2)
    with pytest.warns(UserWarning, match="training from random weights"):
        resnet.main(resnet.parse_args(["--dataset", "kaggle", "--data-root", str(kaggle_like),
                                       "--quick", "--allow-random-init", "--depths", "frozen"]))
    run = workdir / "results" / "resnet50_training_depth_kaggle_quick"
    table = pd.read_csv(run / "comparison.csv")
    assert table["setting"].tolist() == ["frozen"] and table["init"].tolist() == ["random init"]
    text = (run / "comparison.md").read_text()
    assert "(random init)" in text.splitlines()[0] and "NOT the study's ImageNet" in text
    assert (run / "frozen" / "trial_00" / "fold_00" / "predictions.csv").is_file()


# --------------------------------------------------------------------------- Copenhagen CNN/FCN


def test_scaling_study_fits_scalers_on_training_images_only(kaggle_like, workdir, monkeypatch):
    _shrink(monkeypatch, copenhagen, EPOCHS=1, PATIENCE=1, BATCH_SIZE=16,
            MAX_IMAGES_PER_CLASS=None)
    copenhagen.main(copenhagen.parse_args([
        "--dataset", "kaggle", "--data-root", str(kaggle_like), "--quick", "--trials", "1",
        "--scalings", "channel", "--masks", "otsu", "--networks", "cnn,fcn"]))
    run = workdir / "results" / "scaling_masks_cnn_fcn_kaggle_quick"
    table = pd.read_csv(run / "comparison.csv")
    assert table["setting"].tolist() == ["cnn_channel_otsu", "fcn_channel_otsu"]
    assert table["model_mb"].gt(0).all() and table["trials"].eq(1).all()
    for name in ("per_trial.csv", "comparison.md", "val_accuracy_curves.png",
                 "confusion_cnn_channel_otsu.png", "feature_maps_cnn_channel_otsu.png",
                 "feature_maps_fcn_channel_otsu.png"):
        assert (run / name).is_file(), name

    # The saved statistics are those of the (Otsu-masked) TRAIN images of the fold, and
    # not those of all images: a scaler that saw test images would fail here.
    split = load_split(next((workdir / "data" / "splits").glob("kaggle_predefined*.csv")))
    rows = split.fold(0)
    otsu_root = mask_lib.otsu_mask_root("data", "kaggle", split.settings["dataset_hash"],
                                        min_votes=copenhagen.OTSU_MIN_VOTES)

    def moments(part):
        masks = mask_lib.ensure_otsu_masks(part, otsu_root, min_votes=copenhagen.OTSU_MIN_VOTES)
        return scaling.moments_of_images(part["path"].tolist(), (48, 64), masks=masks)

    saved = scaling.load_moments(run / "scalers" / "fold_00_otsu.npz")
    train = rows[rows.role == "train"]
    assert saved.count == len(train) > 0
    np.testing.assert_allclose(saved.sum, moments(train).sum)
    everything = moments(rows[rows.role.isin(["train", "val", "test"])])
    assert not np.allclose(saved.sum / saved.count, everything.sum / everything.count)
    # the model's first layer carries exactly these statistics
    import keras

    model = keras.models.load_model(run / "cnn_channel_otsu" / "trial_00" / "fold_00" /
                                    "model.keras", safe_mode=True)
    channel = scaling.scaler_from_moments("channel", saved)
    layer = model.get_layer("scaling")
    np.testing.assert_allclose(np.ravel(layer.get_weights()[0]), channel.mean.ravel(), rtol=1e-5)


# --------------------------------------------------------------------------- U-Net masks


def test_unet_learns_from_training_masks_only_and_scores_against_ground_truth(
        zheng_like, workdir, monkeypatch):
    import cross_validation_splits as cvs

    cvs.main(cvs.parse_args(["--dataset", "zheng2018", "--data-root", str(zheng_like),
                             "--method", "kfold", "--k", "2", "--out-dir", "data/splits"]))
    split_csv = next((workdir / "data" / "splits").glob("zheng2018_kfold*.csv"))
    _shrink(monkeypatch, unet_masks, IMAGE_SIZE=(24, 32), START_FILTERS=4, EPOCHS=1,
            PATIENCE=1, BATCH_SIZE=8, MAX_IMAGES_PER_CLASS=None)
    from leukocyte_cnn.runs import unet_masks as unet_lib

    seen, real_pairs = [], unet_lib.pair_dataset

    def spy(table, target_column, *args, **kwargs):
        seen.append((table.copy(), target_column, kwargs["shuffle"]))
        return real_pairs(table, target_column, *args, **kwargs)

    monkeypatch.setattr(unet_lib, "pair_dataset", spy)
    unet_masks.main(unet_masks.parse_args([
        "--dataset", "zheng2018", "--data-root", str(zheng_like), "--split", str(split_csv),
        "--folds", "0", "--quick"]))

    rows = load_split(split_csv).fold(0)
    test_images = set(rows.loc[rows.role == "test", "image"])
    (train, target, shuffled), (val, _, _) = seen
    assert shuffled and target == "truth"  # every training image has a ground-truth mask
    assert set(train["role"]) == {"train"} and set(val["role"]) == {"val"}
    assert not (set(train["image"]) | set(val["image"])) & test_images

    unet_args = unet_masks.parse_args(["--dataset", "zheng2018", "--data-root",
                                       str(zheng_like), "--split", str(split_csv), "--quick"])
    from leukocyte_cnn.base.knobs import resolve_settings

    split = load_split(split_csv)
    s = resolve_settings(unet_masks, unet_args)
    unet = unet_lib.UNetSettings.from_knobs(s, otsu_min_votes=s["OTSU_MIN_VOTES"],
                                            max_images_per_class=s["MAX_IMAGES_PER_CLASS"],
                                            seed=0)
    root = unet_lib.mask_root("data", split, 0, unet)
    assert mask_lib.mask_set_is_complete(root)
    record = json.loads((root / "fingerprint.json").read_text())
    assert record["inputs"]["split_sha256"] == split.settings["split_sha256"]
    assert record["made_by"]["unet_checkpoint_sha256"]  # which U-Net made these masks
    assert set(pd.read_csv(root / "masks.csv")["unet_run"]) == {
        record["made_by"]["unet_run"]}
    for image in rows.loc[rows.role != "excluded", "image"]:  # a mask for every image
        assert mask_lib.read_mask(mask_lib.mask_file(root, image)).shape == (48, 64)

    run = workdir / "results" / "unet_masks_zheng2018_quick"
    summary = pd.read_csv(run / "mask_summary.csv")
    otsu_test = summary[(summary["comparison"] == "Otsu vs ground truth")
                        & (summary["role"] == "test")]
    assert len(otsu_test) == 1 and otsu_test["images"].item() == len(test_images)
    # dark disks on a light background: Otsu finds them almost exactly
    assert otsu_test["iou_mean"].item() > 0.9
    assert {"U-Net vs ground truth", "U-Net vs Otsu (agreement)"} <= set(summary["comparison"])
    assert "U-Net vs ground truth" in (run / "report.html").read_text()  # the run's page
    scores = pd.read_csv(run / "fold_00" / "mask_scores.csv")
    assert scores["unet_vs_truth_iou"].between(0, 1).all()
