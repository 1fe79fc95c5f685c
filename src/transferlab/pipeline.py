"""One training run, end to end: data -> split -> strategy -> Lightning fit -> evaluation -> run directory.

`run_training` is what `transferlab train` calls; `--resume RUN` re-enters it with the saved
config, split and stage, and Lightning continues from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch

from transferlab.config import Config, load_config
from transferlab.console import info, warn
from transferlab.data import ImageDataset, holdout_split, load_dataset, write_split_csv
from transferlab.data.splits import read_split_csv
from transferlab.errors import DataError
from transferlab.features import FeatureCache, cached_features, extract_features
from transferlab.metrics import compute_metrics, headline, write_predictions
from transferlab.models.backbone import BUNDLED, Classifier, create_backbone
from transferlab.preprocess import backbone_defaults, build_normalizer, channel_stats
from transferlab.run import (RunError, RunLock, check_out_dir, environment, is_worker_process, new_run_dir, read_json,
                             resume_config, save_model, save_run_config, write_json)
from transferlab.strategies import epochs_for, groups_at_epoch, freeze_all, resolve_strategy, set_trainable, weight_decay_for
if TYPE_CHECKING:
    from transferlab.strategies import Decision
from transferlab.train import (TransferDataModule, TransferModule, build_trainer, find_lr, load_checkpoint_weights,
                               fit, predict_proba, quiet_fit, read_checkpoint)

SPLITS = ("train", "val", "test")


@dataclass
class Prepared:
    """Everything a run's stages share."""

    config: Config
    dataset: ImageDataset
    run_dir: Path
    strategy: str
    indices: dict[str, np.ndarray]
    classifier: Classifier
    device: torch.device
    class_weights: torch.Tensor | None
    sample_weights: np.ndarray | None
    normalize: dict
    progress: bool
    extra_callbacks: list = field(default_factory=list)
    features: dict[str, torch.Tensor] | None = None
    feature_labels: dict[str, np.ndarray] | None = None
    stage_info: dict = field(default_factory=dict)
    initial_backbone: dict | None = None


def resolve_config(config: Config, data: str) -> Config:
    """The config with every default that depends on the data or backbone filled in (the
    strategy's own defaults come with `finalize_strategy`, once the strategy is known)."""
    defaults = backbone_defaults(config.model.name)
    pre = dataclasses.replace(config.preprocess, size=config.preprocess.size or defaults["size"],
                              interpolation=config.preprocess.interpolation or defaults["interpolation"])
    optim = dataclasses.replace(config.optim, weight_decay=weight_decay_for(config))
    return dataclasses.replace(config, preprocess=pre, optim=optim, data=dataclasses.replace(config.data, source=data))


def finalize_strategy(config: Config, strategy: str) -> Config:
    train = dataclasses.replace(config.train, epochs=epochs_for(config, strategy))
    return dataclasses.replace(config, train=train, strategy=dataclasses.replace(config.strategy, name=strategy))


def device_for(config: Config) -> torch.device:
    wants_cpu = config.train.accelerator == "cpu"
    return torch.device("cuda" if torch.cuda.is_available() and not wants_cpu else "cpu")


def read_split(dataset: ImageDataset, run_dir: Path) -> np.ndarray:
    """The hold-out split of a run being resumed, from its split.csv."""
    path = run_dir / "split.csv"
    if not path.is_file():
        raise RunError(f"{path} is missing: a resumed run must keep its split; restore the file, or start a new run")
    try:
        rows = read_split_csv(path)
        by_path = {row["path"]: row["split"] for row in rows}
    except (KeyError, ValueError, UnicodeDecodeError):
        raise RunError(f"{path} is damaged (not a path,label,split table): restore it, or start a new run") from None
    missing = [p for p in dataset.paths if p not in by_path]
    if missing or len(rows) != len(dataset):
        raise RunError(f"the data changed since {run_dir} started ({len(missing)} images not in its split.csv): "
                       "resume with the same data, or start a new run")
    return np.array([by_path[p] for p in dataset.paths])


