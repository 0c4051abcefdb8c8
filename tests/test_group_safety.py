"""Group safety of every training script, read back from the run folders they write.

Each training script runs in-process, in quick mode shrunk further (32 px, one epoch, one
fold), on synthetic data whose images share groups: patients (``synthetic_cnmc``), smears
(single-cell crops of ``synthetic_all_idb1``) and copies of one cell (``synthetic_kaggle``,
joined into groups by ``copies.near_duplicate_groups``). From every ``fold_XX/inputs.csv``
the run wrote, checked against its split file: no group sits in two of train, validation and
test. With ``--ignore-groups`` the same run completes, splits by image (a group really does
sit on two sides) and says LEAKY in ``settings.json``, in every Markdown table and in the
title of every figure.

The default suite keeps one script per kind of group and one ``--ignore-groups`` run; the
other scripts are marked slow (``pytest -m slow``).
"""
from __future__ import annotations

import dataclasses
import importlib
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

# The one-conv stand-in for EfficientNetB3 and the offline guard of the C-NMC tests.
from test_cnmc_transfer import no_download, tiny_backbone  # noqa: F401

from leukocyte_cnn.base.io import read_json
from leukocyte_cnn.splits.split_files import read_split_csv

SMEARS = ["--dataset", "synthetic_all_idb1", "--reader-option", "crops=true",
          "--reader-option", "crop_size=64"]
PATIENTS = ["--dataset", "synthetic_cnmc"]
COPIES = ["--dataset", "synthetic_kaggle"]
TINY_RESNEXT = ["--variant", "resnext14", "--image-size", "32", "--cardinality", "2",
                "--bottleneck-width", "2", "--width", "8", "--stem-filters", "8",
                "--epochs", "1", "--patience", "1", "--batch-size", "16"]
STUDY_QUICK = dict(IMAGE_SIZE=(32, 32), EPOCHS=1, PATIENCE=1, BATCH_SIZE=16)


@dataclasses.dataclass
class Case:
    script: str
    kind: str                       # patients, smears or copies
    argv: list[str]
    quick: dict = dataclasses.field(default_factory=dict)  # QUICK knobs shrunk further
    slow: bool = True


CASES = [
    Case("linear_cnn_binary_lpocv", "smears",
         SMEARS + ["--quick", "--image-size", "32", "--epochs", "1", "--folds", "0"], slow=False),
    Case("linear_cnn_multiclass_lpocv", "patients",
         PATIENTS + ["--quick", "--image-size", "32", "--epochs", "1", "--folds", "0",
                     "--target", "6"], slow=False),
    Case("linear_cnn_multiclass_lpocv", "copies",
         COPIES + ["--quick", "--image-size", "32", "--epochs", "1", "--folds", "0",
                   "--target", "6"], slow=False),
    Case("resnext_from_scratch", "copies",
         COPIES + TINY_RESNEXT + ["--k", "2", "--target", "6", "--folds", "0"]),
    Case("resnext_from_scratch", "patients",
         PATIENTS + TINY_RESNEXT + ["--k", "2", "--target", "6", "--folds", "0"]),
    Case("resnext_transfer_learning", "patients",
         PATIENTS + TINY_RESNEXT + ["--k", "2", "--target", "6", "--folds", "0"]),
    Case("all_idb1_paper_cnn", "smears",
         SMEARS + ["--quick", "--image-size", "32", "--epochs", "1", "--rotations", "1"]),
    Case("cnmc_transfer", "patients",
         PATIENTS + ["--quick", "--allow-random-init", "--image-size", "32", "--epochs", "1",
                     "--folds", "0", "--final-test", "no"]),
    Case("elu_cnn_optimizers", "copies",
         COPIES + ["--quick", "--optimizers", "adam", "--seeds", "1"],
         quick=dict(STUDY_QUICK, FILTERS=(4, 4, 4, 4, 4), DENSE_UNITS=8,
                    MAX_IMAGES_PER_CLASS=None)),
    Case("resnet50_training_depth", "copies",
         COPIES + ["--quick", "--allow-random-init", "--depths", "frozen"],
         quick=dict(STUDY_QUICK, MAX_IMAGES_PER_CLASS=6)),
    Case("scaling_masks_cnn_fcn", "copies",
         COPIES + ["--quick", "--trials", "1", "--scalings", "channel", "--masks", "otsu",
                   "--networks", "cnn"],
         quick=dict(EPOCHS=1, PATIENCE=1, BATCH_SIZE=16, MAX_IMAGES_PER_CLASS=None)),
]


