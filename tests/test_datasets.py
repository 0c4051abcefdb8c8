"""Dataset readers: real files in ../shared/data (skipped when absent) and fake trees in tmp_path.

Readers only list files, so these tests are fast and need no TensorFlow.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.data.all_idb1_crops import crop_cells
from leukocyte_cnn.data.bloodmnist import read_bloodmnist
from leukocyte_cnn.data.datasets import DATASET_NAMES, class_names, dataset_hash, read_dataset
from leukocyte_cnn.data.images import load_rgb
from leukocyte_cnn.data.readers import (
    ZHENG_CLASSES,
    read_all_idb1,
    read_all_idb2,
    read_cnmc,
    read_csv_labels,
    read_folder,
    read_kaggle,
    read_pbc,
    read_zheng2018,
)
from leukocyte_cnn.data.tables import COLUMNS

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def real(name: str) -> Path:
    """A real dataset under ../shared/data, or skip: only the project's CI machine has them."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name!r} not available at {path}")
    return path


def image(path: Path, size: tuple[int, int] = (8, 8), color=(200, 100, 50)) -> Path:
    """A tiny real image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def assert_reader_table(table: pd.DataFrame) -> None:
    """The contract of docs/architecture.md: columns, types, sorted keys, existing files."""
    assert list(table.columns[: len(COLUMNS)]) == COLUMNS
    assert table["image"].tolist() == sorted(table["image"])
    assert table["image"].is_unique
    assert table["label"].dtype == np.int64
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["path"])
    assert not any("\\" in key or key.startswith("/") for key in table["image"])
    names = class_names(table)
    assert [names[label] for label in table["label"]] == table["class_name"].tolist()


# ----------------------------------------------------------------------------- real datasets

def test_all_idb2_lowres():
    table = read_all_idb2(real("all_idb2_lowres"))
    assert_reader_table(table)
    assert len(table) == 260
    assert table["label"].value_counts().to_dict() == {0: 130, 1: 130}
    assert class_names(table) == ["other", "lymphoblast"]
    first = table.iloc[0]
    assert (first["image"], first["label"], first["group"]) == ("Im001_1.jpg", 1, "Im001_1")


def test_kaggle_sample_counts_and_root_levels():
    root = real("kaggle_blood_cells_sample")
    table = read_kaggle(root, splits=("TRAIN", "TEST", "TEST_SIMPLE"))
    assert_reader_table(table)
    counts = table.groupby(["source_split", "class_name"]).size()
    for name in ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]:
        assert counts[("TRAIN", name)] == 60 and counts[("TEST", name)] == 29
    assert counts["TEST_SIMPLE"].sum() == 71
    assert table["group"].tolist() == table["image"].tolist()  # Kaggle cell ids not trusted
    default = read_kaggle(root)
    assert set(default["source_split"]) == {"TRAIN", "TEST"} and len(default) == 4 * (60 + 29)
    for level in (root / "dataset2-master", root / "dataset2-master" / "images"):
        assert read_kaggle(level).drop(columns="path").equals(default.drop(columns="path"))
    assert default["image"].iloc[0] == "TEST/EOSINOPHIL/" + Path(default["path"].iloc[0]).name


def test_pbc_sample():
    root = real("pbc_sample")
    table = read_pbc(root)
    assert_reader_table(table)
    assert class_names(table) == ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte",
                                  "monocyte", "neutrophil", "platelet"]
    assert table["class_name"].value_counts().between(32, 40).all()
    assert len(table) == 302
    inner = read_pbc(root / "PBC_dataset_normal_DIB")
    assert inner["image"].tolist() == table["image"].tolist()


def test_bccd_crops_via_read_folder():
    root = real("bccd_wbc_crops") / "BCCD_cropped"
    table = read_folder(root)
    assert_reader_table(table)
    assert table["class_name"].value_counts().to_dict() == {
        "Neutrophil": 207, "Eosinophil": 88, "Lymphocyte": 33, "Monocyte": 20, "Basophil": 3}
    grouped = read_folder(root, group_regex=r"(BloodImage_\d+)")
    assert grouped["group"].str.fullmatch(r"BloodImage_\d+").all()


def test_zheng2018_both_datasets():
    root = real("wbc_zheng2018")
    one = read_zheng2018(root, dataset=1)
    assert_reader_table(one)
    assert len(one) == 300
    assert one["class_name"].value_counts()[ZHENG_CLASSES].tolist() == [176, 53, 48, 22, 1]
    assert all(Path(m).is_file() and m.endswith(".png") for m in one["mask_path"])
    two = read_zheng2018(root, dataset=2)
    assert two["class_name"].value_counts()[ZHENG_CLASSES].tolist() == [33, 37, 15, 12, 3]
    both = read_zheng2018(root, dataset="both")
    assert len(both) == 400 and both["group"].is_unique
    assert {k.split("/")[0] for k in both["image"]} == {"Dataset 1", "Dataset 2"}


@pytest.mark.reliability
@pytest.mark.parametrize("name, folder, options", [
    ("all_idb2", "all_idb2_lowres", {}),
    ("kaggle", "kaggle_blood_cells_sample", {"splits": ("TRAIN", "TEST", "TEST_SIMPLE")}),
    ("pbc", "pbc_sample", {}),
    ("folder", "bccd_wbc_crops/BCCD_cropped", {}),
    ("zheng2018", "wbc_zheng2018", {"dataset": "both"}),
])
def test_real_listing_is_deterministic(name, folder, options):
    root = real(folder.split("/")[0]) / "/".join(folder.split("/")[1:])
    first = read_dataset(name, root, **options)
    second = read_dataset(name, str(root), **options)
    assert first.equals(second)
    assert dataset_hash(first) == dataset_hash(second)


# ----------------------------------------------------------------------------- C-NMC

def make_cnmc(top: Path) -> Path:
    training = top / "training_data"
    for fold, names in {
        "fold_0": ["all/UID_11_1_1_all.bmp", "all/UID_11_1_2_all.bmp", "hem/UID_H10_3_1_hem.bmp"],
        "fold_1": ["all/UID_7_2_1_all.bmp", "hem/UID_H22_31_15_hem.bmp"],
    }.items():
        for name in names:
            image(training / fold / name)
    validation = top / "validation_data"
    image(validation / "C-NMC_test_prelim_phase_data" / "1.bmp")
    image(validation / "C-NMC_test_prelim_phase_data" / "2.bmp")
    (validation / "C-NMC_test_prelim_phase_data_labels.csv").write_text(
        "Patient_ID,new_names,labels\nUID_57_29_1_all.bmp,1.bmp,1\nUID_H49_35_1_hem.bmp,2.bmp,0\n")
    return top


def test_cnmc_patients_folds_and_validation(tmp_path):
    top = make_cnmc(tmp_path / "C-NMC_Leukemia")
    table = read_cnmc(top)
    assert_reader_table(table)
    assert class_names(table) == ["hem", "all"]
    rows = table.set_index("image")
    assert rows.loc["training_data/fold_0/all/UID_11_1_2_all.bmp", "group"] == "11"
    assert rows.loc["training_data/fold_1/hem/UID_H22_31_15_hem.bmp", "group"] == "H22"
    assert rows.loc["training_data/fold_1/hem/UID_H22_31_15_hem.bmp", "label"] == 0
    assert rows.loc["training_data/fold_0/all/UID_11_1_1_all.bmp", "source_split"] == "fold_0"
    validation = table[table["source_split"] == "validation"]
    assert validation["group"].tolist() == ["57", "H49"] and validation["label"].tolist() == [1, 0]
    assert read_cnmc(top / "training_data").equals(table)  # same keys from either level
    assert len(read_cnmc(top, include_validation=False)) == 5


def test_cnmc_folds_directly_under_root(tmp_path):
    image(tmp_path / "fold_2" / "all" / "UID_3_1_1_all.bmp")
    table = read_cnmc(tmp_path)
    assert table["image"].tolist() == ["fold_2/all/UID_3_1_1_all.bmp"]


@pytest.mark.reliability
def test_cnmc_bad_names(tmp_path):
    bad = image(tmp_path / "fold_0" / "all" / "cell_001.bmp")
    with pytest.raises(InputError, match=r"cell_001\.bmp: file name does not match"):
        read_cnmc(tmp_path)
    bad.unlink()
    image(tmp_path / "fold_0" / "all" / "UID_H1_1_1_hem.bmp")
    with pytest.raises(InputError, match="'hem' file in the 'all' folder"):
        read_cnmc(tmp_path)


@pytest.mark.reliability
def test_cnmc_validation_csv_naming_missing_image(tmp_path):
    top = make_cnmc(tmp_path)
    (top / "validation_data" / "C-NMC_test_prelim_phase_data" / "2.bmp").unlink()
    with pytest.raises(InputError, match=r"labels\.csv: line 3: image 2\.bmp not found"):
        read_cnmc(top)


# ----------------------------------------------------------------------------- ALL-IDB1

def make_idb1(folder: Path) -> Path:
    """Two smears: a blast smear with two marked blasts (bright squares), a healthy one."""
    folder.mkdir(parents=True)
    smear = np.full((300, 400, 3), 230, dtype=np.uint8)
    smear[95:106, 45:56] = (120, 0, 160)  # blast at (x=50, y=100)
    smear[195:206, 345:356] = (0, 160, 40)  # blast at (x=350, y=200)
    Image.fromarray(smear).save(folder / "Im001_1.png")
    Image.open(folder / "Im001_1.png").save(folder / "Im001_1.tif")
    (folder / "Im001_1.png").unlink()
    (folder / "Im001_1.xyc").write_text("50 100\n\n350\t200\n")
    image(folder / "Im002_0.jpg", size=(400, 300), color=(230, 230, 230))
    (folder / "Im002_0.xyc").write_text("")
    return folder


def test_all_idb1_full_images(tmp_path):
    table = read_all_idb1(make_idb1(tmp_path / "ALL_IDB1"))
    assert_reader_table(table)
    assert table["image"].tolist() == ["Im001_1.tif", "Im002_0.jpg"]
    assert table["centroids"].tolist() == [[(50, 100), (350, 200)], []]
    assert table["label"].tolist() == [1, 0]


def test_all_idb1_archive_layout_with_xyc_folder(tmp_path):
    top = tmp_path / "ALL_IDB1"
    make_idb1(top / "im")
    (top / "xyc").mkdir()
    for xyc in sorted((top / "im").glob("*.xyc")):
        xyc.rename(top / "xyc" / xyc.name)
    table = read_all_idb1(top)
    assert table["centroids"].tolist() == [[(50, 100), (350, 200)], []]


@pytest.mark.reliability
def test_all_idb1_bad_xyc_line(tmp_path):
    folder = make_idb1(tmp_path / "idb1")
    (folder / "Im001_1.xyc").write_text("50 100\n12 abc\n")
    with pytest.raises(InputError, match=r"Im001_1\.xyc: line 2: expected two integers"):
        read_all_idb1(folder)


@pytest.mark.reliability
def test_all_idb1_crops_balanced_far_and_deterministic(tmp_path):
    folder = make_idb1(tmp_path / "idb1")
    crops = read_all_idb1(folder, crops=True, crop_size=64, out_dir=tmp_path / "crops")
    assert_reader_table(crops)
    assert crops["label"].value_counts().to_dict() == {1: 2, 0: 2}
    assert set(crops["group"]) <= {"Im001_1", "Im002_0"}
    blast = crops.set_index("image").loc["lymphoblast/Im001_1_blast000.png"]
    pixels = load_rgb(blast["path"])
    assert pixels.shape == (64, 64, 3) and pixels[32, 32].tolist() == [120, 0, 160]
    second = crops.set_index("image").loc["lymphoblast/Im001_1_blast001.png"]
    assert load_rgb(second["path"])[32, 32].tolist() == [0, 160, 40]
    for row in crops[crops["label"] == 0].itertuples():
        if row.source_image == "Im001_1.tif":  # far from every blast of its smear
            blasts = [(50, 100), (350, 200)]
            assert min(max(abs(row.x - x), abs(row.y - y)) for x, y in blasts) >= 64
    again = crop_cells(read_all_idb1(folder), tmp_path / "crops2", size=64)
    assert again.drop(columns="path").equals(crops.drop(columns="path"))
    assert all(Path(a).read_bytes() == Path(b).read_bytes()
               for a, b in zip(crops["path"], again["path"], strict=True))
    cached = read_all_idb1(folder, crops=True, crop_size=64, out_dir=tmp_path / "crops")
    assert cached.equals(crops)


# ----------------------------------------------------------------------------- BloodMNIST

def make_bloodmnist(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 8, (n, 1)).astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


def test_bloodmnist_npz_written_once_as_png(tmp_path):
    arrays = make_bloodmnist(tmp_path / "bloodmnist.npz")
    table = read_bloodmnist(tmp_path / "bloodmnist.npz")
    assert_reader_table(table)
    assert class_names(table)[3] == "immature granulocytes" and len(class_names(table)) == 8
    assert table.groupby("source_split").size().to_dict() == {"test": 1, "train": 3, "val": 2}
    row = table.set_index("image").loc["val/00001.png"]
    assert row["label"] == arrays["val_labels"][1, 0]
    assert np.array_equal(load_rgb(row["path"]), arrays["val_images"][1])
    assert Path(row["path"]).parent.parent == tmp_path / "bloodmnist_png"
    stamp = Path(row["path"]).stat().st_mtime_ns
    assert read_bloodmnist(tmp_path).equals(table)  # folder argument, cached PNGs
    assert Path(row["path"]).stat().st_mtime_ns == stamp


@pytest.mark.reliability
def test_bloodmnist_missing_arrays(tmp_path):
    np.savez(tmp_path / "bloodmnist.npz", train_images=np.zeros((1, 28, 28, 3), np.uint8))
    with pytest.raises(InputError, match=r"bloodmnist\.npz: missing arrays"):
        read_bloodmnist(tmp_path / "bloodmnist.npz", out_dir=tmp_path / "png")


# ----------------------------------------------------------------------------- CSV, folders

def test_csv_labels_relative_to_csv(tmp_path):
    for name in ("a.png", "b.png", "sub/c.png"):
        image(tmp_path / "imgs" / name)
    csv = tmp_path / "labels.csv"
    csv.write_text("image,class_name,patient\nimgs/b.png,neutrophil,p2\n"
                   "imgs/a.png,basophil,p1\nimgs/sub/c.png,neutrophil,p1\n")
    table = read_csv_labels(csv, group_col="patient")
    assert_reader_table(table)
    assert table["image"].tolist() == ["imgs/a.png", "imgs/b.png", "imgs/sub/c.png"]
    assert class_names(table) == ["basophil", "neutrophil"]
    assert table["group"].tolist() == ["p1", "p2", "p1"]
    fixed = read_csv_labels(csv, classes=["neutrophil", "basophil", "eosinophil"])
    assert fixed["label"].tolist() == [1, 0, 0] and len(class_names(fixed)) == 3
    assert read_dataset("csv", tmp_path).drop(columns="group").equals(
        table.drop(columns="group"))


@pytest.mark.reliability
def test_csv_row_naming_missing_file(tmp_path):
    image(tmp_path / "a.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("image,class_name\na.png,x\nmissing.png,y\n")
    with pytest.raises(InputError) as info:
        read_csv_labels(csv)
    assert str(info.value).startswith(f"{csv}: line 3: missing.png: file not found")
    csv.write_text("file,class_name\na.png,x\n")
    with pytest.raises(InputError, match=r"missing column\(s\) \['image'\]"):
        read_csv_labels(csv)


@pytest.mark.reliability
def test_folder_reader_and_empty_class_folder(tmp_path):
    image(tmp_path / "b_class" / "x.jpg")
    image(tmp_path / "a_class" / "y.png")
    (tmp_path / "a_class" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    table = read_folder(tmp_path)
    assert table["image"].tolist() == ["a_class/y.png", "b_class/x.jpg"]
    assert class_names(table) == ["a_class", "b_class"]
    (tmp_path / "c_class").mkdir()
    with pytest.raises(InputError) as info:
        read_folder(tmp_path)
    assert str(info.value) == f"{tmp_path / 'c_class'}: empty class folder (no images)"


@pytest.mark.reliability
def test_all_idb2_bad_names_strict_and_lenient(tmp_path):
    image(tmp_path / "Im001_1.tif")
    image(tmp_path / "im002_0.JPG")  # suffix case does not matter
    image(tmp_path / "masks" / "Im001_1.png")  # subfolders are not listed
    (tmp_path / "README.txt").write_text("not an image, ignored")
    assert read_all_idb2(tmp_path)["image"].tolist() == ["Im001_1.tif", "im002_0.JPG"]
    image(tmp_path / "cell 3.jpg")
    with pytest.raises(InputError, match=r"cell 3\.jpg: file name does not match .*ImNNN_Y"):
        read_all_idb2(tmp_path)
    with pytest.warns(UserWarning, match=r"cell 3\.jpg"):
        table = read_all_idb2(tmp_path, strict=False)
    assert len(table) == 2


@pytest.mark.reliability
def test_all_idb2_same_image_twice(tmp_path):
    image(tmp_path / "Im001_1.tif")
    image(tmp_path / "Im001_1.jpg")
    with pytest.raises(InputError, match="same image as"):
        read_all_idb2(tmp_path)


@pytest.mark.reliability
@pytest.mark.parametrize("name", ["all_idb2", "all_idb1", "kaggle", "cnmc", "pbc", "zheng2018",
                                  "folder"])
def test_missing_root_and_root_without_images(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError) as info:
        read_dataset(name, missing)
    assert str(info.value) == f"{missing}: dataset folder not found"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as info:
        read_dataset(name, tmp_path / "empty")
    assert str(info.value).startswith(f"{tmp_path / 'empty'}: ") and "expected" in str(info.value)


def test_unknown_dataset_name():
    with pytest.raises(InputError, match="unknown dataset"):
        read_dataset("all_idb3", "data")
    assert {"all_idb2", "csv", "synthetic_multiclass", "zheng2018"} <= set(DATASET_NAMES)


# ----------------------------------------------------------------------------- Zheng (fake)

def make_zheng(root: Path, labels: str) -> Path:
    for stem in ("001", "002", "003"):
        image(root / "Dataset 1" / f"{stem}.bmp")
        image(root / "Dataset 1" / f"{stem}.png")
    (root / "Class Labels of Dataset 1.csv").write_text(labels)
    return root


@pytest.mark.reliability
def test_zheng_label_csv_naming_missing_image(tmp_path):
    root = make_zheng(tmp_path, "image ID,class label\r\n1,2\r\n7,1\r\n")
    with pytest.raises(InputError) as info:
        read_zheng2018(root)
    message = str(info.value)
    assert message.startswith(str(root / "Class Labels of Dataset 1.csv"))
    assert "Dataset 1/007.bmp not found" in message


@pytest.mark.reliability
def test_zheng_label_outside_the_five_classes(tmp_path):
    root = make_zheng(tmp_path, "image ID,class label\r\n1,6\r\n")
    with pytest.raises(InputError, match=r"Dataset 1\.csv: line 2: class label 6 not in 1\.\.5"):
        read_zheng2018(root)


@pytest.mark.reliability
def test_zheng_image_without_label_is_left_out(tmp_path):
    root = make_zheng(tmp_path, "image ID,class label\r\n1,2\r\n3,5\r\n")
    with pytest.warns(UserWarning, match=r"002\.bmp: no label"):
        table = read_zheng2018(root)
    assert table["image"].tolist() == ["Dataset 1/001.bmp", "Dataset 1/003.bmp"]
    assert table["class_name"].tolist() == ["lymphocyte", "basophil"]
    assert table["mask_path"].str.endswith(".png").all()


# ----------------------------------------------------------------------------- table helpers

def test_dataset_hash_tracks_labels_and_sizes_not_order(tmp_path):
    a, b = image(tmp_path / "a.png"), image(tmp_path / "b.png")
    table = pd.DataFrame({"image": ["a.png", "b.png"], "path": [str(a), str(b)], "label": [0, 1]})
    reference = dataset_hash(table)
    assert dataset_hash(table.iloc[::-1]) == reference
    assert dataset_hash(table.assign(label=[1, 1])) != reference
    image(b, size=(30, 30))  # re-encoded file: different size
    assert dataset_hash(table) != reference


def test_class_names_survive_subsets(tmp_path):
    table = read_csv_labels(*_three_class_csv(tmp_path))
    subset = table[table["class_name"] != "b"]
    assert class_names(subset) == ["a", "b", "c"]  # the class list travels in attrs
    bare = pd.DataFrame(subset.to_dict("list"))
    with pytest.raises(ValueError, match="not 0..K-1"):
        class_names(bare)


def _three_class_csv(tmp_path: Path) -> tuple[Path]:
    for name in "abc":
        image(tmp_path / f"{name}.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("image,class_name\na.png,a\nb.png,b\nc.png,c\n")
    return (csv,)


# ----------------------------------------------------------------------------- synthetic

@pytest.fixture
def fake_synthetic(monkeypatch, tmp_path):
    """Stand-in for leukocyte_cnn.data.synthetic that writes the documented layouts, tiny."""
    calls = []

    def ensure_synthetic(kind, data_dir="data", seed=0, **opts):
        calls.append((kind, str(data_dir), seed))
        root = Path(data_dir) / "synthetic" / kind
        if kind == "all_idb2":
            for n, y in ((1, 1), (2, 0)):
                image(root / f"Im00{n}_{y}.tif")
                image(root / "masks" / f"Im00{n}_{y}.png")
        elif kind == "multiclass":
            for n in (1, 2):
                image(root / "images" / f"000{n}.png")
                image(root / "masks" / f"000{n}.png")
            (root / "labels.csv").write_text(
                "image,class_name\nimages/0002.png,neutrophil\nimages/0001.png,lymphoblast\n")
        return root

    monkeypatch.setitem(sys.modules, "leukocyte_cnn.data.synthetic",
                        types.SimpleNamespace(ensure_synthetic=ensure_synthetic))
    return calls


def test_synthetic_sets_read_with_masks(fake_synthetic, tmp_path):
    table = read_dataset("synthetic_all_idb2", tmp_path, seed=3)
    assert fake_synthetic == [("all_idb2", str(tmp_path), 3)]
    assert table["image"].tolist() == ["Im001_1.tif", "Im002_0.tif"]
    assert [Path(m).relative_to(tmp_path).as_posix() for m in table["mask_path"]] == [
        "synthetic/all_idb2/masks/Im001_1.png", "synthetic/all_idb2/masks/Im002_0.png"]
    multi = read_dataset("synthetic_multiclass", tmp_path)
    assert_reader_table(multi)
    assert multi["image"].tolist() == ["images/0001.png", "images/0002.png"]
    assert multi["class_name"].tolist() == ["lymphoblast", "neutrophil"]
    assert [Path(m).name for m in multi["mask_path"]] == ["0001.png", "0002.png"]
