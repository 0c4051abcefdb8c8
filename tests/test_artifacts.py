"""Artifacts keyed by what made them (issue 13): split files, balanced folds, run provenance.

Each test here fails on the code before fingerprints: split variants shared one file name and
were overwritten, balanced folds were reused whatever their settings, a replaced split file was
resumed silently, and folds of two commits were pooled without a word.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from test_scaleout import _tiny_dataset

import cross_validation_splits as cvs
import linear_cnn_da as da
from leukocyte_cnn.base import artifacts
from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.splits.split_files import load_split

# --------------------------------------------------------------------------- the mechanism


def test_fingerprint_is_canonical_and_sensitive():
    a = artifacts.fingerprint({"seed": 0, "size": (64, 64), "name": "x"})
    assert a == artifacts.fingerprint({"name": "x", "size": [64, 64], "seed": 0})
    assert a != artifacts.fingerprint({"name": "x", "size": [64, 64], "seed": 1})


def test_sidecar_round_trip_and_difference(tmp_path):
    folder = tmp_path / "thing"
    folder.mkdir()
    artifacts.write_sidecar(folder, "demo", {"seed": 0, "size": 64})
    assert artifacts.matches(folder, {"size": 64, "seed": 0})
    assert not artifacts.matches(folder, {"size": 64, "seed": 1})
    assert artifacts.describe_difference(folder, {"size": 64, "seed": 1}) == "seed: 0 -> 1"
    with pytest.raises(InputError, match=r"thing: demo folder was made with other settings "
                                         r"\(seed: 0 -> 1\)"):
        artifacts.require_match(folder, {"size": 64, "seed": 1}, "demo folder", "delete it")


# --------------------------------------------------------------------------- split files


def split_args(root: Path, out: Path, *extra: str):
    return cvs.parse_args(["--dataset", "kaggle", "--data-root", str(root), "--out-dir",
                           str(out), "--no-check-images", *extra])


def test_near_duplicates_off_leaves_the_default_split_untouched(kaggle_with_copies, tmp_path,
                                                                 monkeypatch):
    """The README's `--near-duplicates off` comparison used to overwrite the grouped default
    split that every 4-class study loads."""
    from leukocyte_cnn.runs import trials

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "data" / "splits"
    grouped = cvs.main(split_args(kaggle_with_copies, out))
    before = grouped.read_bytes()
    ungrouped = cvs.main(split_args(kaggle_with_copies, out, "--near-duplicates", "off"))
    assert ungrouped != grouped and grouped.read_bytes() == before
    assert json.loads(grouped.with_suffix(".json").read_text())["near_duplicate_groups"]
    # The 4-class studies still load the grouped split by default.
    from leukocyte_cnn.runs.experiment import RunOptions

    run = RunOptions(dataset="kaggle", data_root=str(kaggle_with_copies), seed=0)
    protocol = {"SPLIT_METHOD": "predefined", "VAL_FRACTION": 0.2, "MIN_IMAGES": 5}
    assert trials.resolve_study_split(run, protocol).csv_path.resolve() == grouped.resolve()
    # Asking again for either finds the same file (reused, not rewritten).
    assert cvs.main(split_args(kaggle_with_copies, out, "--near-duplicates", "off")) == ungrouped


def test_a_named_split_is_never_overwritten_by_other_settings(kaggle_with_copies, tmp_path,
                                                               capsys):
    out = tmp_path / "splits"
    path = cvs.main(split_args(kaggle_with_copies, out, "--name", "mine"))
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"mine\.csv: holds a split made from other inputs "
                                         r"\(.*seed: 0 -> 1.*choose another --name"):
        cvs.main(split_args(kaggle_with_copies, out, "--name", "mine", "--seed", "1"))
    assert path.read_bytes() == before
    assert cvs.main(split_args(kaggle_with_copies, out, "--name", "mine")) == path
    assert "reused" in capsys.readouterr().out


# --------------------------------------------------------------------------- balanced folds


@pytest.fixture(scope="module")
def multiclass_split(tmp_path_factory):
    from test_helmholtz import make_split

    root = tmp_path_factory.mktemp("synthetic")
    csv = make_split(root, tmp_path_factory.mktemp("splits"), "synthetic_multiclass",
                     exclude=("thrombocyte",))
    return load_split(csv, data_root=root), root


def _fold(split, k=0):
    from leukocyte_cnn.runs.cross_validation import Fold

    rows = split.fold(k)
    return Fold(fold=k, train=rows[rows.role == "train"].reset_index(drop=True),
                val=rows[rows.role == "val"], test=rows[rows.role == "test"],
                directory=Path("unused"), seed=k)


def balancing_of(argv, seed: int = 0):
    """The balancing ``linear_cnn_da.py`` would do with this command line (its settings)."""
    from leukocyte_cnn.base.knobs import resolve_settings
    from leukocyte_cnn.inputs.balancing import Balancing

    settings = resolve_settings(da, da.parse_args(argv))
    return Balancing.from_settings(settings, seed, image_size=settings["IMAGE_SIZE"])


def test_quick_then_full_balancing_gives_each_its_own_folds(multiclass_split, tmp_path):
    """`resnext_from_scratch.py --quick` then a full run used to train the full run on the
    quick run's 40-per-class 64 px images while settings.json said 150."""
    from leukocyte_cnn.data.images import load_rgb
    from leukocyte_cnn.inputs.balancing import balanced_fold_images, open_balanced_root

    split, root = multiclass_split
    common = ["--dataset", "synthetic_multiclass", "--data-root", str(root)]
    quick = balancing_of(common + ["--quick", "--target", "40"])
    full = balancing_of(common + ["--target", "50"])
    fold_q, fold_f = _fold(split), _fold(split)
    table_q = balanced_fold_images(fold_q, split, tmp_path / "aug", quick)
    table_f = balanced_fold_images(fold_f, split, tmp_path / "aug", full)
    assert set(table_q.groupby("class_name").size()) == {40}
    assert set(table_f.groupby("class_name").size()) == {50}
    assert load_rgb(table_q["path"].iloc[0]).shape[:2] == da.QUICK["IMAGE_SIZE"]
    assert load_rgb(table_f["path"].iloc[0]).shape[:2] == (96, 96)  # the images' own size
    root_q, root_f = (Path(f.artifacts["balanced_folds"]["path"]) for f in (fold_q, fold_f))
    assert root_q != root_f
    record = json.loads((root_f / "fingerprint.json").read_text())
    assert record["inputs"]["target_per_class"] == 50
    assert record["inputs"]["split_sha256"] == split.settings["split_sha256"]
    # Another seed is another folder too.
    seed1 = balancing_of(common + ["--target", "50"], seed=1)
    assert open_balanced_root(tmp_path / "aug", split, **seed1.as_dict()) != root_f


