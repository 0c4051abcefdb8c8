"""Fold logic and cross_validation_splits.py: no leaks, thesis exclusion, stratification,
byte-identical files, and split files that refuse a different dataset.

Fast and TensorFlow-free: tables are built by hand; the reader is replaced by a fake where the
real one is not the point. The ALL-IDB2 acceptance command runs on the real images when
``../shared/data`` is there.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import read_json
from leukocyte_cnn.splits import policy, split_files
from leukocyte_cnn.splits.plans import apply_exclusion, make_split
from leukocyte_cnn.splits.split_files import load_split, write_split
from leukocyte_cnn.splits.split_table import SPLIT_COLUMNS, assert_no_leakage, check_split

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COUNTS = {"lymphoblast": 60, "neutrophil": 50, "lymphocyte": 45, "monocyte": 25,
          "eosinophil": 15, "basophil": 4, "thrombocyte": 3}
SMALL = {"basophil", "thrombocyte"}  # fewer than 5 images: set aside by the thesis rule


def make_table(counts: dict[str, int] = COUNTS, per_group: int = 3, mixed_groups: bool = False,
               root: Path | None = None) -> pd.DataFrame:
    """A reader-style table; ``per_group`` images share a patient. ``mixed_groups`` deals
    patients across classes (one patient, several cell types), the harder case for grouping."""
    rows, serial = [], 0
    n_patients = max(1, sum(counts.values()) // per_group)
    for label, (name, n) in enumerate(counts.items()):
        for i in range(n):
            patient = serial % n_patients if mixed_groups else f"{name}{i // per_group}"
            image = f"{name}/{name}_{i:03d}.png"
            rows.append({"image": image, "path": str((root or Path("/nowhere")) / image),
                         "label": label, "class_name": name, "group": f"P{patient}",
                         "source_split": ""})
            serial += 1
    return pd.DataFrame(rows).sort_values("image").reset_index(drop=True)


def kept_rows(split: pd.DataFrame) -> pd.DataFrame:
    return split[split["role"] != "excluded"]


def roles_per_fold(split: pd.DataFrame) -> pd.DataFrame:
    """(fold, class, role) counts as a wide table."""
    return (kept_rows(split).groupby(["fold", "class_name", "role"]).size()
            .unstack("role", fill_value=0))


# ----------------------------------------------------------------------------- exclusion

def test_exclusion_sets_aside_small_and_named_classes():
    kept, excluded = apply_exclusion(make_table(), min_images=5, exclude_classes=["Monocyte"])
    assert set(excluded["class_name"]) == SMALL | {"monocyte"}
    assert len(excluded) == 4 + 3 + 25
    assert set(kept["class_name"]) == {"lymphoblast", "neutrophil", "lymphocyte", "eosinophil"}


def test_exclusion_of_unknown_class_lists_known_ones():
    with pytest.raises(InputError, match=r"^--exclude thrombocytes: unknown class; known "
                                         r"classes: lymphoblast, neutrophil"):
        apply_exclusion(make_table(), exclude_classes=["thrombocytes"])


# ----------------------------------------------------------------------------- every method

METHOD_CASES = {
    "kfold": dict(k=5),
    "lpo": dict(p=5),
    "group_kfold": dict(k=5),
    "random": dict(),
}


@pytest.mark.parametrize("mixed", [False, True], ids=["patient-per-class", "mixed-patients"])
@pytest.mark.parametrize("method", list(METHOD_CASES))
def test_roles_disjoint_and_excluded_never_used(method, mixed):
    table = make_table(mixed_groups=mixed)
    split = make_split(table, method, seed=3, exclude_classes=["thrombocyte"],
                       **METHOD_CASES[method])
    kept = kept_rows(split)
    # one role per image per fold
    assert not kept.duplicated(["fold", "image"]).any()
    if method == "group_kfold":
        assert kept.groupby(["fold", "group"])["role"].nunique().max() == 1
    # the small and the named classes only appear once, as excluded, with fold -1
    excluded = split[split["role"] == "excluded"]
    assert set(excluded["class_name"]) == SMALL
    assert (excluded["fold"] == -1).all() and excluded["image"].is_unique
    assert not set(kept["class_name"]) & SMALL
    assert len(excluded) == 7
    if method != "random":
        # every kept image is tested exactly once over the folds
        tested = kept[kept["role"] == "test"]["image"].value_counts()
        assert len(tested) == sum(n for c, n in COUNTS.items() if c not in SMALL)
        assert (tested == 1).all()
    assert check_split(split, grouped=(method == "group_kfold"),
                       complete=(method != "random")) == []


@pytest.mark.parametrize("method", list(METHOD_CASES))
def test_every_class_with_three_training_images_gets_validation(method):
    split = make_split(make_table(), method, seed=1, **METHOD_CASES[method])
    counts = roles_per_fold(split)
    available = counts["train"] + counts["val"]
    assert (counts.loc[available >= 3, "val"] >= 1).all()
    assert (counts["train"] >= 1).all()
    if method != "group_kfold":  # by image the quota is exact: >= 2 left to train
        assert (counts.loc[available >= 3, "train"] >= 2).all()
    # and roughly the asked fraction overall
    share = counts["val"].sum() / available.sum()
    assert 0.15 < share < 0.3


@pytest.mark.parametrize("method", ["kfold", "lpo"])
def test_stratified_within_one_image_per_class(method):
    split = make_split(make_table(per_group=1), method, seed=0, **METHOD_CASES[method])
    tests = kept_rows(split)
    tests = tests[tests["role"] == "test"]
    per_fold = tests.groupby(["fold", "class_name"]).size().unstack(fill_value=0)
    spread = per_fold.max() - per_fold.min()
    assert (spread <= 1).all(), spread.to_dict()


def test_lpo_on_260_images_gives_52_folds_of_5():
    table = make_table({"blast": 130, "other": 130}, per_group=1)  # ALL-IDB2: no patients
    split = make_split(table, "lpo", p=5, seed=0)
    tests = split[split["role"] == "test"]
    sizes = tests.groupby("fold").size()
    assert sorted(sizes.index) == list(range(52))
    assert (sizes == 5).all()
    # each test set mixes classes: 2 or 3 of each
    per_class = tests.groupby(["fold", "class_name"]).size().unstack(fill_value=0)
    assert set(per_class.to_numpy().ravel()) == {2, 3}


def test_lpo_with_remainder_has_folds_of_at_most_p():
    table = make_table({"a": 100, "b": 60, "c": 37}, per_group=1)  # 197 images
    tests = make_split(table, "lpo", p=5)
    sizes = tests[tests["role"] == "test"].groupby("fold").size()
    assert len(sizes) == math.ceil(197 / 5) and sizes.max() == 5 and sizes.min() == 4


def test_group_kfold_keeps_patients_together_across_test_folds():
    split = make_split(make_table(mixed_groups=True), "group_kfold", k=4, seed=2)
    tests = split[split["role"] == "test"]
    assert tests.groupby("group")["fold"].nunique().max() == 1


def test_too_few_groups_for_k_is_an_input_error():
    table = make_table({"a": 10, "b": 10}, per_group=5)  # 4 patients
    with pytest.raises(InputError, match="only 4 groups"):
        make_split(table, "group_kfold", k=5)


# ----------------------------------------------------------------------------- predefined

def with_sources(table: pd.DataFrame, source_of) -> pd.DataFrame:
    table = table.copy()
    table["source_split"] = [source_of(g) for g in table["group"]]
    return table


def test_predefined_uses_owner_test_and_draws_val_by_patient():
    table = with_sources(make_table(), lambda g: "TEST" if int(g[-1]) % 4 == 0 else "TRAIN")
    split = make_split(table, "predefined", seed=0)
    kept = kept_rows(split)
    assert set(kept["fold"]) == {0}
    owner_test = set(table.loc[table["source_split"] == "TEST", "image"])
    small_class = set(table.loc[table["class_name"].isin(SMALL), "image"])
    assert set(kept.loc[kept["role"] == "test", "image"]) == owner_test - small_class
    assert kept.groupby("group")["role"].nunique().max() == 1  # val carved by patient
    assert (kept["role"] == "val").sum() > 0


def test_predefined_refuses_owner_split_that_shares_patients():
    table = make_table()
    table["source_split"] = np.where(np.arange(len(table)) % 5 == 0, "TEST", "TRAIN")
    with pytest.raises(InputError, match="shares .* groups"):
        make_split(table, "predefined")
    # ignoring groups is the user's explicit choice
    split = make_split(table, "predefined", groups=None)
    assert (split["role"] == "test").sum() > 0


def test_predefined_source_folds_become_test_folds():
    patients = sorted(set(make_table()["group"]))
    fold_of = {g: f"fold_{i % 3}" for i, g in enumerate(patients)}
    table = with_sources(make_table(), fold_of.__getitem__)
    split = make_split(table, "predefined", seed=0)
    kept = kept_rows(split)
    assert sorted(set(kept["fold"])) == [0, 1, 2]
    for k in range(3):
        rows = kept[kept["fold"] == k]
        owner = set(table.loc[(table["source_split"] == f"fold_{k}")
                              & ~table["class_name"].isin(SMALL), "image"])
        assert set(rows.loc[rows["role"] == "test", "image"]) == owner
        assert rows.groupby("group")["role"].nunique().max() == 1


def test_predefined_without_owner_split_is_an_input_error():
    with pytest.raises(InputError, match="no predefined test split"):
        make_split(make_table(), "predefined", where="data/x")


# ----------------------------------------------------------------------------- leak checks

def test_check_split_catches_image_in_train_and_test():
    split = make_split(make_table(), "kfold", k=5)
    assert check_split(split) == []
    test_row = split[(split["fold"] == 0) & (split["role"] == "test")].iloc[[0]]
    leaky = pd.concat([split, test_row.assign(role="train")], ignore_index=True)
    problems = check_split(leaky)
    assert any("two roles" in p and test_row["image"].iloc[0] in p for p in problems)
    with pytest.raises(InputError, match="leaky"):
        assert_no_leakage(leaky)


def test_check_split_catches_patient_in_train_and_test():
    split = make_split(make_table(), "group_kfold", k=5)
    assert check_split(split, grouped=True) == []
    fold0 = split.index[split["fold"] == 0]
    test_group = split.loc[fold0[split.loc[fold0, "role"] == "test"][0], "group"]
    train_row = fold0[split.loc[fold0, "role"] == "train"][0]
    leaky = split.copy()
    leaky.loc[train_row, "group"] = test_group  # same patient now trains and tests
    problems = check_split(leaky, grouped=True)
    assert any("group" in p and test_group in p for p in problems)
    assert check_split(leaky, grouped=False) == []  # image-level methods ignore groups


def test_random_split_leaks_patients_which_the_group_check_exposes():
    split = make_split(make_table(per_group=6), "random", seed=0)
    assert check_split(split, complete=False) == []
    assert any("group" in p for p in check_split(split, grouped=True, complete=False))


def test_check_split_catches_double_test_excluded_and_untested_images():
    split = make_split(make_table(), "kfold", k=5)
    image = split.loc[(split["fold"] == 0) & (split["role"] == "test"), "image"].iloc[0]
    twice = split.copy()
    twice.loc[(twice["fold"] == 1) & (twice["image"] == image), "role"] = "test"
    assert any("more than one fold" in p for p in check_split(twice))
    excluded_image = split.loc[split["role"] == "excluded", "image"].iloc[0]
    sneaked = pd.concat([split, split[split["image"] == excluded_image]
                         .assign(fold=2, role="train")], ignore_index=True)
    assert any("excluded image" in p for p in check_split(sneaked))
    untested = split[~((split["image"] == image) & (split["role"] == "test"))]
    assert any("never tested" in p for p in check_split(untested))
    assert check_split(untested, complete=False) == []


# ----------------------------------------------------------------------------- files

SETTINGS = {"dataset": "fake", "data_root": "somewhere", "method": "lpo", "p": 5,
            "dataset_hash": "0" * 64}


def test_same_seed_gives_byte_identical_files_and_other_seed_differs(tmp_path):
    def write(seed: int, out: str):
        split = make_split(make_table(per_group=1), "lpo", p=5, seed=seed)
        return write_split(split, {**SETTINGS, "seed": seed}, tmp_path / out, "s")

    first, again, other = write(0, "a"), write(0, "b"), write(1, "c")
    for i in range(2):  # CSV, JSON
        assert first[i].read_bytes() == again[i].read_bytes()
    assert first[0].read_bytes() != other[0].read_bytes()
    settings = read_json(first[1])
    assert settings["n_folds"] == 39 and settings["excluded_classes"] == {"basophil": 4,
                                                                          "thrombocyte": 3}
    assert settings["leaky"] is False and "time" not in " ".join(settings)
    assert list(pd.read_csv(first[0]).columns) == SPLIT_COLUMNS


def file_hash(table: pd.DataFrame) -> str:
    """The contract's dataset hash (image, label, file size)."""
    lines = sorted(f"{image}\t{int(label)}\t{os.path.getsize(path)}\n"
                   for image, label, path in zip(table["image"], table["label"], table["path"],
                                                 strict=True))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@pytest.fixture
