"""The leakage audit: perceptual hashes that see through rotations and flips, and a report that
finds every planted overlap (same key, same bytes, same patient, augmented copy) per fold."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, shared_dataset
from PIL import Image, ImageDraw, ImageFilter

from leukocyte_cnn.base.cli import run_main
from leukocyte_cnn.splits.leakage import audit, wide_table
from leukocyte_cnn.splits.perceptual_hash import (
    DEFAULT_THRESHOLD,
    dihedral_hashes,
    hamming,
    image_distance,
    luma_with_padding_filled,
    near_pairs,
)


def cell(seed: int, size=(120, 96)) -> np.ndarray:
    """A smear-like picture: pink background, red cells, one purple nucleus (seeded)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, (232, 205, 210))
    draw = ImageDraw.Draw(image)
    for _ in range(7):
        x, y, r = rng.integers(0, size[0]), rng.integers(0, size[1]), rng.integers(10, 15)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(205, 125, 140))
    x, y = rng.integers(30, size[0] - 30), rng.integers(30, size[1] - 30)
    draw.ellipse([x - 18, y - 15, x + 16, y + 19], fill=(95, 55, 150))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)))


def smear(seed: int, size=(120, 96), class_name: str = "neutrophil") -> np.ndarray:
    """A realistic single-cell image (red cells around one white cell) from the repository's
    renderer: distinct seeds are distinct cells that pixel verification must keep apart."""
    from leukocyte_cnn.data.synthetic_render import render_cell

    image, _ = render_cell(class_name, (size[1], size[0]), np.random.default_rng([7, seed]))
    return image


def shifted(array: np.ndarray, dx: int, dy: int, angle: float = 0.0) -> np.ndarray:
    """Rotate/shift like an augmentation tool: the uncovered area is filled with black."""
    return np.asarray(Image.fromarray(array).rotate(angle, resample=Image.Resampling.BILINEAR,
                                                    fillcolor=(0, 0, 0), translate=(dx, dy)))


def jpeg_round_trip(array: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=85)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def hashes(array: np.ndarray) -> np.ndarray:
    return dihedral_hashes(np.ascontiguousarray(array))


# ----------------------------------------------------------------------------- hashing

def test_every_rotation_and_flip_of_a_square_image_is_at_distance_zero():
    image = cell(1, size=(96, 96))
    original = hashes(image)
    copies = [np.rot90(image, 1), np.rot90(image, 2), np.rot90(image, 3), image[:, ::-1],
              image[::-1], image.transpose(1, 0, 2), np.rot90(image[:, ::-1])]
    for copy in copies:
        assert image_distance(original, hashes(copy)) == 0
        # the plain hash of the copy is one of the eight precomputed ones
        assert hashes(copy)[0] in set(original.tolist())
    # ... while the plain hashes alone would not match: the dihedral search is what finds them
    assert max(int(hamming(original[0], hashes(c)[0])) for c in copies) > DEFAULT_THRESHOLD


def test_augmented_copies_are_near_and_other_cells_are_not():
    image = cell(1)
    original = hashes(image)
    copies = {"rot90 + JPEG": jpeg_round_trip(np.rot90(image)),
              "mirror + 4 px shift": shifted(np.ascontiguousarray(image[:, ::-1]), 4, -3),
              "5 degree turn": shifted(image, 0, 0, angle=5)}
    for name, copy in copies.items():
        assert image_distance(original, hashes(copy)) <= DEFAULT_THRESHOLD, name
    others = [image_distance(original, hashes(cell(seed))) for seed in range(2, 12)]
    assert min(others) > DEFAULT_THRESHOLD, others


def test_distance_is_symmetric():
    a, b = hashes(cell(3)), hashes(shifted(cell(3), 2, 2, angle=20))
    assert image_distance(a, b) == image_distance(b, a)


def test_black_fill_of_rotations_is_blanked_but_black_content_is_kept():
    image = np.full((40, 50, 3), 200, dtype=np.uint8)
    image[:8, :10] = 0          # corner wedge touching the border: fill
    image[20:24, 20:24] = 0     # dark blob inside the picture: content, kept
    image[30:, 40:] = 100
    luma = luma_with_padding_filled(image)
    rest = np.ones((40, 50), dtype=bool)
    rest[:8, :10] = False
    assert np.allclose(luma[:8, :10], luma[rest].mean(), atol=1e-3)
    assert np.all(luma[20:24, 20:24] == 0)
    background = np.zeros((40, 50, 3), dtype=np.uint8)  # cell on black (C-NMC): keep it black
    background[10:20, 10:20] = 180
    assert luma_with_padding_filled(background)[0, 0] == 0