def case_param(case: Case):
    return pytest.param(case, id=f"{case.script}-{case.kind}",
                        marks=[pytest.mark.slow] if case.slow else [])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """One folder for the synthetic sets (generated on first use) shared by every case."""
    return tmp_path_factory.mktemp("group_safety_data")


@pytest.fixture
def source_checkpoint(data_dir, tmp_path_factory) -> Path:
    """A tiny ResNeXt pretrained on the synthetic ALL-IDB1 smears, for the transfer script."""
    import resnext_transfer_learning as transfer

    results = tmp_path_factory.mktemp("source")
    return Path(transfer.main(transfer.parse_args(
        ["--pretrain", "--source-dataset", "synthetic_all_idb1", "--source-data-root",
         str(data_dir), "--results-dir", str(results), "--checkpoint-name", "source",
         *TINY_RESNEXT])))


def run_script(case: Case, data_dir: Path, workdir: Path, monkeypatch, request,
               *extra: str) -> Path:
    """Run the case's script in ``workdir`` (its data/ and results/ land there); return the
    results folder."""
    module = importlib.import_module(case.script)
    for key, value in case.quick.items():
        monkeypatch.setitem(module.QUICK, key, value)
    monkeypatch.chdir(workdir)
    argv = [*case.argv, "--data-root", str(data_dir), "--results-dir", str(workdir / "results"),
            *extra]
    if case.script == "resnext_transfer_learning":
        argv += ["--source-checkpoint", str(request.getfixturevalue("source_checkpoint"))]
    if case.script == "cnmc_transfer":
        request.getfixturevalue("tiny_backbone")
        request.getfixturevalue("no_download")
    with pytest.warns(UserWarning) if "--allow-random-init" in argv else nullcontext():
        module.main(module.parse_args(argv))
    return workdir / "results"


def fold_inputs(results: Path) -> list[tuple[Path, pd.DataFrame, dict]]:
    """Every ``inputs.csv`` of the run folders with the ``config`` of its run."""
    found = []
    for path in sorted(results.rglob("fold_*/inputs.csv")):
        settings = next((p / "settings.json" for p in path.parents
                         if (p / "settings.json").is_file()), None)
        assert settings is not None, f"{path}: no settings.json above it"
        found.append((path, pd.read_csv(path, dtype=str, keep_default_na=False),
                      read_json(settings)["config"]))
    assert found, f"no fold wrote inputs.csv under {results}"
    return found


def groups_in_two_roles(fed: pd.DataFrame, group_of: dict) -> list[str]:
    """Groups (``group_of``: image -> group) that sit in two roles of this fold's inputs,
    each image counted by the split image it was made from (``source_image``)."""
    assert set(fed["source_image"]) <= set(group_of), "an input that is not in the split"
    roles = fed.assign(g=fed["source_image"].map(group_of)).groupby("g")["role"].nunique()
    return sorted(roles[roles > 1].index)


def split_groups(fed: pd.DataFrame, split: pd.DataFrame) -> dict:
    """image -> group of the split file, after checking that ``inputs.csv`` names the same
    groups (so the check below does not rely on what the script wrote)."""
    group_of = dict(zip(split["image"], split["group"], strict=True))
    assert (fed["source_image"].map(group_of) == fed["group"]).all(), \
        "inputs.csv names other groups than the split"
    return group_of


