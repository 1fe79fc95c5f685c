"""Transfer-learning strategies: which layer groups train, when, and at what learning rate.

- feature-extraction: the backbone is frozen (BatchNorm in eval mode); pooled features are
  computed once per image and the head trains on them.
- fine-tune: every group trains from the start at its own rate, optim.lr x strategy.lr_mult
  (early 0.01, middle 0.1, late 1, head 1), or geometric layer decay.
- gradual: groups join on a schedule of (epoch, groups, lr) steps through Lightning's
  BaseFinetuning, each as new optimizer param groups whose names are saved for resume.

Per-group rates travel as data on the optimizer's param groups (`initial_lr`); one scheduler
(`ScaledLR`) multiplies all of them by the same factor, so groups that join later follow the
same schedule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import BaseFinetuning
from torch.nn.modules.batchnorm import _BatchNorm

from transferlab.config import Config, ScheduleConfig
from transferlab.errors import ConfigError
from transferlab.models.groups import GROUP_NAMES, layer_depths, named_groups, no_weight_decay

STRATEGIES = ("feature-extraction", "fine-tune", "gradual")
DEFAULT_EPOCHS = {"feature-extraction": 30, "fine-tune": 10, "gradual": 20}


def resolve_strategy(config: Config) -> str:
    """The requested strategy (`auto` is decided later, from the data: see `decide`)."""
    return config.strategy.name


@dataclass
class Decision:
    """What `auto` chose, the measured quantities it chose from, and the config changes it makes."""

    images: int
    per_class: float
    score: float
    method: str
    threshold: float
    small: bool
    similar: bool
    strategy: str
    overrides: dict = field(default_factory=dict)
    leep: float | None = None
    logme: float | None = None

    @property
    def quadrant(self) -> str:
        return f"{'small' if self.small else 'large'} + {'similar' if self.similar else 'different'}"

    @property
    def decision(self) -> str:
        return QUADRANTS[(self.small, self.similar)][1]

    @property
    def reason(self) -> str:
        size = "small" if self.small else "large"
        domain = "similar" if self.similar else "different"
        sign = ">=" if self.similar else "<"
        label = {"logme": "LogME", "leep": "normalised LEEP"}[self.method]
        return (f"{self.images:,} training images ({self.per_class:,.0f} per class) -> {size}; {label} "
                f"{self.score:.2f} ({sign} {self.threshold:g}) -> {domain} domain: {self.decision}")

    def record(self) -> dict:
        return {"images": self.images, "per_class": self.per_class, "score": round(self.score, 6),
                "method": self.method, "threshold": self.threshold, "similar": self.similar, "small": self.small,
                "quadrant": self.quadrant, "decision": self.decision, "strategy": self.strategy,
                "settings": self.overrides, "logme": self.logme, "leep": self.leep, "reason": self.reason}


# (small, similar) -> (strategy, what it means, config overrides)
QUADRANTS: dict[tuple[bool, bool], tuple[str, str, dict]] = {
    (True, True): ("feature-extraction", "feature extraction, head only", {}),
    (True, False): ("fine-tune", "feature extraction, then the last blocks (late group) train with the head",
                    {"strategy.train_groups": ["late", "head"],
                     "strategy.lr_mult": {"early": 0.0, "middle": 0.0, "late": 0.3, "head": 1.0}}),
    (False, True): ("fine-tune", "fine-tune everything at a low learning rate (backbone 1-10% of the head's)",
                    {"strategy.lr_mult": {"early": 0.01, "middle": 0.03, "late": 0.1, "head": 1.0}}),
    (False, False): ("fine-tune", "fine-tune everything at a higher learning rate (backbone 10-100% of the head's)",
                     {"strategy.lr_mult": {"early": 0.1, "middle": 0.3, "late": 1.0, "head": 1.0}}),
}


def decide(config: Config, train_labels: np.ndarray, *, logme_score: float | None,
           leep_score: float | None = None) -> Decision:
    """The 2x2 rule on the TRAINING part's size and the backbone's measured transferability."""
    auto = config.strategy.auto
    counts = np.bincount(train_labels)
    counts = counts[counts > 0]
    per_class = float(np.median(counts)) if len(counts) else 0.0
    small = per_class < auto.small_per_class
    if auto.score == "leep":
        if leep_score is None:
            raise ConfigError("strategy.auto.score=leep needs the backbone's ImageNet classifier (the bundled "
                              "tf_efficientnet_lite0 has one); use strategy.auto.score=logme")
        score = 1.0 - leep_score / math.log(1.0 / max(2, len(counts)))
        threshold = auto.similar_leep
    else:
        score, threshold = float(logme_score), auto.similar_logme
    similar = score >= threshold
    strategy, _, overrides = QUADRANTS[(small, similar)]
    return Decision(images=int(len(train_labels)), per_class=per_class, score=float(score), method=auto.score,
                    threshold=threshold, small=small, similar=similar, strategy=strategy, overrides=dict(overrides),
                    leep=leep_score, logme=logme_score)


def epochs_for(config: Config, strategy: str) -> int:
    if config.train.epochs is not None:
        if config.train.epochs < 1:
            raise ConfigError(f"train.epochs={config.train.epochs} must be at least 1")
        return config.train.epochs
    if strategy == "gradual":
        return max(DEFAULT_EPOCHS["gradual"], max(step.epoch for step in config.strategy.gradual) + 4)
    return DEFAULT_EPOCHS[strategy]


def weight_decay_for(config: Config) -> float:
    if config.optim.weight_decay is not None:
        return config.optim.weight_decay
    return 0.05 if config.optim.name == "adamw" else 5e-4


def group_lr(config: Config, group: str) -> float:
    mult = config.strategy.lr_mult
    if group not in mult:
        raise ConfigError(f"strategy.lr_mult has no rate for group '{group}' (groups: {', '.join(GROUP_NAMES)})")
    return config.optim.lr * mult[group]


def check_groups(groups: Iterable[str], where: str) -> None:
    for group in groups:
        if group not in GROUP_NAMES:
            raise ConfigError(f"{where}: unknown layer group '{group}' (groups: {', '.join(GROUP_NAMES)})")


def param_groups(classifier: nn.Module, config: Config, groups: Iterable[str],
                 lr: float | None = None) -> list[dict]:
    """Optimizer param groups for the named layer `groups`: split into decay / no-decay, each named.

    Rates: `lr` if given, else optim.lr x strategy.lr_mult[group], or with strategy.layer_decay
    optim.lr x decay^depth (depth 0 = head). `initial_lr` holds the peak rate the schedule scales.
    """
    groups = list(groups)
    check_groups(groups, "layer groups")
    members = named_groups(classifier)
    params = dict(classifier.named_parameters())
    decay = weight_decay_for(config)
    depths = layer_depths(classifier) if config.strategy.layer_decay is not None and lr is None else None
    out: list[dict] = []
    for group in groups:
        buckets: dict[tuple[str, float, bool], list[nn.Parameter]] = {}
        for name in members[group]:
            param = params[name]
            if depths is not None:
                rate = config.optim.lr * config.strategy.layer_decay ** depths[name]
                label = f"{group}.d{depths[name]}"
            else:
                rate = lr if lr is not None else group_lr(config, group)
                label = group
            key = (label, rate, no_weight_decay(name, param))
            buckets.setdefault(key, []).append(param)
        for (label, rate, exempt), plist in buckets.items():
            out.append({"params": plist, "name": label if not exempt else f"{label}/no_decay", "lr": rate,
                        "initial_lr": rate, "weight_decay": 0.0 if exempt else decay})
    return out


def build_optimizer(groups: list[dict], config: Config) -> torch.optim.Optimizer:
    if config.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=config.optim.lr, momentum=config.optim.momentum,
                               nesterov=config.optim.nesterov and config.optim.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.optim.lr, betas=config.optim.betas)


def set_trainable(classifier: nn.Module, groups: Iterable[str], *, train_bn: bool = True) -> list[nn.Parameter]:
    """Unfreeze the parameters of `groups` (BatchNorm ones only with `train_bn`); returns them."""
    members = named_groups(classifier)
    params = dict(classifier.named_parameters())
    bn_params = {id(p) for m in classifier.modules() if isinstance(m, _BatchNorm) for p in m.parameters()}
    unfrozen = []
    for group in groups:
        for name in members[group]:
            param = params[name]
            if not train_bn and id(param) in bn_params:
                continue
            param.requires_grad_(True)
            unfrozen.append(param)
    return unfrozen


def freeze_all(classifier: nn.Module) -> None:
    for param in classifier.parameters():
        param.requires_grad_(False)


def set_frozen_bn_eval(module: nn.Module) -> None:
    """BatchNorm layers whose parameters are all frozen use their running statistics (eval mode)."""
    for m in module.modules():
        if isinstance(m, _BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def groups_at_epoch(config: Config, strategy: str, epoch: int) -> list[str]:
    """Layer groups that train in 0-based `epoch`."""
    if strategy == "feature-extraction":
        return ["head"]
    if strategy == "fine-tune":
        check_groups(config.strategy.train_groups, "strategy.train_groups")
        return [g for g in GROUP_NAMES if g in config.strategy.train_groups]
    active: list[str] = []
    for step in sorted(config.strategy.gradual, key=lambda s: s.epoch):
        if step.epoch - 1 <= epoch:
            active += [g for g in step.groups if g not in active]
    return active


def check_gradual(config: Config) -> None:
    steps = config.strategy.gradual
    if not steps:
        raise ConfigError("strategy.gradual is empty: give at least [{epoch: 1, groups: [head]}]")
    for i, step in enumerate(steps):
        check_groups(step.groups, f"strategy.gradual[{i}].groups")
        if step.epoch < 1:
            raise ConfigError(f"strategy.gradual[{i}].epoch={step.epoch} must be >= 1 (epochs count from 1)")
    if min(s.epoch for s in steps) != 1:
        raise ConfigError("strategy.gradual must start with a step at epoch 1 (what trains first)")


class GradualUnfreezing(BaseFinetuning):
    """Lightning BaseFinetuning driven by strategy.gradual: at each step's epoch, its groups are
    unfrozen and join the optimizer as new named param groups. BaseFinetuning saves the groups in
    the checkpoint, so a resumed run rebuilds the same optimizer before its state is loaded."""

    def __init__(self, config: Config):
        super().__init__()
        check_gradual(config)
        self.config = config

    def freeze_before_training(self, pl_module) -> None:
        freeze_all(pl_module.model)
        set_trainable(pl_module.model, groups_at_epoch(self.config, "gradual", 0),
                      train_bn=self.config.strategy.train_bn)

    def finetune_function(self, pl_module, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        present = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for step in sorted(self.config.strategy.gradual, key=lambda s: s.epoch):
            if step.epoch - 1 > epoch:
                continue
            params = set_trainable(pl_module.model, step.groups, train_bn=self.config.strategy.train_bn)
            if all(id(p) in present for p in params):
                continue  # already joined (earlier epoch, or restored on resume)
            for group in param_groups(pl_module.model, self.config, step.groups, lr=step.lr):
                group["params"] = [p for p in group["params"] if p.requires_grad and id(p) not in present]
                if group["params"]:
                    group["lr"] = group["initial_lr"] * pl_module.lr_factor_now()
                    optimizer.add_param_group(group)
                    present.update(id(p) for p in group["params"])
        if pl_module.training:
            pl_module.train()  # newly unfrozen BatchNorm layers train from now on, frozen ones stay in eval


def lr_factor(schedule: ScheduleConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of every group's peak rate at optimizer `step` (0-based)."""
    total = max(1, total_steps)
    per_epoch = max(1, steps_per_epoch)
    name = schedule.name
    if name == "onecycle":
        rise = max(1, round(schedule.pct_start * total))
        start = 1.0 / schedule.div_factor
        end = start / schedule.final_div_factor
        if step < rise:
            return start + (1.0 - start) * (1 - math.cos(math.pi * step / rise)) / 2
        t = min(1.0, (step - rise) / max(1, total - rise))
        return end + (1.0 - end) * (1 + math.cos(math.pi * t)) / 2
    if name == "cyclic":
        cycle = max(2, round(schedule.cycle_epochs * per_epoch))
        position = (step % cycle) / cycle
        triangle = 1 - abs(2 * position - 1)  # 0 -> 1 -> 0 over one cycle
        return schedule.cycle_min_ratio + (1 - schedule.cycle_min_ratio) * triangle
    warmup = round(schedule.warmup_epochs * per_epoch)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if name == "constant":
        return 1.0
    if name == "step":
        return schedule.gamma ** int(step // max(1, round(schedule.step_epochs * per_epoch)))
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return schedule.min_lr_ratio + (1 - schedule.min_lr_ratio) * (1 + math.cos(math.pi * t)) / 2


class ScaledLR(torch.optim.lr_scheduler.LRScheduler):
    """Every param group's rate = its `initial_lr` x lr_factor(step), groups added later included."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, steps_per_epoch: int,
                 total_steps: int, last_epoch: int = -1):
        self.schedule, self.steps_per_epoch, self.total_steps = schedule, steps_per_epoch, total_steps
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int | None = None) -> float:
        return lr_factor(self.schedule, self.last_epoch if step is None else step, self.steps_per_epoch,
                         self.total_steps)

    def get_lr(self) -> list[float]:
        f = self.factor()
        return [g.setdefault("initial_lr", g["lr"]) * f for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Plain values only (the schedule comes from the config), so checkpoints load with weights_only."""
        return {k: v for k, v in super().state_dict().items() if k != "schedule"}

    def load_state_dict(self, state_dict: dict) -> None:
        schedule = self.schedule
        super().load_state_dict(state_dict)
        self.schedule = schedule