def test_different_cells_rotated_alike_are_not_taken_for_copies():
    """Black wedges of one rotation angle must not make unrelated cells look alike."""
    rotated = [hashes(shifted(cell(seed), 0, 0, angle=25)) for seed in range(20, 30)]
    distances = [image_distance(a, b) for i, a in enumerate(rotated) for b in rotated[i + 1:]]
    assert min(distances) > DEFAULT_THRESHOLD, sorted(distances)[:5]


def test_near_pairs_in_blocks_equals_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2 ** 63, size=(40, 8), dtype=np.uint64)
    # plant close relatives: flip a few bits of another image's hashes
    relatives = base[:10] ^ (np.uint64(1) << rng.integers(0, 64, size=(10, 1)).astype(np.uint64))
    hashes_all = np.concatenate([base, relatives])
    for threshold in (0, 1, 20, 30):
        pairs = near_pairs(hashes_all, threshold, block_rows=7)
        expected = {(i, j, image_distance(hashes_all[i], hashes_all[j]))
                    for i in range(len(hashes_all)) for j in range(i + 1, len(hashes_all))
                    if image_distance(hashes_all[i], hashes_all[j]) <= threshold}
        found = set(zip(pairs["i"].tolist(), pairs["j"].tolist(), pairs["distance"].tolist(),
                        strict=True))
        assert found == expected
    assert len(near_pairs(hashes_all, 1)) >= 10


# ----------------------------------------------------------------------------- the audit

@pytest.fixture
def planted(tmp_path):
    """Files for a hand-made split with one overlap of each kind in fold 0 and none in fold 1."""
    files = {}
    for seed in range(10):
        files[f"c{seed}.png"] = smear(seed + 100)
    files["copy_of_c0.jpg"] = jpeg_round_trip(np.rot90(files["c0.png"]))  # augmented copy
    for name, array in files.items():
        Image.fromarray(np.ascontiguousarray(array)).save(tmp_path / name)
    (tmp_path / "bytes_of_c1.png").write_bytes((tmp_path / "c1.png").read_bytes())
    return tmp_path


def split_rows(root: Path, rows: list[tuple[int, str, str, str]]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=["fold", "image", "role", "group"])
    table["path"] = [str(root / image) for image in table["image"]]
    table["label"] = 0
    table["class_name"] = "x"
    return table


def test_audit_finds_each_planted_overlap_once_and_a_clean_fold(planted):
    fold0 = [(0, "c0.png", "train", "p0"), (0, "copy_of_c0.jpg", "test", "p9"),
             (0, "c1.png", "train", "p1"), (0, "bytes_of_c1.png", "val", "p8"),
             (0, "c2.png", "val", "p2"), (0, "c3.png", "test", "p2"),     # patient p2 twice
             (0, "c4.png", "train", "p4"), (0, "c4.png", "test", "p4"),   # image key twice
             (0, "c5.png", "train", "p5"), (0, "c6.png", "test", "p6")]
    fold1 = [(1, "c0.png", "train", "p0"), (1, "copy_of_c0.jpg", "train", "p9"),
             (1, "c1.png", "val", "p1"), (1, "bytes_of_c1.png", "val", "p8"),
             (1, "c5.png", "test", "p5"), (1, "c7.png", "test", "p7"),
             (1, "c8.png", "train", "p10"), (1, "excluded.png", "excluded", "p11")]
    report = audit(split_rows(planted, fold0 + fold1), threshold=DEFAULT_THRESHOLD, workers=2)
    counts = {(r.fold, r.roles, r.kind): r.count for r in report.table.itertuples()}
    expected = {(0, "train-test", "same_image"): 1, (0, "train-test", "same_group"): 1,
                (0, "val-test", "same_group"): 1, (0, "train-val", "same_content"): 1,
                (0, "train-test", "near_duplicate"): 1}
    assert {key: n for key, n in counts.items() if n} == expected
    assert len(counts) == 2 * 3 * 4  # every (fold, role pair, kind), zeros included
    assert report.n_leaks == 5 and not report.clean
    assert report.n_images == 11  # c0-c8 and the two copies; excluded rows are never read
    assert report.duplicates_within_data == {"identical_pairs": 1, "near_duplicate_pairs": 1}
    examples = {(r.fold, r.roles, r.kind): r.example for r in report.table.itertuples()}
    assert examples[(0, "train-test", "near_duplicate")].startswith("c0.png ~ copy_of_c0.jpg")
    assert examples[(0, "train-val", "same_content")] == "c1.png ~ bytes_of_c1.png"
    assert examples[(0, "train-test", "same_image")] == "c4.png"
    wide = wide_table(report, only_leaks=True)
    assert set(wide["fold"]) == {0} and len(wide) == 3


