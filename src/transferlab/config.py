"""Typed configuration: defaults live in code, a YAML file and `--set a.b=c` only override them.

Every section is a dataclass. `load_config` starts from the defaults, applies the YAML file,
then the command-line overrides, and checks every key and type on the way, so a typo is an
error naming the key instead of a setting silently ignored. `dump_config` writes the resolved
config, which `load_config` reads back to reproduce a run.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from transferlab.errors import ConfigError
from transferlab.typecheck import merge

__all__ = ["Config", "ConfigError", "load_config", "dump_config", "merge", "apply_override", "read_yaml", "to_dict"]

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
    """`strategy.name: auto`: a measured search under train.budget, ordered by the 2x2 rule on
    measured size and transferability (strategies/auto.py)."""

    # what the search tries (each on the validation split): any of linear-probe, feature-extraction,
    # fine-tune-late (the last blocks with the head), fine-tune (every group, differential rates), gradual
    candidates: list[str] = field(default_factory=lambda: ["linear-probe", "feature-extraction", "fine-tune-late",
                                                           "fine-tune", "gradual"])
    sizes: list[int] | None = None  # input sizes tried; None: 96, 128, 160, 224 up to the backbone's, unless --size
    noise: float = 1.0  # a candidate within this many standard errors of the best counts as as good
    score: Literal["logme", "leep"] = "logme"  # leep needs the backbone's ImageNet classifier
    small_per_class: int = 200  # median TRAINING images per class below this: a small data set
    similar_logme: float = 0.8  # LogME at or above: features fit the task (similar domain)
    similar_leep: float = 0.7  # LEEP normalised by chance, 1 - LEEP / log(1/K), at or above: similar
    max_images: int = 10000  # the score uses at most this many training images (seeded choice)
    refit: bool = True  # a winning linear probe is refit on train + val (strategy.refit_on_val)


@dataclass
class StrategyConfig:
    """How the pretrained network is adapted (strategies/)."""

    name: str = "auto"  # auto, or a strategy of strategies/ (feature-extraction, fine-tune, gradual, linear-probe, ...)
    # learning rate of each layer group = optim.lr x its multiplier (fine-tune and gradual)
    lr_mult: dict[str, float] = field(
        default_factory=lambda: {"early": 0.01, "middle": 0.1, "late": 1.0, "head": 1.0})
    layer_decay: float | None = None  # instead of lr_mult: lr x decay^(depth from the head)
    head_warmup_epochs: int = 5  # fine-tune: first train the head on cached features (LP-FT)
    feature_views: int = 0  # feature-extraction: K augmented views per training image, besides the plain one
    train_bn: bool = True  # unfrozen BatchNorm layers update their statistics
    # linear-probe: fit on train + val (its C comes from inner CV, so no validation split is needed to
    # choose it); the validation images then train the model and the run reports no validation metrics
    refit_on_val: bool = False
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
    budget: str | float = "auto"  # wall time of a fit (search + training): 90s, 10m, 1h, seconds, or none; auto: 10m for auto, none else
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
    engine: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"  # feature extraction (engines/)
    report: bool = True  # draw the figures and write report.html when the run ends


@dataclass
class CVConfig:
    """Cross-validation (`transferlab cv`)."""

    folds: int = 5
    repeats: int = 1  # > 1: RepeatedStratifiedKFold, a different shuffle per repeat


@dataclass
class TrackingConfig:
    """Where a run is tracked besides its own folder (tracking.py); the CSV logs are always written."""

    tracker: Literal["tensorboard", "csv", "mlflow"] = "tensorboard"  # csv: the run folder only
    uri: str | None = None  # mlflow: tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    experiment: str = "transferlab"  # mlflow experiment the run is logged to


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
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def budget_seconds(config: Config) -> float | None:
    """train.budget in seconds (None: no limit); `auto` is 10 minutes for strategy auto, no limit otherwise."""
    text = str(config.train.budget).strip().lower()
    if text == "auto":
        return 600.0 if config.strategy.name == "auto" else None
    if text in ("none", "0", "off"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?", text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"train.budget={config.train.budget!r} is not a duration: give e.g. 90s, 10m, 1h, or none")
    seconds = float(match.group(1)) * {"s": 1, "sec": 1, None: 1, "m": 60, "min": 60, "h": 3600}[match.group(2)]
    if seconds > 366 * 86400:
        raise ConfigError(f"train.budget={config.train.budget!r} is more than a year: give none for no limit")
    return seconds


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
    """Write the resolved config as YAML (atomically); `load_config(path)` gives the same config back."""
    from transferlab.data.cache import atomic_write

    text = yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True).encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), lambda handle: handle.write(text), durable=True)
