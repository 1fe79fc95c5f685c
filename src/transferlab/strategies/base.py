"""The strategy base class: stages, the layer groups that train in each epoch, their rates."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from transferlab.config import Config
from transferlab.errors import ConfigError
from transferlab.models.groups import GROUP_NAMES


@dataclass(frozen=True)
class Stage:
    """One fit of a strategy: `features` trains the head on cached features, `images` trains the
    classifier on images (the groups of `Strategy.trainable`); any other kind is run by the
    strategy's own `run`."""

    name: str  # its checkpoints/ and logs/ folder
    kind: str
    epochs: int
    find_lr: bool = True  # with train.find_lr, Lightning's LR finder picks this stage's rate
    views: int = 0  # a `features` stage: K augmented views of each training image besides the plain one


class Strategy:
    """Subclass, set the class attributes, say the stages; override what differs."""

    name: ClassVar[str] = ""
    cheap: ClassVar[bool] = False  # trains on cached features only (never the backbone)
    refit: ClassVar[dict] = {}  # overrides of its final fit when the search chose it (e.g. on train + val)

    @classmethod
    def variants(cls, similar: bool, small: bool) -> dict[str, dict]:
        """The search's candidates this strategy offers: name -> dotted config overrides (the measured
        domain similarity and size of the set may choose them and their rates)."""
        return {cls.name: {}}

    @classmethod
    def out_of_fold(cls, features, labels, num_classes: int, folds, *, balanced: bool, task=None,
                    deadline: float | None) -> list[tuple[dict, object]] | None:
        """Out-of-fold probabilities of this strategy's search grid on cached `features`, one
        (overrides, probabilities with NaN rows where the deadline cut a fold) per grid point; None
        when it cannot be scored that way (the search then trials it on the validation split)."""
        return None

    @classmethod
    def scores_out_of_fold(cls) -> bool:
        """Whether this strategy offers `out_of_fold` (the search's cheap candidates)."""
        return cls.out_of_fold.__func__ is not Strategy.out_of_fold.__func__

    def train_seconds(self, images: int, forward: float) -> float:
        """Estimated seconds to fit on `images` images when one image's backbone pass takes `forward`
        seconds: about three passes (forward and backward) per image and epoch of each image stage."""
        return sum(3 * forward * images * stage.epochs for stage in self.stages() if stage.kind == "images")

    @property
    def summary(self) -> str:
        """What trains, in a sentence: the class docstring (the report shows it)."""
        return " ".join((type(self).__doc__ or self.name).split())

    def __init__(self, config: Config):
        epochs = config.train.epochs if config.train.epochs is not None else self.epochs_default(config)
        #: the concrete config of this strategy (what config.yaml records and a rerun repeats)
        self.config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs),
                                          strategy=dataclasses.replace(config.strategy, name=self.name))

    @property
    def settings(self):
        """This strategy's own config section (strategy.fine_tune, strategy.gradual, ...)."""
        return getattr(self.config.strategy, self.name.replace("-", "_"))

    def epochs_default(self, config: Config) -> int:
        return getattr(config.strategy, self.name.replace("-", "_")).epochs

    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def trainable(self, epoch: int) -> list[str]:
        """The layer groups that train in 0-based `epoch` of an `images` stage."""
        return list(GROUP_NAMES)

    def lr_scales(self) -> dict[str, float]:
        """Each layer group's rate as a multiple of optim.lr."""
        return dict(self.config.strategy.lr_mult)

    def label(self) -> str:
        """The name with what makes this instance particular, e.g. `fine-tune (late, head)`."""
        return self.name

    def run(self, stage: Stage, fitting):
        if stage.kind == "features":
            return fitting.train_head(stage)
        if stage.kind == "images":
            return fitting.train_classifier(stage, schedule=self.trainable, scales=self.lr_scales(),
                                            train_bn=self.config.strategy.train_bn)
        raise NotImplementedError(f"strategy {self.name} has a stage of kind {stage.kind!r} and no run() for it")


def check_groups(groups: Iterable[str], where: str) -> None:
    for group in groups:
        if group not in GROUP_NAMES:
            raise ConfigError(f"{where}: unknown layer group '{group}' (groups: {', '.join(GROUP_NAMES)})")
