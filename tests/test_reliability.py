"""The reliability catalogue at the level the user meets it: the real scripts.

``tests/test_images.py``, ``test_datasets.py`` and ``test_folds.py`` check each bad input where
it is detected (decoder, reader, split loader). Here the same inputs go through the scripts a
researcher runs, and each test asserts what they then see: exit status 2 and ONE line
``error: <path>: <problem>`` on stderr, with nothing already written damaged. Readable oddities
(16-bit TIFF, RGBA PNG, grayscale, CMYK JPEG) must instead be split and trained on. Then:
every result file is written atomically, a run killed with SIGKILL and started again gives
byte-identical results, two runs give byte-identical predictions, checkpoints load in safe
mode, and nothing uses pickle.

Run with ``pytest -m reliability`` (this file, plus the decoder/reader tests marked so).
"""
from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT
from PIL import Image

from leukocyte_cnn.base.cli import run_main

pytestmark = pytest.mark.reliability

TINY_TRAINING = ["--image-size", "32", "--epochs", "2", "--k", "3"]  # seconds per fold on a CPU


# ----------------------------------------------------------------------------- helpers

def picture(seed: int, size: int = 24) -> np.ndarray:
    """A small RGB picture; odd seeds carry a purple square (the 'blast' class)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(150, 230, (size, size, 3), dtype=np.uint8)
    if seed % 2:
        pixels[6:18, 6:18] = (120, 40, 160)
    return pixels


def write_idb2(folder: Path, n: int = 12) -> Path:
    """ALL-IDB2 naming: ``ImNNN_Y.tif``, Y alternating."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(picture(i)).save(folder / f"Im{i + 1:03d}_{i % 2}.tif")
    return folder


def write_classes(root: Path, counts: dict[str, int]) -> Path:
    """Folder-per-class PNGs with file stems unique across classes."""
    seed = 0
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(picture(seed)).save(root / name / f"{name}_{i:02d}.png")
            seed += 1
    return root


