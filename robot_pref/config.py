"""Typed dataclass configs, turned into command-line flags and loaded from YAML.

Every workflow step is a function taking one dataclass config. `add_command` derives the step's
flags from the dataclass fields (``--field-name``), so the CLI, YAML configs and the pipeline all
speak the same names. Nested dataclasses become dotted YAML sections.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, get_args, get_origin

import yaml


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def parse_value(tp: Any, text: str) -> Any:
    """Parse a command-line string into a field of type ``tp``."""
    tp, optional = _unwrap_optional(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    if get_origin(tp) is Literal:
        if text not in get_args(tp):
            raise ValueError(f"expected one of {list(get_args(tp))}, got {text!r}")
        return text
    if get_origin(tp) in (tuple, list):
        (item,) = {a for a in get_args(tp) if a is not Ellipsis} or {str}
        return get_origin(tp)(parse_value(item, t) for t in text.split(",") if t)
    if get_origin(tp) is dict or (dataclasses.is_dataclass(tp)):
        return yaml.safe_load(text)
    if tp is int:  # "1e6" (YAML 1.1 reads it as a string) is a whole number too
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = float("nan")
            if not number.is_integer():
                raise ValueError(f"expected a whole number, got {text!r}") from None
            return int(number)
    return tp(text)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _flag_type(tp: Any) -> Callable[[str], Any]:
    """argparse ``type=``: parse_value, with its reason in argparse's error message."""
    def parse(text: str) -> Any:
        try:
            return parse_value(tp, text)
        except (ValueError, TypeError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add ``--name`` for every field of ``cls`` (``--section.name`` for nested dataclasses)."""
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = prefix + f.name
        base, _ = _unwrap_optional(tp)
        if dataclasses.is_dataclass(base):
            add_dataclass_args(parser, base, prefix=name + ".")
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if base is bool:
            parser.add_argument(flag, dest=name, nargs="?", const="true", default=argparse.SUPPRESS,
                                type=_flag_type(tp), help=help_text or " ")
        else:
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=base.__name__.upper()
                                if isinstance(base, type) else "VALUE",
                                type=_flag_type(tp), help=help_text or " ")


def coerce(tp: Any, value: Any, name: str = "value") -> Any:
    """``value`` as the declared type ``tp``, so YAML ``0``, a flag ``0`` and JSON ``0.0`` of a float
    field are the same config (equal cache keys and stage fingerprints). Strings go through
    `parse_value`, ints widen to floats, lists become tuples; anything else is a ValueError naming
    ``name`` (the field's dotted path, as in ``--set label.pairs=...``)."""
    base, optional = _unwrap_optional(tp)

    def bad(why: str = "") -> ValueError:
        if get_origin(base) is Literal:
            expected = f"one of {list(get_args(base))}" + (" or None" if optional else "")
        else:
            expected = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
        return ValueError(f"{name}: expected {expected}, got {value!r} ({type(value).__name__}){why}")

    if value is None:
        if optional or base is Any:
            return None
        raise bad("; give a value (None is not allowed here)")
    if isinstance(value, str) and base not in (str, Any) and not dataclasses.is_dataclass(base):
        try:
            value = parse_value(base, value)
        except (ValueError, TypeError) as err:
            if str(err).startswith("expected"):
                raise ValueError(f"{name}: {err}") from None
            raise bad(f": {err}") from None
    if base is Any:
        return value
    if dataclasses.is_dataclass(base):
        if isinstance(value, base):
            return value
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise bad("; a section takes a mapping of its fields")
        return from_dict(base, value, prefix=f"{name}.")
    if get_origin(base) is Literal:
        if value not in get_args(base):
            raise bad()
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad()
    if base is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise bad()
        return int(value)
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if base is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise bad()
        return str(value)
    if get_origin(base) in (tuple, list) or base in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad()
        args = get_args(base)
        if len(args) == 2 and args[1] is Ellipsis or get_origin(base) is list or not args:
            item = args[0] if args else Any
            items = [coerce(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
        elif len(args) == len(value):
            items = [coerce(t, v, f"{name}[{i}]") for i, (t, v) in enumerate(zip(args, value))]
        else:
            raise bad(f"; expected {len(args)} items")
        return (get_origin(base) or base)(items)
    if get_origin(base) is dict or base is dict:
        if not isinstance(value, dict):
            raise bad()
        return dict(value)
    if isinstance(base, type) and not isinstance(value, base):
        raise bad()
    return value


def from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build ``cls`` from a (possibly nested, possibly dotted-key) dict; unknown keys are errors.

    Dotted keys (``vlm.temperature``) override the same field given in a section, whatever their
    order; every value is coerced to its field's declared type (see `coerce`).
    """
    nested: dict[str, Any] = {}
    dotted = []
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            dotted.append((head, rest, value))
        else:
            nested[head] = dict(value) if isinstance(value, dict) else value
    for head, rest, value in dotted:
        section = nested.get(head)
        if not isinstance(section, dict):
            section = nested[head] = {}
        section[rest] = value
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(nested) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {[prefix + u for u in unknown]}; "
                         f"valid fields: {sorted(names)}")
    kwargs = {f.name: coerce(hints[f.name], nested[f.name], prefix + f.name)
              for f in dataclasses.fields(cls) if f.name in nested}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_yaml(path: str | Path) -> dict[str, Any]:
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping at the top level")
    return data


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a.b=3", "c=x"]`` -> ``{"a.b": 3, "c": "x"}`` with YAML scalar parsing."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"override {pair!r} must look like key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _flag_names(cls: type, prefix: str = "") -> set[str]:
    names = set()
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        base, _ = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(base):
            names |= _flag_names(base, prefix + f.name + ".")
        else:
            names.add(prefix + f.name)
    return names


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    cls: type,
    func: Callable[[Any], Any] | str,
    help: str,
) -> argparse.ArgumentParser:
    """Register ``robot-pref <name>``: flags from ``cls``, plus ``--config FILE.yaml``.

    ``func`` may be ``"module:function"``, imported only when the command runs, so registering a
    command never pays for torch, Ray or MuJoCo.
    """
    parser = subparsers.add_parser(name, help=help, description=help)
    parser.add_argument("--config", dest="_config", default=None, metavar="FILE.yaml",
                        help="YAML file with the fields below (flags override it)")
    add_dataclass_args(parser, cls)

    def run(args: argparse.Namespace) -> Any:
        values = load_yaml(args._config) if args._config else {}
        names = _flag_names(cls)
        values.update({k: v for k, v in vars(args).items() if k in names})
        cfg = from_dict(cls, values)
        if isinstance(func, str):
            module, _, attr = func.partition(":")
            return getattr(importlib.import_module(module), attr)(cfg)
        return func(cfg)

    parser.set_defaults(_run=run)
    return parser
