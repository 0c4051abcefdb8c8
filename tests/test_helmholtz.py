"""The Helmholtz spine on the embedded synthetic data: learnable, leak-free, end to end.

Synthetic sets are generated once per test session into a temporary data folder.
"""
import numpy as np
import pandas as pd
import pytest
import reference_networks as ref

import linear_cnn_binary_lpocv
import linear_cnn_da
import linear_cnn_multiclass_lpocv
from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.inputs.balancing import read_augmented_fold
from leukocyte_cnn.splits.split_files import load_split


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A data folder shared by this module's tests (``--data-root`` of synthetic sets)."""
    return tmp_path_factory.mktemp("synthetic_data")


SMALL = {"synthetic_all_idb2": {"size": 96}, "synthetic_multiclass": {"size": 96}}


def embedded_images(report) -> dict:
    """{figure file name: decoded PIL image} of the PNGs a report.html embeds (each figure's
    ``<img>`` carries its file name in ``alt`` or in the caption that follows)."""
    import base64
    import io
    import re

    from PIL import Image

    html = report.read_text()
    found = {}
    for match in re.finditer(r'<img src="data:image/png;base64,([^"]+)"[^>]*>', html):
        name = re.search(r"[\w.-]+\.png", html[match.start():match.end() + 400]
                         .replace(match.group(1), ""))
        image = Image.open(io.BytesIO(base64.b64decode(match.group(1))))
        image.load()
        found[name.group(0) if name else f"image{len(found)}"] = image
    return found


def make_split(data_root, out_dir, dataset, method="kfold", k=3, exclude=()):
    """A split file of a small synthetic set (96 px renders keep the suite fast)."""
    from leukocyte_cnn.data.datasets import class_names, dataset_hash, read_dataset
    from leukocyte_cnn.splits.plans import make_split as split_table
    from leukocyte_cnn.splits.split_files import write_split

    options = {"synthetic_options": SMALL[dataset]}
    table = read_dataset(dataset, data_root, **options)
    split = split_table(table, method, k=k, seed=0, exclude_classes=exclude)
    settings = {"dataset": dataset, "data_root": str(data_root), "reader_options": options,
                "method": method, "k": k, "seed": 0, "dataset_hash": dataset_hash(table),
                "class_names": class_names(table)}
    return write_split(split, settings, out_dir, "split")[0]


def test_small_cnn_learns_the_synthetic_binary_set(synthetic_root, tmp_path):
    """Issue 2's learnability check: a small CNN beats 85 % held-out accuracy at 64 px."""
    from leukocyte_cnn.base.seeding import set_seed
    from leukocyte_cnn.inputs.pipeline import make_dataset
    from leukocyte_cnn.runs.cross_validation import make_optimizer

    split = load_split(make_split(synthetic_root, tmp_path, "synthetic_all_idb2", k=4),
                       data_root=synthetic_root)
    fold = split.fold(0)
    train, test = fold[fold.role != "test"], fold[fold.role == "test"]
    set_seed(0)
    model = ref.linear_cnn(input_shape=(64, 64, 3), num_classes=2, filters=(16, 32, 32, 32),
                       dense_units=32)
    model.compile(optimizer=make_optimizer("adam", 2e-3), loss="binary_crossentropy",
                  metrics=["accuracy"])
    data = lambda t, shuffle: make_dataset(t.path.tolist(), t.label.tolist(), (64, 64), 16,
                                           shuffle=shuffle, label_mode="binary", cache="memory")
    model.fit(data(train, True), epochs=12, verbose=0)
    prob = model.predict(data(test, False), verbose=0)[:, 0]
    accuracy = float(((prob >= 0.5) == test.label.to_numpy()).mean())
    assert len(test) == 65
    assert accuracy > 0.85, f"held-out accuracy {accuracy:.3f} on the synthetic binary set"


