"""`--strategy auto`: the classic 2x2 rule (data set size x domain similarity) on measured
quantities: the TRAINING part's images per class, and the backbone's transferability on it
(LogME on the pooled features, which the chosen strategy then reuses; normalised LEEP when the
backbone's ImageNet head is at hand). `choose(job)` returns a strategy object and the record of
the decision."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from transferlab.config import Config, merge
from transferlab.errors import ConfigError

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


@dataclass
class Decision:
    """What the rule chose, the measured quantities it chose from, and the config changes it makes."""

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
        label = {"logme": "LogME", "leep": "normalised LEEP"}[self.method]
        return (f"{self.images:,} training images ({self.per_class:,.0f} per class) -> "
                f"{'small' if self.small else 'large'}; {label} {self.score:.2f} "
                f"({'>=' if self.similar else '<'} {self.threshold:g}) -> "
                f"{'similar' if self.similar else 'different'} domain: {self.decision}")

    def record(self) -> dict:
        return {"images": self.images, "per_class": self.per_class, "score": round(self.score, 6),
                "method": self.method, "threshold": self.threshold, "similar": self.similar, "small": self.small,
                "quadrant": self.quadrant, "decision": self.decision, "strategy": self.strategy,
                "settings": self.overrides, "logme": self.logme, "leep": self.leep, "reason": self.reason}


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


def measure(job) -> tuple[np.ndarray, np.ndarray, float, float | None]:
    """(features, labels, LogME, LEEP or None) of the job's training part (seeded subsample of
    at most strategy.auto.max_images)."""
    import torch

    from transferlab.models.backbone import imagenet_head
    from transferlab.transferability import leep, logme

    features = job.features()
    train = features.features["train"][: features.plain_rows].numpy()
    labels = features.labels["train"][: features.plain_rows]
    limit = job.config.strategy.auto.max_images
    if len(labels) > limit:
        keep = np.sort(np.random.default_rng(job.config.seed).choice(len(labels), limit, replace=False))
        train, labels = train[keep], labels[keep]
    head = imagenet_head(job.config.model)
    source = None
    if head is not None:
        with torch.no_grad():
            source = leep(head(torch.from_numpy(train)).softmax(dim=1).numpy(), labels)
    return train, labels, logme(train, labels), source


def choose(job):
    """The strategy the rule picks for this job's training part, and the decision's record."""
    from transferlab.console import info
    from transferlab.run import is_worker_process
    from transferlab.strategies import get_strategy

    _, labels, logme_score, leep_score = measure(job)
    decision = decide(job.config, labels, logme_score=logme_score, leep_score=leep_score)
    nested: dict = {}
    for key, value in decision.overrides.items():
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = value
    config = merge(job.config, nested, origin="strategy auto") if nested else job.config
    if not is_worker_process() and job.progress:
        info(f"auto strategy: {decision.reason}")
    return get_strategy(decision.strategy, config), decision.record()
