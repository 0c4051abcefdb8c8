"""The ResNeXt experiments end to end: resnext_from_scratch.py and resnext_transfer_learning.py.

Tiny ResNeXt-14s (8-channel first stage) on 32 px copies of hand-made cell images (one
coloured disc per class on a noisy background) in ``tmp_path``, one epoch per model, so the
default suite trains five small models (pretraining, one from-scratch fold, one fine-tuned
fold, both arms of one learning-curve point). What is checked: the run folders the scripts write,
that no fold ever fed its test images (read back from each fold's ``inputs.csv`` and compared
with the split file), that early stopping watched the validation loss of validation images,
that fine-tuning starts from the source weights, that bad checkpoints are refused with one
line before anything trains, and the learning curve's table and subsets.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import reference_networks as ref

import resnext_from_scratch as scratch
import resnext_transfer_learning as transfer
from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.data.images import save_rgb
from leukocyte_cnn.models.source_checkpoints import images_path, sidecar_path
from leukocyte_cnn.runs.learning_curve import subsample_per_class
from leukocyte_cnn.splits.split_files import read_split_csv

TARGET_CLASSES = ("blast", "lymphocyte", "neutrophil")
SOURCE_CLASSES = ("basophil", "eosinophil", "monocyte", "platelet")
TINY = ["--variant", "resnext14", "--image-size", "32", "--cardinality", "2",
        "--bottleneck-width", "2", "--width", "8", "--stem-filters", "8", "--epochs", "1",
        "--patience", "1", "--batch-size", "8"]


def write_cells(root: Path, classes, per_class: int, seed: int, size: int = 40) -> Path:
    """A folder-per-class dataset: one disc of a class colour per image on a noisy background."""
    rng = np.random.default_rng(seed)
    colours = [(150, 40, 170), (40, 110, 210), (210, 70, 60), (60, 170, 90)]
    yy, xx = np.mgrid[:size, :size]
    for c, name in enumerate(classes):
        for i in range(per_class):
            image = rng.integers(170, 230, (size, size, 3)).astype(np.float64)
            cy, cx = rng.integers(size // 2 - 4, size // 2 + 5, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(7, 12) ** 2
            image[disc] = np.array(colours[c]) + rng.normal(0, 12, (disc.sum(), 3))
            save_rgb(root / name / f"{name}_{i:02d}.png", np.clip(image, 0, 255).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Target and source datasets, and one source model pretrained on the source (one fit)."""
    base = tmp_path_factory.mktemp("resnext")
    target = write_cells(base / "target", TARGET_CLASSES, per_class=10, seed=1)
    source = write_cells(base / "source", SOURCE_CLASSES, per_class=10, seed=2)
    results = base / "pretrain_results"
    checkpoint = transfer.main(transfer.parse_args(
        ["--pretrain", "--source-dataset", "folder", "--source-data-root", str(source),
         "--results-dir", str(results), "--checkpoint-name", "source", *TINY]))
    return {"target": target, "source": source, "checkpoint": Path(checkpoint)}


def target_args(data: dict, results: Path, *extra: str) -> list[str]:
    return ["--dataset", "folder", "--data-root", str(data["target"]), "--k", "2",
            "--target", "6", "--results-dir", str(results), *TINY, *extra]


def check_no_fold_fed_its_test_images(run_dir: Path, split_csv: Path, folds) -> None:
    """Each fold's recorded inputs against the split: train from train (or copies of it),
    val exactly the split's val, test exactly its test; early stopping on val_loss."""
    split = read_split_csv(split_csv)
    for k in folds:
        rows = split[split["fold"] == k]
        expected = {role: set(rows.loc[rows["role"] == role, "image"])
                    for role in ("train", "val", "test")}
        fed = pd.read_csv(run_dir / f"fold_{k:02d}" / "inputs.csv", dtype=str)
        trained = set(fed.loc[fed["role"] == "train", "source_image"])
        validated = set(fed.loc[fed["role"] == "val", "image"])
        tested = set(fed.loc[fed["role"] == "test", "image"])
        assert trained and trained <= expected["train"]
        assert validated == expected["val"] and tested == expected["test"]
        assert not (trained | validated) & tested
        # the training files are the augmented copies or the originals, never a test file
        test_paths = set(fed.loc[fed["role"] == "test", "path"])
        assert not set(fed.loc[fed["role"] != "test", "path"]) & test_paths
        log = pd.read_csv(run_dir / f"fold_{k:02d}" / "epochs.csv")
        assert set(log["monitor"]) == {"val_loss"} and log["val_loss"].notna().all()
        predictions = pd.read_csv(run_dir / f"fold_{k:02d}" / "predictions.csv",
                                  dtype={"image": str})
        assert set(predictions["image"]) == expected["test"]