def broken_file(kind: str, folder: Path, stem: str) -> tuple[Path, str]:
    """A broken image of one catalogue kind; returns its path and the problem the user reads."""
    source = folder / f".source_{stem}.jpg"
    Image.fromarray(picture(99, 64)).save(source, quality=90)
    jpeg = source.read_bytes()
    source.unlink()
    if kind == "corrupt JPEG":
        path = folder / f"{stem}.jpg"
        scan = jpeg.index(b"\xff\xda")  # a valid header, then noise where the scan should be
        noise = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
        path.write_bytes(jpeg[:scan + 14] + noise)
        return path, "truncated or corrupt image"
    if kind == "truncated TIFF":
        path = folder / f"{stem}.tif"
        Image.fromarray(picture(98, 64)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "truncated or corrupt image"
    if kind == "zero-byte file":
        path = folder / f"{stem}.tif"
        path.write_bytes(b"")
        return path, "empty file (0 bytes)"
    if kind == "text file named .jpg":
        path = folder / f"{stem}.jpg"
        path.write_text("patient 12, smear 3\nlooks fine\n")
        return path, "not an image file"
    raise ValueError(kind)


def run_script(name: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``<name>.py``'s ``main(parse_args(argv))`` under ``run_main``, as ``__main__`` does;
    return (exit status, stdout, stderr)."""
    module = importlib.import_module(name)
    capsys.readouterr()
    code = 0
    try:
        run_main(lambda: module.main(module.parse_args(argv)))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def the_error(code: int, err: str) -> str:
    """The one line the user reads: exit status 2 and exactly one ``error:`` line."""
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0][len("error: "):]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to prove nothing was touched)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def split_argv(dataset: str, root: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset", dataset, "--data-root", str(root), "--method", "kfold", "--k", "3",
            "--out-dir", str(out), "--name", "s", *extra]


def training_argv(split_csv: Path, results: Path, dataset: str = "folder") -> list[str]:
    return ["--dataset", dataset, "--split", str(split_csv), *TINY_TRAINING,
            "--results-dir", str(results), "--run-name", "tiny"]


# ----------------------------------------------------------------------------- broken files

BROKEN = ["corrupt JPEG", "truncated TIFF", "zero-byte file", "text file named .jpg"]


@pytest.mark.parametrize("kind", BROKEN)
def test_split_script_names_a_broken_file_and_keeps_the_old_split(tmp_path, capsys, kind):
    data = write_idb2(tmp_path / "idb2")
    out = tmp_path / "splits"
    code, _, err = run_script("cross_validation_splits", split_argv("all_idb2", data, out), capsys)
    assert code == 0, err
    before = snapshot(out)
    bad, problem = broken_file(kind, data, "Im099_1")
    code, _, err = run_script("cross_validation_splits", split_argv("all_idb2", data, out), capsys)
    assert the_error(code, err).startswith(f"{bad}: {problem}")
    assert snapshot(out) == before  # the earlier split is intact, no half-written new one


@pytest.mark.parametrize("kind", ["corrupt JPEG", "truncated TIFF", "zero-byte file"])
def test_training_script_names_a_broken_file_that_slipped_past_the_split(tmp_path, capsys, kind):
    """A split made with --no-check-images lets a broken file reach tf.data; the training
    script must still name it in one line instead of a TensorFlow traceback."""
    data = write_classes(tmp_path / "cells", {"blast": 6, "other": 6})
    bad, problem = broken_file(kind, data / "blast", "blast_99")
    out = tmp_path / "splits"
    code, _, err = run_script("cross_validation_splits",
                              split_argv("folder", data, out, "--no-check-images"), capsys)
    assert code == 0, err
    results = tmp_path / "results"
    code, _, err = run_script("linear_cnn_binary_lpocv", training_argv(out / "s.csv", results),
                              capsys)
    assert the_error(code, err).startswith(f"{bad}: {problem}")
    assert not list(results.rglob("predictions.csv")) and not list(results.rglob("*.tmp*"))


def test_file_name_that_breaks_the_dataset_pattern(tmp_path, capsys):
    data = write_idb2(tmp_path / "idb2")
    Image.fromarray(picture(5)).save(data / "cell 3.jpg")
    code, _, err = run_script("cross_validation_splits",
                              split_argv("all_idb2", data, tmp_path / "splits"), capsys)
    message = the_error(code, err)
    assert message.startswith(f"{data / 'cell 3.jpg'}: file name does not match the expected "
                              "pattern ImNNN_Y")
    assert not (tmp_path / "splits").exists()


def test_empty_class_folder(tmp_path, capsys):
    data = write_classes(tmp_path / "cells", {"blast": 6, "other": 6})
    (data / "monocyte").mkdir()
    code, _, err = run_script("cross_validation_splits",
                              split_argv("folder", data, tmp_path / "splits"), capsys)
    assert the_error(code, err) == f"{data / 'monocyte'}: empty class folder (no images)"


def test_class_with_one_image_is_set_aside_and_reported(tmp_path, capsys):
    data = write_classes(tmp_path / "cells", {"basophil": 1, "blast": 6, "other": 6})
    out = tmp_path / "splits"
    code, stdout, err = run_script("cross_validation_splits", split_argv("folder", data, out),
                                   capsys)
    assert code == 0, err
    assert "excluded: basophil 1" in stdout
    split = pd.read_csv(out / "s.csv")
    basophil = split[split["class_name"] == "basophil"]
    assert basophil[["fold", "role"]].values.tolist() == [[-1, "excluded"]]
    assert pd.read_json(out / "s.json", typ="series")["excluded_classes"] == {"basophil": 1}


# ----------------------------------------------------------------------------- split files

@pytest.fixture
def made_split(tmp_path, capsys):
    data = write_classes(tmp_path / "cells", {"blast": 6, "other": 6})
    out = tmp_path / "splits"
    code, _, err = run_script("cross_validation_splits", split_argv("folder", data, out), capsys)
    assert code == 0, err
    return data, out / "s.csv"


def test_missing_split_file(tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    code, _, err = run_script("linear_cnn_binary_lpocv",
                              training_argv(missing, tmp_path / "results"), capsys)
    assert the_error(code, err) == (f"{missing}: split file not found; run "
                                    "cross_validation_splits.py first")
    assert not (tmp_path / "results").exists()


def test_split_made_for_a_different_dataset(made_split, tmp_path, capsys):
    data, split_csv = made_split
    Image.fromarray(picture(3, size=40)).save(data / "blast" / "blast_02.png")  # re-exported
    results = tmp_path / "results"
    for script, argv in (("linear_cnn_binary_lpocv", training_argv(split_csv, results)),
                         ("check_leakage", [str(split_csv)])):
        code, _, err = run_script(script, argv, capsys)
        assert the_error(code, err).startswith(f"{split_csv}: split was made for a different "
                                               "dataset (hash ")
    assert not results.exists() and not list(split_csv.parent.glob("*_leakage.*"))


# ----------------------------------------------------------------------------- output folders

def test_output_folder_that_cannot_be_created(made_split, tmp_path, capsys):
    """A results path under a regular file fails for every user, root included."""
    data, split_csv = made_split
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    before = snapshot(split_csv.parent)
    code, _, err = run_script("linear_cnn_binary_lpocv",
                              training_argv(split_csv, blocker / "sub"), capsys)
    assert the_error(code, err) == (f"{blocker / 'sub' / 'tiny'}: output folder is not writable "
                                    "(Not a directory)")
    code, _, err = run_script("cross_validation_splits",
                              split_argv("folder", data, blocker / "sub"), capsys)
    assert the_error(code, err).startswith(f"{blocker / 'sub'}: output folder is not writable")
    assert blocker.read_text() == "not a folder" and snapshot(split_csv.parent) == before


def test_read_only_results_folder(made_split, tmp_path, capsys):
    _, split_csv = made_split
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o555)
    try:
        if os.access(results, os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable (the "
                        "path-under-a-file test covers this error for root)")
        code, _, err = run_script("linear_cnn_binary_lpocv", training_argv(split_csv, results),
                                  capsys)
        assert the_error(code, err).startswith(f"{results / 'tiny'}: output folder is not "
                                               "writable")
    finally:
        results.chmod(0o755)


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny 3-class classifier taking 16×16 RGB, saved the way training saves it."""
    import keras

    from leukocyte_cnn.base.io import save_model

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(2, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "model.keras")


def checkpoint_error(path, **expected) -> str:
    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.models.checkpoints import load_checkpoint

    with pytest.raises(InputError) as info:
        load_checkpoint(path, **expected)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message[len(f"{path}: "):]


def test_checkpoint_loads_when_classes_and_shape_match(checkpoint):
    from leukocyte_cnn.models.checkpoints import load_checkpoint

    model = load_checkpoint(checkpoint, num_classes=3, input_shape=(16, 16))
    assert model.predict(np.zeros((1, 16, 16, 3), np.float32), verbose=0).shape == (1, 3)


def test_checkpoint_with_the_wrong_class_count_or_input_shape(checkpoint):
    assert checkpoint_error(checkpoint, num_classes=2) == (
        "checkpoint predicts 3 classes, expected 2")
    assert checkpoint_error(checkpoint, num_classes=3, input_shape=(32, 32, 3)) == (
        "checkpoint takes 16×16×3 inputs, expected 32×32×3")


def test_checkpoint_that_is_missing_or_not_a_keras_file(checkpoint, tmp_path):
    assert checkpoint_error(tmp_path / "none.keras") == "checkpoint not found"
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    assert checkpoint_error(text).startswith("not a Keras checkpoint (not a .keras zip archive")
    half = tmp_path / "half.keras"
    half.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    assert checkpoint_error(half).startswith("not a Keras checkpoint")
    renamed = tmp_path / "model.h5"
    renamed.write_bytes(checkpoint.read_bytes())
    assert checkpoint_error(renamed).startswith("not a Keras checkpoint (expected a .keras file")
    # a zip that is not a Keras archive
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert checkpoint_error(tmp_path / "other.keras").startswith("cannot load Keras checkpoint")


def test_checkpoint_with_python_code_is_refused_in_safe_mode(tmp_path):
    import keras

    from leukocyte_cnn.base.io import save_model

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = save_model(model, tmp_path / "lambda.keras")
    assert checkpoint_error(path) == ("checkpoint contains Python code (e.g. a Lambda layer); "
                                      "refused in safe mode")


def test_serve_refuses_a_checkpoint_with_the_wrong_class_count(checkpoint, tmp_path, capsys):
    """serve.py is the script that loads checkpoints: a 3-class model with a settings file
    naming 2 classes must stop before serving, not at the first prediction."""
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"config": {"class_names": ["blast", "other"],
                                               "image_size": 16}}))
    code, out, err = run_script("serve", ["--checkpoint", str(checkpoint), "--settings",
                                          str(settings)], capsys)
    assert the_error(code, err) == (f"{checkpoint}: checkpoint predicts 3 classes, but "
                                    f"{settings} names 2 (blast, other)")
    assert "serving" not in out