def fake_dataset(tmp_path, monkeypatch):
    """Tiny files on disk and a fake reader listing them (the real readers are tested
    elsewhere); returns the data root."""
    root = tmp_path / "data"
    table = make_table({"blast": 12, "lymphocyte": 10, "thrombocyte": 3}, root=root)
    for path in table["path"]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"x" * 10)

    def read_dataset(name, root_arg=None, **options):
        assert name == "fake" and options == {"flavour": "x"}
        found = table[[Path(p).exists() for p in table["path"]]]
        return found.reset_index(drop=True)

    monkeypatch.setattr(split_files, "dataset_api", lambda: (read_dataset, file_hash))
    return root, table


def write_fake_split(root: Path, table: pd.DataFrame, out: Path):
    split = make_split(table, "kfold", k=3, seed=0)
    settings = {"dataset": "fake", "data_root": str(root), "reader_options": {"flavour": "x"},
                "method": "kfold", "k": 3, "dataset_hash": file_hash(table)}
    return write_split(split, settings, out, "fake_kfold")


def test_load_split_round_trip_renumbers_labels_past_excluded_classes(fake_dataset, tmp_path):
    root, table = fake_dataset
    csv_path, _ = write_fake_split(root, table, tmp_path / "splits")
    split = load_split(csv_path)
    assert split.folds == [0, 1, 2] and split.name == "fake_kfold" and split.path == csv_path
    assert split.class_names == ["blast", "lymphocyte"]
    assert split.all_class_names == ["blast", "lymphocyte", "thrombocyte"]
    fold = split.fold(1)
    assert set(fold["role"]) == {"train", "val", "test"}
    assert all(Path(p).is_absolute() and Path(p).exists() for p in fold["path"])
    # label indexes class_names; the reader's label is kept beside it
    assert (fold["class_name"].map(split.class_names.index) == fold["label"]).all()
    assert set(split.excluded["class_name"]) == {"thrombocyte"}
    with pytest.raises(InputError, match="fold 7 not in the split"):
        split.fold(7)