def test_augmented_folds_hold_only_their_training_images(synthetic_root, tmp_path):
    split_csv = make_split(synthetic_root, tmp_path, "synthetic_multiclass",
                           exclude=("thrombocyte",))
    args = linear_cnn_da.parse_args(["--dataset", "synthetic_multiclass", "--data-root",
                                     str(synthetic_root), "--split", str(split_csv), "--quick",
                                     "--out-dir", str(tmp_path / "aug"), "--target", "20",
                                     "--folds", "0,1"])
    out_root = linear_cnn_da.main(args)
    split = load_split(split_csv, data_root=synthetic_root)
    assert set(split.excluded.class_name) == {"basophil", "thrombocyte"}
    for k in (0, 1):
        rows = split.fold(k)
        train = rows[rows.role == "train"]
        table = read_augmented_fold(out_root, k, train)
        sources = set(table.source_image)
        assert sources <= set(train.image)
        assert not sources & set(rows[rows.role.isin(["val", "test"])].image)
        assert not set(table.class_name) & {"basophil", "thrombocyte"}
        assert table.groupby("class_name").size().min() >= 20  # balanced up to the target
        # every written image traces to its source and transform
        manifest = pd.read_csv(out_root / f"fold_{k:02d}" / "manifest.csv")
        assert manifest.params.str.startswith("{").all()
        assert all((out_root / p).is_file() for p in manifest.image)
    # A manifest made from another fold's training images is refused (it would leak).
    other = split.fold(1)
    with pytest.raises(InputError, match="not this fold's training images"):
        read_augmented_fold(out_root, 0, other[other.role == "train"])


def test_binary_and_multiclass_scripts_end_to_end(synthetic_root, tmp_path):
    binary_split = make_split(synthetic_root, tmp_path / "b", "synthetic_all_idb2")
    common = ["--data-root", str(synthetic_root), "--results-dir", str(tmp_path / "results"),
              "--image-size", "32", "--epochs", "2", "--folds", "0,1"]
    summary = linear_cnn_binary_lpocv.main(linear_cnn_binary_lpocv.parse_args(
        ["--dataset", "synthetic_all_idb2", "--split", str(binary_split), "--run-name", "bin",
         *common]))
    run = tmp_path / "results" / "bin"
    assert {"accuracy", "roc_auc"} <= set(summary.metric)
    predictions = pd.concat(pd.read_csv(run / f"fold_{k:02d}" / "predictions.csv")
                            for k in (0, 1))
    split = load_split(binary_split, data_root=synthetic_root)
    for k in (0, 1):
        tested = set(predictions[predictions.fold == k].image)
        rows = split.fold(k)
        assert tested == set(rows[rows.role == "test"].image)  # exactly the fold's test images
        epochs = pd.read_csv(run / f"fold_{k:02d}" / "epochs.csv")
        assert (epochs.monitor == "val_loss").all()
    assert np.allclose(predictions[["prob_other", "prob_lymphoblast"]].sum(axis=1), 1.0)
    for name in ("summary.md", "summary.csv", "confusion_matrix.png", "roc.png",
                 "learning_curves.png", "settings.json", "reliability.png",
                 "errors_gallery.png", "calibration.csv"):
        assert (run / name).is_file(), name
    # report.html shows the error gallery with its heatmaps: decoded, and not blank
    gallery = embedded_images(run / "report.html")["errors_gallery.png"]
    assert gallery.size[0] > 400 and np.asarray(gallery.convert("L")).std() > 20
    for k in (0, 1):  # temperatures fitted on each fold's validation images
        assert (run / f"fold_{k:02d}" / "temperature.json").is_file()

    multi_split = make_split(synthetic_root, tmp_path / "m", "synthetic_multiclass",
                             exclude=("thrombocyte",))
    linear_cnn_multiclass_lpocv.main(linear_cnn_multiclass_lpocv.parse_args(
        ["--dataset", "synthetic_multiclass", "--split", str(multi_split), "--run-name", "multi",
         "--augmented-dir", str(tmp_path / "aug"), "--target", "12", *common]))
    summary_md = (tmp_path / "results" / "multi" / "summary.md").read_text()
    assert "Excluded classes" in summary_md and "thrombocyte" in summary_md


def test_present_exclusions_names_only_classes_of_the_dataset(monkeypatch):
    """A real multiclass set may have no thrombocytes: the default split must not name them."""
    from leukocyte_cnn.data import datasets
    from leukocyte_cnn.runs.experiment import RunOptions, present_exclusions

    monkeypatch.setattr(datasets, "read_dataset", lambda name, root: name)
    monkeypatch.setattr(datasets, "class_names",
                        lambda table: {"with": ["lymphocyte", "thrombocyte"],
                                       "without": ["lymphocyte"]}[table])
    args = lambda dataset, split=None: RunOptions(dataset=dataset, split=split)  # noqa: E731
    wanted = ("thrombocyte", "megakaryocyte")
    assert present_exclusions(args("with"), wanted) == ("thrombocyte",)
    assert present_exclusions(args("without"), wanted) == ()
    assert present_exclusions(args("with", split="given.csv"), wanted) == ()  # not read