def test_audit_of_a_clean_split_is_clean(planted):
    rows = [(0, f"c{i}.png", role, f"p{i}") for i, role in
            enumerate(["train", "train", "train", "val", "test", "test"])]
    report = audit(split_rows(planted, rows), workers=1)
    assert report.clean and report.n_leaks == 0 and len(wide_table(report, True)) == 0


# ----------------------------------------------------------------------------- the script

@pytest.fixture
def leaky_folder(tmp_path):
    """A folder-per-class dataset with one augmented copy and one byte copy planted."""
    root = tmp_path / "cells"
    for label, name in enumerate(["blast", "other"]):
        (root / name).mkdir(parents=True)
        for i in range(8):
            # unique stems: the folder reader uses the stem as group when there is none
            Image.fromarray(smear(200 + 10 * label + i)).save(root / name / f"{name}{i}.png")
    source = np.asarray(Image.open(root / "blast" / "blast0.png").convert("RGB"))
    Image.fromarray(np.ascontiguousarray(source[::-1])).save(root / "blast" / "flipped0.jpg",
                                                             quality=90)
    (root / "other" / "dup1.png").write_bytes((root / "other" / "other1.png").read_bytes())
    return root


def make_split(root: Path, out: Path, method="kfold") -> Path:
    import cross_validation_splits as cvs

    args = ["--dataset", "folder", "--data-root", str(root), "--method", method, "--k", "3",
            "--out-dir", str(out), "--name", "cells"]
    cvs.main(cvs.parse_args(args))
    return out / "cells.csv"


def expected_pair_counts(split_csv: Path, a: str, b: str) -> dict:
    """(fold, role pair) -> 1 wherever images ``a`` and ``b`` sit in different roles."""
    split = pd.read_csv(split_csv)
    order = {"train": 0, "val": 1, "test": 2}
    out = {}
    for fold, rows in split[split["fold"] >= 0].groupby("fold"):
        roles = dict(zip(rows["image"], rows["role"], strict=True))
        if roles[a] != roles[b]:
            pair = sorted([roles[a], roles[b]], key=order.get)
            out[(fold, "-".join(pair))] = 1
    return out


def test_script_reports_planted_copies_per_fold_and_writes_csv_and_md(leaky_folder, tmp_path,
                                                                       capsys):
    import check_leakage

    split_csv = make_split(leaky_folder, tmp_path / "splits")
    capsys.readouterr()
    report = check_leakage.main(check_leakage.parse_args([str(split_csv), "--workers", "2"]))
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "splits" / "cells_leakage.csv", keep_default_na=False)
    near = {(r.fold, r.roles): r.count for r in table.itertuples()
            if r.kind == "near_duplicate" and r.count}
    same = {(r.fold, r.roles): r.count for r in table.itertuples()
            if r.kind == "same_content" and r.count}
    assert near == expected_pair_counts(split_csv, "blast/blast0.png", "blast/flipped0.jpg")
    assert same == expected_pair_counts(split_csv, "other/other1.png", "other/dup1.png")
    assert near and same  # k-fold puts each pair in different roles in some fold
    assert table.loc[table["kind"].isin(["same_image", "same_group"]), "count"].sum() == 0
    assert not report.clean and report.n_images == 18
    assert "LEAKS FOUND" in out
    assert ("blast/blast0.png ~ blast/flipped0.jpg" in out
            or "blast/flipped0.jpg ~ blast/blast0.png" in out)
    md = (tmp_path / "splits" / "cells_leakage.md").read_text()
    assert md.startswith("# Leakage audit of `cells.csv`") and "**Leaks found**" in md


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "check_leakage.py", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_exit_status_0_when_clean_1_when_leaky(leaky_folder, tmp_path):
    leaky_csv = make_split(leaky_folder, tmp_path / "leaky")
    (leaky_folder / "blast" / "flipped0.jpg").unlink()
    (leaky_folder / "other" / "dup1.png").unlink()
    clean_csv = make_split(leaky_folder, tmp_path / "clean")
    clean = script(str(clean_csv))
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.rstrip().splitlines()[-1].startswith("clean (")
    # the leaky split now lacks two files: refused as made for a different dataset
    refused = script(str(leaky_csv))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"error: {leaky_csv}: split was made for a different dataset")
    (leaky_folder / "other" / "dup1.png").write_bytes((leaky_folder / "other" / "other1.png")
                                                      .read_bytes())
    flipped = np.asarray(Image.open(leaky_folder / "blast" / "blast0.png").convert("RGB"))[::-1]
    Image.fromarray(np.ascontiguousarray(flipped)).save(leaky_folder / "blast" / "flipped0.jpg",
                                                        quality=90)  # same bytes as before
    leaky = script(str(leaky_csv))
    assert leaky.returncode == 1, leaky.stderr
    assert "LEAKS FOUND" in leaky.stdout


