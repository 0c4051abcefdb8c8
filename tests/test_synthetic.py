"""The embedded synthetic dataset: determinism, layouts, masks, patients, centroids, learnability.

Sets are generated small (few images, small sides) so the module runs in seconds on 2 cores.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import generate_synthetic_data
from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.data.synthetic import (
    CLASS_NAMES,
    COMPLETE,
    KINDS,
    ensure_synthetic,
    generate,
    synthetic_root,
)
from leukocyte_cnn.data.synthetic_render import CELL_CLASSES, render_cell, render_smear

SMALL = {
    "all_idb2": {"n_blast": 4, "n_other": 5, "size": 64},
    "multiclass": {"counts": {"lymphoblast": 2, "neutrophil": 1, "lymphocyte": 1,
                              "monocyte": 1, "eosinophil": 1, "basophil": 1, "thrombocyte": 1},
                   "size": 72},
    "kaggle": {"train_cells": 2, "copies": 2, "test_cells": 1},
    "all_idb1": {"n_images": 4, "n_with_blasts": 2, "height": 160, "width": 200},
    "cnmc": {"folds": 3, "all_patients": 2, "hem_patients": 1, "cells": 4, "size": 48},
}


def digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by relative path (marker included)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """One small set of every kind, seed 0, shared by the layout and mask tests."""
    base = tmp_path_factory.mktemp("synthetic")
    return {kind: generate(kind, base / kind, seed=0, workers=1, **SMALL[kind])
            for kind in KINDS}


# ----------------------------------------------------------------------------- determinism
@pytest.mark.reliability
def test_same_seed_gives_byte_identical_files(sets, tmp_path):
    for kind in KINDS:
        again = generate(kind, tmp_path / kind, seed=0, workers=1, **SMALL[kind])
        assert digest(again) == digest(sets[kind]), kind


@pytest.mark.reliability
@pytest.mark.parametrize("kind", ["kaggle", "cnmc"])
def test_helper_processes_write_the_same_files(sets, tmp_path, kind):
    again = generate(kind, tmp_path / kind, seed=0, workers=2, **SMALL[kind])
    assert digest(again) == digest(sets[kind])
    assert not list(tmp_path.glob(f".{kind}.tmp-*"))  # job lists and temporary folder gone


@pytest.mark.reliability
def test_another_seed_gives_other_images(sets, tmp_path):
    for kind in KINDS:
        other = digest(generate(kind, tmp_path / kind, seed=1, workers=1, **SMALL[kind]))
        same = digest(sets[kind])
        assert other.keys() == same.keys()  # same layout...
        images = [k for k in same if not k.endswith((".xyc", ".csv", COMPLETE))]
        assert all(other[k] != same[k] for k in images), kind  # ...other pixels, every file


def test_render_cell_depends_only_on_its_generator():
    a = render_cell("monocyte", (80, 96), np.random.default_rng([5, 1]))
    render_cell("neutrophil", (80, 96), np.random.default_rng(9))  # unrelated work between
    b = render_cell("monocyte", (80, 96), np.random.default_rng([5, 1]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# ----------------------------------------------------------------------------- layouts
def test_all_idb2_layout(sets):
    root = sets["all_idb2"]
    names = sorted(p.name for p in root.iterdir() if p.is_file() and p.name != COMPLETE)
    assert names == [f"Im{i:03d}_1.tif" for i in range(1, 5)] + [
        f"Im{i:03d}_0.tif" for i in range(5, 10)]  # blasts first, numbered like ALL-IDB2
    image = Image.open(root / "Im001_1.tif")
    assert (image.format, image.mode, image.size) == ("TIFF", "RGB", (64, 64))
    assert sorted(p.name for p in (root / "masks").iterdir()) == sorted(
        n.replace(".tif", ".png") for n in names)


def test_multiclass_layout_and_counts(sets):
    root = sets["multiclass"]
    lines = (root / "labels.csv").read_text().splitlines()
    assert lines[0] == "image,class_name"
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == [f"images/{i:04d}.png" for i in range(1, 9)]
    counts = {c: sum(r[1] == c for r in rows) for c in {r[1] for r in rows}}
    assert counts == SMALL["multiclass"]["counts"]
    for rel, _ in rows:
        image = Image.open(root / rel)
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (72, 72))
        assert (root / "masks" / Path(rel).name).is_file()


def test_kaggle_layout_copies_and_disjoint_cells(sets):
    images = sets["kaggle"] / "dataset2-master" / "images"
    files = sorted(p for p in images.rglob("*") if p.is_file())
    pattern = re.compile(
        r"(TRAIN|TEST)/(EOSINOPHIL|LYMPHOCYTE|MONOCYTE|NEUTROPHIL)/_(\d+)_(\d+)\.jpeg")
    parsed = [pattern.fullmatch(p.relative_to(images).as_posix()) for p in files]
    assert all(parsed) and len(files) == 4 * (2 * 2 + 1)
    cells = {}
    for m in parsed:
        cells.setdefault((m[1], m[2], m[4]), set()).add(int(m[3]))
    train = {c for (split, _, c) in cells if split == "TRAIN"}
    test = {c for (split, _, c) in cells if split == "TEST"}
    assert len(train) == 4 * 2 and len(test) == 4 and not train & test  # ids unique per set
    assert all(copies == ({0, 1} if key[0] == "TRAIN" else {0}) for key, copies in cells.items())
    image = Image.open(files[0])
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (320, 240))
    for first in (p for p in files if "/TRAIN/" in p.as_posix() and p.name.startswith("_0_")):
        second = first.with_name("_1_" + first.name[3:])  # the same source cell, other copy
        assert first.read_bytes() != second.read_bytes()  # augmented, not duplicated
    masks = sets["kaggle"] / "masks" / "dataset2-master" / "images"
    assert all((masks / p.relative_to(images)).with_suffix(".png").is_file() for p in files)


def test_cnmc_layout_and_patients_in_one_fold(sets):
    root = sets["cnmc"]
    files = sorted(root.glob("fold_*/*/*.bmp"))
    assert len(files) == 3 * (2 + 1) * 4
    folds_of: dict[str, set[str]] = {}
    for path in files:
        fold, label = path.parts[-3], path.parts[-2]
        m = re.fullmatch(r"UID_(H?\d+)_(\d+)_(\d+)_(all|hem)\.bmp", path.name)
        assert m and m[4] == label and fold in {"fold_0", "fold_1", "fold_2"}
        assert m[1].startswith("H") == (label == "hem")
        folds_of.setdefault(m[1], set()).add(fold)
    assert len(folds_of) == 3 * 3 and all(len(f) == 1 for f in folds_of.values())
    image = Image.open(files[0])
    assert (image.format, image.mode, image.size) == ("BMP", "RGB", (48, 48))


def test_all_idb1_layout_and_xyc(sets):
    root = sets["all_idb1"]
    smears = sorted(root.glob("*.jpg"))
    assert [p.name for p in smears] == ["Im001_1.jpg", "Im002_1.jpg", "Im003_0.jpg",
                                        "Im004_0.jpg"]
    for smear in smears:
        assert Image.open(smear).size == (200, 160)
        lines = smear.with_suffix(".xyc").read_text().splitlines()
        assert bool(lines) == smear.stem.endswith("_1")  # empty file for smears without blasts
        assert all(re.fullmatch(r"\d+ \d+", line) for line in lines)


def test_the_readers_see_the_documented_classes(sets):
    """Contract with leukocyte_cnn.data.datasets: each set reads with its real reader."""
    from leukocyte_cnn.data.datasets import class_names, read_dataset

    for kind, root in sets.items():
        table = read_dataset("csv" if kind == "multiclass" else kind, root)
        assert tuple(class_names(table)) == CLASS_NAMES[kind], kind
    assert set(CLASS_NAMES["multiclass"]) == set(CELL_CLASSES)


def test_marker_is_written_last_and_names_the_set(sets):
    text = (sets["cnmc"] / COMPLETE).read_text()
    assert '"kind": "cnmc"' in text and '"seed": 0' in text
    assert not list(sets["cnmc"].parent.glob(".cnmc.tmp-*"))  # no temporary folder left


# ----------------------------------------------------------------------------- masks
def single_cell_images(sets):
    for path in sets["all_idb2"].glob("*.tif"):
        yield path, sets["all_idb2"] / "masks" / f"{path.stem}.png"
    for path in (sets["multiclass"] / "images").glob("*.png"):
        yield path, sets["multiclass"] / "masks" / path.name
    images = sets["kaggle"] / "dataset2-master" / "images"
    for path in images.rglob("*.jpeg"):
        yield path, (sets["kaggle"] / "masks" / "dataset2-master" / "images"
                     / path.relative_to(images)).with_suffix(".png")
    for path in sets["cnmc"].glob("fold_*/*/*.bmp"):
        yield path, (sets["cnmc"] / "masks" / path.relative_to(sets["cnmc"])).with_suffix(".png")


def test_every_single_cell_image_has_a_mask_that_fits_it(sets):
    n = 0
    for image_path, mask_path in single_cell_images(sets):
        n += 1
        mask_image = Image.open(mask_path)
        assert mask_image.mode == "L", mask_path
        mask = np.asarray(mask_image)
        assert mask.shape == gray(image_path).shape, mask_path
        assert set(np.unique(mask)) <= {0, 128, 255}, mask_path
        assert (mask == 255).sum() >= 4, mask_path  # a nucleus (or platelet core) is there
        # The mask sits on the stained cell: on smears nucleus pixels are darker than the
        # plasma; on C-NMC's black surround the nucleus is lit and the background black.
        lum = gray(image_path)
        if "cnmc" in mask_path.parts:
            assert np.median(lum[mask == 0]) == 0, mask_path
            assert lum[mask == 255].mean() > 25, mask_path
        else:
            assert lum[mask == 255].mean() < np.median(lum[mask == 0]) - 25, mask_path
    assert n == 9 + 8 + 20 + 36


def test_every_cell_class_renders_with_both_backgrounds():
    for k, name in enumerate(CELL_CLASSES):
        for background in ("smear", "black"):
            image, mask = render_cell(name, (60, 70), np.random.default_rng(k), background)
            assert image.shape == (60, 70, 3) and image.dtype == np.uint8
            assert mask.shape == (60, 70) and mask.dtype == np.uint8
            assert (mask == 255).any() and set(np.unique(mask)) <= {0, 128, 255}
            if background == "black":  # segmented cell: nothing outside it but black
                far = np.ones_like(mask, bool)
                ys, xs = np.nonzero(mask)
                far[max(ys.min() - 3, 0):ys.max() + 4, max(xs.min() - 3, 0):xs.max() + 4] = False
                assert not image[far].any(), name
    with pytest.raises(ValueError, match="unknown cell class"):
        render_cell("erythroblast", (60, 60), np.random.default_rng(0))


def test_mask_marks_the_centred_cell_only():
    """Stray platelets and cut red cells around the cell are not labelled."""
    from scipy import ndimage

    for name in CELL_CLASSES[:-1]:  # the white cells (a platelet clump has several pieces)
        for seed in range(4):
            image, mask = render_cell(name, (70, 70), np.random.default_rng([seed, 3]))
            labelled, n = ndimage.label(mask > 0)
            assert n == 1, (name, seed)
            ys, xs = np.nonzero(labelled)
            assert abs(ys.mean() - 35) < 8 and abs(xs.mean() - 35) < 8, (name, seed)


def test_blasts_are_larger_than_lymphocytes_but_sizes_overlap():
    """The size cue is there (learnable) but not decisive (not trivial)."""
    def nucleus_areas(name):
        return np.array([(render_cell(name, (96, 96), np.random.default_rng([7, k]))[1] == 255)
                         .sum() for k in range(40)])
    blasts, lymphocytes = nucleus_areas("lymphoblast"), nucleus_areas("lymphocyte")
    assert np.median(blasts) > 1.4 * np.median(lymphocytes)
    assert lymphocytes.max() > blasts.min()


# ----------------------------------------------------------------------------- patients, smears
def test_cnmc_patient_stains_differ_more_than_cells_of_one_patient(sets):
    """Per-patient stain offsets: a patient split that leaks would let a model match stains."""
    means: dict[str, list[np.ndarray]] = {}
    for path in sets["cnmc"].glob("fold_*/hem/*.bmp"):
        mask = np.asarray(Image.open((sets["cnmc"] / "masks" / path.relative_to(sets["cnmc"]))
                                     .with_suffix(".png")))
        rgb = np.asarray(Image.open(path), np.float32)
        chroma = rgb[mask == 255] / (rgb[mask == 255].sum(axis=1, keepdims=True) + 1)
        means.setdefault(path.name.split("_")[1], []).append(chroma.mean(axis=0))
    groups = [np.array(v) for v in means.values()]
    within = np.mean([g.var(axis=0).sum() for g in groups])
    between = np.array([g.mean(axis=0) for g in groups]).var(axis=0).sum()
    assert between > within


def test_blast_centroids_sit_on_dark_nuclei(sets):
    for xyc in sets["all_idb1"].glob("*_1.xyc"):
        lum = gray(xyc.with_suffix(".jpg"))
        points = [tuple(map(int, line.split())) for line in xyc.read_text().splitlines()]
        for x, y in points:
            assert 0 <= x < lum.shape[1] and 0 <= y < lum.shape[0]
            around = lum[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3]
            assert around.mean() < np.median(lum) - 40, (xyc.name, x, y)


def test_render_smear_returns_one_centroid_per_blast():
    image, blasts = render_smear((240, 320), np.random.default_rng(3), n_cells=6, n_blasts=3)
    assert image.shape == (240, 320, 3) and len(blasts) == 3
    assert len(set(blasts)) == 3


# ----------------------------------------------------------------------------- folders
def test_interrupted_generation_is_redone(tmp_path):
    options = SMALL["all_idb2"]
    root = synthetic_root("all_idb2", tmp_path, **options)
    root.mkdir(parents=True)
    (root / "Im001_1.tif").write_bytes(b"half")  # a set killed before its marker
    stale = root.parent / f".{root.name}.tmp-{os.uname().nodename}-999999999-deadbeef"
    stale.mkdir()  # a temporary folder of a generation whose process is gone
    (stale / "Im001_1.tif").write_bytes(b"half")
    assert ensure_synthetic("all_idb2", tmp_path, **options) == root
    assert (root / COMPLETE).is_file() and len(list(root.glob("*.tif"))) == 9
    assert Image.open(root / "Im001_1.tif").size == (64, 64)
    assert not stale.exists()
    # A complete set is used as it is, not regenerated.
    (root / "note.txt").write_text("kept")
    ensure_synthetic("all_idb2", tmp_path, **options)
    assert (root / "note.txt").read_text() == "kept"


def test_a_set_of_an_older_format_version_is_regenerated(tmp_path, monkeypatch, capsys):
    import json

    from leukocyte_cnn.data import synthetic

    options = SMALL["all_idb2"]
    root = ensure_synthetic("all_idb2", tmp_path, **options)
    marker = json.loads((root / COMPLETE).read_text())
    assert marker["format_version"] == synthetic.SYNTHETIC_FORMAT_VERSION
    assert synthetic.is_current(root, "all_idb2", **options)
    fresh = digest(root)
    # A set written by an older renderer: its marker names an older version (or none at all).
    for old_marker in ({**marker, "format_version": synthetic.SYNTHETIC_FORMAT_VERSION - 1},
                       {key: value for key, value in marker.items() if key != "format_version"},
                       "kind all_idb2\nseed 0\n"):
        text = old_marker if isinstance(old_marker, str) else json.dumps(old_marker)
        (root / COMPLETE).write_text(text)
        (root / "Im001_1.tif").write_bytes(b"old renderer")
        assert not synthetic.is_current(root, "all_idb2", **options)
        assert ensure_synthetic("all_idb2", tmp_path, **options) == root
        assert "stale" in capsys.readouterr().out
        assert digest(root) == fresh  # regenerated in full, the current marker written
        assert not list(root.parent.glob(f".{root.name}.tmp-*"))
    # Other generation parameters in the marker are stale too; a current set is reused.
    (root / COMPLETE).write_text(json.dumps({**marker, "seed": 5}))
    assert not synthetic.is_current(root, "all_idb2", **options)
    ensure_synthetic("all_idb2", tmp_path, **options)
    assert digest(root) == fresh
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: pytest.fail("regenerated"))
    assert ensure_synthetic("all_idb2", tmp_path, **options) == root


def test_sizes_and_seeds_get_their_own_folders(tmp_path):
    assert synthetic_root("kaggle", tmp_path) == tmp_path / "synthetic" / "kaggle"
    assert synthetic_root("kaggle", tmp_path, copies=3) == tmp_path / "synthetic" / "kaggle"
    other = {synthetic_root("kaggle", tmp_path, copies=2), synthetic_root("kaggle", tmp_path, 1),
             synthetic_root("kaggle", tmp_path, copies=2, test_cells=4)}
    assert len(other) == 3
    assert all(re.fullmatch(r"kaggle_[0-9a-f]{8}", p.name) for p in other)
    with pytest.raises(InputError, match="unknown option"):
        synthetic_root("kaggle", tmp_path, size=64)
    with pytest.raises(InputError, match="unknown synthetic kind"):
        synthetic_root("bloodmnist", tmp_path)


def test_command_line_generates_and_skips_complete_sets(tmp_path, capsys):
    argv = ["--kind", "cnmc", "--data-dir", str(tmp_path), "--cnmc-cells", "1"]
    generate_synthetic_data.main(generate_synthetic_data.parse_args(argv))
    root = synthetic_root("cnmc", tmp_path, cells=1)
    assert len(list(root.glob("fold_*/*/*.bmp"))) == 3 * 7
    assert f"wrote 42 files to {root}" in capsys.readouterr().out
    generate_synthetic_data.main(generate_synthetic_data.parse_args(argv))
    assert "is complete" in capsys.readouterr().out


# ----------------------------------------------------------------------------- learnability
def test_a_linear_model_on_tiny_pixels_separates_blasts_from_other_cells(tmp_path):
    """Sanity check without TensorFlow: the classes differ in what the pixels show."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = generate("all_idb2", tmp_path / "idb2", seed=0, workers=1, size=64)
    files = sorted(root.glob("*.tif"))
    x = np.stack([np.asarray(Image.open(p).resize((32, 32), Image.BILINEAR), np.float32)
                  .ravel() / 255 for p in files])
    y = np.array([int(p.stem[-1]) for p in files])
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[: len(y) // 2], order[len(y) // 2:]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    model.fit(x[train], y[train])
    assert model.score(x[test], y[test]) > 0.75
