"""What a researcher edits is what runs, and what is recorded (issue 22).

Every script's UPPER_CASE block holds its knobs; ``--quick``, ``$LEUKOCYTE_KNOBS`` and
command-line options resolve into one ``knobs.Settings`` object, the only place code reads a
knob from and exactly what ``settings.json`` records. These tests enumerate every script's
knobs and check, on the source, that each one reaches the code through the settings (no
function reads the module constant behind the settings' back, every knob is read by name);
and, on a run, that the recorded values are those that ran and a knob set from outside
changes what the run builds.
"""
from __future__ import annotations

import ast
import importlib
import json
import os
from pathlib import Path

import pytest

from leukocyte_cnn.base import knobs
from leukocyte_cnn.base.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in REPO.glob("*.py"))
PACKAGE_SOURCES = sorted((REPO / "leukocyte_cnn").rglob("*.py"))
# Functions that may name a knob's module constant: the command line shows defaults in help.
READS_DEFAULTS = {"parse_args"}


def script_module(name: str):
    return importlib.import_module(name)


def knob_reads(tree: ast.AST) -> set[str]:
    """String keys of subscripts (``settings["EPOCHS"]``, ``s["K"]``) anywhere in ``tree``."""
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, str):
            keys.add(node.slice.value)
    return keys


PACKAGE_READS = set().union(*(knob_reads(ast.parse(p.read_text(encoding="utf-8")))
                              for p in PACKAGE_SOURCES))


def scripts_with_knobs() -> list[str]:
    return [name for name in SCRIPTS if knobs.script_knobs(script_module(name))]


@pytest.mark.parametrize("name", scripts_with_knobs())
def test_every_knob_reaches_the_code_through_the_settings(name):
    """No function reads a knob's module constant (that would ignore --quick, the environment
    and options), and every knob is read from the settings by name, in the script or in the
    package helper it hands its settings to; QUICK sets only knobs."""
    module = script_module(name)
    names = set(knobs.script_knobs(module))
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    behind_the_back = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                or function.name in READS_DEFAULTS:
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names:
                behind_the_back.append(f"{function.name}() reads {node.id} at line {node.lineno}")
    assert not behind_the_back, f"{name}.py: " + "; ".join(behind_the_back)
    unread = sorted(names - knob_reads(tree) - PACKAGE_READS)
    assert not unread, f"{name}.py: knobs that no code reads from the settings: {unread}"
    knobs.quick_profile(module)  # raises on a QUICK entry that is not a knob


def test_the_reach_check_can_fail(tmp_path):
    """A knob read as a module global in main, and one read by nobody, are both found."""
    tree = ast.parse("EPOCHS = 3\nLOST = 1\ndef main(s):\n    return EPOCHS\n")
    loads = [n.id for n in ast.walk(tree.body[2]) if isinstance(n, ast.Name)
             and isinstance(n.ctx, ast.Load)]
    assert "EPOCHS" in loads
    assert "LOST" not in knob_reads(tree) and "LOST" not in PACKAGE_READS


# ----------------------------------------------------------------------------- resolution


def _demo(**extra):
    import types

    module = types.ModuleType("demo_script")
    module.__file__ = "demo_script.py"
    module.EPOCHS, module.BATCH_SIZE, module.IMAGE_SIZE = 500, 5, (120, 160)
    module.OPTIMIZER, module._PRIVATE, module.QUICK = "adam", 1, dict(EPOCHS=3, BATCH_SIZE=16)
    for key, value in extra.items():
        setattr(module, key, value)
    return module


def _args(**values):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    knobs.knob_argument(parser, "--epochs", knob="EPOCHS", type=int)
    knobs.knob_argument(parser, "--image-size", knob="IMAGE_SIZE", type=int, nargs=2)
    argv = []
    for flag, value in values.items():
        argv += [f"--{flag.replace('_', '-')}"] + ([] if value is True else
                                                   [str(v) for v in (value if isinstance(
                                                       value, (list, tuple)) else [value])])
    return parser.parse_args(argv)


def test_quick_then_environment_then_options_each_recorded_with_what_set_it(monkeypatch):
    module = _demo()
    monkeypatch.setitem(knobs._pending, module.__name__, {})
    settings = knobs.resolve_settings(module, _args())
    assert dict(settings) == {"BATCH_SIZE": 5, "EPOCHS": 500, "IMAGE_SIZE": (120, 160),
                              "OPTIMIZER": "adam"}  # QUICK and _PRIVATE are not knobs
    assert settings.overrides() == {}

    monkeypatch.setenv(knobs.ENV_VAR, json.dumps({"BATCH_SIZE": 8, "OPTIMIZER": "sgd"}))
    knobs.take_environment_overrides(module)
    assert knobs.ENV_VAR not in os.environ  # a child process does not apply it again
    settings = knobs.resolve_settings(module, _args(quick=True, epochs=7, image_size=[48, 64]))
    assert (settings["EPOCHS"], settings["BATCH_SIZE"], settings["OPTIMIZER"]) == (7, 8, "sgd")
    assert settings["IMAGE_SIZE"] == (48, 64)  # the knob's type (a tuple), not argparse's list
    assert settings.overrides() == {
        "BATCH_SIZE": {"value": 8, "default": 5, "by": "$LEUKOCYTE_KNOBS"},
        "EPOCHS": {"value": 7, "default": 500, "by": "--epochs"},
        "IMAGE_SIZE": {"value": (48, 64), "default": (120, 160), "by": "--image-size"},
        "OPTIMIZER": {"value": "sgd", "default": "adam", "by": "$LEUKOCYTE_KNOBS"}}
    # QUICK's BATCH_SIZE (16) lost to the environment (8): a sweep over it under --quick works
    assert settings.recorded()["BATCH_SIZE"] == 8