def copy_groups(data_dir: Path) -> dict:
    """image -> group of copies of the synthetic Kaggle set, found as the default split finds
    them: what an image-level split (--ignore-groups) leaves unjoined."""
    from leukocyte_cnn.data.datasets import read_dataset
    from leukocyte_cnn.splits.copies import near_duplicate_groups

    joined, _ = near_duplicate_groups(read_dataset("synthetic_kaggle", data_dir))
    return dict(zip(joined["image"], joined["group"], strict=True))


@pytest.mark.parametrize("case", [case_param(c) for c in CASES])
def test_no_group_on_two_sides_of_any_fold(case, data_dir, tmp_path, monkeypatch, request):
    results = run_script(case, data_dir, tmp_path, monkeypatch, request)
    for path, fed, config in fold_inputs(results):
        split = read_split_csv(config["split_file"])
        kept = split[split["role"] != "excluded"].drop_duplicates("image")
        assert kept["group"].nunique() < len(kept), "the test data must share groups"
        assert read_json(Path(config["split_file"]).with_suffix(".json"))["grouped"] is True
        assert config["leaky"] is False
        assert set(fed["role"]) >= {"train", "test"}
        assert groups_in_two_roles(fed, split_groups(fed, split)) == [], path


LEAKY_CASES = [dataclasses.replace(c, slow=(c.script != "linear_cnn_binary_lpocv"))
               for c in CASES if not (c.script == "resnext_from_scratch" and c.kind == "patients")]


@pytest.mark.parametrize("case", [case_param(c) for c in LEAKY_CASES])
def test_ignore_groups_runs_and_is_labelled_leaky_everywhere(case, data_dir, tmp_path,
                                                             monkeypatch, request):
    results = run_script(case, data_dir, tmp_path, monkeypatch, request, "--ignore-groups")
    mixed = []
    for path, fed, config in fold_inputs(results):
        assert config["leaky"] is True, path
        split = read_split_csv(config["split_file"])
        assert read_json(Path(config["split_file"]).with_suffix(".json"))["leaky"] is True
        group_of = split_groups(fed, split)
        if case.kind == "copies":  # copies are not joined: find them as the default would
            group_of = copy_groups(data_dir)
        mixed += groups_in_two_roles(fed, group_of)
    if not case.quick.get("MAX_IMAGES_PER_CLASS"):  # a few images per class may miss them
        assert mixed, "--ignore-groups should split these groups by image"
    for settings in results.rglob("settings.json"):
        if settings.parent.parent == results:  # the run folders themselves
            assert read_json(settings)["config"]["leaky"] is True, settings
    tables = list(results.rglob("*.md"))
    assert tables
    for table in tables:
        assert "LEAKY" in table.read_text(), f"{table} does not say LEAKY"
    figures = list(results.rglob("*.png"))
    assert figures
    for figure in figures:
        with Image.open(figure) as image:
            assert "LEAKY" in image.text.get("Title", ""), f"{figure} title does not say LEAKY"


def test_a_sweep_with_a_leaky_point_says_leaky(tmp_path):
    """Sweep tables compare runs too: one point run on a LEAKY split labels table and figure."""
    import json

    from leukocyte_cnn.runs.sweeps import METRICS, write_report

    row = {"point": "p0", "lr": 0.1, "n_images": 10}
    for m in METRICS:
        row.update({m: 0.5, f"{m}_low": 0.4, f"{m}_high": 0.6})
    for leaky in (False, True):
        sweep = tmp_path / f"leaky_{leaky}"
        (sweep / "p0").mkdir(parents=True)
        (sweep / "p0" / "settings.json").write_text(json.dumps({"config": {"leaky": leaky}}))
        write_report(sweep, pd.DataFrame([row]), ["lr"], "accuracy", script="s.py",
                     script_args=[], n_points=1)
        assert ("LEAKY" in (sweep / "sweep.md").read_text()) is leaky
        with Image.open(sweep / "sweep.png") as image:
            assert ("LEAKY" in image.text.get("Title", "")) is leaky