def test_load_split_refuses_a_different_dataset(fake_dataset, tmp_path):
    root, table = fake_dataset
    csv_path, _ = write_fake_split(root, table, tmp_path / "splits")
    Path(table["path"].iloc[0]).write_bytes(b"re-encoded, other size")
    with pytest.raises(InputError, match=r"^\S+fake_kfold\.csv: split was made for a different "
                                         r"dataset \(hash \w+ != \w+\); re-run "
                                         r"cross_validation_splits\.py$"):
        load_split(csv_path)


def test_load_split_names_a_missing_image(fake_dataset, tmp_path):
    root, table = fake_dataset
    csv_path, _ = write_fake_split(root, table, tmp_path / "splits")
    gone = Path(table["path"].iloc[5])
    gone.unlink()
    with pytest.raises(InputError, match="different dataset"):
        load_split(csv_path)
    with pytest.raises(InputError, match=f"{table['image'].iloc[5]}: image listed in split"):
        load_split(csv_path, verify_hash=False)


def test_load_split_missing_or_edited_file(fake_dataset, tmp_path):
    root, table = fake_dataset
    with pytest.raises(InputError, match=r"nope\.csv: split file not found; run "
                                         r"cross_validation_splits\.py first"):
        load_split(tmp_path / "nope.csv")
    csv_path, json_path = write_fake_split(root, table, tmp_path / "splits")
    text = csv_path.read_text()
    csv_path.write_text(text.replace(",val\n", ",test\n", 1))  # hand edit
    with pytest.raises(InputError, match="does not match its settings"):
        load_split(csv_path)
    json_path.unlink()
    with pytest.raises(InputError, match="split settings not found"):
        load_split(csv_path)


