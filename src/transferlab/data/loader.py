"""Torch datasets over the decode-once cache, the seeded epoch sampler, and DataLoader defaults.

Reproducibility does not depend on worker count, order or resumption: the sampler draws each
epoch's order from (seed, epoch) and hands `(index, epoch)` keys to the dataset, which seeds
the augmentation of every image from (seed, epoch, index); `EpochLoader` reads the keys only
once the epoch is set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from transferlab.data.cache import ImageStore
from transferlab.io import own_signal_stack


def default_workers() -> int:
    """DataLoader worker processes: one per core but one (left for the model), at most 8; none when the model
    trains on the CPU of a machine with two cores or fewer. There the model's threads use every core, and a
    worker process only takes turns with them (each parallel step then waits for the thread it preempted):
    on 2 cores an epoch of the small CNN at 28 px took 11.4 s with one worker and 7.3 s with none, a
    fine-tune at 96 px 5.0 s and 4.6 s."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores <= 2 and not torch.cuda.is_available():
        return 0
    return min(8, max(0, cores - 1))


def item_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 100_003 + index) % (2**63)


def seed_item(seed: int, epoch: int, index: int) -> None:
    """Seed the CPU generator the augmentation of one image draws from. torch.manual_seed would seed every
    accelerator's generator too, and on a machine without one each call formats a stack trace for its lazy
    initialisation: 0.11 ms an image, more than a flip and a crop of a 28 px image cost (0.06 ms)."""
    torch.default_generator.manual_seed(item_seed(seed, epoch, index))


def split_key(key) -> tuple[int, int]:
    return (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)


class CachedImageDataset(Dataset):
    """(uint8 (3, H, W) image, label) pairs read from an `ImageStore`, optionally augmented.

    `indices` select the images of one split or fold; the store itself is shared, so folds and
    epochs never decode a file again. Keys are positions in `indices`, or (position, epoch).
    """

    def __init__(self, store: ImageStore, labels: np.ndarray, indices: np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, seed: int = 0):
        self.store = store
        self.labels = np.asarray(labels, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key) -> tuple[torch.Tensor, int | torch.Tensor]:
        k, epoch = split_key(key)
        i = int(self.indices[k])
        image = torch.from_numpy(np.array(self.store[i], dtype=np.uint8, copy=True)).permute(2, 0, 1)
        if self.transform is not None:
            seed_item(self.seed, epoch, i)
            image = self.transform(image)
        label = self.labels[i]  # a class index, or a multi-label image's 0/1 row
        return image.contiguous(), (torch.from_numpy(label.copy()) if label.ndim else int(label))


class FeatureDataset(Dataset):
    """(feature vector, label) pairs of cached backbone features; same key protocol as images."""

    def __init__(self, features: torch.Tensor, labels: np.ndarray):
        self.features = features
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor]:
        k, _ = split_key(key)
        return self.features[k], self.labels[k]


class EpochSampler(Sampler):
    """Yields (position, epoch): shuffled from (seed, epoch), or weighted with replacement
    (balanced sampling), and sharded across DDP ranks when a process group is running (padded
    by repeating the first positions, so every rank gets as many)."""

    def __init__(self, n: int, *, seed: int = 0, shuffle: bool = True, weights: np.ndarray | None = None):
        self.n, self.seed, self.shuffle, self.weights = n, seed, shuffle, weights
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @staticmethod
    def world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is not None:
            p = np.asarray(self.weights, dtype=np.float64)
            return rng.choice(self.n, size=self.n, replace=True, p=p / p.sum())
        return rng.permutation(self.n) if self.shuffle else np.arange(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order()
        replicas, rank = self.world()
        if replicas > 1:
            if len(order) % replicas:
                order = np.concatenate([order, order[: replicas - len(order) % replicas]])
            order = order[rank::replicas]
        return iter([(int(i), self.epoch) for i in order])

    def __len__(self) -> int:
        replicas, _ = self.world()
        return -(-self.n // replicas) if replicas > 1 else self.n


class EpochLoader(DataLoader):
    """A DataLoader whose iterator starts (and its workers fetch ahead) at the first batch asked
    for, not at iter(): Lightning calls iter() before it sets the sampler's epoch, so a run resumed
    at epoch e > 0 with worker processes got epoch 0's order and augmentation in epoch e."""

    def __iter__(self):
        if self.num_workers:
            own_signal_stack()  # their SIGCHLD is handled on it (a library's may be freed: SIGSEGV)
        yield from super().__iter__()