@pytest.mark.reliability
@pytest.mark.parametrize("case", ["missing split", "threshold", "out dir under a file"])
def test_script_bad_input_is_one_line_and_exit_2(leaky_folder, tmp_path, capsys, case):
    import check_leakage

    split_csv = make_split(leaky_folder, tmp_path / "splits")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv, expected = {
        "missing split": ([str(tmp_path / "nope.csv")],
                          f"{tmp_path / 'nope.csv'}: split file not found"),
        "threshold": ([str(split_csv), "--hash-threshold", "65"],
                      "--hash-threshold 65: must be 0..64 bits"),
        "out dir under a file": ([str(split_csv), "--out-dir", str(blocker / "sub")],
                                 f"{blocker / 'sub'}: output folder is not writable"),
    }[case]
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(lambda: check_leakage.main(check_leakage.parse_args(argv)))
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), lines
    assert not list((tmp_path / "splits").glob("*_leakage.*"))


def test_threshold_outside_range_is_refused_by_the_module():
    with pytest.raises(ValueError):
        audit(pd.DataFrame(columns=["fold", "image", "role", "group", "path"]), threshold=65)


# ----------------------------------------------------------------------------- real data

# Copies of one cell under two labels in the shared real sets: label conflicts the audit
# rightly finds, not false copies. Zheng et al.'s Dataset 1 ships one cell twice (060 and
# 090: the same pixels, similarity 0.99). The Kaggle sample's TRAIN holds one field of view
# (a lymphocyte with a platelet beside it and the same red cells around it: a bright-centred
# one, two overlapping ones) three times as LYMPHOCYTE and five times as MONOCYTE, turned
# and shifted: aligned, the red cells coincide (similarity 0.92-0.98). Version 3 of the
# detector verified such a pair at 0.93 when asked, but its ring signatures were not among
# the 4 nearest until the signature left out the rings' means (version 4), and pairs of
# the field's copies are now also joined as copies of copies. A cross-class pair is known
# when both images are in one of these sets.
KNOWN_LABEL_CONFLICTS = (
    {"Dataset 1/060.bmp", "Dataset 1/090.bmp"},
    {f"TRAIN/LYMPHOCYTE/{name}.jpeg" for name in ("_4_8620", "_6_57", "_7_5453")}
    | {f"TRAIN/MONOCYTE/{name}.jpeg" for name in ("_5_893", "_11_1927", "_14_5983", "_2_2809",
                                                   "_4_613")})


def unknown_cross_class_pairs(copies) -> set:
    cross = copies[copies["class_a"] != copies["class_b"]]
    return {(a, b) for a, b in zip(cross["image_a"], cross["image_b"], strict=True)
            if not any({a, b} <= known for known in KNOWN_LABEL_CONFLICTS)}


