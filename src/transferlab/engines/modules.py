"""The modules an engine runs, as the tool exports them (uint8 NCHW pixels in, normalization inside):
a model answering probabilities, a backbone answering pooled features; and the versions of the
libraries an export depends on."""

from __future__ import annotations

import torch
import torch.nn as nn


class Probabilities(nn.Module):
    """A classifier that answers softmax probabilities: what a deployed model returns."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(images).softmax(dim=-1)


class Features(nn.Module):
    """A classifier's normalization and backbone alone (not its head): uint8 images -> pooled features."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.backbone, self.resize = classifier.backbone, classifier.resize
        self.register_buffer("mean", classifier.mean.clone())
        self.register_buffer("std", classifier.std.clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from transferlab.models.backbone import backbone_input

        return self.backbone(backbone_input(images, self.resize, self.mean, self.std))


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"torch": torch.__version__}
    for package in ("onnx", "onnxscript", "onnxruntime", "openvino"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return out
