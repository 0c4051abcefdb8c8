"""cnmc_transfer.py: patient-disjoint folds, the leaky image mode labelled as such, weighted F1,
and no training without starting weights.

The data is a tiny fake C-NMC tree (the real layout: ``training_data/fold_k/{all,hem}/UID_*.bmp``
plus ``validation_data`` with its labels CSV), 40 px cells on black, tinted per patient.
"""
from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import cnmc_transfer
from leukocyte_cnn.base.cli import run_main
from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.models import pretrained

CELLS_PER_PATIENT = 3
SIZE = 40


def cell(path: Path, blast: bool, patient: int, n: int) -> None:
    """A round cell on black; blasts have a bigger, paler nucleus; tint varies by patient."""
    rng = np.random.default_rng([patient, n])
    yy, xx = np.mgrid[:SIZE, :SIZE] - SIZE / 2 + rng.integers(-3, 4, size=2)[:, None, None]
    r = np.hypot(yy, xx)
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    tint = np.array([150 + 8 * (patient % 10), 120, 190 - 6 * (patient % 10)], np.uint8)
    pixels[r < 16] = tint
    pixels[r < (12 if blast else 7)] = (110, 60, 160) if blast else (60, 20, 110)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_fake_cnmc(top: Path, validation: bool = True) -> Path:
    """Three folds of two blast and two normal patients each (3 cells each), patients disjoint
    across folds, and a validation_data set of four other patients."""
    patient = 0
    for fold in range(3):
        for kind in ("all", "hem"):
            for _ in range(2):
                patient += 1
                pid = str(patient) if kind == "all" else f"H{patient}"
                for n in range(CELLS_PER_PATIENT):
                    cell(top / "training_data" / f"fold_{fold}" / kind /
                         f"UID_{pid}_{n + 1}_1_{kind}.bmp", kind == "all", patient, n)
    if validation:
        folder = top / "validation_data" / "C-NMC_test_prelim_phase_data"
        lines, number = ["Patient_ID,new_names,labels"], 0
        for kind in ("all", "hem", "all", "hem"):
            patient += 1
            pid = str(patient) if kind == "all" else f"H{patient}"
            for n in range(2):
                number += 1
                cell(folder / f"{number}.bmp", kind == "all", patient, n)
                lines.append(f"UID_{pid}_{n + 1}_1_{kind}.bmp,{number}.bmp,{int(kind == 'all')}")
        (top / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv").write_text(
            "\n".join(lines) + "\n")
    return top


@pytest.fixture
def fake_cnmc(tmp_path) -> Path:
    return make_fake_cnmc(tmp_path / "C-NMC_Leukemia")


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to fetch weights or open a connection fails, as on an offline node."""
    import keras

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(keras.utils, "get_file", refuse)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def argv(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    return ["--dataset", "cnmc", "--data-root", str(data),
            "--results-dir", str(tmp_path / "results"), *extra]


def split_args(tmp_path: Path, data: Path, *extra: str):
    args = cnmc_transfer.parse_args(argv(tmp_path, data, *extra))
    return args


def roles_by_patient(split_csv: Path) -> pd.DataFrame:
    rows = pd.read_csv(split_csv, dtype={"group": str})
    rows = rows[rows["role"] != "excluded"]
    return rows.groupby(["fold", "group"])["role"].agg(lambda r: sorted(set(r)))


# ----------------------------------------------------------------------------- splits

def run_and_settings(args):
    """The script's RunOptions and resolved knobs for a parsed command line."""
    from leukocyte_cnn.base.knobs import resolve_settings
    from leukocyte_cnn.runs.experiment import RunOptions

    return RunOptions.from_args(args), resolve_settings(cnmc_transfer, args)


