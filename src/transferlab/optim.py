"""Optimizer parameter groups (every parameter from step 0; a group's `lr` the base rate, its `lr_scale` the layer
group's multiplier, timm's idiom) and learning-rate schedules, from timm's and torch's own helpers."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler, StepLRScheduler

from transferlab.config import Config
from transferlab.errors import ConfigError
from transferlab.models.groups import GROUP_NAMES, named_groups


@contextlib.contextmanager
def all_trainable(model: nn.Module):
    """timm's group helpers leave out frozen parameters: show them every parameter, then restore."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for param, _ in saved:
        param.requires_grad_(True)
    try:
        yield
    finally:
        for param, flag in saved:
            param.requires_grad_(flag)


def no_decay_names(classifier: nn.Module) -> set[str]:
    """Parameters timm's rule exempts from weight decay: 1-d ones, biases and the Classifier's `no_weight_decay()`."""
    names = {id(p): n for n, p in classifier.named_parameters()}
    with all_trainable(classifier):
        groups = param_groups_weight_decay(classifier, 1.0, no_weight_decay_list=classifier.no_weight_decay())
    return {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}


def param_groups(classifier: nn.Module, config: Config, lr: float, scales: dict[str, float] | None = None
                 ) -> list[dict]:
    """Named optimizer groups over EVERY parameter of `classifier` (a Classifier): base rate `lr`,
    `lr_scale` per layer group from `scales` (default strategy.lr_mult), or geometric per timm
    layer with strategy.layer_decay; weight decay by timm's rule."""
    decay = config.optim.decay()
    params = dict(classifier.named_parameters())
    groups_by_name = {name: group for group, names in named_groups(classifier).items() for name in names}
    if config.strategy.layer_decay is not None:
        with all_trainable(classifier):
            built = param_groups_layer_decay(classifier, decay, no_weight_decay_list=classifier.no_weight_decay(),
                                             layer_decay=config.strategy.layer_decay)
        names = {id(p): n for n, p in params.items()}
        out = []
        for group in built:
            first = names[id(group["params"][0])]
            depth = round(math.log(group["lr_scale"]) / math.log(config.strategy.layer_decay))
            label = f"{groups_by_name[first]}.depth{depth}"  # layers below the head: lr x decay^depth
            out.append({"params": group["params"], "lr": lr, "lr_scale": group["lr_scale"],
                        "weight_decay": group["weight_decay"],
                        "name": label if group["weight_decay"] else f"{label}/no_decay"})
        return sorted(out, key=lambda g: g["name"])
    mult = scales if scales is not None else config.strategy.lr_mult
    missing = [g for g in GROUP_NAMES if g not in mult]
    if missing:
        raise ConfigError(f"strategy.lr_mult has no rate for {', '.join(missing)} (groups: {', '.join(GROUP_NAMES)})")
    exempt = no_decay_names(classifier)
    out = []
    for group in GROUP_NAMES:
        members = [n for n, g in groups_by_name.items() if g == group]
        for suffix, wd, names in (("", decay, [n for n in members if n not in exempt]),
                                  ("/no_decay", 0.0, [n for n in members if n in exempt])):
            if names:
                out.append({"params": [params[n] for n in names], "lr": lr, "lr_scale": mult[group],
                            "weight_decay": wd, "name": group + suffix})
    return out


def head_param_groups(head: nn.Module, config: Config, lr: float) -> list[dict]:
    """The head alone (a stage on cached features), with timm's weight-decay rule."""
    built = param_groups_weight_decay(head, config.optim.decay())
    return [{"params": g["params"], "lr": lr, "lr_scale": 1.0, "weight_decay": g["weight_decay"],
             "name": "head" if g["weight_decay"] else "head/no_decay"} for g in built if g["params"]]


def build_optimizer(groups: list[dict], config: Config) -> torch.optim.Optimizer:
    if config.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=config.optim.momentum,
                               nesterov=config.optim.nesterov and config.optim.momentum > 0)
    return torch.optim.AdamW(groups, lr=groups[0]["lr"], betas=config.optim.betas)


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config, steps_per_epoch: int, total_steps: int):
    """The schedule of `schedule.name` over optimizer steps: timm's cosine / step / constant (which
    apply each group's lr_scale), torch's OneCycleLR / CyclicLR with per-group rates."""
    schedule = config.schedule
    per_epoch, total = max(1, steps_per_epoch), max(1, total_steps)
    base = optimizer.param_groups[0]["lr"]
    if schedule.name in ("onecycle", "cyclic"):
        peaks = [g["lr"] * g.get("lr_scale", 1.0) for g in optimizer.param_groups]
        if schedule.name == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=peaks, total_steps=total, pct_start=schedule.pct_start,
                div_factor=schedule.div_factor, final_div_factor=schedule.final_div_factor, cycle_momentum=False)
        half = max(1, round(schedule.cycle_epochs * per_epoch / 2))
        return torch.optim.lr_scheduler.CyclicLR(optimizer, base_lr=[p * schedule.cycle_min_ratio for p in peaks],
                                                 max_lr=peaks, step_size_up=half, mode="triangular",
                                                 cycle_momentum=False)
    warmup = min(round(schedule.warmup_epochs * per_epoch), total - 1)
    common = {"warmup_t": warmup, "warmup_lr_init": base / (warmup + 1), "warmup_prefix": True,
              "t_in_epochs": False}
    if schedule.name == "cosine" and total - warmup > 1:
        return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=base * schedule.min_lr_ratio,
                                 **common)
    if schedule.name == "step":
        return StepLRScheduler(optimizer, decay_t=max(1, round(schedule.step_epochs * per_epoch)),
                               decay_rate=schedule.gamma, **common)
    return StepLRScheduler(optimizer, decay_t=total + 1, decay_rate=1.0, **common)  # constant after the warm-up


def scheduler_step(scheduler, global_step: int) -> None:
    """One optimizer step done: timm's schedulers take the step count, torch's advance by one."""
    if hasattr(scheduler, "step_update"):
        scheduler.step_update(num_updates=global_step)
    else:
        scheduler.step()