# ----------------------------------------------------------------------------- the script

def load_script():
    spec = importlib.util.spec_from_file_location("cross_validation_splits",
                                                  REPO / "cross_validation_splits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def png_dataset(tmp_path, monkeypatch):
    """Real (tiny) PNG files with groups, one of them zero bytes, behind a fake reader."""
    from PIL import Image

    root = tmp_path / "pngs"
    table = make_table({"blast": 15, "lymphocyte": 12, "basophil": 2}, per_group=3, root=root)
    for path in table["path"]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (200, 100, 50)).save(path)
    bad = table["image"].iloc[3]
    Path(table["path"].iloc[3]).write_bytes(b"")
    monkeypatch.setattr(split_files, "dataset_api",
                        lambda: (lambda name, root_arg=None, **o: table.copy(), file_hash))
    return table, bad


def test_script_stops_on_bad_file_and_skips_it_when_asked(png_dataset, tmp_path, capsys):
    script = load_script()
    table, bad = png_dataset
    out = tmp_path / "splits"
    base = ["--dataset", "fakeset", "--data-root", "pngs", "--out-dir", str(out),
            "--name", "s"]
    with pytest.raises(InputError, match=f"{bad}"):
        script.main(script.parse_args(base))
    assert not out.exists() or not list(out.iterdir())  # nothing written
    script.main(script.parse_args(base + ["--skip-bad"]))
    text = capsys.readouterr().out
    assert "method: group_kfold" in text  # patients in the data: grouped by default
    assert "excluded: basophil 2" in text
    settings = read_json(out / "s.json")
    assert [b["image"] for b in settings["skipped_bad_files"]] == [bad]
    assert settings["grouped"] is True and settings["method"] == "group_kfold"
    assert bad not in set(pd.read_csv(out / "s.csv")["image"])


