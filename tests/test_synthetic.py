"""The embedded synthetic dataset: layouts, masks, determinism, patients, centroids."""
import hashlib
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukocyte_cnn.synthetic import (CELL_CLASSES, ensure_synthetic, generate, render_cell,
                                     synthetic_root)

SMALL = {
    "all_idb2": {"n_blast": 6, "n_other": 6, "size": 64},
    "multiclass": {"counts": {"lymphoblast": 3, "neutrophil": 2, "thrombocyte": 1}, "size": 64},
    "kaggle": {"train_cells": 2, "copies": 2, "test_cells": 1},
    "all_idb1": {"n_images": 4, "n_with_blasts": 2, "height": 120, "width": 160},
    "cnmc": {"folds": 3, "all_patients": 1, "hem_patients": 1, "cells": 2, "size": 48},
}


def digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.reliability
@pytest.mark.parametrize("kind", sorted(SMALL))
def test_same_seed_gives_byte_identical_files(kind, tmp_path):
    a = generate(kind, tmp_path / "a", seed=1, workers=1, **SMALL[kind])
    b = generate(kind, tmp_path / "b", seed=1, workers=2, **SMALL[kind])
    c = generate(kind, tmp_path / "c", seed=2, workers=1, **SMALL[kind])
    assert digest(a) == digest(b)  # also independent of the number of worker processes
    assert digest(a) != digest(c)


def test_layouts_follow_the_real_datasets(tmp_path):
    roots = {k: generate(k, tmp_path / k, **SMALL[k]) for k in SMALL}
    idb2 = sorted(p.name for p in roots["all_idb2"].glob("*.tif"))
    assert len(idb2) == 12 and all(re.fullmatch(r"Im\d{3}_[01]\.tif", n) for n in idb2)
    assert Image.open(roots["all_idb2"] / idb2[0]).size == (64, 64)
    labels = pd.read_csv(roots["multiclass"] / "labels.csv")
    assert labels.class_name.value_counts().to_dict() == {"lymphoblast": 3, "neutrophil": 2,
                                                          "thrombocyte": 1}
    kaggle = sorted((roots["kaggle"] / "dataset2-master/images").rglob("*.jpeg"))
    assert len(kaggle) == 4 * (2 * 2 + 1)
    assert all(re.fullmatch(r"_\d+_\d+\.jpeg", p.name) for p in kaggle)
    assert Image.open(kaggle[0]).size == (320, 240)
    train_cells = {p.name.split("_")[2] for p in kaggle if "/TRAIN/" in p.as_posix()}
    test_cells = {p.name.split("_")[2] for p in kaggle if "/TEST/" in p.as_posix()}
    assert not train_cells & test_cells  # TEST holds other cells than TRAIN's copies
    cnmc = sorted(roots["cnmc"].glob("fold_*/*/*.bmp"))
    assert all(re.fullmatch(r"UID_H?\d+_\d+_\d+_(all|hem)\.bmp", p.name) for p in cnmc)


def test_masks_exist_for_every_single_cell_image(tmp_path):
    root = generate("all_idb2", tmp_path / "s", **SMALL["all_idb2"])
    for image in root.glob("*.tif"):
        mask = np.asarray(Image.open(root / "masks" / f"{image.stem}.png"))
        assert set(np.unique(mask)) <= {0, 128, 255}
        assert (mask == 255).sum() > 50, image.name  # a nucleus is there


def test_cnmc_patients_live_in_one_fold(tmp_path):
    root = generate("cnmc", tmp_path / "c", **SMALL["cnmc"])
    folds_of = {}
    for path in root.glob("fold_*/*/*.bmp"):
        patient = path.name.split("_")[1]
        folds_of.setdefault(patient, set()).add(path.parts[-3])
    assert len(folds_of) == 6 and all(len(f) == 1 for f in folds_of.values())


def test_blast_centroids_sit_on_dark_nuclei(tmp_path):
    root = generate("all_idb1", tmp_path / "i", **SMALL["all_idb1"])
    for xyc in root.glob("*.xyc"):
        points = [tuple(map(int, line.split())) for line in xyc.read_text().splitlines()]
        assert bool(points) == xyc.stem.endswith("_1")
        image = np.asarray(Image.open(xyc.with_suffix(".jpg")).convert("L"), dtype=float)
        for x, y in points:
            assert 0 <= x < 160 and 0 <= y < 120
            assert image[y, x] < np.median(image) - 40  # a stained nucleus, not plasma


def test_interrupted_generation_is_redone(tmp_path):
    root = synthetic_root("all_idb2", tmp_path, **SMALL["all_idb2"])
    root.mkdir(parents=True)
    (root / "Im001_1.tif").write_bytes(b"half")  # killed before the .complete marker
    ensure_synthetic("all_idb2", tmp_path, **SMALL["all_idb2"])
    assert (root / ".complete").exists() and len(list(root.glob("*.tif"))) == 12


def test_classes_differ_in_ways_a_simple_model_can_see():
    """Blasts are large with pale nuclei; lymphocytes small and dark: nucleus size separates."""
    rng = np.random.default_rng(0)
    areas = {c: [(render_cell(c, (96, 96), rng)[1] == 255).sum() for _ in range(12)]
             for c in ("lymphoblast", "lymphocyte")}
    assert np.mean(areas["lymphoblast"]) > 1.3 * np.mean(areas["lymphocyte"])
    assert set(CELL_CLASSES) >= {"lymphoblast", "thrombocyte", "monocyte"}
