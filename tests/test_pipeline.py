"""The input pipeline yields the right pixels, in the right order, augmented only when asked."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from leukocyte_cnn.base.errors import InputError  # noqa: E402
from leukocyte_cnn.data.images import load_rgb, needs_pillow  # noqa: E402
from leukocyte_cnn.inputs.augment import online_augmentation  # noqa: E402
from leukocyte_cnn.inputs.pipeline import dataset_from_table, load_arrays, make_dataset  # noqa: E402

SIZE = (12, 16)  # (height, width), smaller than the files: the resize really works


def _picture(seed: int, height: int = 24, width: int = 32) -> np.ndarray:
    """Smooth gradients plus noise: resizing and JPEG both change it, but predictably."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 7, yy * 9, (xx + yy) * 4], axis=-1) + seed * 20
    return np.clip(base + rng.integers(-25, 25, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """One PNG, one JPEG, one RGB TIFF and one RGBA PNG (an odd mode that needs Pillow)."""
    root = tmp_path_factory.mktemp("pipeline")
    out = {}
    for i, (name, fmt) in enumerate([("a.png", "PNG"), ("b.jpg", "JPEG"), ("c.tif", "TIFF")]):
        out[name] = str(root / name)
        Image.fromarray(_picture(i)).save(out[name], format=fmt)
    rgba = np.dstack([_picture(3), np.full((24, 32), 255, np.uint8)])
    rgba[:, :8, 3] = 0  # transparent left strip: Pillow composites it on white
    out["d.png"] = str(root / "d.png")
    Image.fromarray(rgba, "RGBA").save(out["d.png"])
    return out


def _reference(path: str, size=SIZE) -> np.ndarray:
    """What the pipeline promises: load_rgb, antialiased bilinear resize, rounded; JPEGs
    first decoded at the largest 1/2, 1/4, 1/8 DCT scale that keeps >= size (Pillow's
    ``draft`` picks the same scale)."""
    if path.endswith(".jpg"):
        with Image.open(path) as im:
            im.draft("RGB", (size[1], size[0]))
            decoded = np.asarray(im.convert("RGB"))
    else:
        decoded = load_rgb(path)
    resized = tf.image.resize(decoded, size, method="bilinear", antialias=True)
    return np.clip(np.rint(resized.numpy()), 0, 255).astype(np.float32)


def _collect(ds):
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def test_unshuffled_pipeline_keeps_order_pixels_and_labels(files):
    paths = list(files.values())
    labels = [2, 0, 1, 3]
    images, got_labels = _collect(make_dataset(paths, labels, SIZE, batch_size=3))

    assert images.dtype == np.float32 and images.shape == (4, *SIZE, 3)
    assert got_labels.tolist() == labels
    for image, path in zip(images, paths, strict=True):
        # libjpeg versions of TF and Pillow round the IDCT differently: allow a few levels
        tolerance = 4.0 if path.endswith(".jpg") else 0.0
        assert np.abs(image - _reference(path)).max() <= tolerance, path


def test_jpeg_is_decoded_at_the_largest_dct_scale_that_keeps_the_output_size(files):
    jpeg = files["b.jpg"]  # 24 x 32
    data = tf.io.read_file(jpeg)
    half = tf.io.decode_jpeg(data, channels=3, ratio=2).numpy().astype(np.float32)
    # 12 x 16 is exactly half: decoded at 1/2, no resize at all.
    assert np.array_equal(load_arrays([jpeg], (12, 16))[0], half)
    # 13 x 16 does not fit in 1/2 (12 rows): full decode, then the antialiased resize.
    full = tf.io.decode_jpeg(data, channels=3)
    want = np.rint(tf.image.resize(full, (13, 16), antialias=True).numpy())
    assert np.array_equal(load_arrays([jpeg], (13, 16))[0], np.clip(want, 0, 255))
    # 5 x 7: 1/4 gives 6 x 8 >= 5 x 7, 1/8 gives 3 x 4 < 5 x 7, so 1/4 then resize.
    quarter = tf.io.decode_jpeg(data, channels=3, ratio=4)
    want = np.rint(tf.image.resize(quarter, (5, 7), antialias=True).numpy())
    assert np.array_equal(load_arrays([jpeg], (5, 7))[0], np.clip(want, 0, 255))
    # Upsizing never uses a reduced decode.
    want = np.rint(tf.image.resize(full, (30, 40), antialias=True).numpy())
    assert np.array_equal(load_arrays([jpeg], (30, 40))[0], np.clip(want, 0, 255))


def test_tiff_and_rgba_go_through_pillow_with_exact_pixels(files):
    tiff, rgba = files["c.tif"], files["d.png"]
    assert needs_pillow(tiff) and needs_pillow(rgba) and not needs_pillow(files["a.png"])
    # At the native size the resize is the identity, so this compares decoded pixels.
    images = load_arrays([tiff, rgba], (24, 32))
    assert np.array_equal(images[0], load_rgb(tiff).astype(np.float32))
    assert np.array_equal(images[1], load_rgb(rgba).astype(np.float32))
    assert (images[1][:, :8] == 255).all()  # native decoding would have dropped alpha instead


def _epoch_orders(ds, epochs: int = 2) -> list[list[int]]:
    return [np.concatenate([y.numpy() for _, y in ds]).tolist() for _ in range(epochs)]


@pytest.mark.parametrize("cache", [None, "memory"])
def test_shuffle_is_seeded_reshuffles_each_epoch_and_repeats_across_runs(files, cache):
    # One file repeated: the label (= position) identifies each element cheaply.
    paths, labels = [files["a.png"]] * 12, list(range(12))

    def build(seed):
        return make_dataset(paths, labels, (4, 4), batch_size=5, shuffle=True, seed=seed,
                            cache=cache)

    run1, run2, other = _epoch_orders(build(7)), _epoch_orders(build(7)), _epoch_orders(build(8))
    assert all(sorted(order) == labels for order in run1)  # every image once per epoch
    assert run1 == run2  # same seed, fresh dataset: same sequence of epoch orders
    assert run1[0] != run1[1]  # a new order each epoch
    assert run1[0] != other[0]  # another seed, another order
    assert run1[0] != labels


def test_augmentation_only_when_given_and_repeatable(files):
    paths, labels = list(files.values()), [0, 1, 2, 3]
    plain, _ = _collect(make_dataset(paths, labels, SIZE, batch_size=4))

    def augmented():
        ds = make_dataset(paths, labels, SIZE, batch_size=4,
                          augment=online_augmentation(seed=3))
        return _collect(ds)

    first, first_labels = augmented()
    again, _ = augmented()
    assert first_labels.tolist() == labels  # labels are never augmented
    assert first.dtype == np.float32 and first.shape == plain.shape
    assert 0.0 <= first.min() and first.max() <= 255.0
    # Every image changed (a rotation by ±359° and flips leave almost none untouched).
    assert all(np.abs(a - p).mean() > 1.0 for a, p in zip(first, plain, strict=True))
    assert np.array_equal(first, again)  # seeded: a second run sees the same batches
    ds = make_dataset(paths, labels, SIZE, batch_size=4, augment=online_augmentation(seed=3))
    epoch1, epoch2 = _collect(ds)[0], _collect(ds)[0]
    assert np.array_equal(epoch1, first)
    assert not np.array_equal(epoch1, epoch2)  # new draws every epoch


def test_file_cache_repeats_and_is_not_reused_for_other_settings(files, tmp_path):
    paths, labels = list(files.values()), [0, 1, 2, 3]
    prefix = tmp_path / "cache" / "train"
    ds = make_dataset(paths, labels, SIZE, batch_size=2, cache=prefix)
    first, second = _collect(ds), _collect(ds)
    uncached = _collect(make_dataset(paths, labels, SIZE, batch_size=2))
    assert list((tmp_path / "cache").glob("train-*.index"))  # the cache was written
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[0], uncached[0])

    # Same prefix, other size: must decode afresh, not serve the 12×16 images from the cache.
    bigger, _ = _collect(make_dataset(paths, labels, (20, 20), batch_size=2, cache=prefix))
    assert bigger.shape == (4, 20, 20, 3)


def test_label_modes(files):
    paths = [files["a.png"], files["b.jpg"]]
    _, onehot = _collect(make_dataset(paths, [2, 0], SIZE, 2, label_mode="onehot",
                                      num_classes=3))
    assert onehot.tolist() == [[0, 0, 1], [1, 0, 0]]
    _, binary = _collect(make_dataset(paths, [1, 0], SIZE, 2, label_mode="binary"))
    assert binary.shape == (2, 1) and binary.dtype == np.float32 and binary[:, 0].tolist() == [1, 0]
    with pytest.raises(ValueError, match="num_classes"):
        make_dataset(paths, [1, 0], SIZE, 2, label_mode="onehot")
    with pytest.raises(InputError, match="num_classes"):
        make_dataset(paths, [5, 0], SIZE, 2, num_classes=3)


def test_missing_file_is_a_one_line_input_error(files, tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(InputError, match=f"^{missing}: file not found"):
        make_dataset([files["a.png"], missing], [0, 1], SIZE, 2)


def test_keep_aspect_pads_and_masks_blank_the_background(files, tmp_path):
    # 24×32 into 32×32 without distortion: the image unscaled, 4 black rows above and below.
    original = load_rgb(files["a.png"]).astype(np.float32)
    padded = load_arrays([files["a.png"]], (32, 32), keep_aspect=True)[0]
    assert (padded[:4] == 0).all() and (padded[-4:] == 0).all()
    assert np.array_equal(padded[4:-4], original)

    mask = np.zeros((24, 32), np.uint8)
    mask[:, 16:] = 128  # cytoplasm on the right half, background on the left
    Image.fromarray(mask).save(tmp_path / "mask.png")
    masked = load_arrays([files["a.png"]], (24, 32), masks=[tmp_path / "mask.png"])[0]
    assert (masked[:, :16] == 0).all() and np.array_equal(masked[:, 16:], original[:, 16:])


def test_dataset_from_table_follows_the_table(files):
    table = pd.DataFrame({"path": [files["c.tif"], files["a.png"]], "label": [1, 0]})
    images, labels = _collect(dataset_from_table(table, SIZE, batch_size=8))
    assert labels.tolist() == [1, 0]
    assert np.array_equal(images[0], _reference(files["c.tif"]))
    with pytest.raises(InputError, match="missing column"):
        dataset_from_table(table.drop(columns="label"), SIZE, 8)


def test_training_scripts_augment_training_batches_only(monkeypatch, files, tmp_path):
    """cross_validation.train_classifier_fold (every classifier script's fold body) hands the
    augment stack to the training dataset only; validation and test datasets are built
    without."""
    import types

    import keras

    from leukocyte_cnn.inputs import pipeline
    from leukocyte_cnn.runs import cross_validation as training

    calls, fitted = [], []
    monkeypatch.setattr(pipeline, "make_dataset",
                        lambda paths, labels, *a, **kw: calls.append((list(paths), kw)) or None)
    monkeypatch.setattr(training, "fit", lambda model, *a, **kw: fitted.append(model) or
                        pd.DataFrame({"loss": [1.0]}))
    monkeypatch.setattr(training, "predict_table", lambda *a, **kw: None)
    monkeypatch.setattr(training, "finish_fold", lambda *a, **kw: None)
    monkeypatch.setattr(training, "record_fold_inputs", lambda *a, **kw: None)  # no folder
    from leukocyte_cnn.reporting import calibration

    monkeypatch.setattr(calibration, "fit_fold_temperature", lambda *a, **kw: {})
    monkeypatch.setattr(calibration, "write_temperature", lambda *a, **kw: None)
    paths = list(files.values())
    table = pd.DataFrame({"image": [f"im{i}" for i in range(4)], "path": paths,
                          "label": [0, 1, 0, 1]})
    fold = types.SimpleNamespace(train=table.iloc[:2], val=table.iloc[2:3], test=table.iloc[3:],
                                 seed=5, directory=None, fold=0)
    stack = online_augmentation(seed=1)
    model = keras.Sequential([keras.Input(SIZE + (3,)), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    training.train_classifier_fold(
        fold, lambda: model, class_names=["a", "b"], image_size=SIZE, batch_size=2, epochs=1,
        patience=1, optimizer="adam", learning_rate=1e-3, augment=stack, color_mode="rgb",
        cache_mb=512)
    by_paths = {tuple(p): kw for p, kw in calls}
    assert by_paths[tuple(paths[:2])]["augment"] is stack
    assert by_paths[tuple(paths[:2])]["shuffle"] is True
    for rows in (paths[2:3], paths[3:]):
        assert (by_paths[tuple(rows)]["augment"] is None
                and by_paths[tuple(rows)]["shuffle"] is False)
    assert fitted == [model]  # the tf.data path trains the network itself

    # AUGMENT_IN "step": no dataset augments; the training batches come as uint8 and the
    # network trains behind the augmentation layer, which evaluation never passes through.
    from leukocyte_cnn.inputs.step_augment import AugmentedTrainer

    calls.clear()
    layer = online_augmentation(seed=1, where="step")
    monkeypatch.setattr(training, "save_model", lambda *a, **kw: None)
    fold.directory = tmp_path
    training.train_classifier_fold(
        fold, lambda: model, class_names=["a", "b"], image_size=SIZE, batch_size=2, epochs=1,
        patience=1, optimizer="adam", learning_rate=1e-3, augment=layer, color_mode="rgb",
        cache_mb=512)
    by_paths = {tuple(p): kw for p, kw in calls}
    assert all(kw["augment"] is None for kw in by_paths.values())
    assert by_paths[tuple(paths[:2])]["as_uint8"] is True
    assert by_paths[tuple(paths[2:3])]["as_uint8"] is False
    trainer = fitted[-1]
    assert isinstance(trainer, AugmentedTrainer)
    assert trainer.network is model and trainer.augmentation is layer
