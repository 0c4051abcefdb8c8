"""Offline transforms follow their stated conventions; balancing plans are exact and repeatable."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.inputs import augment as A


def _image(height: int = 17, width: int = 17, seed: int = 0, low: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, 256, (height, width, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- offline transforms


@pytest.mark.parametrize("size", [17, 16])  # odd and even: the centre is a pixel or a corner
def test_rotate_90_is_counter_clockwise_like_rot90(size):
    img = _image(size, size)
    assert np.array_equal(A.rotate(img, 90), np.rot90(img))
    assert np.array_equal(A.rotate(img, -90), np.rot90(img, k=-1))
    assert np.array_equal(A.rotate(img, 180), np.rot90(img, k=2))


def test_rotate_keeps_size_and_fills_corners_by_reflection():
    img = _image(20, 30, low=60)  # no dark pixel anywhere
    assert np.array_equal(A.rotate(img, 0), img) and np.array_equal(A.rotate(img, 360), img)
    turned = A.rotate(img, 45)
    assert turned.shape == img.shape and turned.dtype == np.uint8
    assert turned.min() >= 60  # reflect fill: no black corners
    assert (A.rotate(img, 45, fill="constant")[0, 0] == 0).all()  # constant fill: black
    with pytest.raises(ValueError, match="fill"):
        A.rotate(img, 45, fill="mirror")


def test_flips_equal_numpy_flips():
    img = _image(5, 7)
    assert np.array_equal(A.flip(img, horizontal=True), np.flip(img, axis=1))
    assert np.array_equal(A.flip(img, vertical=True), np.flip(img, axis=0))
    assert np.array_equal(A.flip(img, True, True), np.flip(img, axis=(0, 1)))
    assert np.array_equal(A.flip(img), img)


def test_shift_moves_content_right_and_down():
    img = _image(10, 12)
    moved = A.shift(img, dx=3, dy=2)
    assert np.array_equal(moved[2:, 3:], img[:-2, :-3])


def test_zoom_shear_keep_the_centre_and_identities_are_exact():
    img = _image(15, 15)
    assert np.array_equal(A.zoom(img, 2.0)[7, 7], img[7, 7])  # centre pixel stays put
    assert np.array_equal(A.zoom(img, 1.0), img)
    sheared = A.shear(img, 20)
    assert np.array_equal(sheared[7], img[7]) and not np.array_equal(sheared, img)
    assert np.array_equal(A.shear(img, 0), img)


def test_stain_jitter_shifts_hue_and_scales_brightness():
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    green = A.stain_jitter(red, hue_shift=1 / 3)
    assert np.array_equal(green[0, 0], [0, 200, 0])
    assert np.array_equal(A.stain_jitter(red, brightness_scale=0.5)[0, 0], [100, 0, 0])
    assert np.array_equal(A.stain_jitter(red), red)


def test_blur_grayscale_equalize():
    img = _image(20, 20)
    assert np.array_equal(A.gaussian_blur(img, 0), img)
    assert A.gaussian_blur(img, 2.0).astype(float).std() < img.astype(float).std() / 2
    gray = A.grayscale(img)
    assert gray.shape == img.shape and (gray[..., 0] == gray[..., 1]).all()
    assert (gray[..., 1] == gray[..., 2]).all()
    dull = (100 + _image(20, 20) // 16).astype(np.uint8)  # values 100..115
    spread = A.equalize_histogram(dull)
    assert spread.shape == dull.shape and np.ptp(spread) > 3 * np.ptp(dull)


def test_apply_transform_identity_order_and_bad_keys():
    img = _image(9, 9)
    assert np.array_equal(A.apply_transform(img, A.IDENTITY_PARAMS), img)
    assert np.array_equal(A.apply_transform(img, {}), img)
    assert np.array_equal(A.apply_transform(img, json.dumps(A.IDENTITY_PARAMS)), img)
    # flips first, then the rotation
    expected = np.rot90(np.flip(img, axis=1))
    assert np.array_equal(A.apply_transform(img, {"flip_h": True, "angle": 90}), expected)
    with pytest.raises(InputError, match="unknown key"):
        A.apply_transform(img, {"angel": 90})


# --------------------------------------------------------------------------- angles and plans


def test_sample_distinct_angles():
    angles = A.sample_distinct_angles(359, np.random.default_rng(1))
    assert len(set(angles)) == 359 and all(a == int(a) and 0 <= a < 360 for a in angles)
    assert angles == A.sample_distinct_angles(359, np.random.default_rng(1))
    assert angles != A.sample_distinct_angles(359, np.random.default_rng(2))
    assert 0.0 not in A.sample_distinct_angles(359, np.random.default_rng(1), include_zero=False)
    many = A.sample_distinct_angles(500, np.random.default_rng(1))
    assert len(set(many)) == 500 and all(0 <= a < 360 for a in many)


def _table(counts: dict[str, int]) -> pd.DataFrame:
    rows = []
    for label, (name, n) in enumerate(counts.items()):
        rows += [{"image": f"{name}/{name}_{i:03d}.tif", "path": f"/data/{name}/{name}_{i:03d}.tif",
                  "label": label, "class_name": name} for i in range(n)]
    return pd.DataFrame(rows)


def test_plan_balancing_reaches_target_from_own_class_without_duplicates():
    table = _table({"blast": 5, "lymphocyte": 2, "neutrophil": 12})
    plan = A.plan_balancing(table, 10, np.random.default_rng(0))

    counts = plan.groupby("class_name").size().to_dict()
    assert counts == {"blast": 10, "lymphocyte": 10, "neutrophil": 12}  # real images kept
    sources = table.set_index("image")
    assert plan["source_image"].isin(sources.index).all()
    assert (sources.loc[plan["source_image"], "class_name"].to_numpy()
            == plan["class_name"].to_numpy()).all()
    assert (sources.loc[plan["source_image"], "label"].to_numpy() == plan["label"]).all()
    assert not plan.duplicated(["source_image", "params"]).any()
    assert not plan.duplicated(["class_name", "out_name"]).any()
    params = plan["params"].map(json.loads)
    is_original = params.map(lambda p: p == A.IDENTITY_PARAMS)
    assert set(plan.loc[is_original, "source_image"]) == set(table["image"])
    assert is_original.sum() == len(table)


def test_plan_balancing_is_seeded():
    table = _table({"a": 3, "b": 7})
    first = A.plan_balancing(table, 20, np.random.default_rng(5), zoom=0.1, stain=0.05)
    again = A.plan_balancing(table, 20, np.random.default_rng(5), zoom=0.1, stain=0.05)
    other = A.plan_balancing(table, 20, np.random.default_rng(6), zoom=0.1, stain=0.05)
    pd.testing.assert_frame_equal(first, again)
    assert not first["params"].equals(other["params"])
    extra = first["params"].map(json.loads)[first["out_name"].str.contains("__aug")]
    assert all(0.9 <= p["zoom"] <= 1.1 and abs(p["hue"]) <= 0.05 for p in extra)


def test_plan_balancing_without_flips_and_beyond_whole_degrees():
    table = _table({"rare": 1, "common": 2})
    plan = A.plan_balancing(table, 800, np.random.default_rng(0), flips=False)
    params = plan["params"].map(json.loads)
    assert plan.groupby("class_name").size().to_dict() == {"rare": 800, "common": 800}
    assert not any(p["flip_h"] or p["flip_v"] for p in params)
    extras = plan[plan["out_name"].str.contains("__aug")]
    angles = extras["params"].map(lambda s: (json.loads(s)["angle"]))
    assert (angles != 0).all()
    assert not plan.duplicated(["source_image", "params"]).any()


def test_plan_shifts_use_each_source_size(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(_image(10, 40)).save(path)
    table = pd.DataFrame({"image": ["x.png"], "path": [str(path)], "label": [0],
                          "class_name": ["c"]})
    plan = A.plan_balancing(table, 30, np.random.default_rng(0), shifts=0.1)
    params = plan["params"].map(json.loads).tolist()[1:]
    assert all(abs(p["dx"]) <= 4 and abs(p["dy"]) <= 1 for p in params)
    assert any(p["dx"] != 0 for p in params)


# --------------------------------------------------------------------------- online (Keras)


def test_online_augmentation_is_one_seeded_affine_layer():
    keras = pytest.importorskip("keras")
    from leukocyte_cnn.inputs.keras_augment import RandomAffine

    stack = A.online_augmentation(rotation_degrees=90, shift=0.1, zoom=0.1, shear=10, seed=4)
    assert [type(layer) for layer in stack.layers] == [RandomAffine]
    batch = _image(16, 16)[None].astype(np.float32).repeat(4, axis=0)
    out1 = keras.ops.convert_to_numpy(stack(batch, training=True))
    out2 = keras.ops.convert_to_numpy(
        A.online_augmentation(rotation_degrees=90, shift=0.1, zoom=0.1, shear=10, seed=4)(
            batch, training=True))
    assert np.array_equal(out1, out2) and not np.array_equal(out1, batch)
    assert out1.dtype == np.float32
    # Four copies of one image get four different draws, and a second call draws anew.
    assert len({out.tobytes() for out in out1}) == 4
    assert not np.array_equal(keras.ops.convert_to_numpy(stack(batch, training=True)), out1)
    assert np.array_equal(keras.ops.convert_to_numpy(stack(batch, training=False)), batch)
    off = A.online_augmentation(rotation_degrees=0, horizontal_flip=False, vertical_flip=False)
    assert np.array_equal(keras.ops.convert_to_numpy(off(batch, training=True)), batch)


def _affine(img, angle=0.0, hflip=False, vflip=False, zoom=1.0, shear=0.0, dx=0.0, dy=0.0):
    tf = pytest.importorskip("tensorflow")
    from leukocyte_cnn.inputs.keras_augment import affine_matrices, apply_affine

    h, w = img.shape[:2]
    m = affine_matrices([angle], [hflip], [vflip], [zoom], [shear], [dx], [dy], h, w)
    return apply_affine(tf.constant(img[None].astype(np.float32)), m).numpy()[0]


def test_random_affine_flips_are_exact_and_rotation_90_is_rot90():
    img = _image(17, 23)
    assert np.array_equal(_affine(img, hflip=True), img[:, ::-1].astype(np.float32))
    assert np.array_equal(_affine(img, vflip=True), img[::-1].astype(np.float32))
    square = _image(16, 16)
    np.testing.assert_allclose(_affine(square, angle=90), np.rot90(square), atol=1e-3)
    # A shift by whole pixels moves the content exactly (the uncovered band is reflected).
    assert np.array_equal(_affine(img, dx=3, dy=2)[2:, 3:], img[:-2, :-3].astype(np.float32))


@pytest.mark.parametrize("kwargs, offline", [
    (dict(angle=30.0), lambda im: A.rotate(im, 30.0, fill="symmetric")),
    (dict(angle=-47.0), lambda im: A.rotate(im, -47.0, fill="symmetric")),
    (dict(shear=10.0), lambda im: A.shear(im, 10.0, fill="symmetric")),
    (dict(zoom=1.3), lambda im: A.zoom(im, 1.3, fill="symmetric")),
    (dict(dx=2.5, dy=-1.5), lambda im: A.shift(im, 2.5, -1.5, fill="symmetric")),
])
def test_random_affine_matches_the_offline_scikit_image_transforms(kwargs, offline):
    # Same conventions (direction, centre, fill) as the offline transforms; Keras "reflect"
    # is scikit-image "symmetric". The offline ones round to uint8, hence 0.5.
    img = _image(17, 23)
    np.testing.assert_allclose(_affine(img, **kwargs), offline(img).astype(np.float32),
                               atol=0.51)
