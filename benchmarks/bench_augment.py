"""Augmentation is never the bottleneck: data-pipeline images/s vs the model's training images/s.

The `standard` and `heavy` pipelines run from the decode-once cache through a DataLoader with
the default number of workers, at the default backbone's input size (224); the baseline is the
training throughput (forward, backward, AdamW step) of the default backbone at the same size
and batch on the same machine, measured in this run. Target: the pipeline is >= 5x faster.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _report import report  # noqa: E402

from transferlab.augment import build_train_transform  # noqa: E402
from transferlab.config import AugmentConfig  # noqa: E402
from transferlab.data.cache import MemoryStore  # noqa: E402
from transferlab.data.loader import CachedImageDataset, default_workers  # noqa: E402

SIZE, BATCH, N = 224, 32, 512


def pipeline_rate(preset: str, store: MemoryStore, labels: np.ndarray) -> float:
    dataset = CachedImageDataset(store, labels, np.arange(N), build_train_transform(AugmentConfig(preset=preset), SIZE))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=default_workers(),
                                         persistent_workers=False, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    seen = sum(len(images) for images, _ in loader)
    return seen / (time.perf_counter() - start)


def training_rate() -> float:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    y = torch.randint(0, 10, (BATCH,))
    steps = 4
    for k in range(steps + 1):
        if k == 1:
            start = time.perf_counter()  # the first step warms up
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return steps * BATCH / (time.perf_counter() - start)


def main() -> None:
    rng = np.random.default_rng(0)
    store = MemoryStore(rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8))
    labels = rng.integers(0, 10, N)
    model = training_rate()
    for preset in ("standard", "heavy"):
        rate = pipeline_rate(preset, store, labels)
        report(f"bench_augment[{preset}]", f"{rate:.0f} img/s ({default_workers()} workers)",
               f"training {model:.1f} img/s (lite0, {SIZE}px)", rate / model, target=5)


if __name__ == "__main__":
    main()
