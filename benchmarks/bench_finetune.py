"""Fine-tuning throughput: our Lightning fine-tune vs a plain timm + torch loop, same work.

Both read the same uint8 images from the decode-once cache through the same sampler (no
augmentation), train tf_efficientnet_lite0 at 224 px with AdamW, batch 32, every parameter
trainable, channels_last as the tool trains by default, and are timed over the same steps after
a warm-up step. The plain loop is the fair baseline: the least a user could write. Three
interleaved repeats, medians. Target: ours >= 0.95x the plain loop. Also printed: the gain from
channels_last, and from using every core for torch's threads.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _report import interleaved, report  # noqa: E402

from transferlab.cli import quiet_lightning  # noqa: E402
from transferlab.config import load_config  # noqa: E402
from transferlab.data.cache import MemoryStore  # noqa: E402
from transferlab.data.loader import CachedImageDataset, EpochSampler  # noqa: E402
from transferlab.models.backbone import Classifier, create_backbone  # noqa: E402
from transferlab.strategies import get_strategy  # noqa: E402
from transferlab.train import ClassifierModule, TrainableGroups, TransferDataModule  # noqa: E402

SIZE, BATCH, STEPS, CLASSES = 224, 32, 8, 10


def data() -> tuple[MemoryStore, np.ndarray]:
    rng = np.random.default_rng(0)
    n = BATCH * (STEPS + 1)
    return MemoryStore(rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)), rng.integers(0, CLASSES, n)


def plain_loop(store, labels, channels_last: bool = True) -> float:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=CLASSES)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(CachedImageDataset(store, labels, np.arange(len(labels))), batch_size=BATCH,
                                         sampler=EpochSampler(len(labels), seed=0))
    mean = torch.full((1, 3, 1, 1), 127.5)
    for step, (x, y) in enumerate(loader):
        if step == 1:
            start = time.perf_counter()  # the first step warms up
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


def ours(store, labels, channels_last: bool = True) -> float:
    config = load_config(overrides=["train.workers=0", f"train.batch_size={BATCH}", "augment.preset=none",
                                    f"train.channels_last={str(channels_last).lower()}", "model.dropout=0"])
    strategy = get_strategy("fine-tune", load_config(overrides=["strategy.lr_mult={early: 1, middle: 1, late: 1, "
                                                                 "head: 1}"]))
    torch.manual_seed(0)
    classifier = Classifier(create_backbone("tf_efficientnet_lite0", pretrained=False), CLASSES, (0.5,) * 3,
                            (0.5,) * 3, dropout=0.0)
    if channels_last:
        classifier = classifier.to(memory_format=torch.channels_last)
    module = ClassifierModule(classifier, config, num_classes=CLASSES, lr_scales=strategy.lr_scales())
    indices = {"train": np.arange(len(labels)), "val": np.arange(0), "test": np.arange(0)}
    clock = Clock()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[clock, TrainableGroups(strategy.trainable)], use_distributed_sampler=False)
    trainer.fit(module, datamodule=TransferDataModule(config, labels, indices, store=store))
    return STEPS * BATCH / (clock.end - clock.start)


def main() -> None:
    quiet_lightning()
    store, labels = data()
    rates = interleaved({"plain": lambda: plain_loop(store, labels), "ours": lambda: ours(store, labels),
                         "ours_contiguous": lambda: ours(store, labels, channels_last=False)})
    report("bench_finetune", f"ours {rates['ours']:.2f} img/s", f"plain timm loop {rates['plain']:.2f} img/s",
           rates["ours"] / rates["plain"], target=0.95)
    report("bench_finetune[channels_last]", f"ours {rates['ours']:.2f} img/s (default)",
           f"ours contiguous {rates['ours_contiguous']:.2f} img/s", rates["ours"] / rates["ours_contiguous"])
    threads = torch.get_num_threads()

    def one_thread() -> float:
        torch.set_num_threads(1)
        try:
            return ours(store, labels)
        finally:
            torch.set_num_threads(threads)

    both = interleaved({"all": lambda: ours(store, labels), "one": one_thread})
    report("bench_finetune[threads]", f"{threads} threads {both['all']:.2f} img/s", f"1 thread {both['one']:.2f} img/s",
           both["all"] / both["one"])


if __name__ == "__main__":
    main()
