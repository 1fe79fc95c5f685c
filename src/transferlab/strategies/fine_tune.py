"""Fine-tuning: the groups of strategy.fine_tune.train_groups train from the start, each at its own rate,
after a warm-up of the head on cached features (LP-FT: a random head must not wreck the
pretrained features); the stage that scores best on validation is kept."""

from __future__ import annotations

from transferlab.models.groups import GROUP_NAMES
from transferlab.strategies import register
from transferlab.strategies.base import Stage, Strategy, check_groups


@register
class FineTune(Strategy):
    """Every group of strategy.fine_tune.train_groups at its own rate (optim.lr x strategy.lr_mult, or
    strategy.layer_decay), after strategy.fine_tune.head_warmup_epochs of the head on cached features."""

    name = "fine-tune"

    @classmethod
    def variants(cls, similar: bool, small: bool) -> dict[str, dict]:
        """The last blocks with the head, and everything at rates for the measured domain (the rule's
        rates: a similar domain moves the backbone at 1-10% of the head's rate, a far one at 10-100%)."""
        rates = (0.01, 0.03, 0.1) if similar else (0.1, 0.3, 1.0)
        return {"fine-tune-late": {"strategy.fine_tune.train_groups": ["late", "head"],
                                   "strategy.lr_mult": {"early": 0.0, "middle": 0.0, "late": 0.3, "head": 1.0}},
                "fine-tune": {"strategy.lr_mult": dict(zip(("early", "middle", "late", "head"), (*rates, 1.0)))}}

    def __init__(self, config):
        check_groups(config.strategy.fine_tune.train_groups, "strategy.fine_tune.train_groups")
        super().__init__(config)

    def stages(self) -> list[Stage]:
        warmup = self.config.strategy.fine_tune.head_warmup_epochs
        main = [Stage("main", "images", self.config.train.epochs)]
        return ([Stage("warmup", "features", warmup, find_lr=False)] if warmup > 0 else []) + main

    def trainable(self, epoch: int) -> list[str]:
        return [g for g in GROUP_NAMES if g in self.config.strategy.fine_tune.train_groups]

    def label(self) -> str:
        groups = self.trainable(0)
        return self.name if groups == list(GROUP_NAMES) else f"{self.name} ({', '.join(groups)})"
