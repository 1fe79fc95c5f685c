"""Models: timm backbones with their weights, the classifier and ensemble built on them, layer groups.

    build_model(meta, input_size)   -> the Classifier or Ensemble a model.json describes (weights unset)
    device_for("auto")              -> the torch device for a Lightning accelerator name
"""

from __future__ import annotations

import contextlib

import torch

from transferlab.models import scratch  # noqa: F401 - registers the small CNN (small_cnn) with timm
from transferlab.models.backbone import Classifier, Ensemble, create_backbone
from transferlab.tasks import task_of


@contextlib.contextmanager
def seeded_backbone(model_config, seed: int, img_size: int, drop_path: float | None = None):
    """The configured backbone at `img_size` (a random one drawn from `seed`, so the feature store's equals every
    fit's); the block runs on that seeded generator, and the caller's is restored after it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield create_backbone(model_config.name, pretrained=model_config.pretrained, weights=model_config.weights,
                              drop_path=drop_path, img_size=img_size)


def build_model(meta: dict, input_size: int) -> torch.nn.Module:
    """The module model.json describes, taking images of `input_size`: one classifier, or an ensemble
    whose members (each at its own size) share the backbones they name."""
    members = meta.get("members")
    classes, norm = len(meta["classes"]), meta["normalize"]
    if not members:
        return Classifier(create_backbone(meta["model"], pretrained=False, img_size=meta.get("size", input_size)),
                          classes, norm["mean"], norm["std"], dropout=meta.get("dropout", 0.0),
                          size=meta.get("size", input_size), input_size=input_size, taps=meta.get("taps", 0))
    backbones: dict[int, torch.nn.Module] = {}
    built = []
    for member in members:
        index = int(member.get("backbone", 0))
        if index not in backbones:
            backbones[index] = create_backbone(member.get("model", meta["model"]), pretrained=False,
                                               img_size=member["size"])
        built.append(Classifier(backbones[index], classes, norm["mean"], norm["std"], size=member["size"],
                                input_size=input_size, taps=member.get("taps", 0)))
    return Ensemble(built, [float(m["weight"]) for m in members], task_of(meta))


def device_for(accelerator: str = "auto") -> torch.device:
    """The torch device for a Lightning-style accelerator name (cpu, gpu/cuda, mps, auto)."""
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("auto", "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


__all__ = ["Classifier", "Ensemble", "build_model", "create_backbone", "device_for", "seeded_backbone"]
