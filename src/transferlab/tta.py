"""Test-time augmentation: class probabilities averaged over deterministic views of each image.

Views work on uint8 NCHW batches (the model's own input), so every engine runs them alike:
`hflip` (mirrored), `vflip`, and `crop<P>` (the centred P% of the image, resized back, e.g.
`crop90`). The original image is always one of the views.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from transferlab.errors import ConfigError

DEFAULT = ("hflip",)


def crop(percent: int) -> Callable[[np.ndarray], np.ndarray]:
    def view(batch: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        size = batch.shape[-1]
        side = max(1, round(size * percent / 100))
        start = (size - side) // 2
        window = torch.from_numpy(np.ascontiguousarray(batch[..., start:start + side, start:start + side])).float()
        grown = F.interpolate(window, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        return grown.round().clamp(0, 255).to(torch.uint8).numpy()

    return view


def views(names: list[str] | tuple[str, ...]) -> list[tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """The named views, after the original; an unknown name is a ConfigError listing the known."""
    out = [("original", lambda batch: batch)]
    for name in names:
        if name == "hflip":
            out.append((name, lambda batch: batch[..., ::-1]))
        elif name == "vflip":
            out.append((name, lambda batch: batch[..., ::-1, :]))
        elif match := re.fullmatch(r"crop(\d{2})", name):
            out.append((name, crop(int(match.group(1)))))
        else:
            raise ConfigError(f"unknown test-time view '{name}': choose hflip, vflip or cropNN (e.g. crop90)")
    return out


def averaged(engine, batch: np.ndarray, chosen: list[tuple[str, Callable]]) -> np.ndarray:
    """Mean class probabilities of `engine` over the views of a uint8 NCHW batch."""
    return np.mean([engine(np.ascontiguousarray(view(batch))) for _, view in chosen], axis=0)