def test_a_knob_set_twice_to_different_values_is_refused(monkeypatch):
    module = _demo()
    monkeypatch.setitem(knobs._pending, module.__name__, {"EPOCHS": 9})
    with pytest.raises(InputError, match=r"EPOCHS is set twice, to 9 by \$LEUKOCYTE_KNOBS and to "
                                         r"7 by --epochs"):
        knobs.resolve_settings(module, _args(epochs=7))
    assert knobs.resolve_settings(module, _args(epochs=9))["EPOCHS"] == 9  # the same: fine


def test_quick_may_set_only_knobs_and_unknown_or_mistyped_knobs_are_one_line(monkeypatch):
    with pytest.raises(InputError, match="demo_script.py: QUICK sets K, which is not a knob"):
        knobs.resolve_settings(_demo(QUICK=dict(K=3)), _args(quick=True))
    monkeypatch.setenv(knobs.ENV_VAR, json.dumps({"EPOCH": 3}))
    with pytest.raises(InputError, match="unknown knob EPOCH; its knobs: BATCH_SIZE, EPOCHS, "
                                         "IMAGE_SIZE, OPTIMIZER"):
        knobs.take_environment_overrides(_demo())
    monkeypatch.setenv(knobs.ENV_VAR, json.dumps({"BATCH_SIZE": "big"}))
    with pytest.raises(InputError, match="BATCH_SIZE"):
        knobs.take_environment_overrides(_demo())


def test_settings_remember_what_was_read_and_name_unused_overrides(monkeypatch):
    module = _demo()
    monkeypatch.setitem(knobs._pending, module.__name__, {"OPTIMIZER": "sgd"})
    settings = knobs.resolve_settings(module, _args(quick=True))
    assert settings["EPOCHS"] == 3 and "BATCH_SIZE" in settings  # asking is not reading
    assert settings.unread() == ["BATCH_SIZE", "IMAGE_SIZE", "OPTIMIZER"]
    assert knobs.unused_lines(settings) == [
        'note: OPTIMIZER = "sgd" (set by $LEUKOCYTE_KNOBS) was not used by this run']
    with pytest.raises(KeyError, match="no knob LEARNING_RATE"):
        settings["LEARNING_RATE"]


# ----------------------------------------------------------------------------- on a run


def test_settings_json_records_the_knobs_that_ran_and_an_override_changes_the_model(
        tmp_path, monkeypatch, tmp_path_factory):
    """The binary linear CNN, --quick with --epochs 1 and $LEUKOCYTE_KNOBS setting the kernel
    size and the batch: settings.json's knobs are those values, overrides say what set them,
    the checkpoint has 5x5 kernels at 64 px and one epoch ran. With a --split file, the split
    protocol's knobs are exactly the ones left unread (the file brings its own)."""
    import keras
    from test_helmholtz import make_split

    import linear_cnn_binary_lpocv as script

    data_root = tmp_path_factory.mktemp("knob_data")
    split = make_split(data_root, tmp_path / "splits", "synthetic_all_idb2")
    monkeypatch.setenv(knobs.ENV_VAR, json.dumps({"KERNEL_SIZE": 5, "BATCH_SIZE": 8}))
    knobs.take_environment_overrides(script)
    resolved = []
    real_resolve = knobs.resolve_settings
    monkeypatch.setattr(knobs, "resolve_settings",
                        lambda *a, **kw: resolved.append(real_resolve(*a, **kw)) or resolved[-1])
    script.main(script.parse_args([
        "--dataset", "synthetic_all_idb2", "--data-root", str(data_root), "--split", str(split),
        "--quick", "--epochs", "1", "--folds", "0", "--run-name", "knobs", "--quiet",
        "--results-dir", str(tmp_path / "results")]))
    run_dir = tmp_path / "results" / "knobs"
    record = json.loads((run_dir / "settings.json").read_text())
    ran = record["config"]["knobs"]
    assert (ran["EPOCHS"], ran["IMAGE_SIZE"], ran["KERNEL_SIZE"], ran["BATCH_SIZE"]) == (
        1, 64, 5, 8)
    assert record["overrides"]["EPOCHS"] == {"value": 1, "default": 500, "by": "--epochs"}
    assert record["overrides"]["KERNEL_SIZE"] == {"value": 5, "default": 3,
                                                  "by": "$LEUKOCYTE_KNOBS"}
    assert record["overrides"]["IMAGE_SIZE"] == {"value": 64, "default": 257, "by": "--quick"}
    model = keras.models.load_model(run_dir / "fold_00" / "model.keras", safe_mode=True)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.kernel_size == (5, 5) for layer in convs)
    assert model.input_shape[1:3] == (64, 64)
    assert len((run_dir / "fold_00" / "epochs.csv").read_text().strip().splitlines()) == 2
    (settings,) = resolved
    assert settings.script == "linear_cnn_binary_lpocv.py"
    assert settings.unread() == ["K", "LEAVE_OUT", "MIN_IMAGES", "SPLIT_METHOD", "VAL_FRACTION"]
    assert script.KERNEL_SIZE == 3  # the file's block is untouched


