"""From scratch: a small CNN (models/scratch.py) trained from its own initialisation at the images' own
size, every layer at the head's rate, flips and shifts, AdamW on a cosine schedule. Not transfer learning:
the baseline a large set of small images from a far domain holds up to it, and the search's candidate there,
where it can win (60,000 Fashion-MNIST images on 2 CPU cores: 93.1% in 6.5 minutes)."""

from __future__ import annotations

from transferlab.models.scratch import NAME
from transferlab.strategies import register
from transferlab.strategies.base import Stage, Strategy

SETTINGS = {"model.name": NAME, "model.pretrained": False, "model.taps": 0, "augment.preset": "light",
            "optim.lr": 2e-3, "optim.label_smoothing": 0.05, "train.batch_size": 128,
            "strategy.lr_mult": {"early": 1.0, "middle": 1.0, "late": 1.0, "head": 1.0}}


@register
class Scratch(Strategy):
    """A small CNN trained from its own initialisation at the images' own size, every layer at the head's rate
    (strategy.scratch.epochs); the search offers it on large sets of a different domain."""

    name = "scratch"

    def __init__(self, config):
        from transferlab.config import merge

        # what makes it this strategy, whoever asks for it (the search's variant adds its recipe: SETTINGS)
        super().__init__(merge(config, {"model": {"name": NAME, "pretrained": False, "taps": 0, "weights": None}},
                               origin="strategy scratch"))

    @classmethod
    def variants(cls, similar: bool, small: bool) -> dict[str, dict]:
        """Only where transfer is weakest and data plentiful: a large set of a different domain."""
        return {} if similar or small else {"scratch": dict(SETTINGS)}

    def stages(self) -> list[Stage]:
        return [Stage("main", "images", self.config.train.epochs)]
