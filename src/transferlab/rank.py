"""Rank candidate backbones for a data set by transferability (LogME on their pooled features,
and LEEP when an ImageNet head is at hand), without fine-tuning any of them."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from transferlab.config import Config
from transferlab.console import info, warn
from transferlab.data import load_dataset
from transferlab.errors import ConfigError, TransferlabError
from transferlab.models.backbone import ModelError, WeightsError
from transferlab.preprocess import backbone_defaults


def parse_models(text: str) -> list[tuple[str, str | None]]:
    """`a,b=path/to/weights.safetensors,c` -> [(a, None), (b, path), (c, None)]."""
    specs = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, weights = item.partition("=")
        specs.append((name.strip(), weights.strip() or None))
    if not specs:
        raise ConfigError("--models needs at least one timm model name, e.g. --models tf_efficientnet_lite0,resnet18")
    return specs


def score_model(data: str, config: Config, name: str, weights: str | None, *, progress: bool) -> dict:
    """LogME (and LEEP) of one backbone on DATA, with the time it took: the same measurement auto's
    rule makes, from the same feature store and cache as training."""
    from transferlab.features import FeatureStore
    from transferlab.search.rule import measure

    started = time.perf_counter()
    model = dataclasses.replace(config.model, name=name, weights=weights)
    size = config.preprocess.size or backbone_defaults(name)["size"]
    cfg = dataclasses.replace(config, model=model, preprocess=dataclasses.replace(config.preprocess, size=size))
    dataset = load_dataset(data, cfg, progress=progress)
    dataset.require_classes()
    every = np.arange(len(dataset))
    if len(every) > cfg.strategy.auto.max_images:  # a seeded subsample, as auto's rule takes
        every = np.sort(np.random.default_rng(cfg.seed).choice(every, cfg.strategy.auto.max_images, replace=False))
    features = FeatureStore(dataset, cfg, progress=progress).get(every).numpy()
    logme_score, leep_score = measure(features, dataset.labels[every], cfg)
    return {"model": name, "weights": weights or ("pretrained" if cfg.model.pretrained else "random"),
            "size": size, "images": int(len(every)), "features": int(features.shape[1]), "logme": logme_score,
            "leep": leep_score, "seconds": round(time.perf_counter() - started, 2)}


def rank_models(data: str, models: list[tuple[str, str | None]], config: Config, *, progress: bool = True) -> dict:
    """Every model's scores, best LogME first; a model that cannot be had (unknown name, weights
    out of reach or unfit) is listed as unavailable with why; a problem with the data stops all."""
    scored, failed = [], []
    for name, weights in models:
        try:
            scored.append(score_model(data, config, name, weights, progress=progress))
        except (ModelError, WeightsError) as exc:
            warn(f"{name}: {exc}")
            failed.append({"model": name, "weights": weights, "error": str(exc)})
            continue
        if progress:
            info(f"{name}: LogME {scored[-1]['logme']:.3f} in {scored[-1]['seconds']:.1f} s")
    if not scored:
        raise TransferlabError("no model could be scored: " + "; ".join(f"{f['model']}: {f['error']}" for f in failed))
    scored.sort(key=lambda r: (-r["logme"], r["model"]))
    for rank, result in enumerate(scored, start=1):
        result["rank"] = rank
    return {"data": data, "score": "logme (You et al., ICML 2021); leep (Nguyen et al., ICML 2020) where the "
                                    "ImageNet head is available", "seed": config.seed, "ranking": scored,
            "unavailable": failed}


def print_ranking(result: dict) -> None:
    from rich.table import Table

    from transferlab.console import stdout

    table = Table(title=f"backbones for {result['data']} (higher LogME transfers better)", title_justify="left")
    for column in ("rank", "model", "weights", "size", "LogME", "LEEP", "seconds"):
        table.add_column(column, justify="right" if column in ("rank", "size", "LogME", "LEEP", "seconds") else "left")
    for r in result["ranking"]:
        table.add_row(str(r["rank"]), r["model"], str(Path(r["weights"]).name if r["weights"] else ""), str(r["size"]),
                      f"{r['logme']:.3f}", "-" if r["leep"] is None else f"{r['leep']:.3f}", f"{r['seconds']:.1f}")
    for f in result["unavailable"]:
        table.add_row("-", f["model"], "unavailable", "", "", "", "")
    stdout.print(table)
