"""Fit ONE model on given indices into a directory: the one path `train` takes once and `cv`
takes once per fold (as scikit-learn's `cross_validate` relates to `fit`).

    result = fit(dataset, {"train": i, "val": j, "test": k}, config, directory, requested="auto")

In order: the statistics of THIS training part (z-score normalization, class weights or the
balanced sampler), a fresh classifier from the pretrained weights, the strategy settled (`auto`
decides from this training part only) and recorded in directory/config.yaml and state.json,
every stage run (a finished stage is read back, an interrupted one continues from its last
checkpoint), and the stage that scores best on validation kept.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from transferlab.config import Config, budget_seconds
from transferlab.console import info
from transferlab.data import ImageDataset, load_dataset
from transferlab.errors import ConfigError, DataError, DivergedError
from transferlab.features import FeatureCache, backbone_identity, cached_features, extract_features
from transferlab.metrics import MONITOR_MODE, better, monitored_values
from transferlab.models.backbone import Classifier, create_backbone
from transferlab.preprocess import build_normalizer, channel_stats
from transferlab.run import device_for, is_worker_process, save_run_config, write_json
from transferlab.strategies import get_strategy
from transferlab.strategies.base import Stage, Strategy
from transferlab.train import (ClassifierModule, HeadModule, TrainableGroups, TransferDataModule, build_trainer,
                               find_lr, first_epochs, predict_proba, read_checkpoint)
from transferlab.train import fit as lightning_fit


@dataclass
class StageResult:
    """What a stage left: its best weights and how it got there (kept in state.json)."""

    name: str
    kind: str  # "head": head weights over the untouched backbone; "classifier": the whole classifier
    weights: str  # the file holding the best weights
    score: float | None  # best value of train.monitor on validation
    epochs_run: int
    lr: float  # the base rate it trained at (the LR finder's pick when it ran)
    groups: dict = field(default_factory=dict)  # per layer group: lr_scale, peak_lr, first epoch it trained
    seconds: float = 0.0  # wall time of the stage


@dataclass
class FeatureSet:
    """Pooled features and labels of each part; `train` may carry augmented views after its rows."""

    features: dict[str, torch.Tensor]
    labels: dict[str, np.ndarray]
    plain_rows: int  # rows of `train` that are the images themselves (before the views)


def imbalance_weights(config: Config, labels: np.ndarray, num_classes: int) -> tuple[torch.Tensor | None,
                                                                                      np.ndarray | None, str]:
    """Class weights for the loss or per-sample weights for a balanced sampler, from TRAINING labels."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    mode = config.train.imbalance
    if mode == "auto":
        mode = "weights" if counts.max() / max(1.0, counts[counts > 0].min()) >= 3 else "none"
    if mode == "weights":
        return torch.tensor(len(labels) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32), None, mode
    if mode == "sampler":
        return None, 1.0 / np.maximum(counts[labels], 1), mode
    return None, None, mode