def imbalance_weights(config: Config, labels: np.ndarray, num_classes: int) -> tuple[torch.Tensor | None,
                                                                                      np.ndarray | None, str]:
    """Class weights for the loss or per-sample weights for a balanced sampler, from TRAINING labels."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    mode = config.train.imbalance
    ratio = counts.max() / max(1.0, counts[counts > 0].min())
    if mode == "auto":
        mode = "weights" if ratio >= 3 else "none"
    if mode == "weights":
        weights = len(labels) / (num_classes * np.maximum(counts, 1))
        return torch.tensor(weights, dtype=torch.float32), None, mode
    if mode == "sampler":
        return None, 1.0 / np.maximum(counts[labels], 1), mode
    return None, None, mode


def model_identity(config: Config) -> str:
    """What decides a backbone's features: its name and weights."""
    if config.model.weights:
        stat = Path(config.model.weights).stat()
        return f"{config.model.name}|file:{Path(config.model.weights).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if not config.model.pretrained:
        return f"{config.model.name}|random|seed{config.seed}"
    return f"{config.model.name}|{'bundled' if config.model.name.split('.')[0] == BUNDLED else 'hub'}"


def prepare(dataset: ImageDataset, config: Config, run_dir: Path, indices: dict[str, np.ndarray], *,
            progress: bool, extra_callbacks: list | None = None) -> Prepared:
    """A fresh classifier (same pretrained weights every time) and the statistics of THIS training part."""
    if len(indices["train"]) == 0:
        raise DataError("the training split is empty: lower data.val_fraction / data.test_fraction")
    stats = channel_stats(dataset.images, indices["train"]) if config.preprocess.normalize == "zscore" else None
    normalizer = build_normalizer(config, stats)
    torch.manual_seed(config.seed)  # without pretrained weights, every fold starts from the same init too
    backbone = create_backbone(config.model.name, pretrained=config.model.pretrained, weights=config.model.weights,
                               drop_path=config.model.drop_path, img_size=dataset.spec.size)
    classifier = Classifier(backbone, len(dataset.classes), normalizer.mean, normalizer.std,
                            dropout=config.model.dropout)
    if config.train.channels_last:
        classifier = classifier.to(memory_format=torch.channels_last)
    class_weights, sample_weights, _ = imbalance_weights(config, dataset.labels[indices["train"]],
                                                        len(dataset.classes))
    normalize = normalizer.to_dict() | ({"computed_on": "training part only"} if stats else {})
    return Prepared(config=config, dataset=dataset, run_dir=run_dir, strategy=config.strategy.name, indices=indices,
                    classifier=classifier, device=device_for(config), class_weights=class_weights,
                    sample_weights=sample_weights, normalize=normalize, progress=progress,
                    extra_callbacks=list(extra_callbacks or []))


def dataset_record(dataset: ImageDataset, parts: dict[str, np.ndarray], normalize: dict | None) -> dict:
    """dataset.json: the health summary, counts per split (or fold) and a check that no duplicate
    group straddles two parts."""
    summary = dataset.summary()
    if normalize is not None:
        summary["normalization"] = normalize
    summary["split_counts"] = {name: {c: int(n) for c, n in zip(
        dataset.classes, np.bincount(dataset.labels[idx], minlength=len(dataset.classes)))}
        for name, idx in parts.items()}
    seen: dict[int, str] = {}
    straddling = set()
    for name, idx in parts.items():
        for group in dataset.groups[idx].tolist():
            if seen.setdefault(group, name) != name:
                straddling.add(group)
    summary["duplicates_across_splits"] = len(straddling)
    return summary


def report_dataset_problems(dataset: ImageDataset, run_dir: Path) -> None:
    for message in dataset.warnings:
        warn(message)
    if dataset.skipped:
        warn(f"{len(dataset.skipped)} file(s) skipped (listed in {run_dir / 'dataset.json'})")