def test_editing_a_balancing_knob_makes_a_new_augmented_folder(multiclass_split, tmp_path,
                                                               monkeypatch):
    from leukocyte_cnn.inputs.balancing import open_balanced_root

    split, root = multiclass_split
    argv = ["--dataset", "synthetic_multiclass", "--data-root", str(root), "--quick"]
    before = open_balanced_root(tmp_path, split, **balancing_of(argv).as_dict())
    monkeypatch.setattr(da, "SHIFT_FRACTION", 0.1)  # the line edited in the script
    edited = balancing_of(argv)
    after = open_balanced_root(tmp_path, split, **edited.as_dict())
    assert after != before and before.exists() and after.exists()
    assert edited.shifts == 0.1


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    """A finished 3-fold run of the linear CNN on a tiny two-class folder set."""
    import linear_cnn_binary_lpocv as binary

    work = tmp_path_factory.mktemp("run")
    data = _tiny_dataset(work / "tiny")
    argv = ["--dataset", "folder", "--data-root", str(data), "--image-size", "32",
            "--epochs", "1", "--k", "3", "--results-dir", str(work / "results"),
            "--run-name", "run"]
    import os

    cwd = os.getcwd()
    os.chdir(work)
    try:
        binary.main(binary.parse_args(argv))
    finally:
        os.chdir(cwd)
    return work, argv


def test_run_records_split_sha_and_folds_record_their_chain(binary_run):
    from leukocyte_cnn.base.io import file_sha256

    work, _ = binary_run
    run = work / "results" / "run"
    config = json.loads((run / "settings.json").read_text())["config"]
    split_file = Path(config["split_file"])
    split_file = split_file if split_file.is_absolute() else work / split_file
    assert config["split_sha256"] == file_sha256(split_file)
    assert config["split_fingerprint"]
    for k in range(3):
        timing = json.loads((run / f"fold_{k:02d}" / "timing.json").read_text())
        assert timing["split_sha256"] == config["split_sha256"]
        assert timing["provenance"]["git"]["commit"]


def test_replaced_split_file_then_resume_is_refused_in_one_line(binary_run, tmp_path):
    import linear_cnn_binary_lpocv as binary

    work, argv = binary_run
    run = work / "results" / "run"
    config = json.loads((run / "settings.json").read_text())["config"]
    split_csv = Path(config["split_file"])
    split_csv = split_csv if split_csv.is_absolute() else work / split_csv
    # Another split of the same images (seed 1), copied over the run's split file on disk.
    other = cvs.main(cvs.parse_args(["--dataset", "folder", "--data-root",
                                     argv[argv.index("--data-root") + 1], "--method", "kfold",
                                     "--k", "3", "--seed", "1", "--out-dir", str(tmp_path),
                                     "--name", "other"]))
    saved = tmp_path / "saved"
    saved.mkdir()
    for suffix in (".csv", ".json"):
        shutil.copy(split_csv.with_suffix(suffix), saved / f"x{suffix}")
        shutil.copy(other.with_suffix(suffix), split_csv.with_suffix(suffix))
    try:
        with pytest.raises(InputError) as error:
            binary.main(binary.parse_args(argv + ["--split", str(split_csv)]))
        message = str(error.value)
        assert "\n" not in message and "split_sha256" in message
    finally:
        for suffix in (".csv", ".json"):
            shutil.copy(saved / f"x{suffix}", split_csv.with_suffix(suffix))