def test_folds_and_final_test_are_disjoint_by_patient(fake_cnmc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default split files go to ./data/splits
    run, settings = run_and_settings(split_args(tmp_path, fake_cnmc))
    from leukocyte_cnn.data.datasets import read_dataset

    table = read_dataset("cnmc", fake_cnmc)
    assert cnmc_transfer.split_mode(run, settings["SPLIT_BY"], table) == "folds"
    split = cnmc_transfer.cross_validation_split(run, "folds", settings)
    rows = split.table
    assert split.folds == [0, 1, 2] and split.settings["variant"] == "source_folds"
    # fold k tests exactly the dataset's fold_k, and validation_data is in no fold
    tested = rows[rows["role"] == "test"]
    assert all(image.startswith(f"training_data/fold_{fold}/")
               for fold, image in zip(tested["fold"], tested["image"], strict=True))
    assert not rows["image"].str.startswith("validation_data").any()
    assert sorted(rows.loc[rows["role"] == "test", "image"]) == sorted(
        table.loc[table["source_split"] != "validation", "image"])
    for fold in split.folds:  # every fold has train, val and test patients
        assert set(rows.loc[rows["fold"] == fold, "role"]) == {"train", "val", "test"}

    final = cnmc_transfer.final_test_split(run, settings)
    assert re.search(r"_test-validation_[0-9a-f]{10}\.csv$", final.csv_path.name)
    assert final.csv_path != split.csv_path  # its own split file, not the fold file
    final_rows = final.table
    assert final.folds == [0]
    assert sorted(final_rows.loc[final_rows["role"] == "test", "image"]) == sorted(
        table.loc[table["source_split"] == "validation", "image"])
    assert (final_rows["role"] == "val").any(), "early stopping needs carved-out patients"

    for path in (split.csv_path, final.csv_path):  # read back what was written to disk
        roles = roles_by_patient(path)
        several = roles[roles.map(len) > 1]
        assert several.empty, f"{path.name}: patients in two roles: {several.to_dict()}"


def test_patient_kfold_is_disjoint_by_patient(fake_cnmc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run, settings = run_and_settings(split_args(tmp_path, fake_cnmc, "--split-by", "patient"))
    split = cnmc_transfer.cross_validation_split(run, "patient", settings)
    assert split.settings["method"] == "group_kfold" and split.settings["leaky"] is False
    roles = roles_by_patient(split.csv_path)
    assert roles.map(len).max() == 1
    tested = split.table[split.table["role"] == "test"]
    assert tested["image"].is_unique and len(tested) == 44  # 36 fold cells + 8 validation cells


def test_split_image_shorthand_and_mode_from_data(fake_cnmc, tmp_path):
    args = cnmc_transfer.parse_args(argv(tmp_path, fake_cnmc, "--split", "image"))
    assert args.SPLIT_BY == "image" and args.split is None
    assert run_and_settings(args)[1].overrides()["SPLIT_BY"]["by"] == "--split-by"
    table = pd.DataFrame({"source_split": ["", ""], "group": ["a", "a"]})
    run, settings = run_and_settings(cnmc_transfer.parse_args([]))
    assert cnmc_transfer.split_mode(run, settings["SPLIT_BY"], table) == "patient"


def test_split_file_mixing_patients_must_say_leaky(fake_cnmc, tmp_path, monkeypatch,
                                                   no_download):
    """A file split by image but not marked leaky (made by hand, or by an older version
    whose kfold ignored patients) is refused."""
    from leukocyte_cnn.data.datasets import read_dataset
    from leukocyte_cnn.splits.plans import make_split
    from leukocyte_cnn.splits.split_files import write_split

    monkeypatch.chdir(tmp_path)
    table = read_dataset("cnmc", fake_cnmc)
    rows = make_split(table, "kfold", k=3, groups=None)
    by_image, _ = write_split(rows, {"dataset": "cnmc", "data_root": str(fake_cnmc),
                                     "method": "kfold", "k": 3, "grouped": False, "leaky": False},
                              tmp_path / "splits", "cnmc_kfold_k3_seed0", table=table)
    args = cnmc_transfer.parse_args(argv(tmp_path, fake_cnmc, "--split", str(by_image),
                                         "--allow-random-init"))
    with pytest.warns(UserWarning, match="random weights"), \
            pytest.raises(InputError, match=r"kfold_k3_seed0\.csv: puts one patient in two roles"):
        cnmc_transfer.main(args)
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- weights

def test_missing_weights_stop_before_training_with_one_line(fake_cnmc, tmp_path, monkeypatch,
                                                            no_download, capsys):
    monkeypatch.chdir(tmp_path)

    def must_not_train(*args, **kwargs):
        raise AssertionError("training started without weights")

    monkeypatch.setattr("leukocyte_cnn.runs.cross_validation.train_classifier_fold", must_not_train)
    monkeypatch.setattr("leukocyte_cnn.models.applications.cnmc_model", must_not_train)
    monkeypatch.setattr("sys.argv", ["cnmc_transfer.py", *argv(tmp_path, fake_cnmc)])
    with pytest.raises(SystemExit) as stop:
        run_main(lambda: cnmc_transfer.main(cnmc_transfer.parse_args()))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: efficientnetb3_notop.h5: ImageNet weights for EfficientNetB3 "
                          "not available") and "--allow-random-init" in err
    assert not (tmp_path / "results").exists()  # no run folder, nothing trained

    with pytest.raises(InputError, match=r"nope\.h5: weights file not found"):
        cnmc_transfer.main(cnmc_transfer.parse_args(
            argv(tmp_path, fake_cnmc, "--weights", str(tmp_path / "nope.h5"))))


def test_resolve_weights_file_cache_and_random_init(tmp_path, monkeypatch, no_download):
    weights = tmp_path / "b3_notop.weights.h5"
    weights.write_bytes(b"\x89HDF")
    assert pretrained.resolve_imagenet_weights("EfficientNetB3", weights) == str(weights)
    with pytest.raises(InputError, match=r"model\.txt: not a Keras weights file"):
        pretrained.resolve_imagenet_weights("ResNet50", _touch(tmp_path / "model.txt"))
    with pytest.warns(UserWarning, match="training from random weights"):
        assert pretrained.resolve_imagenet_weights("ResNet50", "imagenet", True) is None
    assert pretrained.weights_description(None) == "random init"
    assert pretrained.weights_description("/x/efficientnetb3_notop.h5") == "ImageNet weights"

    cached = tmp_path / "efficientnetb3_notop.h5"  # a cache hit returns the file, no download
    monkeypatch.setattr(pretrained, "fetch_weights", lambda name, url, md5: tmp_path / name)
    assert pretrained.resolve_imagenet_weights("EfficientNetB3") == str(cached)


def _touch(path: Path) -> Path:
    path.write_text("x")
    return path


# ----------------------------------------------------------------------------- metrics

def test_weighted_f1_matches_scikit_learn_and_hand_value():
    from sklearn.metrics import f1_score

    from leukocyte_cnn.reporting.metrics import classification_metrics

    y_true = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])     # 6 blasts, 4 normal cells
    y_pred = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1])
    prob = np.eye(2)[y_pred] * 0.8 + 0.1
    m = classification_metrics(y_true, prob, ["hem", "all"])
    # all: P 4/5, R 4/6, F1 8/11; hem: P 3/5, R 3/4, F1 2/3; weighted by support 6 and 4
    hand = (6 * 8 / 11 + 4 * 2 / 3) / 10
    assert m["weighted_f1"] == pytest.approx(hand)
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert m["weighted_f1"] != pytest.approx(m["macro_f1"])  # the weighting really matters
    assert m["per_class"]["all"]["recall"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]


