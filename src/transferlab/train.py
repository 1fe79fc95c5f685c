"""Training on Lightning: `HeadModule` (the head on cached features; checkpoints hold `head.*`), `ClassifierModule`
(the classifier on images; `model.*`), the DataModule and the Trainer set-up. Lightning runs the loop, checkpoints,
early stopping, logging, precision and DDP; optimizer groups and schedules come from `optim`."""

from __future__ import annotations

import contextlib
import io
import pickle
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.nn.modules.batchnorm import _BatchNorm

from transferlab.augment import build_batch_mix, build_train_transform
from transferlab.config import Config
from transferlab.data.cache import ImageStore
from transferlab.data.loader import (CachedImageDataset, EpochLoader, EpochSampler, FeatureDataset, default_workers,
                                     item_seed)
from transferlab.errors import DivergedError, RunError
from transferlab.io import atomic_write
from transferlab.metrics import MONITOR_MODE
from transferlab.models.groups import named_groups
from transferlab.optim import build_optimizer, build_scheduler, head_param_groups, param_groups, scheduler_step
from transferlab.tasks import SINGLE, Task

# Lightning advice that does not apply to how we train (small cached sets, our own folders)
QUIET_WARNINGS = (".*does not have many workers.*", ".*LeafSpec.*", ".*smaller than the logging interval.*",
                  ".*exists and is not empty.*", ".*weights_only.*pickle protocol.*", ".*in eval mode at the start.*")


@contextlib.contextmanager
def quiet_fit():
    """Lightning's irrelevant warnings off while a fit runs, the caller's warning filters kept."""
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


