"""A script's knobs, resolved once into the settings a run reads and records.

Researchers tune an experiment by editing the UPPER_CASE block at the top of its script: every
knob of the experiment lives there, architecture numbers included, with a comment each. Three
things may change a knob for one run without editing the file, always in this order:

1. ``--quick``: the script's ``QUICK`` profile (a dict of knob values for a smoke run);
2. ``$LEUKOCYTE_KNOBS``: a JSON object of knob values (what ``sweep.py`` sets per point)::

       LEUKOCYTE_KNOBS='{"LEARNING_RATE": 0.01, "BATCH_SIZE": 8}' python linear_cnn_binary_lpocv.py

3. a command-line option declared with :func:`knob_argument` (``--epochs 5`` sets ``EPOCHS``).

:func:`resolve_settings` applies them to the block's values and returns one
:class:`Settings` object: the only place code reads a knob from, and exactly what the run
records (``settings.json``: every knob's value as it ran under ``config.knobs``, and under
``overrides`` which ones were changed and by what). The same knob set by ``$LEUKOCYTE_KNOBS``
and by an option to different values is refused in one line, as are an unknown name and a
value that is not of the type of the knob's default (int, float, bool, str, list, dict).

A :class:`Settings` object remembers which knobs were read: a knob that a run never reads
reached nothing. :meth:`Settings.unread` names them (tests check that every knob of every
script is read; a run says so in one line when a knob set for it went unused).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

from leukocyte_cnn.base.errors import InputError

ENV_VAR = "LEUKOCYTE_KNOBS"
QUICK = "QUICK"  # the name of a script's quick profile (not a knob itself)
DEFAULT, BY_QUICK, BY_ENVIRONMENT = "default", "--quick", f"${ENV_VAR}"
_FLAGS = "_knob_flags"  # parser default naming the option of each knob argument

_pending: dict[str, dict] = {}  # $LEUKOCYTE_KNOBS taken by cli.run_main, per script module


def script_knobs(module: ModuleType | Mapping[str, Any]) -> dict:
    """The knobs of a script: its public UPPER_CASE, JSON-ready module constants, sorted.

    ``QUICK`` (the quick profile) is not a knob; names starting with ``_`` are constants.
    """
    items = vars(module).items() if isinstance(module, ModuleType) else module.items()
    return dict(sorted((name, value) for name, value in items
                       if name.isupper() and not name.startswith("_") and name != QUICK
                       and _jsonable(value)))


def quick_profile(module: ModuleType) -> dict:
    """The script's ``QUICK`` dict (empty when it has none), checked: only knobs."""
    profile = dict(getattr(module, QUICK, None) or {})
    unknown = sorted(set(profile) - set(script_knobs(module)))
    if unknown:
        raise InputError(f"{script_name(module)}: QUICK sets {', '.join(unknown)}, which "
                         "is not a knob of the script (add it to the UPPER_CASE block)")
    return profile


def script_name(module: ModuleType) -> str:
    return os.path.basename(getattr(module, "__file__", None) or module.__name__)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


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


def take_environment_overrides(module: ModuleType) -> dict:
    """Read ``$LEUKOCYTE_KNOBS`` for the script ``module`` (checked against its knobs) and
    keep it for :func:`resolve_settings`; returns the overrides.

    The variable is removed from the environment once read, so that a process the script
    starts (a data generator, another script) does not apply it to knobs of its own.
    """
    text = os.environ.pop(ENV_VAR, "").strip()
    if not text:
        return {}
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"${ENV_VAR}: not a JSON object ({exc})") from None
    if not isinstance(overrides, dict):
        raise InputError(f"${ENV_VAR}: not a JSON object of knob names and values")
    checked = check_overrides(script_name(module), script_knobs(module), overrides)
    _pending[module.__name__] = checked
    return checked


def knob_argument(parser: argparse.ArgumentParser, *flags: str, knob: str, **kwargs
                  ) -> argparse.Action:
    """An option that sets the knob ``knob`` for one run (``dest`` is the knob, default
    ``None``: not given). :func:`resolve_settings` applies it after ``QUICK`` and
    ``$LEUKOCYTE_KNOBS`` and records it as set by this option."""
    action = parser.add_argument(*flags, dest=knob, default=None, **kwargs)
    named = dict(parser.get_default(_FLAGS) or {})
    named[knob] = flags[0]
    parser.set_defaults(**{_FLAGS: named})
    return action


