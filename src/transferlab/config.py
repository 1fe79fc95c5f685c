"""Typed configuration: defaults live in code, a YAML file and `--set a.b=c` only override them.

Every section is a dataclass. `load_config` starts from the defaults, applies the YAML file,
then the command-line overrides, and checks every key and type on the way, so a typo is an
error naming the key instead of a setting silently ignored. `dump_config` writes the resolved
config, which `load_config` reads back to reproduce a run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from transferlab.errors import ConfigError

ResizeMode = Literal["stretch", "crop", "pad"]
Interpolation = Literal["nearest", "bilinear", "bicubic"]
Normalization = Literal["model", "imagenet", "zscore", "minmax"]
CacheMode = Literal["auto", "memory", "disk", "none"]


@dataclass
class DataConfig:
    """Where images come from, how they are validated and cached, how they are split."""

    source: str | None = None  # DATA: a folder, a CSV manifest or builtin:NAME (recorded by every run)
    subset: int | None = None  # keep at most this many images per class (seeded choice)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    max_pixels: int = 89_478_485  # larger images are skipped as possible decompression bombs
    max_file_mb: float = 512.0  # larger files are skipped without being read
    min_side: int = 8  # images with a shorter side are skipped as unusable
    alpha_background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels become this
    cache: CacheMode = "auto"  # auto: memory when it fits memory_limit_mb, else disk
    cache_dir: str | None = None  # default: $TRANSFERLAB_CACHE or ~/.cache/transferlab
    memory_limit_mb: int = 4096
    disk_limit_gb: float = 50.0
    decode_workers: int = 0  # processes decoding images; 0 = one per CPU core
    group_column: str | None = None  # CSV manifest column whose rows must stay in one split


@dataclass
class PreprocessConfig:
    """Deterministic resize and normalization, applied the same way to every split."""

    size: int | None = None  # square input side; None = the backbone's input size
    resize_mode: ResizeMode = "crop"  # stretch | crop (shorter side, then centre crop) | pad
    interpolation: Interpolation | None = None  # None = the backbone's own
    crop_pct: float = 1.0  # with resize_mode=crop: resize the shorter side to size / crop_pct
    pad_fill: tuple[int, int, int] = (0, 0, 0)  # with resize_mode=pad: colour of the bars
    normalize: Normalization = "model"


@dataclass
class AugmentConfig:
    """Training-time augmentation (see augment.py for every op and its keys)."""

    preset: Literal["none", "light", "standard", "heavy"] = "standard"
    ops: list[Any] | None = None  # replaces the preset's list: [{op: rotate, degrees: [-10, 10], p: 0.5}, ...]
    mixup_alpha: float | None = None  # None = the preset's; 0 = off; lambda ~ Beta(alpha, alpha)
    cutmix_alpha: float | None = None
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    switch_prob: float = 0.5  # with both on: probability of CutMix instead of MixUp


@dataclass
class ModelConfig:
    """Backbone choice and weights; the preprocessing defaults come from its pretrained_cfg."""

    name: str = "tf_efficientnet_lite0"  # any timm model name
    pretrained: bool = True  # False: train from scratch (a baseline)
    weights: str | None = None  # a local .pth / .safetensors file instead of the bundled or hub weights
    dropout: float = 0.2  # before the new linear head
    drop_path: float | None = None  # timm's stochastic depth rate, for fine-tuning


@dataclass
class GradualStep:
    """From `epoch` (1-based) on, `groups` train too, at `lr` (None = each group's own rate)."""

    epoch: int = 1
    groups: list[str] = field(default_factory=lambda: ["head"])
    lr: float | None = None


@dataclass
class AutoConfig:
    """`strategy.name: auto`: the 2x2 rule on measured size and transferability (see strategies.py)."""

    score: Literal["logme", "leep"] = "logme"  # leep needs the backbone's ImageNet classifier
    small_per_class: int = 200  # median TRAINING images per class below this: a small data set
    similar_logme: float = 0.8  # LogME at or above: features fit the task (similar domain)
    similar_leep: float = 0.7  # LEEP normalised by chance, 1 - LEEP / log(1/K), at or above: similar
    max_images: int = 10000  # the score uses at most this many training images (seeded choice)


@dataclass
class StrategyConfig:
    """How the pretrained network is adapted (see strategies.py)."""

    name: str = "auto"  # auto, or a strategy of strategies/ (feature-extraction, fine-tune, gradual, linear-probe, ...)
    # learning rate of each layer group = optim.lr x its multiplier (fine-tune and gradual)
    lr_mult: dict[str, float] = field(
        default_factory=lambda: {"early": 0.01, "middle": 0.1, "late": 1.0, "head": 1.0})
    layer_decay: float | None = None  # instead of lr_mult: lr x decay^(depth from the head)
    head_warmup_epochs: int = 5  # fine-tune: first train the head on cached features (LP-FT)
    feature_views: int = 0  # feature-extraction: K augmented views per training image, besides the plain one
    train_bn: bool = True  # unfrozen BatchNorm layers update their statistics
    train_groups: list[str] = field(default_factory=lambda: ["early", "middle", "late", "head"])  # fine-tune
    auto: AutoConfig = field(default_factory=AutoConfig)
    gradual: list[GradualStep] = field(default_factory=lambda: [
        GradualStep(1, ["head"]), GradualStep(6, ["late"]), GradualStep(11, ["middle", "early"])])


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3  # peak learning rate of the head; groups scale it (strategy.lr_mult)
    weight_decay: float | None = None  # None: 0.05 for adamw, 5e-4 for sgd; never on biases and norms
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    label_smoothing: float = 0.0


@dataclass
class ScheduleConfig:
    """Learning-rate schedule; every group's rate is multiplied by the same factor."""

    name: Literal["cosine", "step", "cyclic", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = 1.0  # linear warm-up (cosine, step, constant)
    min_lr_ratio: float = 0.01  # cosine: final rate as a fraction of the peak
    step_epochs: float = 5.0  # step: multiply by gamma every step_epochs
    gamma: float = 0.1
    cycle_epochs: float = 2.0  # cyclic (triangular): epochs per full cycle
    cycle_min_ratio: float = 0.1  # cyclic: bottom of the cycle as a fraction of the peak
    pct_start: float = 0.3  # onecycle: fraction of training spent rising
    div_factor: float = 25.0  # onecycle: start at peak / div_factor
    final_div_factor: float = 1e4  # onecycle: end at start / final_div_factor


@dataclass
class TrainConfig:
    epochs: int | None = None  # None: feature-extraction 30, fine-tune 10, gradual 20
    batch_size: int = 32
    workers: int | None = None  # DataLoader workers; None = cores - 1 (at most 8)
    imbalance: Literal["auto", "none", "weights", "sampler"] = "auto"  # auto: weights if largest/smallest >= 3
    early_stopping: int | None = 10  # patience in epochs without improvement of `monitor`; null = off
    monitor: Literal["val_loss", "val_accuracy", "val_balanced_accuracy", "val_f1_macro"] = "val_loss"
    grad_clip: float | None = None  # clip the gradient norm
    precision: str = "32-true"  # Lightning precision: 32-true, 16-mixed, bf16-mixed
    accelerator: str = "auto"  # cpu, gpu, mps, auto
    devices: str = "auto"  # number or list of devices, or auto
    ddp: str | None = None  # Lightning strategy for several devices: ddp, ddp_spawn, fsdp, ...
    num_nodes: int = 1
    channels_last: bool = True  # memory format of convolutional backbones
    find_lr: bool = False  # run Lightning's LR finder first and use its suggestion
    eval_batch_size: int = 64
    report: bool = True  # draw the figures and write report.html when the run ends


@dataclass
class CVConfig:
    """Cross-validation (`transferlab cv`)."""

    folds: int = 5
    repeats: int = 1  # > 1: RepeatedStratifiedKFold, a different shuffle per repeat


@dataclass
class Config:
    """A whole run. `seed` drives every random step."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cv: CVConfig = field(default_factory=CVConfig)


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
    import re

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
    import math

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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at `path`, then `key.sub=value` overrides, all checked."""
    config = Config()
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder: give the path of a YAML file (e.g. RUN/config.yaml)")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist: give the path of a YAML file")
        loaded = read_yaml(path, f"config file {path}")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}")
        config = merge(config, loaded or {}, origin=str(path))
    for item in overrides or []:
        config = apply_override(config, item)
    return config


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in `path`; a syntax error is a ConfigError naming `what`."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not UTF-8 text: save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {exc}".splitlines()[0]) from None
    except OSError as exc:
        raise ConfigError(f"{what} cannot be read: {exc.strerror or exc}") from None


def apply_override(config: Config, item: str, origin: str = "--set") -> Config:
    """Apply one `a.b=c` override; the value is read as YAML (`3`, `0.1`, `true`, `[1, 2]`)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{item}' is not of the form key=value (e.g. --set train.epochs=5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    nested: Any = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return merge(config, nested, origin=origin)


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


def to_dict(config: Any) -> dict[str, Any]:
    """Plain YAML-able dict of a config (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def dump_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML; `load_config(path)` gives the same config back."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True), encoding="utf-8")
