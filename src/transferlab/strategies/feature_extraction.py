"""Feature extraction: the backbone stays as it came; the new head trains on pooled features
computed once per image (BatchNorm in eval mode) and cached on disk."""

from __future__ import annotations

from transferlab.strategies import register
from transferlab.strategies.base import Stage, Strategy


@register
class FeatureExtraction(Strategy):
    """The head only, on pooled features computed once per image and cached; strategy.feature_extraction.views: K
    adds K augmented views per training image."""

    name = "feature-extraction"
    cheap = True

    def stages(self) -> list[Stage]:
        return [Stage("head", "features", self.config.train.epochs, views=self.settings.views)]

    def trainable(self, epoch: int) -> list[str]:
        return ["head"]
