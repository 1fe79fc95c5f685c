"""The prior of the search: the classic 2x2 rule of transfer learning on measured quantities of the
TRAINING part, its size (median images per class) and the backbone's transferability on it
(LogME of the pooled features; normalised LEEP when the ImageNet head is at hand)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from transferlab.data.dataset import count_labels
from transferlab.errors import ConfigError

# (small, similar) -> (the candidate the rule stands for, what it means)
QUADRANTS: dict[tuple[bool, bool], tuple[str, str]] = {
    (True, True): ("linear-probe", "feature extraction, head only"),
    (True, False): ("fine-tune-late", "feature extraction, then the last blocks (late group) train with the head"),
    (False, True): ("fine-tune-low", "fine-tune everything at a low learning rate (backbone 1-10% of the head's)"),
    (False, False): ("fine-tune", "fine-tune everything at a higher learning rate (backbone 10-100% of the head's)"),
}


@dataclass
class Prior:
    """What the rule says, and the measured quantities it says it from."""

    images: int
    sampled: int  # of them, how many the transferability score saw
    per_class: float
    score: float
    method: str
    threshold: float
    small: bool
    similar: bool
    leep: float | None = None
    logme: float | None = None

    @property
    def candidate(self) -> str:
        return QUADRANTS[(self.small, self.similar)][0]

    @property
    def fine_tuning_worth_trying(self) -> bool:
        """Fine-tuning pays with more data, or on a far domain: anywhere but small + similar."""
        return not (self.small and self.similar)

    @property
    def reason(self) -> str:
        label = {"logme": "LogME", "leep": "normalised LEEP"}[self.method]
        seen = "" if self.sampled == self.images else f" on a {self.sampled:,}-image subsample"
        return (f"{self.images:,} training images ({self.per_class:,.0f} per class) -> "
                f"{'small' if self.small else 'large'}; {label} {self.score:.2f}{seen} "
                f"({'>=' if self.similar else '<'} {self.threshold:g}) -> "
                f"{'similar' if self.similar else 'different'} domain: {QUADRANTS[(self.small, self.similar)][1]}")

    def record(self) -> dict:
        return {"images": self.images, "sampled": self.sampled, "per_class": self.per_class,
                "score": round(self.score, 6), "method": self.method, "threshold": self.threshold,
                "similar": self.similar, "small": self.small, "candidate": self.candidate, "logme": self.logme,
                "leep": self.leep, "reason": self.reason,
                "quadrant": f"{'small' if self.small else 'large'} + {'similar' if self.similar else 'different'}"}


def decide(auto, labels: np.ndarray, *, logme_score: float | None, leep_score: float | None = None,
           sampled: int | None = None) -> Prior:
    """The 2x2 rule on the TRAINING part's size (its `labels`) and the backbone's measured
    transferability (on `sampled` of its images)."""
    counts = np.asarray(count_labels(labels, labels.shape[1] if labels.ndim == 2 else int(labels.max(initial=0)) + 1))
    counts = counts[counts > 0]
    per_class = float(np.median(counts)) if len(counts) else 0.0
    if auto.score == "leep":
        if leep_score is None:
            raise ConfigError("strategy.auto.score=leep needs the backbone's ImageNet classifier (the bundled "
                              "tf_efficientnet_lite0 has one); use strategy.auto.score=logme")
        score, threshold = 1.0 - leep_score / math.log(1.0 / max(2, len(counts))), auto.similar_leep
    else:
        score, threshold = float(logme_score), auto.similar_logme
    return Prior(images=len(labels), sampled=sampled or len(labels), per_class=per_class, score=float(score),
                 method=auto.score, threshold=threshold, small=per_class < auto.small_per_class,
                 similar=score >= threshold, leep=leep_score, logme=logme_score)


def measure(features, labels: np.ndarray, config) -> tuple[float, float | None]:
    """(LogME, LEEP or None) of pooled `features` for `labels`."""
    import torch

    from transferlab.models.backbone import imagenet_head
    from transferlab.tasks import SINGLE
    from transferlab.transferability import leep, logme

    head = imagenet_head(config.model)
    source = None
    if head is not None and np.asarray(labels).ndim == 1:  # LEEP scores one class per image
        with torch.no_grad():
            # the source model's own label space: ImageNet's one class per image
            source = leep(SINGLE.probabilities(head(torch.as_tensor(features))).numpy(), labels)
    return logme(np.asarray(features), labels), source
