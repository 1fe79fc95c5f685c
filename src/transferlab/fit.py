"""Fit ONE model from a frozen `FitContext`: the one path every `train` split, `cv` fold and ensemble member takes
(as scikit-learn's `_fit_and_score` is to `cross_validate`)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferlab.augment import resolve_augment
from transferlab.config import Config
from transferlab.console import info
from transferlab.data.dataset import count_labels
from transferlab.errors import DataError
from transferlab.metrics import better
from transferlab.models import Classifier, device_for, seeded_backbone
from transferlab.tasks import SINGLE, Task
from transferlab.train import (ClassifierModule, HeadModule, StageResult, TrainableGroups, TransferDataModule,
                               first_epochs, precision_for, read_checkpoint, run_stage)


@dataclass(frozen=True)
class FitContext:
    """Everything one fit reads, fixed before it starts: the data, which images form each part, the
    config, the folder it writes, its deadline and tracker, and the feature store it shares."""

    dataset: object  # data.ImageDataset
    indices: Mapping[str, np.ndarray]  # "train" / "val" / "test" -> positions in the dataset
    config: Config
    directory: Path
    features: object  # features.FeatureStore
    deadline: float | None = None  # time.monotonic() by which every stage must have stopped (train.budget)
    tracker: object = None  # tracking.Tracker
    progress: bool = True
    callbacks: tuple = ()
    seconds: dict | None = None  # what the run spent before this fit, by part (metrics.json `seconds`)

    def replace(self, **changes) -> FitContext:
        return dataclasses.replace(self, **changes)

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    @property
    def has_val(self) -> bool:
        return len(self.indices["val"]) > 0

    @property
    def size(self) -> int:
        """The model's own input side (model.size; the images it reads may be larger)."""
        return self.config.model.size or self.dataset.spec.size

    @functools.cached_property
    def normalizer(self):
        """Normalization of THIS training part (z-score statistics never see val or test)."""
        from transferlab.preprocess import build_normalizer

        return build_normalizer(self.config, self.dataset.images, self.indices["train"])

    @property
    def normalization(self) -> dict:
        extra = {"computed_on": "training part only"} if self.config.preprocess.normalize == "zscore" else {}
        return self.normalizer.to_dict() | extra

    def train_features(self, views: int = 0) -> tuple[torch.Tensor, np.ndarray]:
        """Pooled features and labels of the training part, then `views` augmented views of it after its rows."""
        train, labels = self.indices["train"], self.dataset.labels
        norm, taps = (self.normalizer.mean, self.normalizer.std), self.config.model.taps
        rows = [self.features.get(train, size=self.size, normalize=norm, taps=taps)]
        rows += [self.features.get(train, size=self.size, normalize=norm, taps=taps, view=v) for v in range(views)]
        return torch.cat(rows), np.concatenate([labels[train]] * (views + 1))

    def part_features(self, part: str) -> torch.Tensor:
        return self.features.get(self.indices[part], size=self.size, taps=self.config.model.taps,
                                 normalize=(self.normalizer.mean, self.normalizer.std))


def imbalance_weights(config: Config, labels: np.ndarray, num_classes: int, task: Task = SINGLE
                      ) -> tuple[torch.Tensor | None, np.ndarray | None, str]:
    """Class weights for the loss or per-sample weights for a balanced sampler, from TRAINING labels (a
    multi-label task's weights: each label's pos_weight; it has no balanced sampler)."""
    counts = np.asarray(count_labels(labels, num_classes), dtype=float)
    mode = config.train.imbalance
    if mode == "auto":  # a multi-label task's own thresholds answer imbalance, with probabilities left calibrated
        mode = "weights" if labels.ndim == 1 and counts.max() / max(1.0, counts[counts > 0].min()) >= 3 else "none"
    if mode == "sampler" and labels.ndim == 2:
        mode = "weights"  # a sampler draws images by their one class
    if mode == "weights":
        return task.class_weights(labels, num_classes), None, mode
    if mode == "sampler":
        return None, 1.0 / np.maximum(counts[labels], 1), mode
    return None, None, mode