@pytest.mark.slow
def test_kaggle_owner_split_has_no_train_test_copies_but_a_random_resplit_does(tmp_path):
    """The closing note's numbers: the Kaggle sample's own TRAIN/TEST split against an
    image-level random re-split of the same files.

    One pair across the owner's split looks like one lymphocyte by eye (same platelet and red
    cells, turned and shifted) and verifies at similarity 0.897, just under the cut-off; it
    is the one pair allowed should the cut-off move."""
    import check_leakage
    import cross_validation_splits as cvs

    root = shared_dataset("kaggle_blood_cells_sample")
    near = {}
    for method in ("predefined", "random"):
        cvs.main(cvs.parse_args(["--dataset", "kaggle", "--data-root", str(root), "--method",
                                 method, "--out-dir", str(tmp_path), "--name", method,
                                 "--no-check-images"]))
        report = check_leakage.main(check_leakage.parse_args([str(tmp_path / f"{method}.csv")]))
        totals = report.totals().set_index("roles")
        near[method] = int(totals.loc["train-test", "near_duplicate"])
        print(f"{method}: {report.totals().to_dict('records')}")
        assert not unknown_cross_class_pairs(report.copies)
        assert (tmp_path / f"{method}_leakage_pairs.png").exists()
        if method == "predefined":
            flagged = report.copies[report.copies["roles"] == "train-test"]
            assert {frozenset(pair)
                    for pair in zip(flagged["image_a"], flagged["image_b"], strict=True)} <= {
                frozenset({"TRAIN/LYMPHOCYTE/_6_2057.jpeg", "TEST/LYMPHOCYTE/_4_2714.jpeg"})}
    assert near["predefined"] <= 1
    assert near["random"] > 50


# ----------------------------------------------------------------------------- copies grouped

KAGGLE = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")


def kaggle_folders(root, name):
    """The TRAIN and TEST folders of one class in the Kaggle layout under ``root``, made."""
    folders = [root / "dataset2-master/images" / part / name for part in ("TRAIN", "TEST")]
    for folder in folders:
        folder.mkdir(parents=True)
    return folders


def make_kaggle_with_copies(tmp_path):
    """A Kaggle-layout set whose TRAIN holds 3 copies (plain, mirrored, rotated 90°) of 5
    cells per class, and whose TEST holds other cells plus one rotated copy of a TRAIN cell
    (the ``kaggle_with_copies`` fixture of conftest.py)."""
    root = tmp_path / "kaggle"
    for label, name in enumerate(KAGGLE):
        train, test = kaggle_folders(root, name)
        for c in range(5):
            image = smear(300 + 10 * label + c, size=(96, 96))
            for k, copy in enumerate((image, image[:, ::-1], np.rot90(image))):
                Image.fromarray(np.ascontiguousarray(copy)).save(
                    train / f"_{k}_{100 * label + c}.jpeg", quality=92)
        for c in range(3):
            Image.fromarray(smear(900 + 10 * label + c, size=(96, 96))).save(
                test / f"_0_{500 + 100 * label + c}.jpeg", quality=92)
    first = smear(300, size=(96, 96))
    Image.fromarray(np.ascontiguousarray(np.rot90(first, 2))).save(
        root / "dataset2-master/images/TEST/EOSINOPHIL/_9_0.jpeg", quality=92)
    return root


def test_copies_are_grouped_within_the_owner_split_only(kaggle_with_copies):
    from leukocyte_cnn.data.datasets import read_dataset
    from leukocyte_cnn.splits.copies import near_duplicate_groups

    table = read_dataset("kaggle", kaggle_with_copies)
    grouped, stats = near_duplicate_groups(table, workers=1)
    by_image = dict(zip(grouped["image"], grouped["group"], strict=True))
    for label, name in enumerate(KAGGLE):
        for c in range(5):
            copies = {by_image[f"TRAIN/{name}/_{k}_{100 * label + c}.jpeg"] for k in range(3)}
            assert len(copies) == 1, (name, c)  # the three copies of one cell: one group
    assert grouped.loc[grouped["source_split"] == "TRAIN", "group"].nunique() == 20
    assert stats["images_joined"] == 60 and stats["groups_joined"] == 20
    # The TEST copy of a TRAIN cell is not joined across the owner's split (the audit's job),
    # and distinct TEST cells keep their own groups.
    assert by_image["TEST/EOSINOPHIL/_9_0.jpeg"] == "TEST/EOSINOPHIL/_9_0.jpeg"
    test_rows = grouped[grouped["source_split"] == "TEST"]
    assert (test_rows["group"] == test_rows["image"]).all()


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_predefined_split_draws_validation_without_copies_of_training_cells(
        kaggle_with_copies, tmp_path, mode):
    import cross_validation_splits as cvs

    out = tmp_path / "splits"
    cvs.main(cvs.parse_args(["--dataset", "kaggle", "--data-root", str(kaggle_with_copies),
                             "--out-dir", str(out), "--name", "k", "--near-duplicates", mode]))
    split = pd.read_csv(out / "k.csv")
    paths = {row.image: str(kaggle_with_copies / "dataset2-master/images" / row.image)
             for row in split.itertuples()}
    report = audit(split.assign(path=split["image"].map(paths)), workers=1)
    totals = report.table
    train_val = totals[(totals["roles"] == "train-val") & (totals["kind"] == "near_duplicate")]
    if mode == "auto":
        assert train_val["count"].sum() == 0  # copies of a cell sit together in train or val
        val = split[split["role"] == "val"]
        assert len(val) >= 12 and len(val) % 3 == 0  # whole cells: 3 copies each
    else:
        assert train_val["count"].sum() > 0  # the old behaviour: copies straddle train/val