def all_features(p: Prepared) -> dict[str, torch.Tensor]:
    """Pooled features of every image (computed once, cached on disk), split by split; with
    strategy.feature_views, K augmented views of each training image are appended to train."""
    if p.features is not None:
        return p.features
    config, dataset = p.config, p.dataset
    cache_dir = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else None
    from transferlab.data.sources import cache_root

    cache = FeatureCache(cache_dir or cache_root())
    model = p.classifier.to(p.device)
    hashes = [r["sha256"] for r in dataset.records]
    key = {"model": model_identity(config), "resize": dataset.spec.key(), "normalize": p.normalize,
           "images": hashes, "rows": len(dataset)}
    every = np.arange(len(dataset))
    features, hit = cached_features(cache, key, lambda: extract_features(
        model, dataset.images, every, batch_size=config.train.eval_batch_size, device=p.device,
        channels_last=config.train.channels_last, progress=p.progress and not is_worker_process()))
    if hit and p.progress:
        info(f"features of {len(dataset):,} images read from the feature cache")
    out = {name: features[idx] for name, idx in p.indices.items()}
    labels = {name: p.dataset.labels[idx] for name, idx in p.indices.items()}
    views = config.strategy.feature_views
    if views > 0:
        from transferlab.augment import build_train_transform

        transform = build_train_transform(config.augment, dataset.spec.size)
        train = p.indices["train"]
        extra = []
        for view in range(views):
            vkey = dict(key, images=[hashes[i] for i in train], rows=len(train), view=view, seed=config.seed,
                        augment=dataclasses.asdict(config.augment))
            extra.append(cached_features(cache, vkey, lambda view=view: extract_features(
                model, dataset.images, train, batch_size=config.train.eval_batch_size, device=p.device,
                transform=transform, seed=config.seed + 1 + view, channels_last=config.train.channels_last,
                progress=p.progress and not is_worker_process(), label=f"Augmented view {view + 1}/{views}"))[0])
        out["train"] = torch.cat([out["train"], *extra])
        labels["train"] = np.concatenate([labels["train"]] * (views + 1))
    p.features = out
    p.feature_labels = labels
    return out