class StageModule(L.LightningModule):
    """What both modules share: the loss (class weights, label smoothing, soft targets), seeded
    steps, validation metrics on the gathered epoch, and the optimizer and schedule."""

    def __init__(self, config: Config, *, class_weights: torch.Tensor | None, task: Task = SINGLE):
        super().__init__()
        self.config, self.task = config, task
        self.lr = config.optim.lr  # Lightning's LR finder sets this
        self.register_buffer("class_weights", class_weights, persistent=False)
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def parameter_groups(self) -> list[dict]:
        raise NotImplementedError

    def prepare_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # dropout and mixup draw from the global generator: seeded per step, a resumed run draws
        # exactly what an uninterrupted one would
        torch.manual_seed(item_seed(self.config.seed, self.current_epoch, batch_idx) + 7)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        x, targets = self.prepare_batch(x, y)
        logits = self(x)
        loss = self.task.loss(logits, targets, weight=self.class_weights, smoothing=self.config.optim.label_smoothing)
        if not torch.isfinite(loss):
            raise DivergedError(f"training diverged in epoch {self.current_epoch + 1}, step {batch_idx + 1}: the loss "
                                f"became {loss.item()} (learning rate {self.lr:g}); lower --lr (optim.lr) or use "
                                "--find-lr, and start a new run")
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        correct = self.task.correct(self.task.probabilities(logits.detach()).cpu().numpy(), y.cpu().numpy())
        self.log("train_accuracy", float(correct.mean()), on_step=False, on_epoch=True, batch_size=len(y),
                 sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self._val_outputs.append((self(x).detach().float(), y))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        logits = torch.cat([o[0] for o in self._val_outputs])
        labels = torch.cat([o[1] for o in self._val_outputs])
        self._val_outputs.clear()
        if self.trainer.world_size > 1:
            logits = self.all_gather(logits).flatten(0, 1)
            labels = self.all_gather(labels).flatten(0, 1)
        values = self.task.monitored(labels.cpu().numpy(), self.task.probabilities(logits).cpu().numpy())
        self.log_dict(values, prog_bar=False, sync_dist=False)
        self.log("val_acc", values["val_accuracy"], prog_bar=True, logger=False)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.parameter_groups(), self.config)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        scheduler = build_scheduler(optimizer, self.config, per_epoch, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler_step(scheduler, self.global_step)


class HeadModule(StageModule):
    """The new head alone, trained on cached pooled features (the backbone never runs)."""

    def __init__(self, head: nn.Module, config: Config, *, class_weights: torch.Tensor | None = None,
                 task: Task = SINGLE):
        super().__init__(config, class_weights=class_weights, task=task)
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def parameter_groups(self) -> list[dict]:
        return head_param_groups(self.head, self.config, self.lr)


class ClassifierModule(StageModule):
    """The whole classifier on uint8 images: batch MixUp/CutMix, channels-last, per-group rates,
    and frozen groups' BatchNorm layers kept in eval mode (running statistics untouched)."""

    def __init__(self, classifier: nn.Module, config: Config, *, num_classes: int, lr_scales: dict[str, float],
                 class_weights: torch.Tensor | None = None, task: Task = SINGLE):
        super().__init__(config, class_weights=class_weights, task=task)
        self.model, self.lr_scales = classifier, lr_scales
        self.batch_mix = build_batch_mix(config.augment, num_classes)
        self.frozen: set[int] = set()  # ids of parameters that do not train this epoch (TrainableGroups sets it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.train.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def prepare_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_mix is None:
            return x, y
        return self.batch_mix(x.float(), y.float() if y.ndim == 2 else y)  # multi-hot rows mix as probabilities

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:  # after validation and at every epoch start, whoever calls train()
            for module in self.model.modules():
                if isinstance(module, _BatchNorm) and all(id(p) in self.frozen for p in module.parameters()):
                    module.eval()
        return self

    def parameter_groups(self) -> list[dict]:
        return param_groups(self.model, self.config, self.lr, scales=self.lr_scales)


class TrainableGroups(L.Callback):
    """At each epoch start exactly the layer groups `schedule(epoch)` names train (the optimizer holds every group
    from step 0). A frozen parameter gets requires_grad=False; under DDP, which registers every parameter once,
    it keeps requires_grad and its gradient is dropped before each step."""

    def __init__(self, schedule: Callable[[int], list[str]], *, train_bn: bool = True):
        self.schedule, self.train_bn = schedule, train_bn
        self.masked: list[nn.Parameter] = []

    def on_train_epoch_start(self, trainer: L.Trainer, module: ClassifierModule) -> None:
        groups = named_groups(module.model)
        params = dict(module.model.named_parameters())
        trainable = {name for group in self.schedule(trainer.current_epoch) for name in groups[group]}
        if not self.train_bn:
            bn = {id(p) for m in module.model.modules() if isinstance(m, _BatchNorm) for p in m.parameters()}
            trainable = {n for n in trainable if id(params[n]) not in bn}
        module.frozen = {id(p) for n, p in params.items() if n not in trainable}
        masked = trainer.world_size > 1
        for name, param in params.items():
            param.requires_grad_(masked or name in trainable)
        self.masked = [p for n, p in params.items() if n not in trainable] if masked else []
        module.train(module.training)  # BatchNorm of frozen groups to eval mode now

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer) -> None:
        for param in self.masked:
            param.grad = None


def first_epochs(schedule: Callable[[int], list[str]], epochs: int) -> dict[str, int | None]:
    """For the record: the first (1-based) epoch each layer group trains in, None if never."""
    first: dict[str, int | None] = {}
    for epoch in range(epochs):
        for group in schedule(epoch):
            first.setdefault(group, epoch + 1)
    return first


