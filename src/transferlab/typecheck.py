"""Checking config values as they enter: a typed merge of YAML or `--set` mappings onto the config
dataclasses, each value checked against its field's type, interval and check (declared with
`config.setting`), so a typo or a bad value is an error naming the key and where it came from."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from transferlab.errors import ConfigError


class RangeError(ConfigError):
    """A value of the right type outside its allowed range."""


def in_interval(value: float, interval: str) -> bool:
    """Whether `value` lies in an interval written as "[low, high)" ("inf" allowed)."""
    low, high = (float(v) for v in interval[1:-1].split(","))
    return not (value < low or (value == low and interval[0] == "(") or value > high
                or (value == high and interval[-1] == ")"))


def check_range(value: Any, key: str, origin: str, interval: str | None) -> None:
    """A numeric `value` of config `key` finite and inside its declared interval."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if not math.isfinite(value):
        raise RangeError(f"{origin}: config key '{key}' must be a finite number, got {value}")
    if interval is not None and not in_interval(value, interval):
        raise RangeError(f"{origin}: config key '{key}' must be in {interval}, got {value}")


def merge(obj: Any, updates: dict[str, Any], origin: str, prefix: str = "") -> Any:
    """A copy of dataclass `obj` with `updates` applied; unknown keys and bad values raise."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{origin}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {updates!r}")
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{origin}: unknown config key '{full}' (valid here: {', '.join(fields)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = merge(current, value, origin, prefix=f"{full}.")
            continue
        meta = fields[key].metadata
        changes[key] = coerce(value, hints[key], full, origin, meta.get("interval"))
        if meta.get("check") is not None:
            try:
                meta["check"](changes[key])
            except ValueError as exc:
                raise ConfigError(f"{origin}: config key '{full}'={value!r} {exc}") from None
    return dataclasses.replace(obj, **changes)


def coerce(value: Any, annotation: Any, key: str, origin: str = "config", interval: str | None = None) -> Any:
    """`value` checked against `annotation` (numbers, and the numbers inside containers, against
    `interval`), with the safe conversions (int -> float, list -> tuple)."""
    origin_type = get_origin(annotation)
    args = get_args(annotation)

    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{origin}: config key '{key}' expects {expected}, got {value!r}")

    if origin_type in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, key, origin, interval)
            except RangeError:
                raise
            except ConfigError:
                continue
        fail(" or ".join(describe(a) for a in args))
    if origin_type is Literal:
        if value in args:
            return value
        fail("one of " + ", ".join(repr(a) for a in args))
    if annotation is Any:
        return value
    if annotation in (bool, str):
        if isinstance(value, annotation):
            return value
        fail(describe(annotation))
    if annotation in (int, float):
        if isinstance(value, (int, float) if annotation is float else int) and not isinstance(value, bool):
            check_range(value, key, origin, interval)
            return annotation(value)
        fail(describe(annotation))
    if origin_type in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail(describe(annotation))
        if origin_type is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                fail(describe(annotation))
            return tuple(coerce(v, a, f"{key}[{i}]", origin, interval) for i, (v, a) in enumerate(zip(value, args)))
        items = [coerce(v, args[0] if args else Any, f"{key}[{i}]", origin, interval) for i, v in enumerate(value)]
        return tuple(items) if origin_type is tuple else items
    if origin_type is dict:
        if not isinstance(value, dict):
            fail("a mapping")
        return {str(k): coerce(v, args[1] if args else Any, f"{key}.{k}", origin, interval) for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, dict):
            return merge(annotation(), value, origin, prefix=f"{key}.")
        fail(f"a mapping of {', '.join(f.name for f in dataclasses.fields(annotation))}")
    raise TypeError(f"config annotation {annotation!r} for {key} is not supported")  # programmer error


def describe(annotation: Any) -> str:
    """A short human name for a type annotation, used in error messages."""
    origin_type = get_origin(annotation)
    args = get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin_type is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin_type in (list, tuple):
        inner = ", ".join(describe(a) for a in args if a is not Ellipsis)
        return f"a list of {inner}" if origin_type is list or Ellipsis in args else f"a list [{inner}]"
    if origin_type in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))