COPY_OF_TEST = "TEST/EOSINOPHIL/_9_0.jpeg"  # the fixture's rotated copy of a TRAIN cell
TRAIN_COPIES = {f"TRAIN/EOSINOPHIL/_{k}_0.jpeg" for k in range(3)}  # that cell's 3 copies


def test_predefined_split_sets_aside_training_copies_of_test_images(kaggle_with_copies,
                                                                    tmp_path, capsys):
    """Issue 25: the owner's TRAIN holds three copies of a cell whose rotated copy is in TEST.
    Copies are verified across the owner's parts too; the TRAIN copies are set aside (role
    ``excluded``, the reason in the JSON, a count in the split's lines), TEST stays whole, and
    the audit (``check_leakage.py``) finds the split clean. Before the fix the copies trained
    and validated."""
    import check_leakage
    import cross_validation_splits as cvs

    out = tmp_path / "splits"
    cvs.main(cvs.parse_args(["--dataset", "kaggle", "--data-root", str(kaggle_with_copies),
                             "--out-dir", str(out), "--name", "k"]))
    said = capsys.readouterr().out
    split = pd.read_csv(out / "k.csv")
    meta = json.loads((out / "k.json").read_text())
    excluded = split[split["role"] == "excluded"]
    assert set(excluded["image"]) == TRAIN_COPIES
    assert (excluded["fold"] == -1).all()
    reasons = meta["set_aside"]
    assert set(reasons) == TRAIN_COPIES
    assert all(COPY_OF_TEST in reason and "similarity" in reason for reason in reasons.values())
    assert meta["n_excluded"] == 3 and meta["excluded_classes"] == {}  # no class is dropped
    assert "set aside: 3 TRAIN/validation images" in said
    tested = set(split.loc[split["role"] == "test", "image"])
    assert tested == {i for i in split["image"] if i.startswith("TEST/")}  # TEST as it is
    assert len(tested) == 13
    report = check_leakage.main(check_leakage.parse_args([str(out / "k.csv")]))
    assert report.clean, report.totals()
    from leukocyte_cnn.reporting.html_report import split_protocol

    assert "3 training images that are verified copies of test images" in split_protocol(
        {}, meta)  # a run on this split says so in its report

    # --ignore-groups keeps the old behaviour: the copies train, the split says LEAKY.
    cvs.main(cvs.parse_args(["--dataset", "kaggle", "--data-root", str(kaggle_with_copies),
                             "--out-dir", str(out), "--name", "leaky", "--ignore-groups"]))
    assert "LEAKY" in capsys.readouterr().out
    leaky = pd.read_csv(out / "leaky.csv")
    assert TRAIN_COPIES <= set(leaky.loc[leaky["role"].isin(["train", "val"]), "image"])
    assert json.loads((out / "leaky.json").read_text())["leaky"] is True
    assert not check_leakage.main(check_leakage.parse_args([str(out / "leaky.csv")])).clean


def test_no_copies_are_set_aside_when_they_would_take_most_of_a_class(tmp_path, capsys):
    """Images too alike for the copy check (here: every TRAIN image is a mirrored copy of a
    TEST image) would empty the training set: nothing is set aside, one line says why."""
    import cross_validation_splits as cvs

    root = tmp_path / "kaggle"
    for label, name in enumerate(KAGGLE):
        train, test = kaggle_folders(root, name)
        for c in range(4):
            image = smear(700 + 10 * label + c, size=(96, 96))
            Image.fromarray(image).save(test / f"_0_{100 * label + c}.jpeg", quality=92)
            Image.fromarray(np.ascontiguousarray(image[:, ::-1])).save(
                train / f"_1_{100 * label + c}.jpeg", quality=92)
    out = tmp_path / "splits"
    cvs.main(cvs.parse_args(["--dataset", "kaggle", "--data-root", str(root), "--out-dir",
                             str(out), "--name", "alike"]))
    said = capsys.readouterr().out
    assert "too alike for the copy check, so none is set aside" in said
    split = pd.read_csv(out / "alike.csv")
    assert not (split["role"] == "excluded").any()
    assert json.loads((out / "alike.json").read_text())["set_aside"] == {}


