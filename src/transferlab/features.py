"""Pooled backbone features, computed once per image and cached on disk.

Feature extraction, cross-validation folds, `rank` and re-runs all read the same cache: the key
is the backbone's identity (name and weights), the resize settings, the content hash of every
image, and for augmented views the augmentation and seed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from transferlab.data.cache import atomic_write


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
    """`<root>/features/<key>.npy` files of float32 features, written atomically."""

    def __init__(self, root: Path):
        self.root = Path(root) / "features"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get(self, key: str, rows: int) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return torch.from_numpy(array) if len(array) == rows else None

    def put(self, key: str, features: torch.Tensor) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path(key), lambda handle: np.save(handle, features.numpy(), allow_pickle=False))


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