class TransferDataModule(L.LightningDataModule):
    """Train / val loaders over the image cache (or over cached features)."""

    def __init__(self, config: Config, labels: np.ndarray, indices: dict[str, np.ndarray], *,
                 store: ImageStore | None = None, features: dict[str, torch.Tensor] | None = None,
                 feature_labels: dict[str, np.ndarray] | None = None, sample_weights: np.ndarray | None = None):
        super().__init__()
        self.config, self.labels, self.indices = config, labels, indices
        self.store, self.features, self.feature_labels = store, features, feature_labels
        self.sample_weights = sample_weights
        self.workers = config.train.workers if config.train.workers is not None else default_workers()
        self.transform = None if features is not None else build_train_transform(
            config.augment, int(store[0].shape[0]) if store is not None and len(store) else 224)

    def _dataset(self, split: str):
        if self.features is not None:
            return FeatureDataset(self.features[split], self.feature_labels[split])
        transform = self.transform if split == "train" else None
        return CachedImageDataset(self.store, self.labels, self.indices[split], transform, seed=self.config.seed)

    def _loader(self, split: str, shuffle: bool) -> torch.utils.data.DataLoader:
        dataset = self._dataset(split)
        weights = self.sample_weights if shuffle else None
        sampler = EpochSampler(len(dataset), seed=self.config.seed, shuffle=shuffle, weights=weights)
        workers = 0 if self.features is not None else self.workers
        batch = self.config.train.batch_size if shuffle else self.config.train.eval_batch_size
        return EpochLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                           persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                           # only a last batch of one is dropped (BatchNorm cannot train on it)
                           drop_last=shuffle and len(dataset) % batch == 1)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written through a temporary file, synced and renamed, so a crash or a full disk
    never leaves half a checkpoint; read with weights_only=True and one clear line if damaged."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), lambda handle: handle.write(buffer.getbuffer()), durable=True)

    def load_checkpoint(self, path, map_location=None, weights_only=True) -> dict:
        return read_checkpoint(path)


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint's contents, loaded with weights_only=True: a file holding code or a
    damaged file is a RunError saying what to do (never "try weights_only=False")."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RunError(f"checkpoint {path} holds pickled objects that could run code: refused (transferlab loads "
                       "tensors only); delete it to restart that stage from its beginning, or start a new run"
                       ) from None
    except FileNotFoundError:
        raise RunError(f"checkpoint {path} is missing: start a new run") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise RunError(f"checkpoint {path} is damaged ({first}): delete it to restart that stage from its beginning, "
                       "or start a new run") from None


class LogProgress(L.Callback):
    """Training progress as lines in a log (no terminal): every log_every() seconds the stage, epoch,
    batch, rate and the time left of the stage, and the training loss."""

    def __init__(self, stage: str):
        self.stage, self.lines = stage, None

    def on_train_start(self, trainer, module) -> None:
        from transferlab.console import LogLines

        total = trainer.num_training_batches * max(1, trainer.max_epochs - trainer.current_epoch)
        self.lines = LogLines(f"training ({self.stage})", total, unit="batches")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        loss = metrics.get("train_loss_step", metrics.get("train_loss"))
        self.lines.advance(1, f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
                              + ("" if loss is None else f", train loss {float(loss):.4f}"))


def build_trainer(ctx, stage, callbacks: list, *,
                  steps_per_epoch: int | None = None) -> tuple[L.Trainer, ModelCheckpoint]:
    """A Trainer for `stage` of the fit `ctx` (a fit.FitContext): checkpoints (best + last), early
    stopping, LR monitor, the CSV log and the tracker's; it stops at the fit's deadline (the best
    checkpoint is kept)."""
    config, run_dir, has_val, progress = ctx.config, ctx.directory, ctx.has_val, ctx.progress
    left = ctx.seconds_left()
    monitor = config.train.monitor if has_val else None
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints" / stage.name, filename="best", monitor=monitor,
                                 mode=MONITOR_MODE.get(monitor or "", "min"), save_last=True, save_top_k=1,
                                 auto_insert_metric_name=False, enable_version_counter=False)
    from transferlab.console import console

    every: list = [checkpoint, LearningRateMonitor(logging_interval="step")]
    if progress and not console.is_terminal:
        every.append(LogProgress(stage.name))
    if has_val and config.train.early_stopping:
        every.append(EarlyStopping(monitor=monitor, mode=MONITOR_MODE[monitor], patience=config.train.early_stopping))
    logs = run_dir / "logs"
    version = next_version(logs / stage.name)
    loggers = [CSVLogger(logs, name=stage.name, version=version),
               *(ctx.tracker.loggers(logs, stage.name, version) if ctx.tracker else [])]
    devices = config.train.devices
    trainer = L.Trainer(
        max_epochs=stage.epochs, accelerator=config.train.accelerator,
        devices=int(devices) if str(devices).isdigit() else devices, num_nodes=config.train.num_nodes,
        precision=precision_for(config), callbacks=every + list(callbacks) + list(ctx.callbacks), logger=loggers,
        default_root_dir=run_dir, gradient_clip_val=config.train.grad_clip,
        log_every_n_steps=max(1, min(10, steps_per_epoch or 10)), enable_model_summary=False,
        enable_progress_bar=progress and console.is_terminal, use_distributed_sampler=False, num_sanity_val_steps=0,
        limit_val_batches=1.0 if has_val else 0, plugins=[AtomicCheckpointIO()],
        max_time=None if left is None else {"seconds": max(1.0, left)},
        **({"strategy": config.train.ddp} if config.train.ddp else {}),
    )
    return trainer, checkpoint