def test_only_verified_copies_are_joined_even_when_every_pair_is_screened(kaggle_with_copies):
    """At a 64-bit hash threshold every pair is a candidate (the old hash-only grouping chained
    whole classes together); pixel verification joins exactly each cell's three copies."""
    from leukocyte_cnn.data.datasets import read_dataset
    from leukocyte_cnn.splits.copies import near_duplicate_groups

    table = read_dataset("kaggle", kaggle_with_copies)
    grouped, stats = near_duplicate_groups(table, threshold=64, workers=1)
    assert stats["groups_joined"] == 20 and stats["images_joined"] == 60
    assert stats["largest_group"] == 3 and stats["links_broken"] == 0
    assert stats["pairs_screened"] > stats["pairs_verified"] > 0
    by_image = dict(zip(grouped["image"], grouped["group"], strict=True))
    assert by_image["TEST/EOSINOPHIL/_9_0.jpeg"] == "TEST/EOSINOPHIL/_9_0.jpeg"


def test_chains_are_broken_at_their_weakest_links_not_dissolved(kaggle_with_copies):
    """With a cut-off that lets look-alikes through, chains would swallow a class: links are
    made strongest first and a link that would overfill a group is broken, so each cell's
    copies (the strongest links) stay together and no group exceeds the cap."""
    from leukocyte_cnn.data.datasets import read_dataset
    from leukocyte_cnn.splits.copies import near_duplicate_groups

    table = read_dataset("kaggle", kaggle_with_copies)
    grouped, stats = near_duplicate_groups(table, threshold=64, workers=1, similarity=-1.0,
                                           max_class_share=0.5)
    train = grouped[grouped["source_split"] == "TRAIN"]
    assert stats["links_broken"] > 0 and stats["groups_dissolved"] == 0
    assert train.groupby("group").size().max() <= 7  # half of a class's 15 TRAIN images
    for label, name in enumerate(KAGGLE):
        for c in range(5):
            copies = {g for image, g in zip(train["image"], train["group"], strict=True)
                      if image.startswith(f"TRAIN/{name}/_")
                      and image.endswith(f"_{100 * label + c}.jpeg")}
            assert len(copies) == 1, (name, c)


# ----------------------------------------------------------------------------- verification

def kaggle_like_copy(array: np.ndarray, angle: float, dx: int, dy: int, mirror: bool) -> np.ndarray:
    """An augmented copy made the way the Kaggle set made them: a turn by any angle with black
    corners, a shift, a mirror, a brightness change and JPEG re-encoding."""
    image = np.ascontiguousarray(array[:, ::-1] if mirror else array)
    turned = shifted(image, dx, dy, angle=angle)
    return jpeg_round_trip(np.clip(turned.astype(np.float32) * 1.08 + 6, 0, 255).astype(np.uint8))


@pytest.fixture
def turned_copy(tmp_path):
    """Six distinct neutrophils and a copy of the first, turned by 37 degrees."""
    for k in range(6):
        Image.fromarray(smear(500 + k, size=(160, 120))).save(tmp_path / f"n{k}.png")
    source = np.asarray(Image.open(tmp_path / "n0.png").convert("RGB"))
    Image.fromarray(kaggle_like_copy(source, 37.0, 9, -6, mirror=True)).save(
        tmp_path / "turned_n0.jpg", quality=90)
    return tmp_path


def test_a_copy_turned_by_an_arbitrary_angle_across_train_and_test_is_reported(turned_copy):
    rows = [(0, "n0.png", "train", "p0"), (0, "turned_n0.jpg", "test", "p9"),
            (0, "n1.png", "train", "p1"), (0, "n2.png", "train", "p2"),
            (0, "n3.png", "test", "p3"), (0, "n4.png", "test", "p4")]
    report = audit(split_rows(turned_copy, rows), workers=1)
    totals = report.totals().set_index("roles")
    assert totals.loc["train-test", "near_duplicate"] == 1 and report.n_leaks == 1
    # the hash alone does not see it: the ring-signature screen and the pixels do
    assert report.copies["distance"].iloc[0] > DEFAULT_THRESHOLD
    assert report.copies["similarity"].iloc[0] >= 0.75
    assert list(report.copies["roles"]) == ["train-test"]


