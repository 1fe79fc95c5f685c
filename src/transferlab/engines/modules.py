"""The modules an engine runs, as the tool exports them (uint8 NCHW pixels in, normalization inside):
a model answering probabilities, a backbone answering pooled features; and the versions of the
libraries an export depends on."""

from __future__ import annotations

import torch
import torch.nn as nn

from transferlab.config import Config
from transferlab.tasks import SINGLE, Task

# what the exported graphs compute, beyond their weights: bump it when a module here (or the Classifier) changes
# its graph, so no cached export of the old one is trusted (2: normalise before the in-graph resize; stage taps)
GRAPH = 2


class Probabilities(nn.Module):
    """A classifier that answers its task's probabilities (softmax; a sigmoid per label) at the run's calibrated
    temperature: what a deployed model returns."""

    def __init__(self, classifier: nn.Module, task: Task = SINGLE):
        super().__init__()
        self.classifier, self.task = classifier, task

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.task.calibrated(self.classifier(images))


class Features(nn.Module):
    """A classifier's normalization and backbone alone (not its head): uint8 images -> its pooled features
    (with its `taps` stages)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.backbone, self.resize, self.taps = classifier.backbone, classifier.resize, classifier.taps
        self.register_buffer("mean", classifier.mean.clone())
        self.register_buffer("std", classifier.std.clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from transferlab.models.backbone import backbone_input, pooled_features

        return pooled_features(self.backbone, backbone_input(images, self.resize, self.mean, self.std), self.taps)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"torch": torch.__version__, "graph": str(GRAPH)}
    for package in ("onnx", "onnxscript", "onnxruntime", "openvino"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return out


def backbone_features(config: Config, size: int, input_size: int, normalize: tuple) -> torch.nn.Module:
    """The pretrained backbone of `config` (its seed's random one without weights) seeing uint8 images of
    `input_size` at `size`: every stage's pooled features, the final pooled ones last (any `taps` is a slice)."""
    from transferlab.models import Classifier, seeded_backbone
    from transferlab.models.backbone import stage_channels

    with seeded_backbone(config.model, config.seed, size) as backbone:
        every = len(stage_channels(backbone))
        return Features(Classifier(backbone, 1, *normalize, size=size, input_size=input_size, taps=every)).eval()