def test_from_scratch_writes_the_run_folder_and_no_fold_sees_its_test_images(data, tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)  # split files and balanced folds go to tmp_path/data
    summary = scratch.main(scratch.parse_args(target_args(data, tmp_path / "results",
                                                          "--folds", "0")))
    run_dir = tmp_path / "results" / "resnext_from_scratch_folder"
    settings = json.loads((run_dir / "settings.json").read_text())["config"]
    assert settings["architecture"] == {"variant": "resnext14", "image_size": 32, "cardinality": 2,
                                        "bottleneck_width": 2, "first_stage_channels": 8,
                                        "stem_filters": 8, "stage_depths": [1, 1, 2],
                                        "small_input_stem": True, "bn_momentum": 0.9}
    assert settings["knobs"]["STAGE_DEPTHS"] == [1, 1, 2]  # QUICK's ResNeXt-14
    split_csv = Path(settings["split_file"])
    assert split_csv.name.startswith("folder_kfold_k2_seed0")
    for name in ("summary.csv", "summary.md", "per_fold.csv", "confusion_matrix.png",
                 "fold_00/model.keras", "fold_00/timing.json"):
        assert (run_dir / name).is_file(), name
    assert set(summary["metric"]) >= {"accuracy", "macro_f1", "roc_auc"}
    assert int(summary.loc[summary["metric"] == "accuracy", "n_folds"].iloc[0]) == 1
    check_no_fold_fed_its_test_images(run_dir, split_csv, folds=(0,))
    # trained on the class-balanced fold: 6 images per class, made from training images only
    fed = pd.read_csv(run_dir / "fold_00" / "inputs.csv")
    assert fed[fed["role"] == "train"].groupby("class_name").size().tolist() == [6, 6, 6]
    assert fed.loc[fed["role"] == "train", "path"].str.contains("augmented").all()


def test_pretrain_writes_checkpoint_sidecar_and_source_listing(data):
    checkpoint = data["checkpoint"]
    meta = json.loads(sidecar_path(checkpoint).read_text())
    assert meta["class_names"] == list(SOURCE_CLASSES)
    assert meta["input_shape"] == [32, 32, 3]
    assert meta["preprocessing"] == "rescaling_in_model" and meta["input_pixels"] == "[0, 255]"
    assert meta["input_scaling"] == {"scale": pytest.approx(1 / 255), "offset": 0.0}
    assert meta["source_dataset"] == "folder" and len(meta["source_dataset_hash"]) == 64
    assert meta["seed"] == 0 and 0.0 <= meta["val_accuracy"] <= 1.0
    assert meta["n_train"] + meta["n_val"] + meta["n_held_out"] == 40  # 1 of 5 folds held out
    assert meta["n_held_out"] == 8 and meta["n_val"] == 4  # early stopping: 10 % of the rest
    low, high = meta["held_out_accuracy_ci"]
    assert low <= meta["held_out_accuracy"] <= high
    listing = pd.read_csv(images_path(checkpoint))
    assert len(listing) == 40 and listing["sha256"].nunique() == 40
    assert sorted(listing["role"].unique()) == ["test", "train", "val"]


def test_fine_tuning_starts_from_the_source_weights(data, tmp_path, monkeypatch):
    import keras

    monkeypatch.chdir(tmp_path)
    transfer.main(transfer.parse_args(target_args(
        data, tmp_path / "results", "--source-checkpoint", str(data["checkpoint"]),
        "--retrain", "head", "--folds", "0")))
    run_dir = tmp_path / "results" / "resnext_transfer_folder"
    source = keras.models.load_model(data["checkpoint"], safe_mode=True)
    tuned = keras.models.load_model(run_dir / "fold_00" / "model.keras", safe_mode=True)
    for layer in ("stem_conv", "stage1_block1_group_conv", "stage3_block2_expand_conv"):
        assert np.array_equal(tuned.get_layer(layer).get_weights()[0],
                              source.get_layer(layer).get_weights()[0]), layer
    assert tuned.get_layer("head_dense").get_weights()[0].shape[-1] == len(TARGET_CLASSES)
    assert source.get_layer("head_dense").get_weights()[0].shape[-1] == len(SOURCE_CLASSES)
    settings = json.loads((run_dir / "settings.json").read_text())["config"]
    assert settings["source"]["sha256"] and settings["knobs"]["RETRAIN"] == "head"
    check_no_fold_fed_its_test_images(run_dir, Path(settings["split_file"]), folds=(0,))


