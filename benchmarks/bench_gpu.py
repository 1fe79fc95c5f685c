"""On a GPU: is our fine-tune loop as fast as a plain timm loop on the same GPU, and what does the no-flags
default do with the GPU's budget?

1. Throughput: our Lightning fine-tune (the tool's defaults on CUDA: train.precision auto = bf16-mixed where
   the GPU has it, channels_last, DataLoader workers) against the least a careful user writes (timm +
   torch, the same precision under torch.autocast, channels_last, the same uint8 images through a
   DataLoader with the same workers), tf_efficientnet_lite0 at 224 px, batch 128, every parameter
   trainable; interleaved repeats, medians. Target: ours >= 0.9x the plain loop.
2. The default: `transferlab train` with no flags on 500 Fashion-MNIST images per class; it prints what its
   measured plan bought (the sizes and the training candidates, their epochs and sizes) and the held-out
   accuracy on 2,000 official test images.

    python benchmarks/bench_gpu.py            # needs CUDA; says so and exits 0 without it
"""

from __future__ import annotations

import json
import sys
import tempfile
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
from transferlab.data.loader import CachedImageDataset, EpochSampler, default_workers  # noqa: E402
from transferlab.models.backbone import Classifier, create_backbone  # noqa: E402
from transferlab.strategies import get_strategy  # noqa: E402
from transferlab.train import ClassifierModule, TrainableGroups, TransferDataModule, precision_for  # noqa: E402

SIZE, BATCH, STEPS, CLASSES = 224, 128, 40, 10


def data() -> tuple[MemoryStore, np.ndarray]:
    rng = np.random.default_rng(0)
    n = BATCH * (STEPS + 1)
    return MemoryStore(rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)), rng.integers(0, CLASSES, n)


def plain_loop(store, labels, precision: str) -> float:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=CLASSES).cuda().to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(CachedImageDataset(store, labels, np.arange(len(labels))), batch_size=BATCH,
                                         sampler=EpochSampler(len(labels), seed=0), num_workers=default_workers(),
                                         pin_memory=True)
    dtype = torch.bfloat16 if "bf16" in precision else torch.float16
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    mean = torch.full((1, 3, 1, 1), 127.5, device="cuda")
    for step, (x, y) in enumerate(loader):
        if step == 1:
            torch.cuda.synchronize()
            start = time.perf_counter()  # the first step warms up
        x = ((x.cuda(non_blocking=True).float() - mean) / mean).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(x), y.cuda(non_blocking=True))
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    torch.cuda.synchronize()
    return STEPS * BATCH / (time.perf_counter() - start)


class Clock(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        torch.cuda.synchronize()
        if batch_idx == 0:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def ours(store, labels) -> float:
    config = load_config(overrides=[f"train.batch_size={BATCH}", "augment.preset=none", "model.dropout=0"])
    strategy = get_strategy("fine-tune", load_config(overrides=["strategy.lr_mult={early: 1, middle: 1, late: 1, "
                                                                 "head: 1}"]))
    torch.manual_seed(0)
    classifier = Classifier(create_backbone("tf_efficientnet_lite0", pretrained=False), CLASSES, (0.5,) * 3,
                            (0.5,) * 3).to(memory_format=torch.channels_last)
    module = ClassifierModule(classifier, config, num_classes=CLASSES, lr_scales=strategy.lr_scales())
    indices = {"train": np.arange(len(labels)), "val": np.arange(0), "test": np.arange(0)}
    clock = Clock()
    trainer = L.Trainer(max_epochs=1, accelerator="gpu", devices=1, precision=precision_for(config), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[clock, TrainableGroups(strategy.trainable)],
                        use_distributed_sampler=False)
    trainer.fit(module, datamodule=TransferDataModule(config, labels, indices, store=store))
    return STEPS * BATCH / (clock.end - clock.start)


def default_run() -> None:
    from bench_auto import contender, write_fmnist

    with tempfile.TemporaryDirectory() as tmp:
        data_dir, test = Path(tmp) / "fmnist500", Path(tmp) / "test"
        write_fmnist(test, "t10k", 200, seed=7)
        accuracy, seconds, strategy = contender(write_fmnist(data_dir, "train", 500, seed=11), str(test), [],
                                                Path(tmp) / "run")
    decision = strategy["decision"]
    print(f"  the default on {torch.cuda.get_device_name(0)}: held-out accuracy {accuracy:.4f} in {seconds:.0f} s; "
          f"chose {'; '.join(decision['chosen'])}")
    for part in decision["plan"]:
        print(f"    {part['part']}: estimate {part['estimate_s']} s, spent {part['spent_s']} s ({part['status']})")
    print("  costs: " + json.dumps({k: v for k, v in decision["costs"].items() if k != "corrections"}))


def main() -> None:
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; run it where one is (it measures nothing on a CPU)")
        return
    quiet_lightning()
    store, labels = data()
    precision = precision_for(load_config())
    rates = interleaved({"plain": lambda: plain_loop(store, labels, precision), "ours": lambda: ours(store, labels)})
    report("bench_gpu[fine-tune]", f"ours {rates['ours']:.0f} img/s ({precision})",
           f"plain timm loop {rates['plain']:.0f} img/s", rates["ours"] / rates["plain"], target=0.9)
    default_run()


if __name__ == "__main__":
    main()
