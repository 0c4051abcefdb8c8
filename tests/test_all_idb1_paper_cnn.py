"""all_idb1_paper_cnn.py: test images chosen before augmentation and never augmented, seeded
distinct rotations, positive-class metrics, and a quick end-to-end run on tiny smears."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import all_idb1_paper_cnn as script
from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.inputs.paper_augmentation import (
    FIXED_VARIANTS,
    check_sources,
    plan_variants,
    write_training_set,
)

AUG = {"image_size": [32, 32], "n_rotations": 3, "blur_sigma": 1.1, "max_shift": 0.1,
       "max_shear": 15.0, "seed": 0}


def make_smears(root: Path, per_class: int = 10, size=(48, 40)) -> Path:
    """ALL-IDB1-like smears ``ImNNN_Y.jpg`` + ``.xyc``: pink background, purple nuclei; the
    blast smears (Y=1) get large nuclei, the others small ones."""
    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    n = 0
    for label in (0, 1):
        for _ in range(per_class):
            n += 1
            img = np.empty((h, w, 3), np.float64)
            img[:] = (230, 190, 200)
            centres = []
            for _cell in range(3):
                cx, cy = int(rng.integers(8, w - 8)), int(rng.integers(8, h - 8))
                radius = rng.uniform(6, 9) if label else rng.uniform(2, 3.5)
                img[(xx - cx) ** 2 + (yy - cy) ** 2 < radius ** 2] = (110, 40, 150)
                centres.append((cx, cy))
            img += rng.normal(0, 6, img.shape)
            name = f"Im{n:03d}_{label}"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"{name}.jpg",
                                                                          quality=95)
            (root / f"{name}.xyc").write_text(
                "".join(f"{x} {y}\n" for x, y in centres) if label else "")
    return root


@pytest.fixture(scope="module")
def smears(tmp_path_factory) -> Path:
    return make_smears(tmp_path_factory.mktemp("smears") / "ALL_IDB1")


@pytest.fixture(scope="module")
def fold0(smears):
    from leukocyte_cnn.data.datasets import read_dataset
    from leukocyte_cnn.splits.plans import make_split

    table = read_dataset("all_idb1", smears)
    split = make_split(table, "kfold", k=5, seed=0, val_fraction=0.2)
    rows = split[split["fold"] == 0].merge(table[["image", "path"]], on="image")
    return {role: rows[rows["role"] == role].reset_index(drop=True)
            for role in ("train", "val", "test")}


# --------------------------------------------------------------------------- augmentation


def test_only_training_images_are_augmented_and_traced(fold0, tmp_path):
    from leukocyte_cnn.inputs.pipeline import load_image

    train, val, test = fold0["train"], fold0["val"], fold0["test"]
    assert len(test) == 4 and len(val) >= 2 and len(train) >= 10
    manifest = write_training_set(train, tmp_path / "aug", 0, settings=AUG, seed=0)

    sources = set(manifest["source_image"])
    assert sources == set(train["image"])
    assert not sources & set(test["image"]) and not sources & set(val["image"])
    per_source = manifest.groupby("source_image")["variant"].apply(list)
    expected = list(FIXED_VARIANTS) + [f"rot{i:02d}" for i in (1, 2, 3)]
    assert all(v == expected for v in per_source)
    labels = dict(zip(train["image"], train["label"], strict=True))
    assert (manifest["label"] == manifest["source_image"].map(labels)).all()
    for rel in manifest["image"]:
        assert (tmp_path / "aug" / rel).is_file()
    # The 'original' copy is pixel-identical to what the pipeline makes of the source.
    first = manifest[manifest["variant"] == "original"].iloc[0]
    written = np.asarray(Image.open(tmp_path / "aug" / first["image"]))
    source = train.loc[train["image"] == first["source_image"], "path"].iloc[0]
    assert np.array_equal(written, load_image(source, (32, 32)).astype(np.uint8))
    # Every written image is rebuilt by its manifest row, and variants do differ.
    rot = manifest[manifest["variant"] == "rot01"].iloc[0]
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "aug" / rot["image"])), written)


def test_manifest_from_another_split_is_refused(fold0, tmp_path):
    train, test = fold0["train"], fold0["test"]
    write_training_set(train, tmp_path / "aug", 0, settings=AUG, seed=0)
    leaky_train = pd.concat([train, test], ignore_index=True).assign(role="train")
    with pytest.raises(InputError, match="misses"):
        write_training_set(leaky_train, tmp_path / "aug", 0, settings=AUG, seed=0)
    manifest = pd.DataFrame({"source_image": list(train["image"]) + [test["image"][0]]})
    with pytest.raises(InputError, match=str(test["image"][0])):
        check_sources(manifest, train, "manifest.csv")
    with pytest.raises(InputError, match="other augmentation settings"):
        write_training_set(train, tmp_path / "aug", 0, settings={**AUG, "n_rotations": 4}, seed=0)
    with pytest.raises(ValueError, match="non-training"):
        write_training_set(train.assign(role="test"), tmp_path / "other", 0, settings=AUG, seed=0)


def test_rotation_angles_distinct_nonzero_and_seeded(fold0):
    train = fold0["train"]
    kw = dict(image_size=(100, 100), blur_sigma=1.1, max_shift=0.1, max_shear=15.0)
    plan = plan_variants(train, 40, 3, **kw)
    again = plan_variants(train, 40, 3, **kw)
    other = plan_variants(train, 40, 4, **kw)
    pd.testing.assert_frame_equal(plan, again)
    assert not plan["params"].equals(other["params"])
    for _, rows in plan.groupby("source_image"):
        params = [json.loads(p) for p in rows["params"]]
        angles = [p["angle"] for p in params if "angle" in p]
        assert len(angles) == 40 == len(set(angles))
        assert all(0 < a < 360 and float(a).is_integer() for a in angles)
        shift = next(p for p in params if "dx" in p)
        assert ((shift["dx"], shift["dy"]) != (0, 0)
                and max(abs(shift["dx"]), abs(shift["dy"])) <= 10)
        shear = next(p["shear"] for p in params if "shear" in p)
        assert 7.5 <= abs(shear) <= 15
    # Sources draw different angles (not one list reused for every image).
    firsts = plan[plan["variant"] == "rot01"]["params"]
    assert firsts.nunique() > 1


# --------------------------------------------------------------------------- metrics


LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P_POS = np.array([0.9, 0.8, 0.4, 0.3, 0.7, 0.2, 0.1, 0.35, 0.05, 0.6])
# Predicted positive (p > 0.5): 0.9, 0.8 (true), 0.7, 0.6 (false) -> TP 2, FP 2, FN 2, TN 4.
# Pairs (positive, negative) ranked right: 0.9 and 0.8 beat all 6; 0.4 beats 4 (0.2, 0.1,
# 0.35, 0.05); 0.3 beats 3 -> (6 + 6 + 4 + 3) / 24.
HAND = {"accuracy": 0.6, "precision": 0.5, "recall": 0.5, "f1": 0.5, "roc_auc": 19 / 24}


def test_heldout_metrics_equal_hand_computed_values(tmp_path):
    predictions = pd.DataFrame({"fold": 0, "image": [f"Im{i:03d}_x.jpg" for i in range(10)],
                                "label": LABELS, "class_name": "x", "group": "g",
                                "prob_no_blasts": 1 - P_POS, "prob_blasts": P_POS,
                                "pred": (P_POS > 0.5).astype(int)})
    (tmp_path / "fold_00").mkdir()
    predictions.to_csv(tmp_path / "fold_00" / "predictions.csv", index=False)
    row = script.heldout_metrics(tmp_path, ["no_blasts", "blasts"], positive_label=1).iloc[0]
    assert row["n_test"] == 10 and row["n_positive"] == 4
    for key, value in HAND.items():
        assert row[key] == pytest.approx(value), key
    # The source's one-hot computation would have reported precision = recall = accuracy.
    assert row["precision"] != row["accuracy"]


def test_keras_positive_class_metrics_match_hand_values():
    import keras

    from leukocyte_cnn.models.keras_metrics import positive_class_metrics

    prob = np.stack([1 - P_POS, P_POS], axis=1).astype("float32")
    for labels in (LABELS, LABELS[:, None], np.eye(2)[LABELS]):
        auc, precision, recall = positive_class_metrics()
        for metric in (auc, precision, recall):
            metric.update_state(labels, prob)
        assert float(precision.result()) == pytest.approx(HAND["precision"])
        assert float(recall.result()) == pytest.approx(HAND["recall"])
        assert float(auc.result()) == pytest.approx(HAND["roc_auc"], abs=0.01)
    # What the wrapper avoids: Keras' own precision on one-hot softmax rows is the accuracy.
    naive = keras.metrics.Precision()
    naive.update_state(np.eye(2)[LABELS], prob)
    assert float(naive.result()) == pytest.approx(HAND["accuracy"])


# --------------------------------------------------------------------------- end to end


def test_quick_run_writes_checkpoint_plots_summary_and_keeps_test_untouched(
        smears, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data/splits goes here
    args = script.parse_args(["--dataset", "all_idb1", "--data-root", str(smears), "--quick",
                              "--image-size", "32", "--epochs", "2", "--rotations", "2",
                              "--results-dir", str(tmp_path / "results"), "--run-name", "r",
                              "--augmented-dir", str(tmp_path / "aug")])
    script.main(args)
    run = tmp_path / "results" / "r"
    for name in ("settings.json", "summary.md", "summary.csv", "heldout_metrics.csv",
                 "heldout_metrics.md", "epoch_metrics.png", "confusion_matrix.png",
                 "roc.png", "learning_curves.png", "fold_00/model.keras",
                 "fold_00/predictions.csv", "fold_00/epochs.csv", "fold_00/timing.json"):
        assert (run / name).is_file(), name
    assert not (run / "fold_01").exists()  # one held-out test by default
    epochs = pd.read_csv(run / "fold_00" / "epochs.csv")
    for column in ("loss", "accuracy", "auc", "precision", "recall", "val_auc",
                   "val_precision", "val_recall"):
        assert column in epochs and epochs[column].notna().all(), column

    config = json.loads((run / "settings.json").read_text())["config"]
    assert config["knobs"]["IMAGE_SIZE"] == 32 and config["class_names"] == ["no_blasts", "blasts"]
    assert config["augmentation"]["image_size"] == [32, 32]
    split = pd.read_csv(config["split_file"])
    fold = split[split["fold"] == 0]
    manifest_path = Path(config["augmented_root"]) / "fold_00" / "manifest.csv"
    manifest = pd.read_csv(manifest_path)
    # Test and validation images were fixed (split file) before the augmentation was written,
    # and no test or validation image, nor a copy of one, is among the training images.
    assert Path(config["split_file"]).stat().st_mtime <= manifest_path.stat().st_mtime
    assert set(manifest["source_image"]) == set(fold.loc[fold.role == "train", "image"])
    assert not set(manifest["source_image"]) & set(fold.loc[fold.role != "train", "image"])
    predictions = pd.read_csv(run / "fold_00" / "predictions.csv")
    assert set(predictions["image"]) == set(fold.loc[fold.role == "test", "image"])
    timing = json.loads((run / "fold_00" / "timing.json").read_text())
    assert timing["n_train_augmented"] == len(manifest) == timing["n_train"] * 10
    # The checkpoint's compile state names no class of this repository: plain safe-mode
    # loading works without importing leukocyte_cnn.models.keras_metrics.
    with zipfile.ZipFile(run / "fold_00" / "model.keras") as archive:
        assert "leukocyte_cnn" not in archive.read("config.json").decode()
    heldout = pd.read_csv(run / "heldout_metrics.csv")
    assert list(heldout.columns[:3]) == ["fold", "n_test", "n_positive"]
    assert heldout["n_test"].iloc[0] == 4


def test_more_than_two_classes_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "cells"
    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), np.uint8)).save(
                root / cls / f"{cls}{i}.png")
    args = script.parse_args(["--dataset", "folder", "--data-root", str(root), "--quick",
                              "--results-dir", str(tmp_path / "results")])
    with pytest.raises(InputError, match="3 classes"):
        script.main(args)


def test_variant_settings_that_would_repeat_the_original_are_refused(fold0):
    kw = dict(image_size=(32, 32), blur_sigma=1.1, max_shift=0.1, max_shear=15.0)
    for bad in ({"max_shift": 0.01}, {"max_shear": 0.0}, {"blur_sigma": 0.0}):
        with pytest.raises(ValueError):
            plan_variants(fold0["train"], 2, 0, **{**kw, **bad})
    with pytest.raises(ValueError, match="n_rotations"):
        plan_variants(fold0["train"], 360, 0, **kw)
