"""Training on Lightning: the LightningModule, the DataModule and the Trainer set-up.

Lightning does the loop, checkpoints (best by a validation metric, and last for resume),
early stopping, LR logging per group, progress bar, CSV + TensorBoard logs, precision and DDP.
This module only says what a step is and which parameters train at what rate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import pickle
import signal
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from transferlab.augment import build_batch_mix, build_train_transform
from transferlab.config import Config
from transferlab.data.cache import ImageStore, atomic_write
from transferlab.data.loader import CachedImageDataset, EpochSampler, FeatureDataset, default_workers, item_seed
from transferlab.strategies import (GradualUnfreezing, ScaledLR, build_optimizer, freeze_all, groups_at_epoch,
                                    param_groups, set_frozen_bn_eval, set_trainable)

MONITOR_MODE = {"val_loss": "min", "val_accuracy": "max", "val_balanced_accuracy": "max", "val_f1_macro": "max"}

# Lightning advice that does not apply to how we train (small cached sets, our own folders)
QUIET_WARNINGS = (".*does not have many workers.*", ".*LeafSpec.*", ".*smaller than the logging interval.*",
                  ".*exists and is not empty.*", ".*weights_only.*pickle protocol.*")


@contextlib.contextmanager
def quiet_fit():
    """Lightning's irrelevant warnings off while a fit runs, the caller's warning filters kept."""
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written through a temporary file and renamed, so a crash or a full disk never
    leaves half a checkpoint behind; read with weights_only=True and one clear line if damaged."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), lambda handle: handle.write(buffer.getbuffer()), durable=True)

    def load_checkpoint(self, path, map_location=None, weights_only=True) -> dict:
        return read_checkpoint(path)


def fit(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule,
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


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint's contents, loaded with weights_only=True: a file holding code or a
    damaged file is a RunError saying what to do (never "try weights_only=False")."""
    from transferlab.run import RunError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RunError(f"checkpoint {path} holds pickled objects that could run code: refused (transferlab loads "
                       "tensors only); delete it to restart that stage from its beginning, or start a new run") from None
    except FileNotFoundError:
        raise RunError(f"checkpoint {path} is missing: start a new run") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise RunError(f"checkpoint {path} is damaged ({first}): delete it to restart that stage from its beginning, "
                       "or start a new run") from None


class TransferModule(L.LightningModule):
    """One training stage of a classifier: on images (augmented, optionally batch-mixed) or, with
    `features_mode`, on cached backbone features through the head alone."""

    def __init__(self, classifier: torch.nn.Module, config: Config, strategy: str, *, features_mode: bool = False,
                 class_weights: torch.Tensor | None = None, num_classes: int):
        super().__init__()
        # on features only the head trains: it alone is the Lightning model (small checkpoints); the
        # whole classifier stays reachable for the layer groups without being registered twice
        self._classifier = [classifier]
        self.model = classifier.head if features_mode else classifier
        self.config = config
        self.strategy = strategy
        self.features_mode = features_mode
        self.lr = config.optim.lr  # Lightning's LR finder sets this
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.batch_mix = None if features_mode else build_batch_mix(config.augment, num_classes)
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            set_frozen_bn_eval(self.model)  # Lightning calls train() every epoch and after validation
        return self

    @property
    def classifier(self) -> torch.nn.Module:
        return self._classifier[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.features_mode:
            return self.model(x)
        if self.config.train.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # dropout and mixup draw from the global generator: seed it per step so a resumed run
        # draws exactly what an uninterrupted one would
        torch.manual_seed(item_seed(self.config.seed, self.current_epoch, batch_idx) + 7)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        targets = y
        if self.batch_mix is not None:
            x, targets = self.batch_mix(x, y)
        logits = self(x)
        loss = F.cross_entropy(logits, targets, weight=self.class_weights,
                               label_smoothing=self.config.optim.label_smoothing)
        size = len(y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)

        accuracy = (logits.argmax(dim=1) == y).float().mean()
        self.log("train_accuracy", accuracy, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
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
        from sklearn.metrics import balanced_accuracy_score, f1_score

        y = labels.cpu().numpy()
        pred = logits.argmax(dim=1).cpu().numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = {
                "val_loss": F.cross_entropy(logits, labels).item(),
                "val_accuracy": float((pred == y).mean()),
                "val_balanced_accuracy": float(balanced_accuracy_score(y, pred)),
                "val_f1_macro": float(f1_score(y, pred, average="macro", zero_division=0)),
            }
        self.log_dict(values, prog_bar=False, sync_dist=False)
        self.log("val_acc", values["val_accuracy"], prog_bar=True, logger=False)

    def configure_optimizers(self):
        config = dataclasses.replace(self.config, optim=dataclasses.replace(self.config.optim, lr=self.lr))
        if self.features_mode:
            groups = param_groups(self.classifier, config, ["head"])
        else:
            active = groups_at_epoch(config, self.strategy, 0)
            groups = param_groups(self.classifier, config, active)
            groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in groups]
            groups = [g for g in groups if g["params"]]
        optimizer = build_optimizer(groups, config)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        scheduler = ScaledLR(optimizer, config.schedule, per_epoch, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def lr_factor_now(self) -> float:
        scheduler = self.lr_schedulers()
        return scheduler.factor() if isinstance(scheduler, ScaledLR) else 1.0


class TransferDataModule(L.LightningDataModule):
    """Train / val / test loaders over the image cache (or over cached features)."""

    def __init__(self, config: Config, labels: np.ndarray, indices: dict[str, np.ndarray], *,
                 store: ImageStore | None = None, features: dict[str, torch.Tensor] | None = None,
                 feature_labels: dict[str, np.ndarray] | None = None, sample_weights: np.ndarray | None = None):
        super().__init__()
        self.config, self.labels, self.indices = config, labels, indices
        self.store, self.features, self.feature_labels = store, features, feature_labels
        self.sample_weights = sample_weights
        self.workers = config.train.workers if config.train.workers is not None else default_workers()
        self.transform = None if features is not None else build_train_transform(config.augment, _side(store))

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
        return torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                           persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                                           # only a last batch of one is dropped (BatchNorm cannot train on it)
                                           drop_last=shuffle and len(dataset) % batch == 1)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)


