"""Setting a script's UPPER_CASE knobs from outside, as an inline edit would.

Researchers tune a script by editing its UPPER_CASE constants. ``sweep.py`` (and anyone at a
shell) sets the same constants without editing the file, through one environment variable
holding a JSON object::

    LEUKOCYTE_KNOBS='{"LEARNING_RATE": 0.01, "BATCH_SIZE": 8}' python linear_cnn_binary_lpocv.py

``errors.run_main``, which every script's ``__main__`` calls, applies the object to the
script module's globals before ``main()`` runs, so the script does exactly what it would do
with those lines edited, and ``experiment.script_settings`` (the knobs a run records in
``settings.json``) shows the new values. An override beats the script's ``QUICK`` value of the
same knob (a sweep over ``BATCH_SIZE --quick`` must change the batch size). Which knobs were
set this way is recorded in the run's provenance (``knob_overrides``).

An unknown name, or a value that is not of the type of the knob's default (int, float, bool,
str, tuple/list, dict), is refused with one line naming the script's knobs.
"""
from __future__ import annotations

import json
import os
from types import ModuleType
from typing import Any, Mapping

from leukocyte_cnn.base.errors import InputError

ENV_VAR = "LEUKOCYTE_KNOBS"
_OVERRIDES_ATTRIBUTE = "_KNOB_OVERRIDES"
_applied: dict[str, Any] = {}  # overrides applied in this process (for the provenance)


def script_knobs(module: ModuleType) -> dict:
    """The knobs a script has: its UPPER_CASE, JSON-ready module constants."""
    from leukocyte_cnn.base.knobs import knobs

    return knobs(module)


def _type_name(default: Any) -> str:
    return "a list" if isinstance(default, (list, tuple)) else type(default).__name__


def coerce(name: str, value: Any, default: Any) -> Any:
    """``value`` (a JSON value) as the type of the knob's ``default``; ValueError otherwise."""
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            kinds = {type(x) for x in default}
            if len(kinds) == 1 and default:  # a homogeneous default: elements of that type
                value = [coerce(name, x, default[0]) for x in value]
            return type(default)(value)
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    else:
        return value
    raise ValueError(f"{name}={json.dumps(value)}: expected {_type_name(default)} "
                     f"like its default {json.dumps(default)}")


def parse_text(name: str, text: str, default: Any) -> Any:
    """A command-line value (``0.01``, ``true``, ``adam``, ``[4,8,16]``) as the knob's type."""
    text = text.strip()
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
    elif isinstance(default, str):
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            return text[1:-1]
        return text
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text if default is None else None
        if value is not None or default is None:
            return coerce(name, value, default)
    raise ValueError(f"{name}={text}: expected {_type_name(default)} like its default "
                     f"{json.dumps(default)}")


def check_overrides(script: str, available: Mapping[str, Any], overrides: Mapping[str, Any]
                    ) -> dict:
    """``overrides`` checked against a script's knobs and coerced to their types.

    Raises :class:`InputError` (one line naming the script's knobs) for an unknown name or a
    value of the wrong type.
    """
    unknown = sorted(set(overrides) - set(available))
    if unknown:
        raise InputError(f"{script}: unknown knob {', '.join(unknown)}; its knobs: "
                         f"{', '.join(sorted(available))}")
    out = {}
    for name, value in overrides.items():
        try:
            out[name] = coerce(name, value, available[name])
        except ValueError as exc:
            raise InputError(f"{script}: {exc}") from None
    return out


def apply_environment_overrides(module: ModuleType) -> dict:
    """Apply ``$LEUKOCYTE_KNOBS`` to ``module``'s globals; returns the applied overrides.

    The variable is removed from the environment once read, so that a process the script
    starts (a data generator, another script) does not apply it to its own knobs.
    """
    text = os.environ.pop(ENV_VAR, "").strip()
    if not text:
        return {}
    script = os.path.basename(getattr(module, "__file__", None) or module.__name__)
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"${ENV_VAR}: not a JSON object ({exc})") from None
    if not isinstance(overrides, dict):
        raise InputError(f"${ENV_VAR}: not a JSON object of knob names and values")
    return apply_overrides(module, check_overrides(script, script_knobs(module), overrides))


def apply_overrides(module: ModuleType, overrides: Mapping[str, Any]) -> dict:
    """Set checked ``overrides`` as ``module``'s globals and remember them for the run."""
    overrides = dict(overrides)
    for name, value in overrides.items():
        setattr(module, name, value)
    setattr(module, _OVERRIDES_ATTRIBUTE, {**overrides_of(module), **overrides})
    _applied.update(overrides)
    return overrides


def overrides_of(module: ModuleType) -> dict:
    """The knobs of ``module`` set from outside (empty when none were)."""
    return dict(getattr(module, _OVERRIDES_ATTRIBUTE, {}))


def applied_overrides() -> dict:
    """Every knob set from outside in this process (recorded in a run's provenance)."""
    return dict(sorted(_applied.items()))


def knobs(namespace: Mapping[str, Any] | ModuleType) -> dict:
    """The UPPER_CASE hyperparameters of a script (its module globals), JSON-ready."""
    items = vars(namespace).items() if isinstance(namespace, ModuleType) else namespace.items()
    out = {}
    for name, value in items:
        if name.isupper() and not name.startswith("_") and _jsonable(value):
            out[name] = value
    return dict(sorted(out.items()))


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False
