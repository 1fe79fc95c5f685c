"""Fine-tuning throughput: our Lightning fine-tune vs a plain timm + torch loop, same model, batch, size.

Both read the same uint8 images from the decode-once cache through the same DataLoader settings
(no augmentation), train tf_efficientnet_lite0 at 224 px with AdamW, batch 32, and are timed
over the same number of steps after a warm-up step. Target: ours >= 0.95x the plain loop.
Also printed: the gain from channels_last, and from using every core for torch's threads.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _report import report  # noqa: E402

from transferlab.cli import quiet_lightning  # noqa: E402
from transferlab.config import load_config  # noqa: E402
from transferlab.data.cache import MemoryStore  # noqa: E402
from transferlab.data.loader import CachedImageDataset, EpochSampler  # noqa: E402
from transferlab.models.backbone import Classifier, create_backbone  # noqa: E402
from transferlab.strategies import set_trainable  # noqa: E402
from transferlab.train import TransferDataModule, TransferModule  # noqa: E402

SIZE, BATCH, STEPS, CLASSES = 224, 32, 6, 10


def data() -> tuple[MemoryStore, np.ndarray]:
    rng = np.random.default_rng(0)
    n = BATCH * (STEPS + 1)
    return MemoryStore(rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)), rng.integers(0, CLASSES, n)


def plain_loop(store, labels, channels_last: bool) -> float:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=CLASSES)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dataset = CachedImageDataset(store, labels, np.arange(len(labels)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=EpochSampler(len(labels), seed=0))
    mean = torch.full((1, 3, 1, 1), 127.5)
    start = None
    for step, (x, y) in enumerate(loader):
        if step == 1:
            start = time.perf_counter()
        x = (x.float() - mean) / mean
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return STEPS * BATCH / (time.perf_counter() - start)


class Clock(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == 0:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def ours(store, labels, channels_last: bool) -> float:
    config = load_config(overrides=["train.workers=0", f"train.batch_size={BATCH}", "augment.preset=none",
                                    f"train.channels_last={str(channels_last).lower()}", "strategy.name=fine-tune"])
    torch.manual_seed(0)
    classifier = Classifier(create_backbone("tf_efficientnet_lite0", pretrained=False), CLASSES, (0.5,) * 3,
                            (0.5,) * 3, dropout=0.0)
    if channels_last:
        classifier = classifier.to(memory_format=torch.channels_last)
    set_trainable(classifier, ["early", "middle", "late", "head"])
    module = TransferModule(classifier, config, "fine-tune", num_classes=CLASSES)
    indices = {"train": np.arange(len(labels)), "val": np.arange(0), "test": np.arange(0)}
    datamodule = TransferDataModule(config, labels, indices, store=store)
    clock = Clock()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[clock], use_distributed_sampler=False)
    trainer.fit(module, datamodule=datamodule)
    return STEPS * BATCH / (clock.end - clock.start)


def main() -> None:
    quiet_lightning()
    store, labels = data()
    plain = plain_loop(store, labels, channels_last=False)
    mine = ours(store, labels, channels_last=False)
    report("bench_finetune", f"ours {mine:.2f} img/s", f"plain timm loop {plain:.2f} img/s", mine / plain,
           target=0.95)
    mine_cl = ours(store, labels, channels_last=True)
    report("bench_finetune[channels_last]", f"ours {mine_cl:.2f} img/s (default)", f"ours contiguous {mine:.2f} img/s",
           mine_cl / mine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one = ours(store, labels, channels_last=True)
    torch.set_num_threads(threads)
    report("bench_finetune[threads]", f"{threads} threads {mine_cl:.2f} img/s", f"1 thread {one:.2f} img/s",
           mine_cl / one)


if __name__ == "__main__":
    main()
