"""Gradual unfreezing: layer groups join on a schedule of strategy.gradual.steps
({epoch, groups, lr}), each at its own rate on the shared schedule."""

from __future__ import annotations

from transferlab.errors import ConfigError
from transferlab.strategies import register
from transferlab.strategies.base import Stage, Strategy, check_groups


@register
class Gradual(Strategy):
    """Groups join on a schedule: head for epochs 1-5, late from 6, middle and early from 11
    (strategy.gradual.steps), each at its own rate."""

    name = "gradual"

    def __init__(self, config):
        steps = config.strategy.gradual.steps
        if not steps:
            raise ConfigError("strategy.gradual.steps is empty: give at least [{epoch: 1, groups: [head]}]")
        for i, step in enumerate(steps):
            check_groups(step.groups, f"strategy.gradual.steps[{i}].groups")
        if min(s.epoch for s in steps) != 1:
            raise ConfigError("strategy.gradual.steps must start with a step at epoch 1 (what trains first)")
        super().__init__(config)

    def epochs_default(self, config) -> int:
        return max(config.strategy.gradual.epochs, max(step.epoch for step in config.strategy.gradual.steps) + 4)

    def stages(self) -> list[Stage]:
        return [Stage("main", "images", self.config.train.epochs)]

    def trainable(self, epoch: int) -> list[str]:
        active: list[str] = []
        for step in sorted(self.config.strategy.gradual.steps, key=lambda s: s.epoch):
            if step.epoch - 1 <= epoch:
                active += [g for g in step.groups if g not in active]
        return active

    def lr_scales(self) -> dict[str, float]:
        """A step's own `lr` (absolute) for the groups it brings in, else the group's multiplier."""
        scales = super().lr_scales()
        for step in self.config.strategy.gradual.steps:
            if step.lr is not None:
                scales.update({group: step.lr / self.config.optim.lr for group in step.groups})
        return scales
