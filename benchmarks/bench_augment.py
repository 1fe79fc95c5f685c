"""Augmentation is never the bottleneck.

1. Pipeline alone: `standard` and `heavy` images/s through a DataLoader with the default workers,
   at 224 px, against the training images/s of the default backbone as the tool trains it
   (channels_last, AdamW, batch 32). Target: the pipeline is >= 5x faster.
2. Sharing the CPU, as in a real run: training steps fed by the augmenting DataLoader (workers
   and the model compete for the same cores) against the same steps fed by the DataLoader with
   no augmentation. Target: augmentation costs training at most 10% (ratio >= 0.9).
Three interleaved repeats, medians.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _report import interleaved, report  # noqa: E402

from transferlab.augment import build_train_transform  # noqa: E402
from transferlab.config import AugmentConfig  # noqa: E402
from transferlab.data.cache import MemoryStore  # noqa: E402
from transferlab.data.loader import CachedImageDataset, default_workers  # noqa: E402

SIZE, BATCH, N, STEPS = 224, 32, 512, 6


def loader(preset: str, store: MemoryStore, labels: np.ndarray) -> torch.utils.data.DataLoader:
    dataset = CachedImageDataset(store, labels, np.arange(N), build_train_transform(AugmentConfig(preset=preset), SIZE))
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=default_workers(),
                                       persistent_workers=False, generator=torch.Generator().manual_seed(0))


def pipeline_rate(preset: str, store: MemoryStore, labels: np.ndarray) -> float:
    start = time.perf_counter()
    seen = sum(len(images) for images, _ in loader(preset, store, labels))
    return seen / (time.perf_counter() - start)


def model_and_optimizer():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=10).to(memory_format=torch.channels_last).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def step(model, optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    x = ((x.float() - 127.5) / 127.5).contiguous(memory_format=torch.channels_last)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def training_rate(batches) -> float:
    """Training images/s over STEPS steps (after one warm-up) fed by `batches`."""
    model, optimizer = model_and_optimizer()
    for k, (x, y) in enumerate(batches):
        if k == 1:
            start = time.perf_counter()
        step(model, optimizer, x, y)
        if k == STEPS:
            break
    return STEPS * BATCH / (time.perf_counter() - start)


def main() -> None:
    rng = np.random.default_rng(0)
    store = MemoryStore(rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8))
    labels = rng.integers(0, 10, N)
    fixed = torch.from_numpy(store.array[:BATCH]).permute(0, 3, 1, 2), torch.from_numpy(labels[:BATCH])
    alone = interleaved({"model": lambda: training_rate(iter([fixed] * (STEPS + 1))),
                         "standard": lambda: pipeline_rate("standard", store, labels),
                         "heavy": lambda: pipeline_rate("heavy", store, labels)})
    for preset in ("standard", "heavy"):
        report(f"bench_augment[{preset}]", f"{alone[preset]:.0f} img/s ({default_workers()} workers)",
               f"training {alone['model']:.1f} img/s (lite0, {SIZE}px, channels_last)", alone[preset] / alone["model"],
               target=5)
    shared = interleaved({"none": lambda: training_rate(loader("none", store, labels)),
                          "heavy": lambda: training_rate(loader("heavy", store, labels))})
    report("bench_augment[shared CPU]", f"training fed heavy {shared['heavy']:.1f} img/s",
           f"fed unaugmented {shared['none']:.1f} img/s", shared["heavy"] / shared["none"], target=0.9)


if __name__ == "__main__":
    main()
