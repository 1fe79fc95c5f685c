"""Typed configuration: defaults live in code, a YAML file and `--set a.b=c` only override them.

Every section is a dataclass and every setting is declared once, here, with `setting()`: its
default, its allowed interval, whether a resumed run may change it, and its help text. The
type check (`typecheck.merge`), the command line's flags (choices, number ranges, help) and the
resume check all read these declarations. `load_config` applies the defaults, the YAML file,
then the overrides, naming the key and where a bad value came from; `dump_config` writes the
resolved config, which `load_config` reads back to reproduce a run.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from transferlab.errors import ConfigError
from transferlab.typecheck import merge

__all__ = ["Config", "ConfigError", "load_config", "dump_config", "merge", "apply_override", "read_yaml", "to_dict",
           "setting", "ENGINES", "ENGINE_CHOICES", "EXPORT_FORMATS", "budget_seconds", "resume_safe_keys"]

ResizeMode = Literal["stretch", "crop", "pad"]
Interpolation = Literal["nearest", "bilinear", "bicubic"]
Normalization = Literal["model", "imagenet", "zscore", "minmax"]
CacheMode = Literal["auto", "memory", "disk", "none"]
Engine = Literal["auto", "torch", "onnxruntime", "openvino"]
ENGINE_CHOICES = get_args(Engine)  # --engine / train.engine: auto, or what runs a model (engines/)
ENGINES = ENGINE_CHOICES[1:]  # "auto" picks one of these by the documented rule
EXPORT_FORMATS = {"onnx": "model.onnx", "openvino": "model.xml", "torchscript": "model.ts"}  # --format -> its file
WEIGHT_DECAY = {"adamw": 0.05, "sgd": 5e-4}  # optim.weight_decay when it is null


def setting(default: Any = dataclasses.MISSING, interval: str | None = None, help: str = "", *,
            factory: Any = dataclasses.MISSING, resume_safe: bool = False, check: Any = None) -> Any:
    """A config field: its default (or `factory`), the interval its numbers (or its items' numbers)
    must lie in ("[" / "]" inclusive, "(" / ")" not), whether a resumed run may change it (it does
    not change results), an extra `check(value)` raising ValueError, and its help text."""
    metadata = {"interval": interval, "help": help, "resume_safe": resume_safe, "check": check}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def check_devices(text: str) -> None:
    """auto, a number of devices, or a comma-separated list of device indices."""
    if not (text in ("auto", "-1") or re.fullmatch(r"[1-9]\d*|\d+(,\d+)+,?", text)):
        raise ValueError("is not auto, a number of devices (e.g. 2) or indices (e.g. 0,1)")


def parse_budget(value: str | float) -> float | None:
    """train.budget in seconds: a positive duration (90, 90s, 10m, 1.5h), `none` (no limit: the only
    unlimited value) or `auto` (the default: decided by the strategy, None here); ValueError otherwise."""
    text = str(value).strip().lower()
    if text in ("none", "auto"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?", text)
    if not match:
        raise ValueError("is not a duration: give e.g. 90s, 10m, 1h, or none for no limit")
    if float(match.group(1)) == 0:
        raise ValueError("is zero: a budget must be a positive duration (e.g. 90s, 10m); none means no limit")
    seconds = float(match.group(1)) * {"s": 1, "sec": 1, None: 1, "m": 60, "min": 60, "h": 3600}[match.group(2)]
    if not math.isfinite(seconds) or seconds > 366 * 86400:
        raise ValueError("is more than a year: give none for no limit")
    return seconds


@dataclass
class DataConfig:
    """Where images come from, how they are validated and cached, how they are split."""

    source: str | None = setting(None, help="DATA: a folder, a CSV manifest or builtin:NAME")
    subset: int | None = setting(None, "[1, inf]", "keep at most this many images per class (seeded choice)")
    val_fraction: float = setting(0.15, "[0, 1)", "fraction of each class held out for validation")
    test_fraction: float = setting(0.15, "[0, 1)", "fraction of each class held out for the final test")
    max_pixels: int = setting(89_478_485, "[1, inf]", "larger images are skipped as possible decompression bombs")
    max_file_mb: float = setting(512.0, "(0, inf]", "larger files are skipped without being read")
    min_side: int = setting(8, "[1, inf]", "images with a shorter side are skipped as unusable")
    alpha_background: tuple[int, int, int] = setting((255, 255, 255), "[0, 255]", "transparent pixels become this")
    cache: CacheMode = setting("auto", help="auto: memory when it fits memory_limit_mb, else disk", resume_safe=True)
    cache_dir: str | None = setting(None, help="default: $TRANSFERLAB_CACHE or ~/.cache/transferlab", resume_safe=True)
    memory_limit_mb: int = setting(4096, "[0, inf]", "largest decoded set kept in memory", resume_safe=True)
    disk_limit_gb: float = setting(50.0, "(0, inf]", "the cache folder is trimmed to this", resume_safe=True)
    decode_workers: int = setting(0, "[0, 256]", "processes decoding images; 0 = one per CPU core", resume_safe=True)
    group_column: str | None = setting(None, help="CSV manifest column whose rows must stay in one split")
    label_delimiter: str = setting(";", help="separates the names in a manifest's labels column (multi-label)")
    dedupe: Literal["exact", "near"] = setting("exact", help="which copies are kept in one split: exact (byte-identical "
                                               "files) or near (also near-duplicates: audit.similarity)")


@dataclass
class PreprocessConfig:
    """Deterministic resize and normalization, applied the same way to every split."""

    size: int | None = setting(None, "[8, 4096]", "input side in pixels (default: the backbone's)")
    resize_mode: ResizeMode = setting("crop", help="stretch | crop (shorter side, then centre crop) | pad")
    interpolation: Interpolation | None = setting(None, help="default: the backbone's own")
    crop_pct: float = setting(1.0, "(0.05, 1]", "with resize_mode=crop: the centred square kept of the shorter side")
    pad_fill: tuple[int, int, int] = setting((0, 0, 0), "[0, 255]", "with resize_mode=pad: colour of the bars")
    normalize: Normalization = setting("model", help="model | imagenet | zscore (training split) | minmax")


@dataclass
class AugmentConfig:
    """Training-time augmentation (see augment.py for every op and its keys)."""

    preset: Literal["none", "light", "standard", "heavy"] = setting("standard", help="augmentation preset")
    ops: list[Any] | None = setting(None, help="replaces the preset's list: [{op: rotate, degrees: [-10, 10]}, ...]")
    mixup_alpha: float | None = setting(None, "[0, inf]", "None = the preset's; 0 = off; lambda ~ Beta(alpha, alpha)")
    cutmix_alpha: float | None = setting(None, "[0, inf]", "None = the preset's; 0 = off")
    mix_prob: float = setting(1.0, "[0, 1]", "probability that a batch is mixed at all")
    switch_prob: float = setting(0.5, "[0, 1]", "with both on: probability of CutMix instead of MixUp")


@dataclass
class ModelConfig:
    """Backbone choice and weights; the preprocessing defaults come from its pretrained_cfg."""

    name: str = setting("tf_efficientnet_lite0", help="timm backbone name")
    pretrained: bool = setting(True, help="False: train from scratch (a baseline)")
    weights: str | None = setting(None, help="a local .pth / .safetensors file instead of the bundled or hub weights")
    size: int | None = setting(None, "[8, 4096]", "the model's own input side (default: preprocess.size); smaller: "
                                                  "the model resizes the images inside (auto's smaller members)")
    taps: int = setting(0, "[0, 16]", "also pool the outputs of the backbone's last N stages into the head's "
                                     "features (multi-stage features; 0: the final pooled features alone)")
    dropout: float = setting(0.2, "[0, 1)", "dropout before the new linear head")
    drop_path: float | None = setting(None, "[0, 1)", "timm's stochastic depth rate, for fine-tuning")


@dataclass
class GradualStep:
    """From `epoch` (1-based) on, `groups` train too, at `lr` (None = each group's own rate)."""

    epoch: int = setting(1, "[1, 10000]")
    groups: list[str] = setting(factory=lambda: ["head"])
    lr: float | None = setting(None, "(0, inf]")


@dataclass
class FineTuneSettings:
    """`fine-tune` (strategies/fine_tune.py)."""

    epochs: int = setting(10, "[1, inf]", "epochs of the main stage (train.epochs overrides)")
    head_warmup_epochs: int = setting(5, "[0, 10000]", "first train the head on cached features (LP-FT)")
    train_groups: list[str] = setting(factory=lambda: ["early", "middle", "late", "head"],
                                      help="the layer groups that train; the rest stay frozen")


@dataclass
class GradualSettings:
    """`gradual` (strategies/gradual.py): layer groups join on a schedule."""

    epochs: int = setting(20, "[1, inf]", "epochs, at least 4 after the last step (train.epochs overrides)")
    steps: list[GradualStep] = setting(factory=lambda: [GradualStep(1, ["head"]), GradualStep(6, ["late"]),
                                                        GradualStep(11, ["middle", "early"])],
                                       help="[{epoch, groups, lr}]: from epoch on, groups train too")


@dataclass
class FeatureExtractionSettings:
    """`feature-extraction` (strategies/feature_extraction.py)."""

    epochs: int = setting(30, "[1, inf]", "epochs of the head (train.epochs overrides)")
    views: int = setting(0, "[0, 100]", "K augmented views per training image, besides the plain one")


@dataclass
class ScratchSettings:
    """`scratch` (strategies/scratch.py): a small CNN trained from its own initialisation."""

    epochs: int = setting(30, "[1, inf]", "epochs (train.epochs overrides; the search fits them to its budget)")


@dataclass
class LinearProbeSettings:
    """`linear-probe` (strategies/linear_probe.py)."""

    C: float | None = setting(None, "(0, inf]", "inverse regularisation strength; None: chosen by inner cross-validation")
    refit_on_val: bool = setting(False, help="fit on train + val (C comes from inner cross-validation)")


@dataclass
class EnsembleMember:
    """One member of `strategy.ensemble.members`: a strategy at its own input size, with its own
    config overrides (dotted keys), and its weight in the average of probabilities."""

    strategy: str = setting("linear-probe")
    size: int | None = setting(None, "[8, 4096]")
    weight: float = setting(1.0, "(0, inf]")
    settings: dict[str, Any] = setting(factory=dict)


@dataclass
class EnsembleSettings:
    """`ensemble` (strategies/ensemble.py): what auto's search chose, as config.yaml records it."""

    members: list[EnsembleMember] = setting(factory=list, help="[{strategy, size, weight, settings}]")


@dataclass
class AutoConfig:
    """`strategy.name: auto`: the search (search/) under train.budget, ordered by the 2x2 rule."""

    candidates: list[str] = setting(factory=lambda: ["linear-probe", "fine-tune-late", "fine-tune", "gradual",
                                                     "scratch"],
                                    help="what the search tries: the probe, and registry variants that train the "
                                         "backbone")
    resolvable: float = setting(0.05, "(0, 1]", "a backbone-training candidate is tried only when the validation "
                                                "split can tell an accuracy gain this large from noise")
    sizes: list[int] | None = setting(None, "[8, 4096]", "input sizes tried; None: 96, 128, 160, 224 up to the "
                                                         "backbone's and, for smaller images, sizes near their own, "
                                                         "unless --size")
    taps: list[int] = setting(factory=lambda: [0, 4], interval="[0, 16]",
                              help="multi-stage features the probe is tried with (model.taps; 0: the final ones)")
    score: Literal["logme", "leep"] = setting("logme", help="leep needs the backbone's ImageNet classifier")
    small_per_class: int = setting(200, "[1, inf]", "median TRAINING images per class below this: a small set")
    similar_logme: float = setting(0.8, help="LogME at or above: features fit the task (similar domain)")
    similar_leep: float = setting(0.7, help="LEEP normalised by chance at or above: similar domain")
    max_images: int = setting(10000, "[2, inf]", "the transferability score uses at most this many training images")
    refit: bool = setting(True, help="a winning linear probe is refit on train + val")


@dataclass
class StrategyConfig:
    """How the pretrained network is adapted (strategies/); each strategy's own settings are its section."""

    name: str = setting("auto", help="auto, or a registered strategy")
    lr_mult: dict[str, float] = setting(factory=lambda: {"early": 0.01, "middle": 0.1, "late": 1.0, "head": 1.0},
                                        interval="[0, inf]", help="each layer group's rate = optim.lr x this")
    layer_decay: float | None = setting(None, "(0, 1]", "instead of lr_mult: lr x decay^(depth from the head)")
    train_bn: bool = setting(True, help="unfrozen BatchNorm layers update their statistics")
    fine_tune: FineTuneSettings = setting(factory=FineTuneSettings)
    gradual: GradualSettings = setting(factory=GradualSettings)
    feature_extraction: FeatureExtractionSettings = setting(factory=FeatureExtractionSettings)
    scratch: ScratchSettings = setting(factory=ScratchSettings)
    linear_probe: LinearProbeSettings = setting(factory=LinearProbeSettings)
    ensemble: EnsembleSettings = setting(factory=EnsembleSettings)
    auto: AutoConfig = setting(factory=AutoConfig)


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd"] = setting("adamw", help="optimizer")
    lr: float = setting(1e-3, "(0, inf]", "peak learning rate of the head; groups scale it (strategy.lr_mult)")
    weight_decay: float | None = setting(None, "[0, inf]", "default: " + ", ".join(
        f"{v:g} for {k}" for k, v in WEIGHT_DECAY.items()) + "; never on biases and norms")
    momentum: float = setting(0.9, "[0, 1)", "sgd")
    nesterov: bool = setting(True, help="sgd")
    betas: tuple[float, float] = setting((0.9, 0.999), "[0, 1)", "adamw")
    label_smoothing: float = setting(0.0, "[0, 1)")

    def decay(self) -> float:
        return WEIGHT_DECAY[self.name] if self.weight_decay is None else self.weight_decay


@dataclass
class ScheduleConfig:
    """Learning-rate schedule; every group's rate is multiplied by the same factor."""

    name: Literal["cosine", "step", "cyclic", "onecycle", "constant"] = setting("cosine", help="schedule")
    warmup_epochs: float = setting(1.0, "[0, inf]", "linear warm-up (cosine, step, constant)")
    min_lr_ratio: float = setting(0.01, "[0, 1]", "cosine: final rate as a fraction of the peak")
    step_epochs: float = setting(5.0, "(0, inf]", "step: multiply by gamma every step_epochs")
    gamma: float = setting(0.1, "(0, 1]")
    cycle_epochs: float = setting(2.0, "(0, inf]", "cyclic (triangular): epochs per full cycle")
    cycle_min_ratio: float = setting(0.1, "[0, 1]", "cyclic: bottom of the cycle as a fraction of the peak")
    pct_start: float = setting(0.3, "(0, 1)", "onecycle: fraction of training spent rising")
    div_factor: float = setting(25.0, "[1, inf]", "onecycle: start at peak / div_factor")
    final_div_factor: float = setting(1e4, "[1, inf]", "onecycle: end at start / final_div_factor")


@dataclass
class TrainConfig:
    epochs: int | None = setting(None, "[1, inf]", "epochs (default: the strategy's own strategy.<name>.epochs)")
    budget: str | float = setting("auto", help="wall time of the run, search included: 90s, 10m, 1h or none "
                                               "(default: 10m for auto, none for other strategies)",
                                  check=parse_budget)
    batch_size: int = setting(32, "[1, inf]", "batch size")
    workers: int | None = setting(None, "[0, 256]", "DataLoader workers (default: cores - 1; none on a CPU of 2 cores or fewer)", resume_safe=True)
    imbalance: Literal["auto", "none", "weights", "sampler"] = setting(
        "auto", help="auto: class weights when the largest class is >= 3x the smallest")
    early_stopping: int | None = setting(10, "[1, inf]", "patience in epochs without improvement of monitor")
    monitor: Literal["val_loss", "val_accuracy", "val_balanced_accuracy", "val_f1_macro"] = setting(
        "val_loss", help="the best checkpoint's and early stopping's metric")
    grad_clip: float | None = setting(None, "(0, inf]", "clip the gradient norm")
    refit_on_val: bool = setting(False, help="train on train + val for the set epochs (no validation split "
                                             "picks a checkpoint): what auto's cross-fitted trials chose")
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true",
                       "transformer-engine", "32", "16", "bf16", "64"] = setting(
        "auto", help="Lightning precision (auto: bf16-mixed on a GPU that has it, else 16-mixed; 32-true on a CPU)")
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = setting("auto", help="Lightning accelerator")
    devices: str = setting("auto", help="number of devices, indices (0,1) or auto", check=check_devices)
    ddp: str | None = setting(None, help="Lightning distributed strategy, e.g. ddp")
    num_nodes: int = setting(1, "[1, inf]", "machines taking part (torchrun / SLURM)")
    channels_last: bool = setting(True, help="memory format of convolutional backbones")
    find_lr: bool = setting(False, help="run Lightning's LR finder first and use its suggestion")
    eval_batch_size: int = setting(64, "[1, inf]", "batch size of inference", resume_safe=True)
    engine: Engine = setting("auto", help="what computes cached features (default auto)", resume_safe=True)
    report: bool = setting(True, help="draw the figures and write report.html at the end", resume_safe=True)


@dataclass
class TaskConfig:
    """The label space (tasks.py): one label per image, or any number of them."""

    name: Literal["auto", "single-label", "multi-label", "multilabel"] = setting(
        "auto", help="auto: multi-label when a manifest row has more or less than one label")
    threshold: float | None = setting(None, "(0, 1)", "multi-label: one threshold for every label (default: each "
                                                     "label's own, chosen for its F1 on out-of-fold predictions)")
    temperature: float | None = setting(None, "(0, 100]", "the calibration's temperature (default: fitted on held-out "
                                                          "predictions; auto writes the one it fitted out of fold)")


@dataclass
class AuditConfig:
    """The data audit (`transferlab audit`, and audit.json in every train and cv run)."""

    enabled: bool = setting(True, help="audit every train and cv run (audit.json, the report's Audit section)")
    similarity: float = setting(0.995, "(0, 1]", "near-duplicates: the correlation of two images' blurred grey "
                                                 "pixels, best over small crops, at or above which they are copies")
    outliers: int = setting(20, "[0, inf]", "how many of the images farthest from their neighbours are listed")
    neighbours: int = setting(10, "[1, 1000]", "outliers and unfamiliar inputs: the k nearest training images")
    false_alarm: float = setting(0.05, "(0, 1)", "unfamiliar inputs: the share of held-out training images flagged")
    label_issues: int = setting(50, "[0, inf]", "at most this many likely label errors are listed (all are counted)")


@dataclass
class CVConfig:
    """Cross-validation (`transferlab cv`)."""

    folds: int = setting(5, "[2, 1000]", "number of folds K")
    repeats: int = setting(1, "[1, 1000]", "repeat the K folds R times with different shuffles")


@dataclass
class TrackingConfig:
    """Where a run is tracked besides its own folder (tracking.py); the CSV logs are always written."""

    tracker: Literal["tensorboard", "csv", "mlflow"] = setting("tensorboard", help="where the run is tracked")
    uri: str | None = setting(None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    experiment: str = setting("transferlab", help="MLflow experiment")


@dataclass
class Config:
    """A whole run. `seed` drives every random step."""

    seed: int = setting(0, "[0, 4294967295]", "seed of every random step")
    data: DataConfig = setting(factory=DataConfig)
    preprocess: PreprocessConfig = setting(factory=PreprocessConfig)
    augment: AugmentConfig = setting(factory=AugmentConfig)
    model: ModelConfig = setting(factory=ModelConfig)
    strategy: StrategyConfig = setting(factory=StrategyConfig)
    optim: OptimConfig = setting(factory=OptimConfig)
    schedule: ScheduleConfig = setting(factory=ScheduleConfig)
    train: TrainConfig = setting(factory=TrainConfig)
    cv: CVConfig = setting(factory=CVConfig)
    tracking: TrackingConfig = setting(factory=TrackingConfig)
    task: TaskConfig = setting(factory=TaskConfig)
    audit: AuditConfig = setting(factory=AuditConfig)


def setting_of(key: str) -> tuple[Any, dataclasses.Field]:
    """(type annotation, field) of dotted config `key`, e.g. `optim.lr`."""
    import typing

    owner, *parents, name = [Config, *key.split(".")]
    for part in parents:
        owner = typing.get_type_hints(owner)[part]
    return typing.get_type_hints(owner)[name], {f.name: f for f in dataclasses.fields(owner)}[name]


def declared(cls: type = Config, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every leaf setting by dotted key: `{"optim.lr": Field, ...}`."""
    out = {}
    for f in dataclasses.fields(cls):
        kind = f.type if isinstance(f.type, type) else globals().get(str(f.type))
        if dataclasses.is_dataclass(kind):
            out.update(declared(kind, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = f
    return out


def resume_safe_keys() -> frozenset[str]:
    """Settings a resumed run may change: they never change what it computes."""
    return frozenset(key for key, f in declared().items() if f.metadata.get("resume_safe"))


def budget_seconds(config: Config) -> float | None:
    """train.budget in seconds (None: no limit); `auto` is 10 minutes for strategy auto, no limit otherwise."""
    if str(config.train.budget).strip().lower() == "auto":
        return 600.0 if config.strategy.name == "auto" else None
    return parse_budget(config.train.budget)


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
    return merge(config, unflatten({key: value}), origin=origin)


def unflatten(settings: dict) -> dict:
    """{"a.b": 1, "a.c": 2} -> {a: {b: 1, c: 2}}: dotted overrides as the nested mapping merge takes."""
    out: dict = {}
    for key, value in settings.items():
        node, (*parents, last) = out, key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


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
    from transferlab.io import atomic_write

    text = yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True).encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), lambda handle: handle.write(text), durable=True)