class FitJob:
    """The shared machinery of one fit that strategies call: features, a head stage, a classifier
    stage, and reading a finished stage's weights back."""

    def __init__(self, dataset: ImageDataset, indices: dict[str, np.ndarray], config: Config, directory: Path | None,
                 *, progress: bool = True, callbacks: list | None = None, deadline: float | None = None):
        if len(indices["train"]) == 0:
            raise DataError("the training split is empty: lower data.val_fraction / data.test_fraction")
        # the directory may be given later: the job (and its weights) is built before a run directory exists
        self.indices, self.config, self.directory = indices, config, directory
        self.progress, self.callbacks = progress and not is_worker_process(), list(callbacks or [])
        self.deadline = deadline  # time.monotonic() by which every stage must have stopped (train.budget)
        self.tracker = None  # tracking.Tracker of the run; None: config.tracking.tracker with no MLflow run
        self.device = device_for(config.train.accelerator)
        self.use(dataset)

    def use(self, dataset: ImageDataset) -> None:
        """Work on `dataset` (the same images at one input size): the statistics of the training
        part, a fresh classifier from the pretrained weights, no features yet."""
        config, train = self.config, self.indices["train"]
        self.dataset = dataset
        zscore = config.preprocess.normalize == "zscore"
        normalizer = build_normalizer(config, channel_stats(dataset.images, train) if zscore else None)
        self.normalize = normalizer.to_dict() | ({"computed_on": "training part only"} if zscore else {})
        torch.manual_seed(config.seed)  # without pretrained weights, every fold starts from the same init too
        backbone = create_backbone(config.model.name, pretrained=config.model.pretrained, weights=config.model.weights,
                                   drop_path=config.model.drop_path, img_size=dataset.spec.size)
        self.classifier = Classifier(backbone, len(dataset.classes), normalizer.mean, normalizer.std,
                                     dropout=config.model.dropout)
        if config.train.channels_last:
            self.classifier = self.classifier.to(memory_format=torch.channels_last)
        self.initial_backbone = {k: v.detach().clone() for k, v in self.classifier.backbone.state_dict().items()}
        self.class_weights, self.sample_weights, self.imbalance = imbalance_weights(
            config, dataset.labels[train], len(dataset.classes))
        self._features: FeatureSet | None = None

    def at_size(self, size: int, directory: Path | None = None, *, config: Config | None = None) -> FitJob:
        """A job on the same images and parts at input side `size` (decoded anew unless it is
        this job's size), with its own classifier: what auto's search tries candidates on."""
        config = dataclasses.replace(config or self.config,
                                     preprocess=dataclasses.replace(self.config.preprocess, size=size))
        dataset = self.dataset if size == self.dataset.spec.size else load_dataset(
            config.data.source, config, progress=False)
        if dataset.paths != self.dataset.paths:
            raise DataError(f"the images of {config.data.source} changed while they were read at {size} px")
        return FitJob(dataset, self.indices, config, directory or self.directory, progress=False,
                      deadline=self.deadline)

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    @property
    def has_val(self) -> bool:
        return len(self.indices["val"]) > 0

    def fold_val_into_train(self) -> None:
        """The validation images join the training part (a model whose choices need no validation
        split): features already computed are reused, class weights follow the new part."""
        if not self.has_val:
            return
        train, val = self.indices["train"], self.indices["val"]
        self.indices = dict(self.indices, train=np.concatenate([train, val]), val=val[:0])
        self.class_weights, self.sample_weights, self.imbalance = imbalance_weights(
            self.config, self.dataset.labels[self.indices["train"]], len(self.dataset.classes))
        done = self._features
        if done is not None and done.plain_rows == len(done.labels["train"]):  # no augmented views to redo
            parts = dict(done.features, train=torch.cat([done.features["train"], done.features["val"]]),
                         val=done.features["val"][:0])
            labels = dict(done.labels, train=np.concatenate([done.labels["train"], done.labels["val"]]),
                          val=done.labels["val"][:0])
            self._features = FeatureSet(parts, labels, plain_rows=len(self.indices["train"]))
        else:
            self._features = None

    def features(self) -> FeatureSet:
        """Pooled features of every image (computed once, cached on disk) by part; with
        strategy.feature_extraction.views, K augmented views of each training image follow its rows."""
        if self._features is None:
            config, dataset, train = self.config, self.dataset, self.indices["train"]
            hashes = [r["sha256"] for r in dataset.records]
            key = {"model": backbone_identity(config.model, config.seed), "resize": dataset.spec.key(),
                   "normalize": {k: self.normalize[k] for k in ("mean", "std")}, "images": hashes,
                   "rows": len(dataset)}
            every, hit = self._extract(key, np.arange(len(dataset)))
            if hit and self.progress:
                info(f"features of {len(dataset):,} images read from the feature cache")
            parts = {name: every[idx] for name, idx in self.indices.items()}
            labels = {name: dataset.labels[idx] for name, idx in self.indices.items()}
            views = config.strategy.feature_extraction.views
            if views > 0:
                from transferlab.augment import build_train_transform

                transform = build_train_transform(config.augment, dataset.spec.size)
                extra = [self._extract(dict(key, images=[hashes[i] for i in train], rows=len(train), view=view,
                                            seed=config.seed, augment=dataclasses.asdict(config.augment)),
                                       train, transform=transform, seed=config.seed + 1 + view,
                                       label=f"Augmented view {view + 1}/{views}")[0] for view in range(views)]
                parts["train"] = torch.cat([parts["train"], *extra])
                labels["train"] = np.concatenate([labels["train"]] * (views + 1))
            self._features = FeatureSet(parts, labels, plain_rows=len(train))
        return self._features

    def _extract(self, key: dict, indices: np.ndarray, **kwargs) -> tuple[torch.Tensor, bool]:
        """Features of `indices` by the pretrained backbone (whatever a stage did to it since),
        from the feature cache or computed and stored there, on the engine train.engine names."""
        from transferlab.data.sources import cache_root
        from transferlab.engines import Features, cache_folder, compile_engine, exported, resolve, run_batches

        config = self.config
        root = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else cache_root()
        cache = FeatureCache(root, limit_bytes=int(config.data.disk_limit_gb * 1e9))
        model = self.classifier.to(self.device)
        folder = None if "transform" in kwargs else cache_folder(  # augmented views need torch: no export
            {"kind": "features", "model": key["model"], "normalize": key["normalize"], "size": self.dataset.spec.size},
            root)
        engine = "torch" if folder is None else resolve(
            config.train.engine, device=self.device, images=len(indices), cached=exported(folder, "onnxruntime"))

        def compute() -> torch.Tensor:
            current = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
            model.backbone.load_state_dict(self.initial_backbone)
            try:
                if engine == "torch":
                    return extract_features(model, self.dataset.images, indices, device=self.device,
                                            batch_size=config.train.eval_batch_size,
                                            channels_last=config.train.channels_last, progress=self.progress,
                                            **kwargs)
                compiled = compile_engine(engine, Features(model.to(memory_format=torch.contiguous_format)),
                                          self.dataset.spec.size, folder)
                return torch.from_numpy(run_batches(compiled, self.dataset.images, np.asarray(indices),
                                                    config.train.eval_batch_size))
            finally:
                model.backbone.load_state_dict(current)
                if config.train.channels_last:
                    model.to(memory_format=torch.channels_last)

        return cached_features(cache, key, compute)

    # --- stages through Lightning ---------------------------------------------------------------

    def train_head(self, stage: Stage) -> StageResult:
        """The head alone on cached features."""
        features = self.features()
        weights = None if self.sample_weights is None else np.tile(self.sample_weights, len(features.labels["train"])
                                                                  // len(self.indices["train"]))
        datamodule = TransferDataModule(self.config, self.dataset.labels, self.indices, features=features.features,
                                        feature_labels=features.labels, sample_weights=weights)
        module = HeadModule(self.classifier.head, self.config, class_weights=self.class_weights)
        return self._run(stage, module, datamodule, [], rows=len(features.labels["train"]), kind="head",
                         groups={"head": {"lr_scale": 1.0, "trains_from_epoch": 1}})

    def train_classifier(self, stage: Stage, *, schedule, scales: dict[str, float], train_bn: bool) -> StageResult:
        """The whole classifier on images; `schedule(epoch)` names the layer groups that train."""
        datamodule = TransferDataModule(self.config, self.dataset.labels, self.indices, store=self.dataset.images,
                                        sample_weights=self.sample_weights)
        module = ClassifierModule(self.classifier, self.config, num_classes=len(self.dataset.classes),
                                  lr_scales=scales, class_weights=self.class_weights)
        starts = first_epochs(schedule, stage.epochs)
        scale_of = scales if self.config.strategy.layer_decay is None else {}
        groups = {g: {"lr_scale": scale_of.get(g), "trains_from_epoch": starts.get(g)} for g in scales}
        return self._run(stage, module, datamodule, [TrainableGroups(schedule, train_bn=train_bn)],
                         rows=len(self.indices["train"]), kind="classifier", groups=groups)

    def _run(self, stage: Stage, module, datamodule, callbacks: list, *, rows: int, kind: str,
             groups: dict) -> StageResult:
        config, started = self.config, time.monotonic()
        steps = max(1, rows // config.train.batch_size)
        last = self.directory / "checkpoints" / stage.name / "last.ckpt"
        resume_from = last if last.is_file() else None

        def trainer():
            left = self.seconds_left()
            return build_trainer(config, self.directory, stage.name, epochs=stage.epochs, has_val=self.has_val,
                                 progress=self.progress, callbacks=callbacks + self.callbacks, steps_per_epoch=steps,
                                 max_seconds=None if left is None else max(1.0, left), tracker=self.tracker)

        built, checkpoint = trainer()
        if config.train.find_lr and stage.find_lr and resume_from is None:
            plot = self.directory / "plots" / f"lr_find_{stage.name}.png"
            suggestion = find_lr(built, module, datamodule, plot)
            if suggestion and self.progress:
                info(f"LR finder suggests lr={suggestion:.2e} (plot: {plot})")
            built, checkpoint = trainer()
        try:
            lightning_fit(built, module, datamodule, resume_from)
        except DivergedError as exc:
            raise DivergedError(f"stage {stage.name}: {exc}") from None
        best = checkpoint.best_model_path or checkpoint.last_model_path
        for entry in groups.values():
            entry["peak_lr"] = None if entry.get("lr_scale") is None else module.lr * entry["lr_scale"]
        result = StageResult(stage.name, kind, str(best), None if checkpoint.best_model_score is None else
                             float(checkpoint.best_model_score), int(built.current_epoch), float(module.lr), groups,
                             round(time.monotonic() - started, 2))
        if config.strategy.layer_decay is not None and kind == "classifier":
            result.groups["layer_decay"] = {"factor": config.strategy.layer_decay, "peak_lr": {
                g["name"]: module.lr * g["lr_scale"] for g in built.optimizers[0].param_groups}}
        self.restore(result)
        return result

    def head_result(self, stage: Stage, head_state: dict[str, torch.Tensor], groups: dict | None = None) -> StageResult:
        """Save the weights a custom stage gave the head (over the untouched backbone) and score them."""
        from safetensors.torch import save_file

        path = self.directory / "checkpoints" / stage.name / "head.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in head_state.items()}, str(path))
        result = StageResult(stage.name, "head", str(path), None, 0, 0.0, groups or {})
        self.restore(result)
        if self.has_val:
            result.score = monitored_values(self.dataset.labels[self.indices["val"]],
                                            self.probabilities("val", result))[self.config.train.monitor]
        return result

    def restore(self, result: StageResult) -> None:
        """Load a finished stage's best weights into the classifier (strictly)."""
        if result.weights.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = {f"head.{k}": v for k, v in load_file(result.weights).items()}
        else:
            state = read_checkpoint(result.weights)["state_dict"]
        prefix = "head." if result.kind == "head" else "model."
        weights = {k.removeprefix(prefix): v for k, v in state.items()}
        if result.kind == "head":
            self.classifier.head.load_state_dict(weights)
            self.classifier.backbone.load_state_dict(self.initial_backbone)  # a later stage may have changed it
        else:
            self.classifier.load_state_dict(weights)

    def probabilities(self, part: str, result: StageResult) -> np.ndarray:
        """Class probabilities of a part by the restored model: through the cached features when
        only the head trained (exactly what the images would give, without the backbone pass)."""
        classifier = self.classifier.to(self.device).eval()
        if result.kind == "head":
            rows = self.features().features[part]
            if part == "train":
                rows = rows[: self.features().plain_rows]
            with torch.no_grad():
                return classifier.head(rows.to(self.device)).float().softmax(dim=1).cpu().numpy()
        return predict_proba(classifier, self.dataset.images, self.indices[part],
                             batch_size=self.config.train.eval_batch_size, device=self.device,
                             channels_last=self.config.train.channels_last)


@dataclass
class FitResult:
    """The kept model and everything the record says about how it was made."""

    job: FitJob
    strategy: Strategy
    decision: dict | None
    stages: dict[str, StageResult]
    selected: str
    seconds: float

    @property
    def classifier(self) -> Classifier:
        return self.job.classifier

    @property
    def config(self) -> Config:
        return self.strategy.config

    def probabilities(self, part: str) -> np.ndarray:
        return self.job.probabilities(part, self.stages[self.selected])

    def record(self, requested: str) -> dict:
        """The `strategy` entry of metrics.json: what was asked, chosen and why, and each stage's
        settings as they were actually used."""
        scored = {n: r.score for n, r in self.stages.items() if r.score is not None}
        return {"name": self.strategy.name, "requested": requested, "label": self.strategy.label(),
                "summary": self.strategy.summary, "decision": self.decision,
                "stages": {n: dataclasses.asdict(r) for n, r in self.stages.items()},
                "selected": {"stage": self.selected, "by": self.config.train.monitor, "scores": scored},
                "imbalance": self.job.imbalance, "seconds": round(self.seconds, 1)}


def settle_strategy(job: FitJob, requested: str, state: dict) -> tuple[Strategy, dict | None]:
    """The strategy of this fit: read back from its state, or settled now (`auto` decides from the
    training part) and recorded, with the concrete config, before any stage runs."""
    if "strategy" in state:
        return get_strategy(state["strategy"], job.config), state.get("decision")
    if requested == "auto":
        from transferlab.strategies.auto import choose

        strategy, decision = choose(job)
    else:
        strategy, decision = get_strategy(requested, job.config), None
    state.update(strategy=strategy.name, decision=decision)
    save_run_config(job.directory, strategy.config, state)
    return strategy, decision


def fit(job: FitJob, *, state: dict, requested: str) -> FitResult:
    """Fit one model on the job's training part (checkpoints chosen on its validation part) into
    its directory, whose `state` (state.json) says what is already done."""
    started = time.time() - state.get("seconds", 0.0)
    budget = budget_seconds(dataclasses.replace(job.config, strategy=dataclasses.replace(job.config.strategy,
                                                                                          name=requested)))
    if job.deadline is None and budget is not None:  # train.budget bounds the search and the training
        job.deadline = time.monotonic() + budget - state.get("seconds", 0.0)
    strategy, decision = settle_strategy(job, requested, state)
    job.config = strategy.config
    if job.config.strategy.linear_probe.refit_on_val:
        if not strategy.refits_on_val:
            raise ConfigError(f"strategy.linear_probe.refit_on_val applies to linear-probe only (it chooses its regularisation "
                              f"by inner cross-validation); {strategy.name} chooses its checkpoint on the "
                              f"validation split")
        job.fold_val_into_train()
    done = state.setdefault("stage_info", {})
    results: dict[str, StageResult] = {}
    for stage in strategy.stages():
        if stage.name in done:
            results[stage.name] = StageResult(**done[stage.name])
            job.restore(results[stage.name])
            continue
        results[stage.name] = strategy.run(stage, job)
        done[stage.name] = dataclasses.asdict(results[stage.name])
        state.update(stage=stage.name, seconds=round(time.time() - started, 1))
        write_json(job.directory / "state.json", state)
    selected = select_stage(results, job.config.train.monitor)
    job.restore(results[selected])
    if selected != list(results)[-1] and job.progress:
        info(f"the {selected} stage scored best on validation ({job.config.train.monitor} "
             f"{results[selected].score:.4f}): its weights are kept")
    return FitResult(job, strategy, decision, results, selected, time.time() - started)


def select_stage(results: dict[str, StageResult], monitor: str) -> str:
    """The stage whose best checkpoint scores best on validation (fine-tuning can lose to its own
    head warm-up on small data; the validation split decides, never the test split); the last
    stage when none was scored."""
    chosen = list(results)[-1]
    for name, result in results.items():
        if result.score is not None and (results[chosen].score is None or better(monitor, result.score,
                                                                                 results[chosen].score)):
            chosen = name
    return chosen


__all__ = ["fit", "FitJob", "FitResult", "StageResult", "FeatureSet", "imbalance_weights", "MONITOR_MODE"]
