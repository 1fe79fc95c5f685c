"""Decode once: an epoch of cached reads vs decoding every JPEG every epoch (PIL + resize).

A generated folder of 2,000 JPEGs at 500x375 (two classes), resized to the default backbone
input (224). Target: the cached epoch is at least 5x faster. Prints the memory and the disk
cache against the same no-cache baseline, measured in this run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _report import report, timer  # noqa: E402

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


def epoch(store, order) -> None:
    """What a DataLoader worker does per image: fetch and copy into a CHW tensor."""
    for i in order:
        torch.from_numpy(np.array(store[int(i)])).permute(2, 0, 1).contiguous()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        root.mkdir()
        make_folder(root)
        order = np.random.default_rng(1).permutation(N_IMAGES)
        common = ["preprocess.size=224"]
        baseline = load_dataset(str(root), load_config(overrides=common + ["data.cache=none"]), progress=False)
        with timer() as decode:
            epoch(baseline.images, order)
        for mode in ("memory", "disk"):
            config = load_config(overrides=common + [f"data.cache={mode}", f"data.cache_dir={tmp}/cache"])
            with timer() as fill:
                cached = load_dataset(str(root), config, progress=False)
            with timer() as read:
                epoch(cached.images, order)
            report(f"bench_data[{mode}]", f"cached epoch {read['seconds']:.3f} s (fill {fill['seconds']:.1f} s)",
                   f"decode epoch {decode['seconds']:.2f} s", decode["seconds"] / read["seconds"], target=5)


if __name__ == "__main__":
    main()