# ----------------------------------------------------------------------------- code audits

SOURCES = sorted([*REPO_ROOT.glob("*.py"), *(REPO_ROOT / "leukocyte_cnn").rglob("*.py")])
# A write goes through leukocyte_cnn.base.io (write_csv/json/text/npz, save_model, atomic_path;
# the one module that writes directly, to its temporary names), reporting.save_figure or
# images.save_rgb, where the target is the temporary `tmp`.
ATOMIC_WRITER = REPO_ROOT / "leukocyte_cnn" / "base" / "io.py"
# Direct writes that are atomic one level up: (file, function) -> why. None today: the
# synthetic sets write through images.save_rgb into generate()'s temporary folder.
WHOLE_FOLDER_ATOMIC: dict[tuple[str, str], str] = {}


def _enclosing_function(lines: list[str], index: int) -> str:
    for line in reversed(lines[:index]):
        match = re.match(r"\s*(?:async\s+)?def (\w+)", line)
        if match:
            return match.group(1)
    return ""


_DIRECT_WRITES = re.compile(r"\.to_csv\(|\.savefig\(|\.save\(|np\.savez?(_compressed)?\(|"
                            r"json\.dump\(|\.write_text\(|\.write_bytes\(|\.to_json\(|"
                            r"\bopen\([^)]*['\"][wax]b?\+?['\"]")


