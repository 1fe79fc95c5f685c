"""Decode once: an epoch of cached reads vs decoding every JPEG every epoch (PIL + resize).

A generated folder of 2,000 JPEGs at 500x375 (two classes), resized to the default backbone
input (224). Both sides read cold files: before every timed epoch the JPEGs (baseline) and the
cache files (disk mode) are dropped from the page cache, so the disk cache is not flattered by
reading what it just wrote. Three interleaved repeats, medians. Target: cached >= 5x faster.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _report import evict, interleaved, report  # noqa: E402

from transferlab.config import load_config  # noqa: E402
from transferlab.data import load_dataset  # noqa: E402

N_IMAGES = 2000


def make_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500]
    for i in range(N_IMAGES):
        label = "a" if i % 2 else "b"
        base = rng.integers(0, 256, 3)
        img = (base + x[..., None] * rng.integers(1, 4, 3) // 3 + y[..., None] // 2) % 256
        img = img.astype(np.uint8) + rng.integers(0, 20, (375, 500, 1), dtype=np.uint8)
        (root / label).mkdir(exist_ok=True)
        Image.fromarray(img).save(root / label / f"{i:05d}.jpg", quality=90)


def timed_epoch(store, order, files) -> float:
    """Seconds for what a DataLoader worker does per image (fetch, copy into a CHW tensor), cold."""
    import time

    evict(files)
    start = time.perf_counter()
    for i in order:
        torch.from_numpy(np.array(store[int(i)])).permute(2, 0, 1).contiguous()
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        root.mkdir()
        make_folder(root)
        jpegs = sorted(root.rglob("*.jpg"))
        order = np.random.default_rng(1).permutation(N_IMAGES)
        common = ["preprocess.size=224"]
        baseline = load_dataset(str(root), load_config(overrides=common + ["data.cache=none"]), progress=False)
        for mode in ("memory", "disk"):
            config = load_config(overrides=common + [f"data.cache={mode}", f"data.cache_dir={tmp}/cache"])
            cached = load_dataset(str(root), config, progress=False)
            files = [] if mode == "memory" else sorted((Path(tmp) / "cache").rglob("*.npy"))
            times = interleaved({"decode": lambda: timed_epoch(baseline.images, order, jpegs),
                                 "cached": lambda: timed_epoch(cached.images, order, files)})
            report(f"bench_data[{mode}]", f"cached epoch {times['cached']:.3f} s (cold)",
                   f"decode epoch {times['decode']:.2f} s (cold)", times["decode"] / times["cached"], target=5)


if __name__ == "__main__":
    main()