def test_script_default_name_and_groups_before_the_all_idb_name(png_dataset, tmp_path,
                                                                capsys):
    """ALL-IDB-like names get leave-P-out, but only after the groups were looked at: crops
    that share smears (here: patients) are split by group."""
    script = load_script()
    args = script.parse_args(["--dataset", "all_idb2_fake", "--out-dir", str(tmp_path),
                              "--no-check-images", "--exclude", "basophil"])
    script.main(args)
    assert len(list(tmp_path.glob("all_idb2_fake_group_kfold_k5_seed0_excl-basophil_*.csv"))) == 1
    assert "method: group_kfold" in capsys.readouterr().out


def test_acceptance_all_idb2_gives_52_folds_in_seconds(tmp_path):
    data = SHARED_DATA / "all_idb2_lowres"
    if not data.is_dir():
        pytest.skip(f"real ALL-IDB2 images not available at {data}")
    if importlib.util.find_spec("leukocyte_cnn.data.datasets") is None:
        pytest.skip("leukocyte_cnn.data.datasets (the readers) is not there yet")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "cross_validation_splits.py", "--dataset",
                             "all_idb2", "--data-root", str(data), "--out-dir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    csv_path, = tmp_path.glob("all_idb2_lpo_p5_seed0_*.csv")
    split = pd.read_csv(csv_path)
    tests = split[split["role"] == "test"]
    assert tests["fold"].nunique() == 52 and (tests.groupby("fold").size() == 5).all()
    assert tests["image"].is_unique and len(tests) == 260
    loaded = load_split(csv_path)
    assert len(loaded.folds) == 52 and len(loaded.fold(0)) == 260
    print(f"acceptance command: {seconds:.1f} s")


