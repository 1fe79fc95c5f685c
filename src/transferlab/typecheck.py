"""Checking config values as they enter: a typed merge of YAML or `--set` mappings onto the config
dataclasses, with the allowed range of every numeric key, so a typo or a bad value is an error
naming the key and where it came from."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from transferlab.errors import ConfigError

# Allowed values of numeric keys, by interval ("[" / "]" inclusive, "(" / ")" not); checked
# wherever a value enters (YAML, --set, flags), so the error names where it came from.
INTERVALS: dict[str, tuple[str, ...]] = {
    "[0, 1)": ("data.val_fraction", "data.test_fraction", "model.dropout", "model.drop_path", "optim.momentum",
               "optim.betas[]", "optim.label_smoothing"),
    "[0, 1]": ("schedule.min_lr_ratio", "schedule.cycle_min_ratio"),
    "[0, 10]": ("strategy.auto.noise",),
    "[8, 4096]": ("preprocess.size", "strategy.auto.sizes[]"),
    "(0, 1]": ("strategy.layer_decay", "schedule.gamma"),
    "(0, 1)": ("schedule.pct_start",),
    "[0, inf]": ("data.memory_limit_mb", "strategy.lr_mult.*", "optim.weight_decay", "schedule.warmup_epochs"),
    "(0, inf]": ("data.max_file_mb", "data.disk_limit_gb", "strategy.gradual[].lr", "optim.lr", "schedule.step_epochs",
                 "schedule.cycle_epochs", "train.grad_clip"),
    "[1, inf]": ("data.subset", "data.max_pixels", "data.min_side", "strategy.auto.small_per_class",
                 "schedule.div_factor", "schedule.final_div_factor", "train.early_stopping", "train.num_nodes"),
    "[0, 256]": ("data.decode_workers", "train.workers"),
    "[0, 100]": ("strategy.feature_views",),
    "[0, 10000]": ("strategy.head_warmup_epochs",),
    "[1, 10000]": ("strategy.gradual[].epoch",),
    "[1, 100000]": ("train.epochs",),
    "[1, 65536]": ("train.batch_size", "train.eval_batch_size"),
    "[2, 1000]": ("cv.folds",),
    "[1, 1000]": ("cv.repeats",),
    "[2, inf]": ("strategy.auto.max_images",),
    "(0.05, 1]": ("preprocess.crop_pct",),
    "[0, 4294967295]": ("seed",),
    "[0, 255]": ("preprocess.pad_fill[]", "data.alpha_background[]"),
}
RANGES = {key: interval for interval, keys in INTERVALS.items() for key in keys}


def range_key(key: str) -> str:
    """`strategy.gradual[2].epoch` -> `strategy.gradual[].epoch`, `strategy.lr_mult.late` -> `...lr_mult.*`."""
    generic = re.sub(r"\[\d+\]", "[]", key)
    if generic.startswith("strategy.lr_mult."):
        return "strategy.lr_mult.*"
    return generic


class RangeError(ConfigError):
    """A value of the right type outside its allowed range."""


def check_range(value: Any, key: str, origin: str) -> None:
    """A numeric `value` of config `key` inside its allowed interval (finite, never NaN)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if not math.isfinite(value):
        raise RangeError(f"{origin}: config key '{key}' must be a finite number, got {value}")
    interval = RANGES.get(range_key(key))
    if interval is None:
        return
    low, high = (float(v) for v in interval[1:-1].split(","))
    below = value < low or (value == low and interval[0] == "(")
    above = value > high or (value == high and interval[-1] == ")")
    if below or above:
        raise RangeError(f"{origin}: config key '{key}' must be in {interval}, got {value}")


def merge(obj: Any, updates: dict[str, Any], origin: str, prefix: str = "") -> Any:
    """A copy of dataclass `obj` with `updates` applied; unknown keys and bad types raise."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{origin}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {updates!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{origin}: unknown config key '{full}' (valid here: {', '.join(names)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = merge(current, value, origin, prefix=f"{full}.")
        else:
            changes[key] = coerce(value, hints[key], full, origin)
    return dataclasses.replace(obj, **changes)


def coerce(value: Any, annotation: Any, key: str, origin: str = "config") -> Any:
    """`value` checked against `annotation`, with the safe conversions (int -> float, list -> tuple)."""
    origin_type = get_origin(annotation)
    args = get_args(annotation)

    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{origin}: config key '{key}' expects {expected}, got {value!r}")

    if origin_type in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, key, origin)
            except RangeError:
                raise
            except ConfigError as exc:
                errors.append(exc)
        fail(" or ".join(describe(a) for a in args))
    if origin_type is Literal:
        if value in args:
            return value
        fail("one of " + ", ".join(repr(a) for a in args))
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        fail("true or false")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            check_range(value, key, origin)
            return value
        fail("an integer")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check_range(float(value), key, origin)
            return float(value)
        fail("a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        fail("a string")
    if origin_type in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail(describe(annotation))
        if origin_type is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                fail(describe(annotation))
            return tuple(coerce(v, a, f"{key}[{i}]", origin) for i, (v, a) in enumerate(zip(value, args)))
        item_type = args[0] if args else Any
        items = [coerce(v, item_type, f"{key}[{i}]", origin) for i, v in enumerate(value)]
        return tuple(items) if origin_type is tuple else items
    if origin_type is dict:
        if not isinstance(value, dict):
            fail("a mapping")
        return {str(k): coerce(v, args[1] if args else Any, f"{key}.{k}", origin) for k, v in value.items()}
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
        annotation, getattr(annotation, "__name__", str(annotation))
    )