def command_line_knobs(args: argparse.Namespace | None) -> dict[str, tuple[Any, str]]:
    """``{knob: (value, option)}`` for every :func:`knob_argument` given on the command line."""
    if args is None:
        return {}
    return {knob: (getattr(args, knob), flag)
            for knob, flag in (getattr(args, _FLAGS, None) or {}).items()
            if getattr(args, knob, None) is not None}


class Settings(Mapping[str, Any]):
    """The knobs of one run as they run: read-only, and remembers which were read.

    ``settings["EPOCHS"]`` is the value after ``--quick``, ``$LEUKOCYTE_KNOBS`` and options;
    :meth:`overrides` says which knobs differ from the script's block and what set them.
    """

    def __init__(self, script: str, values: Mapping[str, Any], defaults: Mapping[str, Any],
                 sources: Mapping[str, str]):
        self.script = script
        self._values = dict(values)
        self._defaults = dict(defaults)
        self._sources = dict(sources)
        self._read: set[str] = set()

    def __getitem__(self, name: str) -> Any:
        if name not in self._values:
            raise KeyError(f"{self.script} has no knob {name}")
        self._read.add(name)
        return self._values[name]

    def __contains__(self, name: object) -> bool:  # asking is not reading
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Settings({self.script}: {len(self._values)} knobs)"

    def recorded(self) -> dict:
        """Every knob's value as it runs, JSON-ready (``settings.json``'s ``config.knobs``);
        reading them for the record does not count as using them."""
        return json.loads(json.dumps(self._values, sort_keys=True))

    def overrides(self) -> dict:
        """``{knob: {"value", "default", "by"}}`` for the knobs not at their block value."""
        return {name: {"value": self._values[name], "default": self._defaults.get(name),
                       "by": self._sources[name]}
                for name in sorted(self._sources) if self._sources[name] != DEFAULT}

    def source(self, name: str) -> str:
        """What set ``name``: ``default``, ``--quick``, ``$LEUKOCYTE_KNOBS`` or an option."""
        return self._sources[name]

    def unread(self) -> list[str]:
        """The knobs no code has read yet."""
        return sorted(set(self._values) - self._read)

    def unused_overrides(self) -> list[str]:
        """Knobs set from outside the block (not by ``--quick``) that nothing has read."""
        return [name for name in self.unread() if self._sources[name] not in (DEFAULT, BY_QUICK)]


def resolve_settings(module: ModuleType | str, args: argparse.Namespace | None = None, *,
                     quick: bool | None = None,
                     extra: Mapping[str, tuple[Any, str]] | None = None) -> Settings:
    """The run's :class:`Settings`: the block's values, then ``QUICK`` (``--quick``), then
    ``$LEUKOCYTE_KNOBS``, then the options of :func:`knob_argument` and ``extra``
    (``{knob: (value, what set it)}``, e.g. a preset option like ``--variant``).

    ``module`` is the script's module (or its ``__name__``); ``quick`` defaults to
    ``args.quick``. Raises :class:`InputError` for a knob set to two different values by
    the environment and the command line, or a value of the wrong type.
    """
    module = sys.modules[module] if isinstance(module, str) else module
    script = script_name(module)
    defaults = script_knobs(module)
    values, sources = dict(defaults), dict.fromkeys(defaults, DEFAULT)
    if quick is None:
        quick = bool(getattr(args, "quick", False))
    if quick:
        for name, value in quick_profile(module).items():
            values[name], sources[name] = value, BY_QUICK
    environment = _pending.get(module.__name__, {})
    for name, value in environment.items():
        values[name], sources[name] = value, BY_ENVIRONMENT
    given = {**command_line_knobs(args), **(extra or {})}
    for name, (value, flag) in given.items():
        if name not in defaults:
            raise InputError(f"{script}: {flag} sets {name}, which is not a knob of the script")
        try:
            value = coerce(name, value, defaults[name])
        except ValueError as exc:
            raise InputError(f"{script}: {flag}: {exc}") from None
        if name in environment and environment[name] != value:
            raise InputError(f"{script}: {name} is set twice, to {json.dumps(environment[name])} "
                             f"by ${ENV_VAR} and to {json.dumps(value)} by {flag}; "
                             "give it once")
        values[name], sources[name] = value, flag
    return Settings(script, values, defaults, sources)


def unused_lines(settings: Settings) -> list[str]:
    """One line per knob set from outside the script that the run never read."""
    return [f"note: {name} = {json.dumps(settings._values[name])} (set by "
            f"{settings.source(name)}) was not used by this run"
            for name in settings.unused_overrides()]