def test_default_split_of_another_data_root_is_kept_and_a_fingerprinted_one_is_used(tmp_path):
    """Same dataset name, other images (e.g. a low-resolution copy): the script's default
    split must neither be reused for the wrong images nor overwritten."""

    from PIL import Image

    from leukocyte_cnn.runs.experiment import RunOptions, resolve_split

    def folder(name: str, shade: int) -> Path:
        root = tmp_path / name
        for cls in ("blast", "other"):
            (root / cls).mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (6, 6), (shade, i * 20, 40)).save(root / cls / f"{i}.png")
        return root

    first, second = folder("one", 10), folder("two", 200)
    Image.new("RGB", (9, 9)).save(second / "blast" / "extra.png")  # another dataset
    run = RunOptions(dataset="folder", data_root=str(first), seed=0)
    protocol = {"method": "kfold", "data_dir": tmp_path, "k": 2, "val_fraction": 0.2,
                "min_images": 5}
    split_a = resolve_split(run, **protocol)
    default = split_a.path
    before = default.read_bytes()
    split_b = resolve_split(run.with_changes(data_root=str(second)), **protocol)
    assert default.read_bytes() == before  # the first root's split is untouched
    assert split_b.path != default  # its own fingerprint: other images, other name
    assert split_b.path.stem.rsplit("_", 1)[0] == default.stem.rsplit("_", 1)[0]
    assert set(split_b.fold(0)["path"]).isdisjoint(set(split_a.fold(0)["path"]))
    assert "extra.png" in " ".join(split_b.fold(0)["path"])
    # Both resolve again to their own file, and reload cleanly.
    assert resolve_split(run.with_changes(data_root=str(second)), **protocol).path == split_b.path
    assert resolve_split(run, **protocol).path == default


# ----------------------------------------------------------------------------- group-safe splits

@pytest.mark.parametrize("mixed", [False, True], ids=["patient-per-class", "mixed-patients"])
@pytest.mark.parametrize("method,options", [("kfold", dict(k=4)), ("lpo", dict(p=3))])
def test_kfold_and_lpo_split_grouped_tables_by_group(method, options, mixed):
    """kfold and lpo on data with patients: no patient on two sides of any fold, every
    patient tested exactly once, validation drawn by patient, and the split is not leaky."""
    table = make_table(mixed_groups=mixed)
    split = make_split(table, method, seed=5, exclude_classes=["thrombocyte"], **options)
    kept = kept_rows(split)
    assert kept.groupby(["fold", "group"])["role"].nunique().max() == 1
    tests = kept[kept["role"] == "test"]
    assert tests.groupby("group")["fold"].nunique().max() == 1
    assert set(tests["group"]) == set(kept["group"])  # every patient tested once
    assert (kept[kept["role"] == "val"].groupby("fold").size() > 0).all()
    assert check_split(split, grouped=True) == []
    assert policy.split_is_grouped(method, "auto", kept)
    assert not policy.split_is_leaky(method, "auto", kept)


def test_lpo_leaves_out_p_groups_per_fold():
    table = make_table({"a": 30, "b": 24}, per_group=3)  # 10 + 8 patients
    split = make_split(table, "lpo", p=4, seed=0)
    tests = kept_rows(split).query("role == 'test'")
    per_fold = tests.groupby("fold")["group"].nunique()
    assert len(per_fold) == math.ceil(18 / 4) and per_fold.max() == 4 and per_fold.min() == 3
    both = tests.groupby("fold")["class_name"].nunique()
    assert (both == 2).all()  # classes spread over the folds, as by image


def test_too_few_groups_for_lpo_is_an_input_error():
    with pytest.raises(InputError, match="only 4 groups .* --p 5"):
        make_split(make_table({"a": 10, "b": 10}, per_group=5), "lpo", p=5)


@pytest.mark.parametrize("method,options", [("kfold", dict(k=5)), ("lpo", dict(p=5))])
def test_images_without_groups_split_exactly_as_before(method, options):
    """Groups that are the images' own names (ALL-IDB2): the group-aware code changes nothing."""
    table = make_table(per_group=1)
    by_default = make_split(table, method, seed=2, **options)
    by_image = make_split(table, method, seed=2, groups=None, **options)
    pd.testing.assert_frame_equal(by_default, by_image)
    assert not policy.split_is_leaky(method, None, kept_rows(by_image))


@pytest.mark.parametrize("method,options", [("kfold", dict(k=5)), ("lpo", dict(p=5)),
                                            ("random", dict())])