# ----------------------------------------------------------------------------- end to end

@pytest.fixture
def tiny_backbone(monkeypatch):
    """``applications.cnmc_model`` as it is, on a one-conv stand-in for the keras.applications
    backbone: the first training step of EfficientNetB3 takes minutes on 2 loaded CPU cores
    (graph tracing), far beyond a unit test; the real backbone runs in the slow test below."""
    import keras

    from leukocyte_cnn.models import applications

    def stand_in(backbone_name, input_shape, weights, pooling, bn_momentum):
        assert (backbone_name in applications.CNMC_BACKBONES and pooling == "max"
                and weights is None)
        pixels = keras.Input(shape=tuple(input_shape), name="pixels")
        inner = keras.Input(shape=tuple(input_shape))
        x = keras.layers.Rescaling(1.0 / 255)(inner)
        x = keras.layers.Conv2D(8, 3, activation="relu")(x)
        backbone = keras.Model(inner, keras.layers.GlobalMaxPooling2D()(x), name="backbone")
        return pixels, backbone, backbone(pixels)

    monkeypatch.setattr(applications, "backbone_features", stand_in)


def test_folds_then_final_test_end_to_end(fake_cnmc, tmp_path, monkeypatch, no_download,
                                          tiny_backbone, capsys):
    monkeypatch.chdir(tmp_path)
    args = cnmc_transfer.parse_args(argv(tmp_path, fake_cnmc, "--allow-random-init",
                                         "--image-size", "32", "--epochs", "1", "--folds", "0",
                                         "--run-name", "cv"))
    with pytest.warns(UserWarning, match="random weights"):
        summaries = cnmc_transfer.main(args)
    assert list(summaries) == ["cv", "cv_validation_data"]
    cv, final = tmp_path / "results" / "cv", tmp_path / "results" / "cv_validation_data"
    assert [p.parent.name for p in cv.glob("fold_*/predictions.csv")] == ["fold_00"]
    assert "folds finished: 1 of 3" in (cv / "summary.md").read_text()
    cv_config = json.loads((cv / "settings.json").read_text())["config"]
    final_config = json.loads((final / "settings.json").read_text())["config"]
    assert cv_config["leaky"] is False and cv_config["split_by"] == "folds"
    assert re.search(r"_test-validation_[0-9a-f]{10}\.csv$", final_config["split_file"])
    tested = pd.read_csv(final / "fold_00" / "predictions.csv")
    assert len(tested) == 8 and tested["image"].str.startswith("validation_data/").all()
    for run in (cv, final):
        text = (run / "summary.md").read_text()
        assert "LEAKY" not in text and "(random init)" in text.splitlines()[0]
        roles = roles_by_patient(Path(json.loads((run / "settings.json").read_text())
                                      ["config"]["split_file"]))
        assert roles.map(len).max() == 1
    out = capsys.readouterr().out
    assert "cv_validation_data: accuracy" in out and "weighted F1" in out
    # Issue 24: patient-level results beside the image-level ones, by hand from the
    # predictions: a patient's prediction is the mean of its cells' probabilities.
    predictions = pd.read_csv(cv / "fold_00" / "predictions.csv", dtype={"group": str})
    prob = [c for c in predictions.columns if c.startswith("prob_")]
    means = predictions.groupby("group")[prob].mean()
    truth = predictions.groupby("group")["label"].first()
    by_hand = float((means.to_numpy().argmax(axis=1) == truth.to_numpy()).mean())
    table = pd.read_csv(cv / "group_metrics.csv").set_index("metric")
    assert table.loc["accuracy", "group_level"] == pytest.approx(by_hand)
    assert table.loc["accuracy", "n_groups"] == len(truth) < len(predictions)
    per_patient = pd.read_csv(cv / "per_group.csv", dtype={"group": str}).set_index("group")
    assert per_patient["n_images"].to_dict() == predictions.groupby("group").size().to_dict()
    text = (cv / "summary.md").read_text()
    assert "## Per group" in text and "### Per patient" in text and "## Calibration" in text