def test_distinct_cells_within_the_hash_threshold_are_not_reported(turned_copy):
    """At 64 bits every pair passes the screen; none of these different cells is a copy."""
    rows = [(0, f"n{k}.png", "train" if k % 2 else "test", f"p{k}") for k in range(6)]
    report = audit(split_rows(turned_copy, rows), threshold=64, workers=1)
    assert report.calibration["pairs_screened"] == 15  # all pairs were candidates
    assert report.clean and report.calibration["verified_pairs"] == 0


def test_a_cross_class_copy_raises_the_false_positive_estimate(turned_copy):
    rows = [(0, "n0.png", "train", "p0"), (0, "turned_n0.jpg", "test", "p9")] + [
        (0, f"n{k}.png", "train", f"p{k}") for k in range(1, 6)]
    split = split_rows(turned_copy, rows)
    split.loc[split["image"].isin(["n3.png", "n4.png", "n5.png"]), "class_name"] = "y"
    report = audit(split, workers=1)
    assert report.calibration["verified_pairs"] == 1
    assert report.calibration["false_positive_rate"] == 0 and not report.false_positive_warning
    split.loc[split["image"] == "turned_n0.jpg", "class_name"] = "y"  # the copy, mislabelled
    report = audit(split, workers=1)
    assert report.calibration["cross_class_pairs"] == 1
    assert report.calibration["false_positive_rate"] > 0.01 and report.false_positive_warning


def test_false_positive_estimate_scales_cross_class_pairs_by_the_chance_to_cross():
    from leukocyte_cnn.splits.near_duplicate_verify import false_positive_estimate

    # 4 balanced classes: a random false pair crosses classes with probability 3/4
    estimate = false_positive_estimate(["a"] * 100, ["a"] * 97 + ["b"] * 3,
                                       {"a": 1, "b": 1, "c": 1, "d": 1})
    assert estimate["cross_class_pairs"] == 3
    assert estimate["false_positive_rate"] == pytest.approx(3 / 0.75 / 100)
    assert false_positive_estimate([], [], {"a": 1, "b": 1})["false_positive_rate"] == 0


def test_contact_sheet_draws_one_panel_per_reported_pair_up_to_the_cap(turned_copy, tmp_path):
    from leukocyte_cnn.reporting.contact_sheet import contact_sheet

    names = [f"n{k}.png" for k in range(6)]
    pairs = pd.DataFrame({"roles": ["train-test"] * 3 + ["train-val"] * 2,
                          "image_a": names[:5], "image_b": names[1:6],
                          "path_a": [str(turned_copy / n) for n in names[:5]],
                          "path_b": [str(turned_copy / n) for n in names[1:6]],
                          "distance": [4, 6, 8, 2, 2], "similarity": [0.9, 0.95, 0.8, 0.99, 0.7]})
    heights = {}
    for cap in (1, 2, 5, 50):
        path = tmp_path / f"sheet{cap}.png"
        assert contact_sheet(pairs, path, max_pairs=cap) == min(cap, 5)
        heights[cap] = Image.open(path).height
    assert heights[1] < heights[2] == heights[5] == heights[50]  # 2: one pair per role pair
    assert contact_sheet(pairs.iloc[:0], tmp_path / "empty.png") == 0


@pytest.mark.slow
@pytest.mark.parametrize("name,folder,options", [
    ("kaggle", "kaggle_blood_cells_sample", {}), ("pbc", "pbc_sample", {}),
    ("folder", "bccd_wbc_crops/BCCD_cropped", {}), ("all_idb2", "all_idb2_lowres", {}),
    ("zheng2018", "wbc_zheng2018", {"dataset": "both"})])
def test_no_verified_copy_joins_two_classes_on_the_shared_real_sets(name, folder, options):
    """Copies share their label: on real data no verified pair may cross classes."""
    from leukocyte_cnn.data.datasets import read_dataset

    root = shared_dataset(folder.split("/")[0]) / "/".join(folder.split("/")[1:])
    table = read_dataset(name, root, **options).assign(fold=0, role="train")
    table["group"] = table["image"]
    report = audit(table, workers=2)
    print(name, report.calibration)
    assert not unknown_cross_class_pairs(report.copies)