def fit_stage(p: Prepared, stage: str, *, epochs: int, features_mode: bool, resume_from: Path | None) -> TransferModule:
    """One Lightning fit; returns the module with its best checkpoint's weights loaded."""
    config = p.config
    has_val = len(p.indices["val"]) > 0
    if features_mode:
        features = all_features(p)
        views = config.strategy.feature_views
        sample_weights = None if p.sample_weights is None else np.tile(p.sample_weights, views + 1)
        datamodule = TransferDataModule(config, p.dataset.labels, p.indices, features=features,
                                        feature_labels=p.feature_labels, sample_weights=sample_weights)
    else:
        datamodule = TransferDataModule(config, p.dataset.labels, p.indices, store=p.dataset.images,
                                        sample_weights=p.sample_weights)
    module = TransferModule(p.classifier, config, p.strategy, features_mode=features_mode,
                            class_weights=p.class_weights, num_classes=len(p.dataset.classes))
    rows = len(p.feature_labels["train"]) if features_mode else len(p.indices["train"])
    steps = max(1, rows // config.train.batch_size)
    trainer, checkpoint = build_trainer(config, p.run_dir, stage, epochs=epochs, has_val=has_val,
                                        progress=p.progress, gradual=p.strategy == "gradual" and not features_mode,
                                        extra_callbacks=p.extra_callbacks, steps_per_epoch=steps)
    if config.train.find_lr and resume_from is None and stage != "warmup":
        with quiet_fit():
            suggestion = find_lr(trainer, module, datamodule, p.run_dir / "plots" / f"lr_find_{stage}.png")
        if suggestion and trainer.is_global_zero:
            info(f"LR finder suggests lr={suggestion:.2e} (plot: {p.run_dir / 'plots' / f'lr_find_{stage}.png'})")
        trainer, checkpoint = build_trainer(config, p.run_dir, stage, epochs=epochs, has_val=has_val,
                                            progress=p.progress, gradual=p.strategy == "gradual" and not features_mode,
                                            extra_callbacks=p.extra_callbacks, steps_per_epoch=steps)
    fit(trainer, module, datamodule, resume_from)
    best = checkpoint.best_model_path or checkpoint.last_model_path
    if best:
        load_checkpoint_weights(module, best)
    p.stage_info[stage] = {"epochs_run": int(trainer.current_epoch), "best_checkpoint": best,
                           "features_mode": features_mode,
                           "best_score": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None
                           else None, "lr": module.lr, "global_zero": trainer.is_global_zero}
    return module


def stages_of(strategy: str, config: Config) -> list[tuple[str, bool, int]]:
    """(stage name, on features?, epochs) in order."""
    if strategy == "feature-extraction":
        return [("head", True, config.train.epochs)]
    if strategy == "fine-tune" and config.strategy.head_warmup_epochs > 0:
        return [("warmup", True, config.strategy.head_warmup_epochs), ("main", False, config.train.epochs)]
    return [("main", False, config.train.epochs)]


def run_training(data: str | None, config: Config, *, out: str | Path | None = None, resume: str | Path | None = None,
                 progress: bool = True, extra_callbacks: list | None = None,
                 resume_overrides: list[str] | tuple = ()) -> Path:
    """Train a classifier on DATA and write its run directory; returns the directory.

    Everything that can be checked is checked before the directory exists (config, --out, the
    data, the weights); from the moment it exists it holds config.yaml and state.json, so a run
    stopped at any point can be resumed. The directory is locked while this process works in it.
    """
    started = time.time()
    show = progress and not is_worker_process()
    with contextlib.ExitStack() as stack:
        if resume is None:
            if data is None:
                raise DataError("no DATA given: pass a folder, a CSV manifest or builtin:NAME")
            strategy = resolve_strategy(config)
            config = resolve_config(config, data)
            check_out_dir(out)
            dataset = load_dataset(data, config, progress=show)
            dataset.require_classes()
            split = holdout_split(dataset.labels, dataset.groups, val_fraction=config.data.val_fraction,
                                  test_fraction=config.data.test_fraction, seed=config.seed, classes=dataset.classes)
            indices = {name: np.flatnonzero(split == name) for name in SPLITS}
            # the backbone (and any --weights file) loads before a run directory exists
            p = prepare(dataset, config, None, indices, progress=progress, extra_callbacks=extra_callbacks)
            run_dir = p.run_dir = new_run_dir(out, data, strategy)
            stack.enter_context(RunLock(run_dir))
            state = {"stage": "start", "done_stages": [], "data": data, "requested": strategy}
            if not is_worker_process():
                write_split_csv(run_dir / "split.csv", dataset.paths, [dataset.classes[i] for i in dataset.labels],
                                {"split": list(split)})
                save_run_config(run_dir, config, state)
        else:
            run_dir = Path(resume)
            stack.enter_context(RunLock(run_dir))
            state = read_json(run_dir / "state.json")
            if state.get("stage") == "done":
                raise RunError(f"{run_dir} already finished: its results are in {run_dir / 'metrics.json'}")
            config = resume_config(run_dir, state, resume_overrides)
            dataset = load_dataset(config.data.source, config, progress=show)
            split = read_split(dataset, run_dir)
            indices = {name: np.flatnonzero(split == name) for name in SPLITS}
            p = prepare(dataset, config, run_dir, indices, progress=progress, extra_callbacks=extra_callbacks)
        L.seed_everything(config.seed, workers=True, verbose=False)
        if "strategy" in state:
            p.strategy = config.strategy.name
        else:  # a new run, or one stopped before its strategy was settled: settle it now
            choose_strategy(p, state["requested"], state)
            if not is_worker_process():
                save_run_config(run_dir, p.config, state)
        if not is_worker_process():
            write_json(run_dir / "dataset.json", dataset_record(dataset, indices, p.normalize))
            report_dataset_problems(dataset, run_dir)
        if show:
            info(f"{len(p.dataset):,} images, {len(p.dataset.classes)} classes; split "
                 + ", ".join(f"{k} {len(v):,}" for k, v in p.indices.items())
                 + f"; strategy {p.strategy}; run directory {run_dir}")
        try:
            train_stages(p, state, run_dir / "state.json", resume=resume is not None)
        except KeyboardInterrupt:
            if not is_worker_process():
                warn(f"interrupted: continue with `transferlab train --resume {run_dir}`")
            raise
        if not is_worker_process():
            finish(p, state, started)
    return run_dir


def choose_strategy(p: Prepared, strategy: str, state: dict) -> None:
    """Settle the strategy of a new run (or fold): `auto` decides from the data, others take their
    defaults. The decision is recorded in `state`."""
    if strategy == "auto":
        decision = apply_auto(p)
        state["decision"] = decision.record()
    else:
        p.config = finalize_strategy(p.config, strategy)
        p.strategy = strategy
    state["strategy"] = p.strategy


def imagenet_head(config: Config) -> torch.nn.Module | None:
    """The backbone's 1000-class ImageNet classifier when it is at hand offline (for LEEP)."""
    if config.model.name.split(".")[0] != BUNDLED or not config.model.pretrained or config.model.weights:
        return None
    from transferlab.models.backbone import imagenet_model

    return imagenet_model(config.model.name).get_classifier().eval()


def apply_auto(p: Prepared) -> "Decision":
    """Measure the training part's size and the backbone's transferability on it (LogME on the
    pooled features, which feature extraction and fine-tuning's warm-up then reuse; LEEP too when
    the ImageNet head is at hand), apply the 2x2 rule, and switch the config to its settings."""
    from transferlab.config import merge
    from transferlab.strategies import decide
    from transferlab.transferability import leep, logme

    auto = p.config.strategy.auto
    train = all_features(p)["train"][: len(p.indices["train"])].numpy()
    labels = p.dataset.labels[p.indices["train"]]
    if len(labels) > auto.max_images:
        keep = np.sort(np.random.default_rng(p.config.seed).choice(len(labels), auto.max_images, replace=False))
        train, labels = train[keep], labels[keep]
    head = imagenet_head(p.config)
    source = None
    if head is not None:
        with torch.no_grad():
            source = leep(head(torch.from_numpy(train)).softmax(dim=1).numpy(), labels)
    decision = decide(p.config, labels, logme_score=logme(train, labels), leep_score=source)
    nested: dict = {}
    for key, value in decision.overrides.items():
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = value
    config = merge(p.config, nested, origin="strategy auto") if nested else p.config
    p.config = finalize_strategy(config, decision.strategy)
    p.strategy = decision.strategy
    if not is_worker_process():
        info(f"auto strategy: {decision.reason}")
    return decision


def train_stages(p: Prepared, state: dict, state_path: Path, *, resume: bool) -> None:
    """Run the strategy's stages in order, skipping finished ones and continuing an interrupted one
    from its last checkpoint; then keep the stage that did best on validation."""
    p.stage_info.update(state.get("stage_info", {}))
    # a stage trained on features leaves the backbone as it came: keep it, in case that stage wins
    p.initial_backbone = {k: v.detach().clone() for k, v in p.classifier.backbone.state_dict().items()}
    for stage, features_mode, epochs in stages_of(p.strategy, p.config):
        if stage in state["done_stages"]:
            load_stage_result(p, stage)
            continue
        last = p.run_dir / "checkpoints" / stage / "last.ckpt"
        resume_from = last if resume and last.is_file() else None
        freeze_all(p.classifier)
        if features_mode:
            set_trainable(p.classifier, ["head"])
        elif p.strategy == "fine-tune":
            set_trainable(p.classifier, groups_at_epoch(p.config, "fine-tune", 0), train_bn=p.config.strategy.train_bn)
        fit_stage(p, stage, epochs=epochs, features_mode=features_mode, resume_from=resume_from)
        state["done_stages"].append(stage)
        state["stage"] = stage
        state["stage_info"] = p.stage_info
        if not is_worker_process():
            write_json(state_path, state)
    if not is_worker_process():
        select_best_stage(p)


def select_best_stage(p: Prepared) -> None:
    """Keep the stage whose best checkpoint scores best on validation (fine-tuning can lose to its
    own head warm-up on small data; the validation split decides, never the test split)."""
    from transferlab.train import MONITOR_MODE

    scored = {s: i["best_score"] for s, i in p.stage_info.items() if i.get("best_score") is not None}
    if len(scored) < 2:
        return
    better = min if MONITOR_MODE[p.config.train.monitor] == "min" else max
    chosen = better(scored, key=scored.get)
    p.stage_info["selected"] = {"stage": chosen, "by": p.config.train.monitor, "scores": scored}
    if chosen != list(scored)[-1]:
        load_stage_result(p, chosen)
        info(f"the {chosen} stage scored best on validation ({p.config.train.monitor} {scored[chosen]:.4f}): "
             "its weights are kept")


def load_stage_result(p: Prepared, stage: str) -> None:
    """Weights of a finished stage (its best checkpoint) for a resumed run to start the next from."""
    folder = p.run_dir / "checkpoints" / stage
    best = folder / "best.ckpt" if (folder / "best.ckpt").is_file() else folder / "last.ckpt"
    state = read_checkpoint(best)["state_dict"]
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    if p.stage_info.get(stage, {}).get("features_mode"):
        p.classifier.head.load_state_dict(weights)
        if p.initial_backbone is not None:  # a later stage may have changed it since
            p.classifier.backbone.load_state_dict(p.initial_backbone)
    else:
        p.classifier.load_state_dict(weights)


def evaluate_parts(p: Prepared, parts=("val", "test")) -> tuple[dict, dict, dict]:
    """Metrics per part, ROC/calibration curves per part, and prediction rows (paths, labels, probs, part)."""
    config, dataset = p.config, p.dataset
    classifier = p.classifier.to(p.device).eval()
    results: dict = {}
    curves: dict = {}
    rows: dict = {"paths": [], "labels": [], "probs": [], "part": [], "index": []}
    for part in parts:
        idx = p.indices.get(part, np.zeros(0, dtype=np.int64))
        if len(idx) == 0:
            continue
        if p.strategy == "feature-extraction":
            with torch.no_grad():
                probs = classifier.head(all_features(p)[part].to(p.device)).softmax(dim=1).cpu().numpy()
        else:
            probs = predict_proba(classifier, dataset.images, idx, batch_size=config.train.eval_batch_size,
                                  device=p.device, channels_last=config.train.channels_last)
        metrics = compute_metrics(dataset.labels[idx], probs, dataset.classes)
        curves[part] = {"roc": metrics.pop("roc_curves"), "calibration": metrics.pop("calibration")}
        results[part] = metrics
        rows["paths"] += [dataset.paths[i] for i in idx]
        rows["labels"] += list(dataset.labels[idx])
        rows["probs"].append(probs)
        rows["part"] += [part] * len(idx)
        rows["index"] += list(idx)
    rows["probs"] = np.concatenate(rows["probs"]) if rows["probs"] else np.zeros((0, len(dataset.classes)))
    return results, curves, rows


def model_meta(p: Prepared) -> dict:
    return {"model": p.config.model.name, "classes": p.dataset.classes, "normalize": p.normalize,
            "resize": dataclasses.asdict(p.dataset.spec), "dropout": p.config.model.dropout, "strategy": p.strategy,
            "num_features": p.classifier.num_features, "source": p.config.data.source}


def finish(p: Prepared, state: dict, started: float) -> None:
    """Evaluate the best model on val and test, write model/, metrics.json, predictions.csv."""
    config, dataset = p.config, p.dataset
    results, curves, rows = evaluate_parts(p)
    results["strategy"] = {"name": p.strategy, "requested": state.get("requested", config.strategy.name),
                           **state.get("decision", {}), "stages": p.stage_info}
    results["data"] = {"source": config.data.source, "n_images": len(dataset),
                       "splits": {k: int(len(v)) for k, v in p.indices.items()}, "classes": dataset.classes}
    results["train_seconds"] = round(time.time() - started, 1)
    results["environment"] = environment()
    write_json(p.run_dir / "metrics.json", results)
    write_json(p.run_dir / "curves.json", curves)
    if rows["paths"]:
        write_predictions(p.run_dir / "predictions.csv", rows["paths"], np.array(rows["labels"]), rows["probs"],
                          dataset.classes, extra={"split": rows["part"]})
    save_model(p.run_dir / "model", p.classifier.cpu().to(memory_format=torch.contiguous_format), model_meta(p))
    state["stage"] = "done"
    write_json(p.run_dir / "state.json", state)
    if config.train.report:
        draw_and_report(p, rows)


def draw_and_report(p: Prepared, rows: dict) -> None:
    """The pictures that need images or the model, then report.html. Never fails the run."""
    from transferlab.report import safe_build_report
    from transferlab.report.gallery import dataset_pictures, error_candidates, error_gallery

    dataset_pictures(p.run_dir, p.dataset, p.config)
    try:
        part = "val" if "val" in rows["part"] else "test"
        chosen = np.array([k for k, name in enumerate(rows["part"]) if name == part], dtype=np.int64)
        if len(chosen):
            candidates = error_candidates(p.classifier.cpu().eval(), p.dataset.images,
                                          np.array(rows["index"])[chosen], p.dataset.labels, rows["probs"][chosen],
                                          seed=p.config.seed)
            error_gallery(candidates, p.dataset.classes, p.run_dir / "plots" / "errors.png")
    except Exception as exc:
        warn(f"error gallery not drawn: {exc}")
    safe_build_report(p.run_dir)


def summary_line(run_dir: Path) -> str:
    """`accuracy 0.912, f1_macro 0.910, ...` of the test split (or val) of a finished run."""
    metrics = read_json(Path(run_dir) / "metrics.json")
    split = "test" if "test" in metrics else "val"
    if split not in metrics:
        return "no evaluation split"
    values = headline(metrics[split])
    return f"{split}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items() if v is not None)


def run_demo(out: str | Path | None = None, progress: bool = True) -> Path:
    """The whole path on Fashion-MNIST (a stratified subset; digits if it is not installed) at
    128 px on a CPU in about two minutes. The strategy is the default `auto`, so the demo shows
    the measured decision too: on 600 grey garments it is "different domain", i.e. the head on
    cached features, then the late group trains with the head."""
    from transferlab.data.sources import fashion_mnist_or_digits

    data, why = fashion_mnist_or_digits()
    if why:
        warn(why)
    config = load_config(overrides=[
        "data.subset=60", "preprocess.size=128", "augment.preset=light",
    ])
    return run_training(data, config, out=out, progress=progress)