def precision_for(config: Config) -> str:
    """train.precision as Lightning takes it: `auto` is mixed precision on a GPU (bf16 where it has it: no loss
    scaling), full precision on a CPU (its bf16 is slower than fp32 on most)."""
    setting = config.train.precision
    if setting != "auto":
        return setting
    from transferlab.models import device_for

    if device_for(config.train.accelerator).type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def next_version(folder: Path) -> str:
    k = 0
    while (folder / f"v{k}").exists():
        k += 1
    return f"v{k}"


def run_trainer(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule,
                ckpt_path: str | Path | None = None) -> None:
    """trainer.fit, quietly; Ctrl-C stays a KeyboardInterrupt (Lightning turns it into sys.exit(1)
    after its own clean shutdown, which would end the process without a word)."""
    try:
        with quiet_fit():
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None,
                        weights_only=True)
    except SystemExit:
        if not trainer.interrupted:
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning left Ctrl-C ignored
        raise KeyboardInterrupt from None
    if trainer.interrupted:
        raise KeyboardInterrupt


def find_lr(trainer: L.Trainer, module: StageModule, datamodule: TransferDataModule, plot: Path) -> float | None:
    """Lightning's LR finder; saves its plot and sets the module's learning rate to the suggestion."""
    from lightning.pytorch.tuner import Tuner
    from matplotlib.figure import Figure

    with quiet_fit():
        finder = Tuner(trainer).lr_find(module, datamodule=datamodule, min_lr=1e-6, max_lr=1.0,
                                        num_training=min(100, max(20, len(datamodule.train_dataloader()) * 3)))
    if finder is None:
        return None
    figure = Figure(figsize=(6, 4), layout="constrained")
    finder.plot(suggest=True, ax=figure.subplots())
    plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(plot, dpi=100)
    suggestion = finder.suggestion()
    if suggestion:
        module.lr = float(suggestion)
    return suggestion


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
    augmentation: list = field(default_factory=list)  # the ops that ran on its training images (none: [])


def run_stage(ctx, stage, module: StageModule, datamodule: TransferDataModule, callbacks: list, *, rows: int,
              groups: dict) -> StageResult:
    """One stage on Lightning in the fit's directory (resumed from its last checkpoint when there is
    one), bounded by the fit's deadline; its best checkpoint and what it trained."""
    config, started = ctx.config, time.monotonic()
    kind = "head" if stage.kind == "features" else "classifier"
    last = ctx.directory / "checkpoints" / stage.name / "last.ckpt"
    resume_from = last if last.is_file() else None

    def trainer():
        return build_trainer(ctx, stage, callbacks, steps_per_epoch=max(1, rows // config.train.batch_size))

    built, checkpoint = trainer()
    if config.train.find_lr and stage.find_lr and resume_from is None:
        plot = ctx.directory / "plots" / f"lr_find_{stage.name}.png"
        suggestion = find_lr(built, module, datamodule, plot)
        if suggestion and ctx.progress:
            from transferlab.console import info

            info(f"LR finder suggests lr={suggestion:.2e} (plot: {plot})")
        built, checkpoint = trainer()
    try:
        run_trainer(built, module, datamodule, resume_from)
    except DivergedError as exc:
        raise DivergedError(f"stage {stage.name}: {exc}") from None
    for entry in groups.values():
        entry["peak_lr"] = None if entry.get("lr_scale") is None else module.lr * entry["lr_scale"]
    result = StageResult(stage.name, kind, str(checkpoint.best_model_path or checkpoint.last_model_path),
                         None if checkpoint.best_model_score is None else float(checkpoint.best_model_score),
                         int(built.current_epoch), float(module.lr), groups, round(time.monotonic() - started, 2))
    if config.strategy.layer_decay is not None and kind == "classifier":
        result.groups["layer_decay"] = {"factor": config.strategy.layer_decay, "peak_lr": {
            g["name"]: module.lr * g["lr_scale"] for g in built.optimizers[0].param_groups}}
    return result
