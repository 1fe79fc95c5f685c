"""Ensemble: members fitted one by one, each a registered strategy at its own input size with its
own settings, combined by weight into one model (the average of their probabilities). This is how
config.yaml records what auto's search chose, so a rerun repeats the final fit without the search."""

from __future__ import annotations

from transferlab.config import merge, unflatten
from transferlab.errors import ConfigError
from transferlab.io import digest_key
from transferlab.strategies import get_strategy, register
from transferlab.strategies.base import Strategy


@register
class Ensemble(Strategy):
    """A weighted ensemble of strategy.ensemble.members (each a strategy at its own input size), fitted one by
    one; the model averages their probabilities by weight."""

    name = "ensemble"

    @classmethod
    def variants(cls, similar: bool, small: bool) -> dict[str, dict]:
        return {}  # the search builds ensembles; it never tries one as a candidate

    def __init__(self, config):
        if not config.strategy.ensemble.members:
            raise ConfigError("strategy.ensemble.members is empty: list at least one {strategy, size, weight}")
        super().__init__(config)
        #: (folder name, strategy, weight) of each member
        self.members = [(member_folder(m.strategy, m.size, m.settings), get_strategy(m.strategy, self.member_config(m)),
                         m.weight) for m in config.strategy.ensemble.members]
        if any(part.name == self.name for _, part, _ in self.members):
            raise ConfigError("strategy.ensemble.members cannot hold an ensemble")

    def epochs_default(self, config) -> int:
        return 1

    def member_config(self, member):
        overrides = unflatten(member.settings)
        overrides.setdefault("model", {})["size"] = member.size
        overrides.setdefault("strategy", {})["name"] = member.strategy
        base = merge(self.config, {"train": {"epochs": None}}, origin="ensemble")
        return merge(base, overrides, origin=f"strategy.ensemble.members ({member.strategy})")

    def stages(self) -> list:
        return []

    def label(self) -> str:
        if len(self.members) == 1:
            return self.members[0][1].label()
        total = sum(w for _, _, w in self.members)
        return f"ensemble of {len(self.members)}: " + ", ".join(
            f"{part.label()} @ {part.config.model.size} px ({w / total:.2f})" for _, part, w in self.members)


def member_folder(strategy: str, size: int | None, settings: dict) -> str:
    """The folder of a member under RUN/members/: the same for auto's trial of it and its final fit."""
    return f"{strategy}-{size or 'full'}px-{digest_key(settings)[:8]}"