def _side(store: ImageStore | None) -> int:
    return int(store[0].shape[0]) if store is not None and len(store) else 224


def build_trainer(config: Config, run_dir: Path, stage: str, *, epochs: int, has_val: bool, progress: bool,
                  gradual: bool = False, extra_callbacks: list | None = None,
                  steps_per_epoch: int | None = None) -> tuple[L.Trainer, ModelCheckpoint]:
    """A Trainer with checkpoints (best + last), early stopping, LR monitor and CSV/TensorBoard logs."""
    monitor = config.train.monitor if has_val else None
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints" / stage, filename="best", monitor=monitor,
                                 mode=MONITOR_MODE.get(monitor or "", "min"), save_last=True, save_top_k=1,
                                 auto_insert_metric_name=False, enable_version_counter=False)
    callbacks: list = [checkpoint, LearningRateMonitor(logging_interval="step")]
    if has_val and config.train.early_stopping:
        callbacks.append(EarlyStopping(monitor=monitor, mode=MONITOR_MODE[monitor],
                                       patience=config.train.early_stopping))
    if gradual:
        callbacks.append(GradualUnfreezing(config))
    callbacks += extra_callbacks or []
    logs = run_dir / "logs"
    version = next_version(logs / stage)
    loggers = [CSVLogger(logs, name=stage, version=version)]
    try:
        loggers.append(TensorBoardLogger(logs, name=stage, version=version, default_hp_metric=False))
    except ModuleNotFoundError:
        pass
    kwargs = {}
    if config.train.ddp:
        kwargs["strategy"] = config.train.ddp
    devices = config.train.devices
    trainer = L.Trainer(
        max_epochs=epochs, accelerator=config.train.accelerator,
        devices=int(devices) if str(devices).isdigit() else devices, num_nodes=config.train.num_nodes,
        precision=config.train.precision, callbacks=callbacks, logger=loggers, default_root_dir=run_dir,
        gradient_clip_val=config.train.grad_clip, log_every_n_steps=max(1, min(10, steps_per_epoch or 10)),
        enable_model_summary=False,
        enable_progress_bar=progress, use_distributed_sampler=False, num_sanity_val_steps=0,
        limit_val_batches=1.0 if has_val else 0, plugins=[AtomicCheckpointIO()], **kwargs,
    )
    return trainer, checkpoint


def next_version(folder: Path) -> str:
    k = 0
    while (folder / f"v{k}").exists():
        k += 1
    return f"v{k}"


def find_lr(trainer: L.Trainer, module: TransferModule, datamodule: TransferDataModule, plot: Path) -> float | None:
    """Lightning's LR finder; saves its plot and sets the module's learning rate to the suggestion."""
    from lightning.pytorch.tuner import Tuner

    finder = Tuner(trainer).lr_find(module, datamodule=datamodule, min_lr=1e-6, max_lr=1.0,
                                    num_training=min(100, max(20, len(datamodule.train_dataloader()) * 3)))
    if finder is None:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), layout="constrained")
    finder.plot(suggest=True, ax=figure.subplots())
    plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(plot, dpi=100)
    suggestion = finder.suggestion()
    if suggestion:
        module.lr = float(suggestion)
    return suggestion


def load_checkpoint_weights(module: TransferModule, path: str | Path) -> None:
    """Model weights of a Lightning checkpoint, loaded with weights_only=True."""
    module.load_state_dict(read_checkpoint(path)["state_dict"], strict=False)


@torch.no_grad()
def predict_proba(classifier: torch.nn.Module, images: ImageStore, indices: np.ndarray, *, batch_size: int = 64,
                  device: str | torch.device = "cpu", channels_last: bool = False) -> np.ndarray:
    """Class probabilities (len(indices), K) of cached images."""
    classifier.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        part = indices[start : start + batch_size]
        batch = torch.from_numpy(images.take(part)).permute(0, 3, 1, 2).to(device)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        out.append(classifier(batch).float().softmax(dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


__all__ = ["TransferModule", "TransferDataModule", "build_trainer", "find_lr", "predict_proba", "freeze_all",
           "set_trainable", "load_checkpoint_weights"]