def test_image_level_split_of_grouped_data_leaks_and_is_marked_leaky(method, options, tmp_path):
    """``groups=None`` (--ignore-groups) and ``random`` split patients by image: the group check
    finds the leak, and the file written says leaky."""
    table = make_table(mixed_groups=True)
    split = make_split(table, method, seed=0, groups=None, **options)
    problems = check_split(split, grouped=True, complete=method != "random")
    assert any("group(s) in two roles" in p for p in problems)
    with pytest.raises(InputError, match="leaky or inconsistent split"):
        assert_no_leakage(split, grouped=True, complete=method != "random")
    settings = {"dataset": "x", "method": method, "dataset_hash": "h", "groups": None}
    write_split(split, settings, tmp_path, "s")
    assert read_json(tmp_path / "s.json")["leaky"] is True
    assert policy.split_is_leaky(method, None, kept_rows(split))


def test_a_split_that_puts_one_patient_on_two_sides_fails_the_check():
    split = make_split(make_table({"a": 12, "b": 12}), "kfold", k=2, seed=0)
    assert check_split(split, grouped=True) == []
    fold0 = split[split["fold"] == 0]
    tested = fold0[fold0["role"] == "test"].iloc[0]
    # move one image of a tested patient into training: an image-level split would do this
    sibling = split.index[(split["fold"] == 0) & (split["group"] == tested["group"])
                          & (split["image"] != tested["image"])][0]
    leaky = split.copy()
    leaky.loc[sibling, "role"] = "train"
    assert any("group(s) in two roles" in p for p in check_split(leaky, grouped=True))


def test_default_method_looks_at_groups_before_dataset_names():
    smears = make_table({"blast": 20, "other": 20}, per_group=4)  # ALL-IDB1 crops share smears
    assert policy.default_method("all_idb1", smears)[0] == "group_kfold"
    cells = make_table({"blast": 20, "other": 20}, per_group=1)
    assert policy.default_method("all_idb2", cells)[0] == "lpo"
    owner = cells.assign(source_split=["TEST" if i % 4 == 0 else "TRAIN"
                                       for i in range(len(cells))])
    assert policy.default_method("kaggle", owner)[0] == "predefined"
    assert policy.default_method("pbc", cells)[0] == "kfold"


def test_copies_are_joined_for_every_method_on_kaggle_only():
    cells = make_table({"a": 10, "b": 10}, per_group=1)
    for method in ("kfold", "lpo", "group_kfold", "predefined"):
        assert policy.joins_copies("auto", method, "kaggle", cells)
        assert policy.joins_copies("auto", method, "synthetic_kaggle", cells)
        assert not policy.joins_copies("auto", method, "kaggle", cells, ignore_groups=True)
        assert not policy.joins_copies("off", method, "kaggle", cells)
    assert not policy.joins_copies("auto", "random", "kaggle", cells)
    assert not policy.joins_copies("auto", "lpo", "all_idb2", cells)  # thesis split unchanged
    assert policy.joins_copies("auto", "predefined", "bloodmnist", cells)
    assert not policy.joins_copies("auto", "kfold", "kaggle", make_table(per_group=3))
    assert policy.joins_copies("group", "lpo", "all_idb2", cells)
    # Kaggle split by image (copies not joined) is leaky even though no group is repeated
    assert policy.split_is_leaky("kfold", "auto", cells, copies_expected=True)
    assert not policy.split_is_leaky("kfold", "auto", cells)


def test_ignore_groups_with_group_kfold_is_refused():
    with pytest.raises(InputError, match="--ignore-groups: contradicts --method group_kfold"):
        make_split(make_table(), "group_kfold", k=3, groups=None)


def test_ignore_groups_and_reader_options_with_a_split_file_are_refused(tmp_path):
    """They shape the default split only; with --split they would do nothing: one line."""

    from leukocyte_cnn.runs.experiment import RunOptions, resolve_split

    for extra in ({"ignore_groups": True, "reader_options": ()},
                  {"ignore_groups": False, "reader_options": ("crops=true",)}):
        run = RunOptions(dataset="folder", split=str(tmp_path / "s.csv"), **extra)
        with pytest.raises(InputError, match=r"s\.csv: --(ignore-groups|reader-option) shape"):
            resolve_split(run, method="kfold", val_fraction=0.2, min_images=5)
