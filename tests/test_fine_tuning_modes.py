"""Fine-tuning modes: which weights a fold's training changes, and at which rate."""
from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukocyte_cnn.models.fine_tuning import describe_layers, rate_factors, summary_line

RATE = 1e-2


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small 3-stage ResNeXt 'pretrained' on 3 classes, saved as a source checkpoint."""
    from leukocyte_cnn.models.resnext import build_resnext
    from leukocyte_cnn.models.source_checkpoints import SourceCheckpoint

    root = tmp_path_factory.mktemp("source")
    model = build_resnext(input_shape=(16, 16, 3), num_classes=3, stage_depths=(1, 1, 1),
                          cardinality=2, bottleneck_width=2, first_stage_channels=8,
                          stem_filters=4, small_input_stem=True, bn_momentum=0.5)
    path = root / "source.keras"
    model.save(path)
    return SourceCheckpoint(path=path, metadata={}, sha256="", input_shape=(16, 16, 3))


@pytest.fixture(scope="module")
def fold(tmp_path_factory):
    root = tmp_path_factory.mktemp("cells")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        path = root / f"c{i}.png"
        Image.fromarray(pixels).save(path)
        rows.append({"image": path.name, "path": str(path), "label": i % 2,
                     "class_name": "ab"[i % 2], "group": path.name})
    table = pd.DataFrame(rows)
    return table


def _part(name):
    from leukocyte_cnn.models.resnext import stage_of_layer

    if name.startswith("head_"):
        return "head"
    stage = stage_of_layer(name)
    return "stem" if stage is None else f"stage{stage}"


def _fine_tune(source, table, directory, mode, factor, optimizer="sgd"):
    """One epoch of the fold body on 8 images; the weights per part before and after."""
    from leukocyte_cnn.base.seeding import set_seed
    from leukocyte_cnn.runs.cross_validation import train_classifier_fold

    set_seed(0, deterministic_ops=True)
    start = source.load_for(2, mode)
    before = {layer.name: [w.numpy().copy() for w in layer.weights] for layer in start.layers}
    directory.mkdir(parents=True, exist_ok=True)
    fold = types.SimpleNamespace(train=table.iloc[:8], val=table.iloc[8:10],
                                 test=table.iloc[10:], seed=0, directory=directory, fold=0,
                                 started=None, artifacts={}, split_sha256="x")
    train_classifier_fold(
        fold, lambda: start, class_names=["a", "b"], image_size=(16, 16), batch_size=4,
        epochs=1, patience=1, optimizer=optimizer, learning_rate=RATE, color_mode="rgb",
        cache_mb=16, rate_factors=None if factor == 1.0 else
        (lambda model: rate_factors(model, factor)))
    changed: dict[str, list[bool]] = {}
    deltas: dict[str, float] = {}
    for layer in start.layers:
        for old, new in zip(before[layer.name], layer.weights, strict=True):
            moved = not np.array_equal(old, new.numpy())
            changed.setdefault(_part(layer.name), []).append(moved)
            if new.trainable:
                deltas[new.path] = float(np.abs(new.numpy() - old).sum())
    return changed, deltas


@pytest.mark.parametrize("mode, trained", [
    ("head", {"head"}),
    ("last_stage", {"stage3", "head"}),
    ("all", {"stem", "stage1", "stage2", "stage3", "head"}),
])
def test_frozen_parts_keep_every_weight_and_trained_parts_move(source, fold, tmp_path, mode,
                                                               trained):
    changed, _ = _fine_tune(source, fold, tmp_path, mode, 0.1)
    for part, moved in changed.items():
        if part in trained:  # every weight of a trained part moves (BN statistics included)
            assert all(moved), f"{mode}: {part} has weights that did not train"
        else:  # frozen: kernels, BN scales and moving statistics alike
            assert not any(moved), f"{mode}: frozen {part} changed"


def test_pretrained_layers_learn_at_their_fraction_of_the_rate(source, fold, tmp_path):
    """Plain SGD, one epoch from the same weights and batches: the pretrained layers' first
    updates are 0.1 of those at the full rate, the new head's the same."""
    import keras

    full = _fine_tune(source, fold, tmp_path / "full", "all", 1.0)[1]
    slow = _fine_tune(source, fold, tmp_path / "slow", "all", 0.1)[1]
    probe = source.load_for(2, "all")
    kernel = next(v.path for layer in probe.layers if layer.name.startswith("stage1")
                  for v in layer.trainable_weights)
    head = next(v.path for v in probe.get_layer("head_dense").trainable_weights)
    assert slow[kernel] < 0.5 * full[kernel] and slow[kernel] > 0.0
    assert slow[head] > 0.5 * full[head]
    keras.backend.clear_session()


def test_settings_record_each_part_trained_or_frozen_with_its_rate(source):
    for mode, factor in (("head", 1.0), ("last_stage", 1.0), ("all", 0.1)):
        model = source.load_for(2, mode)
        parts = describe_layers(model, 1e-3, factor)
        assert list(parts) == ["stem", "stage1", "stage2", "stage3", "head"]
        assert parts["head"] == {"trained": True, "learning_rate": 1e-3,
                                 "parameters": parts["head"]["parameters"]}
        if mode == "head":
            assert not any(parts[p]["trained"] for p in ("stem", "stage1", "stage2", "stage3"))
            assert summary_line(parts) == "stem, stage1, stage2, stage3 frozen; head at 0.001"
        if mode == "last_stage":
            assert parts["stage3"]["learning_rate"] == pytest.approx(1e-3)
            assert parts["stage2"] == {**parts["stage2"], "trained": False, "learning_rate": None}
        if mode == "all":
            assert all(parts[p]["learning_rate"] == pytest.approx(1e-4)
                       for p in ("stem", "stage1", "stage2", "stage3"))
        assert sum(p["parameters"] for p in parts.values()) == model.count_params()
