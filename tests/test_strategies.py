"""Strategies: exact per-group learning rates, schedules, freezing, gradual unfreezing, cached features."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from transferlab.config import load_config
from transferlab.data.cache import MemoryStore
from transferlab.features import extract_features
from transferlab.models.backbone import Classifier, create_backbone
from transferlab.models.groups import named_groups
from transferlab.strategies import (ScaledLR, build_optimizer, freeze_all, groups_at_epoch, lr_factor, param_groups,
                                    set_frozen_bn_eval, set_trainable)
from transferlab.train import TransferDataModule, TransferModule, build_trainer


def tiny(num_classes: int = 3) -> Classifier:
    torch.manual_seed(0)
    return Classifier(create_backbone("test_efficientnet", pretrained=False), num_classes, (0.5,) * 3, (0.5,) * 3)


def test_fine_tune_group_rates_are_exactly_the_configured_ones():
    config = load_config()
    groups = param_groups(tiny(), config, ["early", "middle", "late", "head"])
    optimizer = build_optimizer(groups, config)
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates["early"] == 1e-5 and rates["early/no_decay"] == 1e-5
    assert rates["middle"] == pytest.approx(1e-4, rel=0, abs=1e-18)
    assert rates["late"] == 1e-3 and rates["head"] == 1e-3
    custom = load_config(overrides=["optim.lr=0.01", "strategy.lr_mult={early: 0.5, middle: 0.25, late: 1, head: 2}"])
    rates = {g["name"]: g["lr"] for g in param_groups(tiny(), custom, ["early", "middle", "late", "head"])}
    assert rates["early"] == 0.005 and rates["middle"] == 0.0025 and rates["late"] == 0.01 and rates["head"] == 0.02


def test_no_weight_decay_on_biases_and_norm_layers():
    config = load_config(overrides=["optim.weight_decay=0.1"])
    model = tiny()
    groups = param_groups(model, config, ["early", "middle", "late", "head"])
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for param in group["params"]:
            if param.ndim <= 1:
                assert group["weight_decay"] == 0.0, names[id(param)]
            else:
                assert group["weight_decay"] == 0.1, names[id(param)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_layer_decay_is_geometric_from_the_head():
    config = load_config(overrides=["strategy.layer_decay=0.5", "optim.lr=0.1"])
    groups = param_groups(tiny(), config, ["early", "middle", "late", "head"])
    by_depth = {}
    for g in groups:
        depth = int(g["name"].split(".d")[1].split("/")[0])
        by_depth[depth] = g["lr"]
    assert by_depth[0] == 0.1
    for depth, rate in by_depth.items():
        assert rate == pytest.approx(0.1 * 0.5**depth, rel=1e-12)


def test_cosine_schedule_matches_torch_after_warmup():
    config = load_config(overrides=["schedule.warmup_epochs=0", "schedule.min_lr_ratio=0.1"])
    param = torch.nn.Parameter(torch.zeros(1))
    reference = torch.optim.SGD([param], lr=1.0)
    torch_cosine = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=50, eta_min=0.1)
    for step in range(51):
        assert lr_factor(config.schedule, step, 10, 50) == pytest.approx(reference.param_groups[0]["lr"], abs=1e-12)
        reference.step()
        torch_cosine.step()


def test_other_schedules_have_their_shape():
    warm = load_config(overrides=["schedule.warmup_epochs=1"]).schedule
    assert [lr_factor(warm, s, 4, 40) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    step = load_config(overrides=["schedule.name=step", "schedule.warmup_epochs=0", "schedule.step_epochs=2",
                                  "schedule.gamma=0.5"]).schedule
    assert [lr_factor(step, s, 10, 100) for s in (0, 19, 20, 39, 40)] == [1, 1, 0.5, 0.5, 0.25]
    cyclic = load_config(overrides=["schedule.name=cyclic", "schedule.cycle_epochs=1",
                                    "schedule.cycle_min_ratio=0.2"]).schedule
    values = [lr_factor(cyclic, s, 10, 100) for s in range(11)]
    assert values[0] == pytest.approx(0.2) and values[5] == pytest.approx(1.0) and values[10] == pytest.approx(0.2)
    one = load_config(overrides=["schedule.name=onecycle", "schedule.pct_start=0.25"]).schedule
    assert lr_factor(one, 0, 10, 100) == pytest.approx(1 / 25)
    assert lr_factor(one, 25, 10, 100) == pytest.approx(1.0)
    assert lr_factor(one, 100, 10, 100) == pytest.approx(1 / 25 / 1e4)
    constant = load_config(overrides=["schedule.name=constant", "schedule.warmup_epochs=0"]).schedule
    assert {lr_factor(constant, s, 10, 100) for s in range(100)} == {1.0}


def test_scaled_lr_scales_groups_added_later():
    config = load_config(overrides=["schedule.warmup_epochs=0", "schedule.min_lr_ratio=0"])
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 0.1}], lr=0.1)
    scheduler = ScaledLR(optimizer, config.schedule, steps_per_epoch=5, total_steps=10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    optimizer.add_param_group({"params": [b], "lr": 0.0, "initial_lr": 0.01})
    optimizer.step()
    scheduler.step()
    factor = lr_factor(config.schedule, 6, 5, 10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * factor)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.01 * factor)
    assert "schedule" not in scheduler.state_dict()


def test_frozen_parameters_and_batchnorm_statistics_do_not_change():
    model = tiny()
    freeze_all(model)
    set_trainable(model, ["head"])
    model.train()
    set_frozen_bn_eval(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, param in model.named_parameters():
        if name.startswith("backbone."):
            assert param.grad is None, name
    after = model.state_dict()
    for name, value in before.items():
        if name.startswith("backbone."):  # weights and BN running statistics alike
            assert torch.equal(value, after[name]), name
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])


def test_groups_at_epoch_follow_the_gradual_schedule():
    config = load_config()
    assert groups_at_epoch(config, "gradual", 0) == ["head"]
    assert groups_at_epoch(config, "gradual", 4) == ["head"]
    assert groups_at_epoch(config, "gradual", 5) == ["head", "late"]
    assert groups_at_epoch(config, "gradual", 10) == ["head", "late", "middle", "early"]


class RecordGroups(L.Callback):
    """Optimizer group names, trainable parameters and BN modes seen in each epoch."""

    def __init__(self):
        self.names: dict[int, list[str]] = {}
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_epoch_start(self, trainer, module):
        self.snapshots[trainer.current_epoch] = {k: v.detach().clone() for k, v in module.model.state_dict().items()}

    def on_train_epoch_end(self, trainer, module):
        self.names[trainer.current_epoch] = sorted({g["name"].split("/")[0] for g in trainer.optimizers[0].param_groups})


def image_setup(tmp_path, overrides, n=24):
    config = load_config(overrides=["train.workers=0", "train.batch_size=8", "augment.preset=none", "seed=3",
                                    "train.early_stopping=null", "train.channels_last=false", *overrides])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n) % 3
    indices = {"train": np.arange(0, n - 6), "val": np.arange(n - 6, n), "test": np.arange(0)}
    datamodule = TransferDataModule(config, labels, indices, store=MemoryStore(images))
    return config, datamodule


def test_gradual_unfreezing_switches_at_the_configured_epochs(tmp_path):
    config, datamodule = image_setup(tmp_path, [
        "strategy.name=gradual", "strategy.gradual=[{epoch: 1, groups: [head]}, {epoch: 2, groups: [late]},"
        " {epoch: 3, groups: [middle, early], lr: 0.0001}]"])
    model = tiny()
    module = TransferModule(model, config, "gradual", num_classes=3)
    recorder = RecordGroups()
    trainer, _ = build_trainer(config, tmp_path, "main", epochs=4, has_val=True, progress=False, gradual=True,
                               extra_callbacks=[recorder])
    trainer.fit(module, datamodule=datamodule)
    assert recorder.names[0] == ["head"]
    assert recorder.names[1] == ["head", "late"]
    assert recorder.names[2] == recorder.names[3] == ["early", "head", "late", "middle"]
    rates = {g["name"]: g["initial_lr"] for g in trainer.optimizers[0].param_groups}
    assert rates["early"] == 1e-4 and rates["middle"] == 1e-4 and rates["late"] == 1e-3 and rates["head"] == 1e-3
    groups = named_groups(model)
    snap = recorder.snapshots
    changed = lambda a, b, names: any(not torch.equal(snap[a][n], snap[b][n]) for n in names)  # noqa: E731
    # epoch 1 (index 0) trains the head only: the backbone, BN statistics included, does not move
    backbone_state = [k for k in snap[0] if k.startswith("backbone.")]
    assert changed(0, 1, groups["head"]) and not changed(0, 1, backbone_state)
    # epoch 2: late joins, early and middle stay
    late_modules = {n.rsplit(".", 1)[0] for n in groups["late"]}
    late_state = [k for k in snap[1] if k.rsplit(".", 1)[0] in late_modules]
    early_state = [k for k in snap[1] if k.rsplit(".", 1)[0] in {n.rsplit(".", 1)[0] for n in groups["early"]}]
    assert changed(1, 2, late_state) and not changed(1, 2, early_state)
    assert changed(2, 3, groups["early"])


def test_cached_features_equal_live_features():
    model = tiny().eval()
    images = MemoryStore(np.random.default_rng(1).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8))
    cached = extract_features(model, images, np.arange(10), batch_size=4, progress=False)
    with torch.no_grad():
        live = model.features(torch.from_numpy(images.array).permute(0, 3, 1, 2))
    assert torch.allclose(cached, live, atol=1e-5)
    logits = model.head(cached)
    with torch.no_grad():
        assert torch.allclose(logits, model(torch.from_numpy(images.array).permute(0, 3, 1, 2)), atol=1e-5)


def test_learning_rate_factor_is_continuous_through_warmup():
    schedule = load_config().schedule
    values = [lr_factor(schedule, s, 10, 100) for s in range(100)]
    assert max(abs(b - a) for a, b in zip(values, values[1:])) < 0.1
    assert values[10] == pytest.approx(1.0) and values[-1] > schedule.min_lr_ratio
    assert math.isclose(min(values[10:]), values[-1])