def _copy_checkpoint(data, folder: Path, name: str = "copy") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.keras"
    shutil.copy(data["checkpoint"], path)
    shutil.copy(sidecar_path(data["checkpoint"]), sidecar_path(path))
    shutil.copy(images_path(data["checkpoint"]), images_path(path))
    return path


def _bad_checkpoint(kind: str, data: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tiny = dict(cardinality=2, bottleneck_width=2, first_stage_channels=8, stem_filters=8)
    if kind == "missing":
        return folder / "nothing_here.keras"
    if kind == "not_keras":
        path = folder / "garbage.keras"
        path.write_bytes(b"this is not a zip archive")
        return path
    if kind == "wrong_shape":
        path = folder / "at48.keras"
        ref.resnext14(input_shape=(48, 48, 3), num_classes=4, **tiny).save(path)
        return path
    if kind == "no_head":
        path = folder / "features.keras"
        ref.resnext14(input_shape=(32, 32, 3), num_classes=4, include_top=False, **tiny).save(path)
        return path
    if kind == "no_rescaling":
        path = folder / "prescaled.keras"
        ref.resnext14(input_shape=(32, 32, 3), num_classes=4, input_scaling=None, **tiny).save(path)
        return path
    path = _copy_checkpoint(data, folder)
    if kind == "standardised":
        meta = json.loads(sidecar_path(path).read_text())
        meta["preprocessing"] = "standardised"
        sidecar_path(path).write_text(json.dumps(meta))
    elif kind == "saw_target":
        listing = pd.read_csv(images_path(path))
        target_file = sorted((data["target"] / "blast").glob("*.png"))[3]
        from leukocyte_cnn.base.io import file_sha256
        listing.loc[0, "sha256"] = file_sha256(target_file)
        listing.to_csv(images_path(path), index=False)
    return path


BAD_CHECKPOINTS = {
    "missing": r"nothing_here\.keras: checkpoint not found",
    "not_keras": r"garbage\.keras: not a Keras checkpoint",
    "wrong_shape": r"at48\.keras: checkpoint takes 48x48x3 images but this run feeds 32x32x3; "
                   r"pass --image-size 48",
    "no_head": r"features\.keras: no 'head_dense' layer",
    "no_rescaling": r"prescaled\.keras: model has no Rescaling input layer",
    "standardised": r"copy\.json: source preprocessing is 'standardised'.*feeds \[0, 255\]",
    "saw_target": r"copy\.images\.csv: the source model trained on 1 image\(s\) of the target",
}


@pytest.mark.reliability
@pytest.mark.parametrize("kind", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoints_are_refused_in_one_line_before_training(kind, data, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _bad_checkpoint(kind, data, tmp_path / "checkpoints")
    results = tmp_path / "results"
    args = transfer.parse_args(target_args(data, results, "--source-checkpoint", str(path)))
    with pytest.raises(InputError, match=BAD_CHECKPOINTS[kind]) as caught:
        transfer.main(args)
    assert "\n" not in str(caught.value)
    assert not results.exists() or not any(results.iterdir())  # no run folder, nothing trained


@pytest.mark.reliability
def test_fine_tuning_without_a_checkpoint_says_what_to_pass(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"--source-checkpoint: required .*--pretrain"):
        transfer.main(transfer.parse_args(target_args(data, tmp_path / "results")))


def test_subsamples_are_nested_seeded_and_only_from_training_images():
    rows = pd.DataFrame({"image": [f"{c}/{i:02d}.png" for c in "abc" for i in range(12)],
                         "label": np.repeat([0, 1, 2], 12), "role": "train"})
    small = subsample_per_class(rows, 3, seed=0, fold=1)
    large = subsample_per_class(rows, 8, seed=0, fold=1)
    assert small.groupby("label").size().tolist() == [3, 3, 3]
    assert set(small["image"]) < set(large["image"])                     # nested
    assert small.equals(subsample_per_class(rows, 3, seed=0, fold=1))    # seeded
    assert not small.equals(subsample_per_class(rows, 3, seed=0, fold=2))
    assert len(subsample_per_class(rows, 50, seed=0, fold=1)) == 36      # a class keeps all it has
    with pytest.raises(ValueError, match="non-training"):
        subsample_per_class(rows.assign(role=["train"] * 35 + ["test"]), 3, seed=0, fold=1)


def test_learning_curve_run_trains_both_arms_on_the_same_training_subset(data, tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    fed_per_epoch = []
    from leukocyte_cnn.runs import resnext as resnext_runs

    train_fold = resnext_runs.train_resnext_fold

    def counting(fold, build, *, train_table, **kwargs):
        fed_per_epoch.append(len(train_table))
        return train_fold(fold, build, train_table=train_table, **kwargs)

    monkeypatch.setattr(resnext_runs, "train_resnext_fold", counting)
    table = transfer.main(transfer.parse_args(target_args(
        data, tmp_path / "results", "--source-checkpoint", str(data["checkpoint"]),
        "--train-sizes", "3", "--folds", "0", "--curve-epoch-images", "32",
        "--curve-arms", "scratch,head,all")))
    # 9 images repeated whole to reach 32 a epoch: 4 times each, in every arm
    assert fed_per_epoch == [36, 36, 36]
    run_dir = tmp_path / "results" / "resnext_learning_curve_folder"
    written = pd.read_csv(run_dir / "learning_curve.csv")
    assert (list(zip(written["size"], written["mode"], strict=True))
            == [(3, "scratch"), (3, "head"), (3, "all")])
    assert len(table) == 3 and (written["n_folds"] == 1).all()
    assert (written["train_images"] == 9).all()  # 3 images x 3 classes
    assert (run_dir / "learning_curve.md").is_file()
    assert (run_dir / "learning_curve.png").stat().st_size > 0
    config = json.loads((run_dir / "settings.json").read_text())["config"]
    split = read_split_csv(config["split_file"])
    split_train = set(split.query("fold == 0 and role == 'train'")["image"])
    chosen = {}
    for mode in ("scratch", "head", "all"):
        fed = pd.read_csv(run_dir / f"size_003_{mode}" / "fold_00" / "inputs.csv", dtype=str)
        train = fed[fed["role"] == "train"]
        assert train.groupby("class_name").size().tolist() == [3, 3, 3]
        assert set(train["image"]) <= split_train   # never a validation or test image
        chosen[mode] = set(train["image"])
    assert chosen["scratch"] == chosen["head"] == chosen["all"]  # every arm: the same images
    assert config["curve_arms"] == ["scratch", "head", "all"]
    plans = config["fine_tuning"]  # per arm, what trained at which rate
    assert plans["head"]["layers"]["stage1"] == {**plans["head"]["layers"]["stage1"],
                                                 "trained": False, "learning_rate": None}
    assert plans["all"]["pretrained_lr_factor"] == 0.1
    assert plans["all"]["layers"]["stage1"]["learning_rate"] == pytest.approx(1e-4)
    assert plans["all"]["layers"]["head"]["learning_rate"] == pytest.approx(1e-3)
    # the scratch arm has the source's architecture, freshly initialised
    assert config["scratch_architecture"]["first_stage_channels"] == 8


def _fake_curve_point(run_dir: Path, size: int, mode: str, correct_per_fold) -> None:
    """Fold files of one learning-curve point: 4 test images per fold, some predicted right."""
    for fold, correct in enumerate(correct_per_fold):
        directory = run_dir / f"size_{size:03d}_{mode}" / f"fold_{fold:02d}"
        directory.mkdir(parents=True)
        labels = np.array([0, 0, 1, 1])
        pred = np.where(np.arange(4) < correct, labels, 1 - labels)
        pd.DataFrame({"fold": fold, "image": [f"f{fold}_{i}.png" for i in range(4)],
                      "label": labels, "class_name": np.array(["a", "b"])[labels], "group": "g",
                      "prob_a": np.where(pred == 0, 0.9, 0.1),
                      "prob_b": np.where(pred == 1, 0.9, 0.1), "pred": pred},
                     ).to_csv(directory / "predictions.csv", index=False)
        (directory / "timing.json").write_text(json.dumps({"n_train": 2 * size}))


def test_learning_curve_table_has_one_row_per_size_and_mode_with_mean_and_std(tmp_path):
    from leukocyte_cnn.reporting.learning_curve import learning_curve_table, write_learning_curve

    for size, mode, correct in [(5, "scratch", (2, 3)), (5, "transfer", (3, 3)),
                                (10, "scratch", (3, 4)), (10, "transfer", (4, 4))]:
        _fake_curve_point(tmp_path, size, mode, correct)
    table = learning_curve_table(tmp_path, [5, 10], ["a", "b"])
    assert list(zip(table["size"], table["mode"], strict=True)) == [
        (5, "scratch"), (5, "transfer"), (10, "scratch"), (10, "transfer")]
    # 2/4 and 3/4 right: mean 0.625, sample std 0.125 * sqrt(2)
    first = table.iloc[0]
    assert first["accuracy_mean"] == pytest.approx(0.625)
    assert first["accuracy_std"] == pytest.approx(0.125 * np.sqrt(2))
    assert table.iloc[3]["accuracy_mean"] == 1.0 and table.iloc[3]["accuracy_std"] == 0.0
    assert table["train_images"].tolist() == [10, 10, 20, 20]
    assert table["n_folds"].tolist() == [2, 2, 2, 2]
    # transfer vs scratch on the same test images: 6/8 vs 5/8 right, one image right only by
    # transfer, none only by scratch -> +0.125, exact McNemar p = 1 (one discordant image)
    assert table.loc[1, "accuracy_vs_scratch"] == pytest.approx(0.125)
    assert table.loc[1, "mcnemar_p_vs_scratch"] == 1.0
    assert np.isnan(table.loc[0, "accuracy_vs_scratch"])
    # ROC-AUC paired by repeat: scratch folds 0.5 (all probabilities tied) and 0.75, transfer
    # 0.75 and 0.75 -> differences 0.25 and 0, mean +0.125; one non-zero difference: p = 1
    assert table.loc[1, "roc_auc_vs_scratch"] == pytest.approx(0.125)
    assert table.loc[1, "wilcoxon_p_roc_auc_vs_scratch"] == pytest.approx(1.0)
    write_learning_curve(table, tmp_path, title="curve")
    markdown = (tmp_path / "learning_curve.md").read_text()
    assert "| 5 | scratch | 2 | 10.0 | 0.625 ± 0.177 |" in markdown
    assert markdown.count("\n| 5 |") == 2 and markdown.count("\n| 10 |") == 2
    assert "Δ accuracy vs scratch [95 % CI]" in markdown and "| +0.125 [" in markdown
    assert "Δ ROC-AUC vs scratch [95 % CI] | Wilcoxon p |" in markdown
    assert pd.read_csv(tmp_path / "learning_curve.csv").equals(table)
    assert (tmp_path / "learning_curve.png").stat().st_size > 0


@pytest.mark.slow
def test_from_scratch_resnext_beats_chance_on_separable_cells(data, tmp_path, monkeypatch):
    """Three classes (chance 0.33): the tiny ResNeXt must reach 0.8 pooled test accuracy over
    both folds, each image tested exactly once, no fold feeding its test images."""
    monkeypatch.chdir(tmp_path)
    args = target_args(data, tmp_path / "results")
    args[args.index("--epochs") + 1] = "25"
    args[args.index("--patience") + 1] = "8"
    summary = scratch.main(scratch.parse_args(args))
    run_dir = tmp_path / "results" / "resnext_from_scratch_folder"
    split_csv = json.loads((run_dir / "settings.json").read_text())["config"]["split_file"]
    check_no_fold_fed_its_test_images(run_dir, Path(split_csv), folds=(0, 1))
    tested = pd.concat([pd.read_csv(run_dir / f"fold_{k:02d}" / "predictions.csv") for k in (0, 1)])
    assert len(tested) == tested["image"].nunique() == 30
    accuracy = float(summary.loc[summary["metric"] == "accuracy", "pooled"].iloc[0])
    assert accuracy >= 0.8, accuracy


def test_a_curve_stopped_part_way_is_rebuilt_from_its_finished_sizes(tmp_path):
    """summarize_results.py on a learning-curve run: sizes with every fold of both arms are
    tabled (mean over folds checked by hand), a size with a fold missing is named, not shown."""
    import summarize_results

    run_dir = tmp_path / "curve"
    for size, mode, correct in [(5, "scratch", (2, 4)), (5, "transfer", (3, 3)),
                                (10, "scratch", (4, 4)), (10, "transfer", (4,))]:
        _fake_curve_point(run_dir, size, mode, correct)
    config = {"class_names": ["a", "b"], "train_sizes": [5, 10, 20], "n_folds": 2,
              "title": "curve", "split_file": "data/splits/x.csv"}
    (run_dir / "settings.json").write_text(json.dumps({"config": config, "provenance": {}}))
    summarize_results.main(summarize_results.parse_args([str(run_dir)]))
    table = pd.read_csv(run_dir / "learning_curve.csv")
    assert table["size"].tolist() == [5, 5]          # 10 lacks a transfer fold, 20 never ran
    assert table["accuracy_mean"].tolist() == [0.75, 0.75]  # (2/4 + 4/4) / 2 and 3/4
    markdown = (run_dir / "learning_curve.md").read_text()
    assert "Not finished, so not shown: 10, 20 training images per class" in markdown


def test_a_tiny_training_subset_is_repeated_whole_to_fill_an_epoch():
    """20 images are one step at batch 32; repeated to >= min_images every image appears
    equally often (class shares kept); a set already that large, or 0, is left alone."""
    from leukocyte_cnn.runs.learning_curve import repeat_to_epoch

    rows = pd.DataFrame({"image": [f"i{k}" for k in range(10)], "label": [0] * 4 + [1] * 6})
    repeated = repeat_to_epoch(rows, 25)
    assert len(repeated) == 30                                   # ceil(25 / 10) = 3 copies
    assert repeated["image"].value_counts().eq(3).all()
    assert repeated["label"].value_counts().to_dict() == {1: 18, 0: 12}
    assert repeat_to_epoch(rows, 10) is rows and repeat_to_epoch(rows, 0) is rows


def test_fine_tuning_on_the_owners_train_test_uses_every_training_image(data, tmp_path,
                                                                       monkeypatch):
    """``--split-method predefined --target 0``: the Kaggle sample's own TRAIN/TEST, every
    TRAIN image that is not validation trains (no balancing subsample), TEST only tests, and
    the classes the source lacks get the new head."""
    from conftest import shared_dataset

    root = shared_dataset("kaggle_blood_cells_sample")
    monkeypatch.chdir(tmp_path)
    transfer.main(transfer.parse_args(
        ["--dataset", "kaggle", "--data-root", str(root), "--split-method", "predefined",
         "--target", "0", "--results-dir", str(tmp_path / "results"), "--retrain", "head",
         "--source-checkpoint", str(data["checkpoint"]), *TINY]))
    run_dir = next((tmp_path / "results").glob("resnext_transfer_kaggle*"))
    config = json.loads((run_dir / "settings.json").read_text())["config"]
    split = read_split_csv(config["split_file"])
    assert split["fold"].max() == 0  # one fold: the owner's split
    fed = pd.read_csv(run_dir / "fold_00" / "inputs.csv", dtype=str)
    rows = split[split["fold"] == 0]
    for role in ("train", "val", "test"):
        assert set(fed.loc[fed["role"] == role, "image"]) == set(
            rows.loc[rows["role"] == role, "image"]), role
    assert fed.loc[fed["role"] == "test", "image"].str.startswith("TEST/").all()
    assert (fed["role"] == "train").sum() > 150  # all of TRAIN but validation, not 150 a class
    assert config["fine_tuning"]["mode"] == "head"
    assert len(config["class_names"]) == 4


def test_train_sizes_run_in_the_order_given_and_tables_sort_them():
    from leukocyte_cnn.runs.learning_curve import parse_train_sizes

    assert parse_train_sizes("10,20,5,10,1") == [10, 20, 5, 1]
    for bad in ("0,5", "five", ""):
        with pytest.raises(InputError, match="--train-sizes"):
            parse_train_sizes(bad)
