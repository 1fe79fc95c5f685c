"""What the augmentation does, as a picture: one row per source image, N augmented versions beside it,
and a row of MixUp / CutMix pairs with the label weights written under each."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from transferlab.augment import ResolvedAugment, build_batch_mix, build_train_transform, resolve_augment
from transferlab.config import AugmentConfig
from transferlab.figures import save, subplots


def augmented_samples(images: np.ndarray, augment: AugmentConfig | ResolvedAugment, *, n: int,
                      seed: int) -> np.ndarray:
    """(rows, n, H, W, 3) uint8: `n` augmented versions of each (H, W, 3) image, seeded."""
    transform = build_train_transform(augment, images.shape[1])
    out = np.empty((len(images), n, *images.shape[1:]), dtype=np.uint8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for r, image in enumerate(images):
            tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
            for k in range(n):
                out[r, k] = transform(tensor).permute(1, 2, 0).numpy()
    return out


def mixed_pairs(images: np.ndarray, labels: list[str], augment: ResolvedAugment, *, n: int,
                seed: int) -> list[tuple[np.ndarray, str]]:
    """`n` MixUp / CutMix results of pairs of `images`, each with its caption of label weights."""
    classes = sorted(set(labels))
    index = torch.tensor([classes.index(label) for label in labels])
    mixer = build_batch_mix(dataclasses.replace(augment, mix_prob=1.0), len(classes))
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for k in range(n):
            mixed, targets = mixer(batch, index)
            row = k % len(images)
            weights = [(float(w), classes[c]) for c, w in enumerate(targets[row]) if w > 0.005]
            caption = "\n".join(f"{w:.2f} {name}" for w, name in sorted(weights, reverse=True))
            picture = mixed[row].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            out.append((picture, caption))
    return out


def pick_rows(labels: np.ndarray, classes: list[str], rows: int, seed: int) -> list[int]:
    """One image per class (seeded), for up to `rows` classes, then more of the same if there are few classes."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    chosen: list[int] = []
    for label in range(len(classes)):
        members = order[(labels[order, label] == 1) if labels.ndim == 2 else (labels[order] == label)]
        if len(members):
            chosen.append(int(members[0]))
    chosen = chosen[:rows]
    for i in order:
        if len(chosen) >= rows:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return chosen


def preview_grid(images: np.ndarray, labels: list[str], augment: AugmentConfig | ResolvedAugment, out: str | Path,
                 *, n: int = 8, seed: int = 0, title: str | None = None) -> Path:
    """Write the preview PNG for source `images` (rows, H, W, 3) named by `labels`; returns its path."""
    resolved = augment if isinstance(augment, ResolvedAugment) else resolve_augment(augment)
    samples = augmented_samples(images, resolved, n=n, seed=seed)
    mixing = resolved.mixup_alpha > 0 or resolved.cutmix_alpha > 0
    pairs = mixed_pairs(images, labels, resolved, n=n + 1, seed=seed) if mixing and len(images) > 1 else []
    rows = len(images) + (1 if pairs else 0)
    fig, axes = subplots(rows, n + 1, figsize=(1.35 * (n + 1), 1.45 * rows + (0.35 if pairs else 0) + 0.6),
                             squeeze=False)
    for r in range(len(images)):
        for k in range(n + 1):
            ax = axes[r, k]
            ax.imshow(images[r] if k == 0 else samples[r, k - 1], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if k == 0 else f"#{k}", fontsize=8)
        axes[r, 0].set_ylabel(labels[r], fontsize=9, rotation=0, ha="right", va="center")
        for spine in axes[r, 0].spines.values():
            spine.set_edgecolor("#1f77b4")
            spine.set_linewidth(2)
    for k, (picture, caption) in enumerate(pairs):
        ax = axes[-1, k]
        ax.imshow(picture, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(caption, fontsize=7)
    if pairs:
        kinds = [name for name, alpha in (("mixup", resolved.mixup_alpha), ("cutmix", resolved.cutmix_alpha)) if alpha]
        axes[-1, 0].set_ylabel(" / ".join(kinds), fontsize=9, rotation=0, ha="right", va="center")
    ops = ", ".join(d["op"] for d in resolved.describe()) or "no augmentation"
    fig.suptitle(title or f"augmentation preview: {ops}", fontsize=10)
    fig.tight_layout()
    return save(fig, Path(out), dpi=110)
