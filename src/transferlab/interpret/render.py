"""Pictures of explanations (matplotlib's object API): CAM overlays, feature-map grids, attention grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

import matplotlib.cm
import matplotlib.colors
import numpy as np
from PIL import Image

from transferlab.figures import save, subplots


def cam_figure(original: np.ndarray, blended: np.ndarray, path: Path, *, title: str, colormap: str) -> None:
    """Original and overlay side by side, a colour bar for the heatmap, the prediction as title."""
    height, width = original.shape[:2]
    panel = 3.6
    fig, axes = subplots(1, 2, figsize=(2 * panel * max(0.6, width / height) + 0.8, panel + 0.6))
    for ax, picture, label in zip(axes, (original, blended), ("image", "heatmap overlay")):
        ax.imshow(picture)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    mappable = matplotlib.cm.ScalarMappable(cmap=colormap, norm=matplotlib.colors.Normalize(0, 1))
    fig.colorbar(mappable, ax=axes, fraction=0.025, pad=0.02, label="importance")
    fig.suptitle(title, fontsize=9)
    save(fig, path, dpi=110, bbox_inches="tight")


def feature_grid(image: np.ndarray, stages: list[dict], path: Path) -> None:
    """One row per stage: the input, then its most active channels (edges early, parts late)."""
    columns = 1 + max(len(s["maps"]) for s in stages)
    fig, axes = subplots(len(stages), columns, figsize=(1.3 * columns, 1.45 * len(stages) + 0.4), squeeze=False,
                             layout="constrained")
    for r, stage in enumerate(stages):
        axes[r, 0].imshow(image)
        axes[r, 0].set_ylabel(f"{stage['name']}\n{stage['size'][0]}x{stage['size'][1]}", fontsize=8, rotation=0,
                              ha="right", va="center")
        for c in range(1, columns):
            ax = axes[r, c]
            if c - 1 < len(stage["maps"]):
                ax.imshow(stage["maps"][c - 1], cmap="viridis", interpolation="nearest")
                ax.set_title(f"ch {stage['channels'][c - 1]}", fontsize=6)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("feature maps: most active channels per stage", fontsize=9)
    save(fig, path, dpi=110, bbox_inches="tight")


def upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    low, high = float(grid.min()), float(grid.max())
    scaled = (grid - low) / (high - low) if high > low else np.zeros_like(grid)
    return np.asarray(Image.fromarray(scaled.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))


def attention_grid(image: np.ndarray, heads: np.ndarray, rollout: np.ndarray, layer_names: list[str], path: Path, *,
                   colormap: str, alpha: float) -> None:
    """Columns = layers, rows = heads (class-token attention over the patches, overlaid on the
    image); a last column with the image and the attention rollout across layers."""
    from transferlab.interpret.cam import overlay

    layers, count = heads.shape[:2]
    size = (image.shape[1], image.shape[0])
    rows = max(count, 2)
    fig, axes = subplots(rows, layers + 1, figsize=(1.25 * (layers + 1), 1.3 * rows + 0.5), squeeze=False,
                             layout="constrained")
    for layer in range(layers):
        axes[0, layer].set_title(layer_names[layer], fontsize=7)
        for head in range(count):
            axes[head, layer].imshow(overlay(image, upsample(heads[layer, head], size), colormap=colormap,
                                             alpha=alpha))
    for head in range(count):
        axes[head, 0].set_ylabel(f"head {head}", fontsize=7)
    axes[0, layers].imshow(overlay(image, upsample(rollout, size), colormap=colormap, alpha=alpha))
    axes[0, layers].set_title("rollout", fontsize=7)
    axes[1, layers].imshow(image)
    axes[1, layers].set_title("image", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.axis("off")
    fig.suptitle("where the class token looks: every layer and head, and the rollout across layers", fontsize=9)
    save(fig, path, dpi=110, bbox_inches="tight")
