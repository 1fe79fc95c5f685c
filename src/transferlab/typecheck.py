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

# Allowed values of numeric keys: (low, high, low inclusive, high inclusive); None = unbounded.
# Checked wherever a value enters (YAML, --set, flags), so the error names where it came from.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "seed": (0, 2**32 - 1, True, True),
    "data.subset": (1, None, True, True),
    "data.val_fraction": (0, 1, True, False),
    "data.test_fraction": (0, 1, True, False),
    "data.max_pixels": (1, None, True, True),
    "data.max_file_mb": (0, None, False, True),
    "data.min_side": (1, None, True, True),
    "data.memory_limit_mb": (0, None, True, True),
    "data.disk_limit_gb": (0, None, False, True),
    "data.decode_workers": (0, 256, True, True),
    "preprocess.size": (8, 4096, True, True),
    "preprocess.crop_pct": (0.05, 1, False, True),
    "model.dropout": (0, 1, True, False),
    "model.drop_path": (0, 1, True, False),
    "strategy.layer_decay": (0, 1, False, True),
    "strategy.head_warmup_epochs": (0, 10_000, True, True),
    "strategy.feature_views": (0, 100, True, True),
    "strategy.lr_mult.*": (0, None, True, True),
    "strategy.gradual[].epoch": (1, 10_000, True, True),
    "strategy.gradual[].lr": (0, None, False, True),
    "strategy.auto.small_per_class": (1, None, True, True),
    "strategy.auto.max_images": (2, None, True, True),
    "optim.lr": (0, None, False, True),
    "optim.weight_decay": (0, None, True, True),
    "optim.momentum": (0, 1, True, False),
    "optim.betas[]": (0, 1, True, False),
    "optim.label_smoothing": (0, 1, True, False),
    "schedule.warmup_epochs": (0, None, True, True),
    "schedule.min_lr_ratio": (0, 1, True, True),
    "schedule.step_epochs": (0, None, False, True),
    "schedule.gamma": (0, 1, False, True),
    "schedule.cycle_epochs": (0, None, False, True),
    "schedule.cycle_min_ratio": (0, 1, True, True),
    "schedule.pct_start": (0, 1, False, False),
    "schedule.div_factor": (1, None, True, True),
    "schedule.final_div_factor": (1, None, True, True),
    "train.epochs": (1, 100_000, True, True),
    "train.batch_size": (1, 65_536, True, True),
    "train.eval_batch_size": (1, 65_536, True, True),
    "train.workers": (0, 256, True, True),
    "train.early_stopping": (1, None, True, True),
    "train.grad_clip": (0, None, False, True),
    "train.num_nodes": (1, None, True, True),
    "cv.folds": (2, 1000, True, True),
    "cv.repeats": (1, 1000, True, True),
}


def range_key(key: str) -> str:
    """`strategy.gradual[2].epoch` -> `strategy.gradual[].epoch`, `strategy.lr_mult.late` -> `...lr_mult.*`."""
    generic = re.sub(r"\[\d+\]", "[]", key)
    if generic.startswith("strategy.lr_mult."):
        return "strategy.lr_mult.*"
    return generic


class RangeError(ConfigError):
    """A value of the right type outside its allowed range."""


def number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_range(value: Any, key: str, origin: str) -> None:
    """A numeric `value` of config `key` inside its allowed range (finite, never NaN)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    bounds = RANGES.get(range_key(key))
    if not math.isfinite(value):
        raise RangeError(f"{origin}: config key '{key}' must be a finite number, got {value}")
    if bounds is None:
        return
    low, high, low_in, high_in = bounds
    below = low is not None and (value < low or (value == low and not low_in))
    above = high is not None and (value > high or (value == high and not high_in))
    if below or above:
        left = "[" if low_in else "("
        right = "]" if high_in else ")"
        span = f"{left}{'-inf' if low is None else number(low)}, {'inf' if high is None else number(high)}{right}"
        raise RangeError(f"{origin}: config key '{key}' must be in {span}, got {value}")


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