def test_the_audits_read_the_whole_package():
    """The audits below grep SOURCES: every module of every subpackage must be among them, and
    every exemption must name a function that exists (a stale one would hide nothing)."""
    names = {p.relative_to(REPO_ROOT).as_posix() for p in SOURCES}
    for file, function in WHOLE_FOLDER_ATOMIC:
        assert f"def {function}(" in (REPO_ROOT / file).read_text(encoding="utf-8"), function
    assert ATOMIC_WRITER.is_file()
    assert {"leukocyte_cnn/base/io.py", "leukocyte_cnn/runs/cross_validation.py",
            "leukocyte_cnn/data/synthetic.py"} <= names
    assert len([n for n in names if n.startswith("leukocyte_cnn/")]) > 40


def test_every_result_file_is_written_through_a_temporary_name():
    """Grep audit: CSV/JSON/NPZ/checkpoint/figure writes outside the atomic writers."""
    direct = []
    for path in [p for p in SOURCES if p != ATOMIC_WRITER]:
        lines = path.read_text(encoding="utf-8").splitlines()
        name = path.relative_to(REPO_ROOT).as_posix()
        for number, line in enumerate(lines, 1):
            code = line.split("#", 1)[0]
            if (_DIRECT_WRITES.search(code) and not re.search(r"\btmp\b", code)
                    and (name, _enclosing_function(lines, number - 1)) not in WHOLE_FOLDER_ATOMIC):
                direct.append(f"{name}:{number}: {line.strip()}")
    assert not direct, "direct (non-atomic) writes:\n" + "\n".join(direct)


_PICKLE = re.compile("|".join([r"\bimport pickle\b", r"\bpickle\.", r"\bcPickle\b", r"\bdill\b",
                               r"\bjoblib\b", r"allow_pickle\s*=\s*True", r"safe_mode\s*=\s*False",
                               r"\bshelve\b", r"torch\.load\("]))


def test_nothing_unpickles():
    found = []
    for path in [*SOURCES, *sorted((REPO_ROOT / "tests").glob("*.py"))]:
        if path == Path(__file__).resolve():
            continue  # this file names the patterns
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            if _PICKLE.search(line.split("#", 1)[0]):
                found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
        for match in re.finditer(r"np\.load\(([^()]|\([^()]*\))*\)", text):
            if "allow_pickle=False" not in match.group(0):
                found.append(f"{path.relative_to(REPO_ROOT)}: {match.group(0)}")
        for match in re.finditer(r"load_model\(([^()]|\([^()]*\))*\)", text):
            if "safe_mode=True" not in match.group(0):
                found.append(f"{path.relative_to(REPO_ROOT)}: {match.group(0)} (no safe_mode=True)")
    assert not found, "pickle-capable loading:\n" + "\n".join(found)


# ----------------------------------------------------------------------------- kill / resume

ODDITIES = {  # readable oddities that must be converted and trained on
    "blast/blast_16bit.tif": lambda: Image.fromarray(
        (picture(1).mean(axis=2) * 257).astype(np.uint16)),
    "blast/blast_rgba.png": lambda: Image.fromarray(
        np.dstack([picture(3), np.full((24, 24), 180, np.uint8)])),
    "other/other_gray.png": lambda: Image.fromarray(picture(2)).convert("L"),
    "other/other_cmyk.jpg": lambda: Image.fromarray(picture(4)).convert("CMYK"),
}