def _copy_with_fold_record(binary_run, tmp_path, fold: int, change) -> Path:
    """A copy of the finished run whose ``fold``'s timing.json was edited by ``change``, as if
    that fold had been made elsewhere (another split, another commit) and copied in."""
    work, _ = binary_run
    run = tmp_path / "run"
    shutil.copytree(work / "results" / "run", run)
    timing = run / f"fold_{fold:02d}" / "timing.json"
    record = json.loads(timing.read_text())
    change(record)
    timing.write_text(json.dumps(record))
    return run


def test_folds_of_another_split_are_not_pooled(binary_run, tmp_path):
    from leukocyte_cnn.reporting.summary import summarize_run

    run = _copy_with_fold_record(binary_run, tmp_path, 1,
                                 lambda r: r.update(split_sha256="0" * 64))
    with pytest.raises(InputError, match=r"folds \[1\] were made from another split file"):
        summarize_run(run, quiet=True)


def test_merging_folds_of_two_commits_is_flagged_in_the_summary(binary_run, tmp_path):
    from leukocyte_cnn.reporting.summary import summarize_run

    run = _copy_with_fold_record(binary_run, tmp_path, 2,
                                 lambda r: r["provenance"]["git"].update(commit="f" * 40))
    summarize_run(run, quiet=True)
    text = (run / "summary.md").read_text()
    assert "MIXED" in text and "`ffffffffffff` (folds 2)" in text
    assert "(folds 0, 1)" in text


# --------------------------------------------------------------------------- dirty flag


def test_dirty_counts_untracked_code_files(tmp_path, monkeypatch):
    from leukocyte_cnn.base import provenance as runinfo

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "script.py").write_text("x = 1\n")
    git("add", "script.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    monkeypatch.setattr(runinfo, "REPO_ROOT", tmp_path)
    assert runinfo.git_commit()["dirty"] is False
    (tmp_path / "notes.txt").write_text("not code\n")
    assert runinfo.git_commit()["dirty"] is False
    (tmp_path / "leukocyte_cnn").mkdir()
    (tmp_path / "leukocyte_cnn" / "new_module.py").write_text("y = 2\n")
    assert runinfo.git_commit()["dirty"] is True


# --------------------------------------------------------------------------- pipeline caches


def test_pipeline_file_cache_changes_when_an_image_is_rewritten_in_place(tmp_path):
    import os

    import numpy as np
    from PIL import Image

    from leukocyte_cnn.inputs.pipeline import _cache_file

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    first = _cache_file(str(tmp_path / "cache"), [str(path)], None, None, "64x64")
    assert _cache_file(str(tmp_path / "cache"), [str(path)], None, None, "64x64") == first
    Image.fromarray(np.full((4, 4, 3), 255, np.uint8)).save(path)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert _cache_file(str(tmp_path / "cache"), [str(path)], None, None, "64x64") != first


# --------------------------------------------------------------------------- TTA (issue 18)


def test_dihedral_views_are_the_eight_symmetries_of_the_square():
    import numpy as np

    from leukocyte_cnn.runs.cross_validation import dihedral_views

    image = np.arange(2 * 3 * 3 * 1, dtype=np.float32).reshape(2, 3, 3, 1)
    views = [np.asarray(v) for v in dihedral_views(image)]
    expected = [np.rot90(f, k, axes=(1, 2)) for f in (image, image[:, :, ::-1]) for k in range(4)]
    assert len({v.tobytes() for v in views}) == 8
    assert {v.tobytes() for v in views} == {e.tobytes() for e in expected}


def test_evaluate_tta_predicts_the_same_test_images_with_the_same_models(binary_run, tmp_path):
    import numpy as np

    import evaluate_tta
    from leukocyte_cnn.base.run_folder import load_predictions
    from leukocyte_cnn.inputs.pipeline import load_image
    from leukocyte_cnn.models.checkpoints import load_checkpoint

    work, _ = binary_run
    run = work / "results" / "run"
    out = evaluate_tta.main(evaluate_tta.parse_args([str(run), "--out", str(tmp_path / "tta")]))
    plain, tta = load_predictions(run), load_predictions(out)
    assert list(plain["image"]) == list(tta["image"]) and list(plain["fold"]) == list(tta["fold"])
    config = json.loads((out / "settings.json").read_text())["config"]
    assert config["test_time_augmentation"] and config["source_run"] == str(run)
    # One image by hand: the mean of the model's sigmoid over the 8 views of its pixels.
    row = tta.iloc[0]
    inputs = pd.read_csv(run / f"fold_{row.fold:02d}" / "inputs.csv")
    path = inputs.loc[inputs["image"] == row.image, "path"].iloc[0]
    model = load_checkpoint(run / f"fold_{row.fold:02d}" / "model.keras")
    pixels = load_image(path, (32, 32))[None].astype("float32")
    views = [np.rot90(f, k, axes=(1, 2)) for f in (pixels, pixels[:, :, ::-1]) for k in range(4)]
    positive = np.mean([float(model(np.ascontiguousarray(v), training=False)[0, 0])
                        for v in views])
    assert abs(row[f"prob_{config['class_names'][1]}"] - positive) < 1e-5  # sigmoid: label 1
