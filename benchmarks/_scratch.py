"""The from-scratch small CNN peer, as a careful user writes it in 30 lines: a few conv layers (BatchNorm, ReLU),
flips and 2-pixel shifts, AdamW, label smoothing, a cosine schedule over the time given, whole epochs until the
time is spent, flip test-time averaging. No transferlab: plain torch on the same images.

    accuracy, epochs = train_and_score(train_images, train_labels, test_images, test_labels, seconds)
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def network(width: int = 32, classes: int = 10) -> nn.Module:
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    return nn.Sequential(block(1, width), block(width, width), nn.MaxPool2d(2), block(width, 2 * width),
                         block(2 * width, 2 * width), nn.MaxPool2d(2), block(2 * width, 4 * width),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * width, classes))


def train_and_score(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seconds: float,
                    seed: int = 0, batch: int = 128) -> tuple[float, int]:
    """(test accuracy, epochs) of the CNN trained on grey uint8 images `x` (N, H, W) for whole epochs within `seconds`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(x).float().div(255).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(y)).long()
    net = network(classes=int(labels.max()) + 1).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0.05)
    started, epochs, per_epoch = time.perf_counter(), 0, 0.0
    while epochs == 0 or time.perf_counter() - started + per_epoch <= seconds:
        begun = time.perf_counter()
        net.train()
        order = torch.randperm(len(images))
        for k in range(len(images) // batch):
            for group in optimizer.param_groups:  # cosine over the time given
                group["lr"] = 1e-3 * (1 + np.cos(np.pi * min(1.0, (time.perf_counter() - started) / seconds)))
            rows = order[k * batch:(k + 1) * batch]
            xb = images[rows]
            flip = torch.rand(len(rows)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
            xb = torch.roll(xb, (dx, dy), (2, 3)).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(xb), labels[rows], label_smoothing=0.05)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epochs, per_epoch = epochs + 1, time.perf_counter() - begun
    net.eval()
    test = torch.from_numpy(x_test).float().div(255).unsqueeze(1)
    with torch.no_grad():
        probs = torch.cat([net(test[s:s + 500]).softmax(1) + net(test[s:s + 500].flip(-1)).softmax(1)
                           for s in range(0, len(test), 500)])
    return float((probs.argmax(1).numpy() == np.asarray(y_test)).mean()), epochs