def _launch(split_csv: Path, results: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1",
           "PYTHONHASHSEED": "0"}
    handle = open(log, "wb")  # the child's log, read after it ends  # noqa: SIM115
    return subprocess.Popen([sys.executable, "linear_cnn_binary_lpocv.py",
                             *training_argv(split_csv, results)], cwd=REPO_ROOT, env=env,
                            stdout=handle, stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    process.wait(timeout=timeout)
    text = log.read_text(errors="replace")
    assert process.returncode == 0, text[-3000:]
    return text


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs of one tiny configuration: A and B uninterrupted, K killed with SIGKILL once
    its first fold was finished and then started again. Two at a time (2 CPU cores)."""
    import cross_validation_splits as cvs

    base = tmp_path_factory.mktemp("runs")
    data = write_classes(base / "cells", {"blast": 10, "other": 10})
    for key, make in ODDITIES.items():
        make().save(data / key)
    cvs.main(cvs.parse_args(split_argv("folder", data, base / "splits")))
    split_csv = base / "splits" / "s.csv"
    start = time.perf_counter()
    a = _launch(split_csv, base / "a", base / "a.log")
    k = _launch(split_csv, base / "k", base / "k.log")
    first_fold = base / "k" / "tiny" / "fold_00" / "predictions.csv"
    while not first_fold.exists():
        assert k.poll() is None, (base / "k.log").read_text(errors="replace")[-3000:]
        assert time.perf_counter() - start < 600, "fold 0 of the run to kill never finished"
        time.sleep(0.05)
    k.send_signal(signal.SIGKILL)
    k.wait()
    killed = {"returncode": k.returncode,
              "finished": sorted(p.parent.name for p in (base / "k").rglob("predictions.csv")),
              "summary": (base / "k" / "tiny" / "summary.csv").exists()}
    a_log = _finish(a, base / "a.log")
    b = _launch(split_csv, base / "b", base / "b.log")
    k2 = _launch(split_csv, base / "k", base / "k2.log")
    b_log, k2_log = _finish(b, base / "b.log"), _finish(k2, base / "k2.log")
    return {"a": base / "a" / "tiny", "b": base / "b" / "tiny", "k": base / "k" / "tiny",
            "killed": killed, "logs": {"a": a_log, "b": b_log, "resumed": k2_log},
            "split": split_csv, "seconds": time.perf_counter() - start}


def result_files(run_dir: Path) -> dict[str, bytes]:
    names = ["summary.csv", "per_fold.csv", "per_class.csv",
             *[f"{p.parent.name}/{p.name}" for p in sorted(run_dir.glob("fold_*/predictions.csv"))]]
    return {name: (run_dir / name).read_bytes() for name in names}


def test_run_killed_with_sigkill_and_resumed_equals_an_uninterrupted_run(runs):
    killed = runs["killed"]
    assert killed["returncode"] == -signal.SIGKILL
    assert killed["finished"] == ["fold_00"] and not killed["summary"]  # killed mid-run
    assert "fold 0 (1/3): finished earlier, kept" in runs["logs"]["resumed"]  # really resumed
    resumed, uninterrupted = result_files(runs["k"]), result_files(runs["a"])
    assert len(resumed) == 3 + 3
    assert resumed == uninterrupted


def test_two_runs_give_byte_identical_predictions(runs):
    assert result_files(runs["a"]) == result_files(runs["b"])
    print(f"kill/resume + determinism runs: {runs['seconds']:.0f} s")


def test_no_temporary_files_left_except_in_the_killed_fold(runs):
    for name in ("a", "b"):
        assert not list(runs[name].rglob("*.tmp*")), name
    leftovers = list(runs["k"].rglob("*.tmp*"))
    # only a fold that was running at the kill can hold one, under a hidden name that no
    # reader globs for (readers open fold_XX/predictions.csv, epochs.csv, model.keras)
    assert all(p.parent.name not in runs["killed"]["finished"] and p.name.startswith(".")
               for p in leftovers), leftovers


def test_readable_oddities_are_split_and_trained_on(runs):
    settings = pd.read_json(runs["split"].with_suffix(".json"), typ="series")
    assert settings["skipped_bad_files"] == [] and settings["n_images_read"] == 24
    tested = pd.concat([pd.read_csv(p) for p in runs["a"].glob("fold_*/predictions.csv")])
    assert set(ODDITIES) <= set(tested["image"])
    assert tested["image"].is_unique and len(tested) == 24  # k-fold: each image tested once