def test_image_level_split_is_labelled_leaky_and_really_leaks(fake_cnmc, tmp_path, monkeypatch,
                                                             no_download, tiny_backbone, capsys):
    monkeypatch.chdir(tmp_path)
    args = cnmc_transfer.parse_args(argv(
        tmp_path, fake_cnmc, "--split", "image", "--allow-random-init", "--image-size", "32",
        "--epochs", "1", "--run-name", "leaky"))
    with pytest.warns(UserWarning, match="random weights"):
        summaries = cnmc_transfer.main(args)
    run = tmp_path / "results" / "leaky"
    config = json.loads((run / "settings.json").read_text())["config"]
    split_json = Path(config["split_file"]).with_suffix(".json")
    assert json.loads(split_json.read_text())["leaky"] is True
    assert config["leaky"] is True and config["split_by"] == "image"
    summary_md = (run / "summary.md").read_text()
    assert "LEAKY SPLIT" in summary_md
    assert summary_md.startswith("# C-NMC all vs hem, EfficientNetB3 (random init)")
    assert "weighted_f1" in summary_md
    assert "[LEAKY split]" in capsys.readouterr().out
    assert list(summaries) == ["leaky"]  # no final test after a leaky split

    # ...and it really mixes patients: some patient has cells in training and in test
    roles = roles_by_patient(Path(config["split_file"]))
    assert any({"train", "test"} <= set(r) for r in roles), "the leaky check would be vacuous"
    split_rows = pd.read_csv(config["split_file"])
    predictions = pd.read_csv(run / "fold_00" / "predictions.csv")
    assert sorted(predictions["image"]) == sorted(split_rows.loc[split_rows["role"] == "test",
                                                                 "image"])


@pytest.mark.slow
def test_real_efficientnetb3_one_step(fake_cnmc, tmp_path, monkeypatch, no_download):
    """The real EfficientNetB3 builder (random init) at 32 px, one epoch of one batch."""
    monkeypatch.chdir(tmp_path)
    args = cnmc_transfer.parse_args(argv(
        tmp_path, fake_cnmc, "--split", "image", "--allow-random-init", "--image-size", "32",
        "--epochs", "1", "--run-name", "real"))
    with pytest.warns(UserWarning, match="random weights"):
        cnmc_transfer.main(args)
    model_path = tmp_path / "results" / "real" / "fold_00" / "model.keras"
    import keras

    model = keras.models.load_model(model_path, safe_mode=True)
    assert model.get_layer("backbone").count_params() > 10_000_000  # EfficientNetB3 itself
    assert model.output_shape == (None, 2)
