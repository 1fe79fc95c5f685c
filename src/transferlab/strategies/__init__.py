"""Transfer-learning strategies: one module, one class, one name, in a registry (docs/architecture.md says how to
add one). `fit.py` runs any strategy the same way; nothing else in the package branches on a strategy's name."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from transferlab.errors import ConfigError

REGISTRY: dict[str, type] = {}
NOT_STRATEGIES = {"base"}  # the base class lives here too


def register(cls: type) -> type:
    """Class decorator: make `cls` available under `cls.name` (its module's name, dashed)."""
    module = cls.__module__.rsplit(".", 1)[-1]
    assert cls.name == module.replace("_", "-"), f"strategy {cls.name!r} must live in strategies/{cls.name}.py"
    REGISTRY[cls.name] = cls
    return cls


def strategy_names() -> list[str]:
    """Every strategy's name, read from the module files (cheap enough for --help)."""
    found = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])]
    return sorted(name.replace("_", "-") for name in found if name not in NOT_STRATEGIES and not name.startswith("_"))


def load_all() -> dict[str, type]:
    for name in strategy_names():
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    return REGISTRY


def variants(similar: bool, small: bool) -> dict[str, tuple[str, dict]]:
    """Every registered strategy's search candidates: name -> (strategy, dotted config overrides)."""
    return {variant: (name, overrides) for name, cls in load_all().items()
            for variant, overrides in cls.variants(similar, small).items()}


def get_strategy(name: str, config):
    """The strategy `name` set up for `config` (whose strategy-dependent defaults it fills in)."""
    classes = load_all()
    if name not in classes:
        raise ConfigError(f"unknown strategy '{name}' (strategy.name): choose auto or one of {', '.join(classes)}")
    return classes[name](config)