def test_architecture_numbers_are_one_line_in_one_script(monkeypatch):
    """The Copenhagen networks' filters are the scaling study's FILTERS line: setting it changes
    the network its script builds (CNN and FCN), and no library constant holds them."""
    import keras

    import scaling_masks_cnn_fcn as script
    from leukocyte_cnn.models import networks

    assert not hasattr(networks, "COPENHAGEN_FILTERS")
    lines = [line for line in Path(script.__file__).read_text().splitlines()
             if line.startswith("FILTERS = ")]
    assert lines == ["FILTERS = (64, 128, 256, 512, 1024)  # conv widths of the five sections "
                     "(deck)"]

    class Identity:  # a stand-in for the fitted scaler: the network is what is checked
        method = "none"

        @staticmethod
        def layer(name):
            return keras.layers.Identity(name=name)

    monkeypatch.setitem(knobs._pending, script.__name__, {"FILTERS": [8, 16, 24, 32, 40]})
    settings = knobs.resolve_settings(script, script.parse_args(["--quick"]))
    for network in ("cnn", "fcn"):
        model = script.build_classifier(network, Identity, settings, 4)
        inner = model.get_layer(f"copenhagen_{network}")
        widths = [layer.filters for layer in inner.layers
                  if isinstance(layer, keras.layers.Conv2D) and layer.name.startswith("block")]
        assert widths == [8, 16, 24, 32, 40], network


POSITIONAL = {"compare_runs": ["run"], "check_leakage": ["split.csv"], "evaluate_tta": ["run"],
              "explain": ["run"],
              "sweep": ["script.py"]}  # what these tools require before any option


def _parse(script, argv):
    parsed = script.parse_args(POSITIONAL.get(script.__name__, []) + argv)
    return parsed[0] if isinstance(parsed, tuple) else parsed  # sweep: (its args, the script's)


def _parser_of(script):
    """The script's argparse parser (captured while its parse_args runs)."""
    import argparse

    captured = []
    original = argparse.ArgumentParser.parse_known_args  # parse_args calls it too

    def capture(self, *args, **kwargs):
        captured.append(self)
        return original(self, *args, **kwargs)

    argparse.ArgumentParser.parse_known_args = capture
    try:
        _parse(script, [])
    finally:
        argparse.ArgumentParser.parse_known_args = original
    return captured[-1]


def _another_value(action, default):
    if action.choices:
        return next(str(c) for c in action.choices if c != default)
    if isinstance(default, bool):
        return None
    if isinstance(default, dict):  # an option setting every entry to one number
        return "0.05"
    if isinstance(default, tuple) and len(default) > 1 and all(isinstance(x, str)
                                                               for x in default):
        return ",".join(default[:-1])  # a comma-separated subset
    if isinstance(default, int) or action.type is int:
        return str((default or 0) + 3)
    if isinstance(default, float) or action.type is float:
        return str(round((default or 0.1) * 1.5, 6))
    return "x"


@pytest.mark.parametrize("name", scripts_with_knobs())
def test_every_option_that_sets_a_knob_is_what_the_settings_record(name, monkeypatch):
    """Each knob option of each script, given on the command line, is the knob's value in the
    resolved settings (what settings.json records), with the option as what set it."""
    from leukocyte_cnn.base.knobs import _FLAGS

    script = script_module(name)
    monkeypatch.setitem(knobs._pending, script.__name__, {})
    parser = _parser_of(script)
    flags = parser.get_default(_FLAGS) or {}
    defaults = knobs.script_knobs(script)
    assert set(flags) <= set(defaults)
    for knob, flag in flags.items():
        action = parser._option_string_actions[flag]
        value = _another_value(action, defaults[knob])
        if value is None:
            continue
        settings = knobs.resolve_settings(script, _parse(script, [flag, value]))
        assert settings.source(knob) == flag, (knob, flag)
        assert settings.recorded()[knob] == json.loads(json.dumps(
            knobs.coerce(knob, action.type(value) if action.type else value, defaults[knob]))), knob