def new_classifier(ctx: FitContext) -> Classifier:
    """A classifier from the pretrained weights (a random backbone is seeded, so it equals the
    feature store's), taking the stored images and seeing them at the model's own size."""
    config = ctx.config
    with seeded_backbone(config.model, config.seed, ctx.size, drop_path=config.model.drop_path) as backbone:
        model = Classifier(backbone, len(ctx.dataset.classes), ctx.normalizer.mean, ctx.normalizer.std,
                           dropout=config.model.dropout, size=ctx.size, input_size=ctx.dataset.spec.size,
                           taps=config.model.taps)
    return model.to(memory_format=torch.channels_last) if config.train.channels_last else model


class Fitting:
    """The model of one fit as its stages train it: what a strategy's `run` calls."""

    def __init__(self, ctx: FitContext):
        if len(ctx.indices["train"]) == 0:
            raise DataError("the training split is empty: lower data.val_fraction / data.test_fraction")
        self.ctx = ctx
        self.classifier = new_classifier(ctx)
        self.initial_backbone = {k: v.detach().clone() for k, v in self.classifier.backbone.state_dict().items()}
        self.class_weights, self.sample_weights, self.imbalance = imbalance_weights(
            ctx.config, ctx.dataset.labels[ctx.indices["train"]], len(ctx.dataset.classes), ctx.dataset.task)

    def train_head(self, stage) -> StageResult:
        """The head alone on cached features."""
        ctx = self.ctx
        features, labels = ctx.train_features(stage.views)
        weights = None if self.sample_weights is None else np.tile(self.sample_weights,
                                                                   len(labels) // len(ctx.indices["train"]))
        datamodule = TransferDataModule(ctx.config, ctx.dataset.labels, ctx.indices, sample_weights=weights,
                                        features={"train": features, "val": ctx.part_features("val")},
                                        feature_labels={"train": labels,
                                                        "val": ctx.dataset.labels[ctx.indices["val"]]})
        module = HeadModule(self.classifier.head, ctx.config, class_weights=self.class_weights, task=ctx.dataset.task)
        result = run_stage(ctx, stage, module, datamodule, [], rows=len(labels),
                           groups={"head": {"lr_scale": 1.0, "trains_from_epoch": 1}})
        if stage.views:  # the views are the per-image ops (no batch mixing: features are mixed by nobody)
            result.augmentation = [{"op": name, **settings} for name, settings in resolve_augment(
                ctx.config.augment).ops]
        self.restore(result)
        return result

    def train_classifier(self, stage, *, schedule, scales: dict[str, float], train_bn: bool) -> StageResult:
        """The whole classifier on images; `schedule(epoch)` names the layer groups that train."""
        ctx = self.ctx
        datamodule = TransferDataModule(ctx.config, ctx.dataset.labels, ctx.indices, store=ctx.dataset.images,
                                        sample_weights=self.sample_weights)
        module = ClassifierModule(self.classifier, ctx.config, num_classes=len(ctx.dataset.classes),
                                  lr_scales=scales, class_weights=self.class_weights, task=ctx.dataset.task)
        starts = first_epochs(schedule, stage.epochs)
        scale_of = scales if ctx.config.strategy.layer_decay is None else {}
        groups = {g: {"lr_scale": scale_of.get(g), "trains_from_epoch": starts.get(g)} for g in scales}
        result = run_stage(ctx, stage, module, datamodule, [TrainableGroups(schedule, train_bn=train_bn)],
                           rows=len(ctx.indices["train"]), groups=groups)
        result.augmentation = resolve_augment(ctx.config.augment).describe()
        self.restore(result)
        return result

    def head_result(self, stage, head_state: dict[str, torch.Tensor], groups: dict | None = None) -> StageResult:
        """Save the weights a custom stage gave the head (over the untouched backbone) and score them."""
        from safetensors.torch import save_file

        path = self.ctx.directory / "checkpoints" / stage.name / "head.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in head_state.items()}, str(path))
        result = StageResult(stage.name, "head", str(path), None, 0, 0.0, groups or {})
        self.restore(result)
        if self.ctx.has_val:
            result.score = self.ctx.dataset.task.monitored(self.ctx.dataset.labels[self.ctx.indices["val"]],
                                                           probabilities(self.ctx, self.classifier, result.kind, "val"))[
                self.ctx.config.train.monitor]
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


def probabilities(ctx: FitContext, model: torch.nn.Module, kind: str, part: str) -> np.ndarray:
    """Class probabilities of a part by `model`: through the stored features when only its head
    trained (exactly what the images would give, without the backbone pass), else the images."""
    from transferlab.engines import Probabilities, run_batches
    from transferlab.engines.runtime import TorchEngine

    device = device_for(ctx.config.train.accelerator)
    if kind == "head":
        with torch.no_grad():
            logits = model.head.eval().to(device)(ctx.part_features(part).to(device))
            return ctx.dataset.task.probabilities(logits).cpu().numpy()
    engine = TorchEngine(Probabilities(model, ctx.dataset.task), device=device,
                         channels_last=ctx.config.train.channels_last)
    return run_batches(engine, ctx.dataset.images, ctx.indices[part], ctx.config.train.eval_batch_size)


def training_seconds(ctx: FitContext, strategy, *, steps: int = 4) -> float:
    """Seconds per training image of `strategy`'s image stages on the device they train on: the median of
    `steps` optimizer steps (the first steps of an epoch: augmentation, forward, backward, update) of its own
    module on a fresh classifier, after a warm-up step, with the groups of its last epoch training (the
    dearest). The caller's random state and model are untouched."""
    from transferlab.augment import build_train_transform
    from transferlab.models.groups import named_groups

    ctx = ctx.replace(config=strategy.config)
    config, train = ctx.config, ctx.indices["train"]
    device = device_for(config.train.accelerator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        fitting = Fitting(ctx)
        module = ClassifierModule(fitting.classifier, config, num_classes=len(ctx.dataset.classes),
                                  lr_scales=strategy.lr_scales()).to(device).train()
        stages = [stage for stage in strategy.stages() if stage.kind == "images"] or strategy.stages()
        trained = {n for g in strategy.trainable(max(0, stages[-1].epochs - 1)) for n in named_groups(module.model)[g]}
        for name, parameter in module.model.named_parameters():
            parameter.requires_grad_(name in trained)
        optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
        transform = build_train_transform(config.augment, ctx.dataset.spec.size)
        rows = train[np.arange(min(config.train.batch_size, len(train)))]
        precision = precision_for(config)  # as the Trainer will train: mixed precision on a GPU by default
        mixed = (torch.autocast(device.type, dtype=torch.bfloat16 if "bf16" in precision else torch.float16)
                 if device.type == "cuda" and "mixed" in precision else contextlib.nullcontext())
        labels = torch.as_tensor(ctx.dataset.labels[rows]).to(device)
        seconds = []
        for step in range(steps + 1):
            started = time.perf_counter()
            pixels = torch.from_numpy(ctx.dataset.images.take(rows)).permute(0, 3, 1, 2)
            batch = torch.stack([transform(image) for image in pixels]).to(device)
            x, y = module.prepare_batch(batch, labels)
            with mixed:
                loss = ctx.dataset.task.loss(module(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step:  # the first step pays for lazy set-up
                seconds.append((time.perf_counter() - started) / len(rows))
    return float(np.median(seconds))


@dataclass
class FitResult:
    """The kept model and everything the record says about how it was made."""

    classifier: torch.nn.Module
    strategy: object  # strategies.Strategy
    stages: dict[str, StageResult]
    selected: str
    imbalance: str
    seconds: float
    ctx: FitContext | None = None  # the context it was fitted in (its parts, size and normalization)
    members: list = dataclasses.field(default_factory=list)  # an ensemble's (weight, FitResult)

    @property
    def config(self) -> Config:
        return self.strategy.config

    @property
    def trained_on_val(self) -> bool:
        """The validation images trained it (a refit): its validation metrics would not be honest."""
        return any(m.trained_on_val for _, m in self.members) if self.members else not self.ctx.has_val

    def probabilities(self, ctx: FitContext, part: str) -> np.ndarray:
        """Probabilities of `ctx`'s part (an ensemble: its members' weighted average, each on its own features)."""
        if self.members:
            return sum(w * m.probabilities(m.ctx, part) for w, m in self.members)
        return probabilities(self.ctx, self.classifier, self.stages[self.selected].kind, part)

    def record(self, requested: str, decision: dict | None) -> dict:
        """The `strategy` entry of metrics.json: what was asked, chosen and why, and each stage's
        settings as they were actually used."""
        scored = {n: r.score for n, r in self.stages.items() if r.score is not None}
        return {"name": self.strategy.name, "requested": requested, "label": self.strategy.label(),
                "summary": self.strategy.summary, "decision": decision,
                "stages": {n: dataclasses.asdict(r) for n, r in self.stages.items()},
                "selected": {"stage": self.selected, "by": self.config.train.monitor, "scores": scored},
                "imbalance": self.imbalance, "seconds": round(self.seconds, 1)}


def fit(ctx: FitContext, strategy, run) -> FitResult:
    """Fit `strategy` on the context's training part (checkpoints chosen on its validation part)
    into its directory; `run` (a RunDir) records each finished stage, so a resumed fit skips it."""
    if hasattr(strategy, "members"):
        return fit_members(ctx, strategy, run)
    started = time.time() - run.state.seconds
    ctx = ctx.replace(config=strategy.config)
    if ctx.config.train.refit_on_val or getattr(strategy.settings, "refit_on_val", False):  # choices made elsewhere
        merged = np.concatenate([ctx.indices["train"], ctx.indices["val"]])
        ctx = ctx.replace(indices={**ctx.indices, "train": merged, "val": merged[:0]})
    fitting = Fitting(ctx)
    results: dict[str, StageResult] = {}
    for stage in strategy.stages():
        if stage.name in run.state.stages:
            results[stage.name] = StageResult(**run.state.stages[stage.name])
            fitting.restore(results[stage.name])
            continue
        results[stage.name] = strategy.run(stage, fitting)
        run.state.stages[stage.name] = dataclasses.asdict(results[stage.name])
        run.state.stage, run.state.seconds = stage.name, round(time.time() - started, 1)
        run.save_state()
    selected = select_stage(results, ctx.config.train.monitor)
    fitting.restore(results[selected])
    if selected != list(results)[-1] and ctx.progress:
        info(f"the {selected} stage scored best on validation ({ctx.config.train.monitor} "
             f"{results[selected].score:.4f}): its weights are kept")
    return FitResult(fitting.classifier, strategy, results, selected, fitting.imbalance, time.time() - started, ctx)


def fit_members(ctx: FitContext, strategy, run) -> FitResult:
    """An ensemble: each member fitted in its own folder (resumable as any fit), then one model whose
    members on the pretrained backbone share it."""
    from transferlab.models import Ensemble
    from transferlab.models.backbone import fixed_input
    from transferlab.rundir import STATE_FILE, RunDir, RunState

    started, members, shared = time.time(), [], {}
    for name, member, weight in strategy.members:
        folder = ctx.directory / "members" / name
        result = fit(ctx.replace(directory=folder), member,
                     RunDir(folder, RunState.load_or(folder / STATE_FILE, kind="member")))
        if result.stages[result.selected].kind == "head":  # the untouched pretrained backbone: one copy for all,
            key = shared_backbone_key(result, fixed_input(result.config.model.name))  # or per size for a ViT
            result.classifier.backbone = shared.setdefault(key, result.classifier.backbone)
        members.append((weight, result))
    total = sum(w for w, _ in members)
    members = [(w / total, r) for w, r in members]
    model = members[0][1].classifier if len(members) == 1 else Ensemble([r.classifier for _, r in members],
                                                                         [w for w, _ in members], ctx.dataset.task)
    stages = {f"{name}/{stage}": result for (name, _, _), (_, r) in zip(strategy.members, members)
              for stage, result in r.stages.items()}
    run.state.stage, run.state.seconds = "members", round(time.time() - started, 1)
    return FitResult(model, strategy, stages, next(iter(stages)), members[0][1].imbalance, time.time() - started,
                     ctx, members)


def shared_backbone_key(result: FitResult, fixed: bool) -> int:
    """Which untouched pretrained backbone a head-only ensemble member shares: one for all members, or
    one per input size when the backbone is built for one size (`fixed`: a ViT's position embeddings)."""
    return result.ctx.size if fixed else 0


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


__all__ = ["fit", "FitContext", "FitResult", "Fitting", "StageResult", "imbalance_weights", "probabilities",
           "training_seconds"]
