"""Torch datasets over the decode-once cache, and DataLoader defaults."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from transferlab.data.cache import ImageStore


def default_workers() -> int:
    """DataLoader worker processes: one per core but one (left for the model), at most 8."""
    return min(8, max(0, (os.cpu_count() or 1) - 1))


class CachedImageDataset(Dataset):
    """(uint8 (3, H, W) image, label) pairs read from an `ImageStore`, optionally augmented.

    `indices` select the images of one split or fold; the store itself is shared, so folds and
    epochs never decode a file again.
    """

    def __init__(self, store: ImageStore, labels: np.ndarray, indices: np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.store = store
        self.labels = np.asarray(labels, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        i = int(self.indices[k])
        image = torch.from_numpy(np.array(self.store[i], dtype=np.uint8, copy=True)).permute(2, 0, 1)
        if self.transform is not None:
            image = self.transform(image)
        return image.contiguous(), int(self.labels[i])
