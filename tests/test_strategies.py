"""Strategies and optimisation: exact per-group rates, weight-decay exclusions, the shape of every
schedule as the optimizer sees it, what trains in each epoch through the real training path
(train_groups, train_bn, layer decay, gradual unfreezing, the balanced sampler), the registry."""

from __future__ import annotations

import csv
import os
import json

import lightning as L
import numpy as np
import pytest
import torch

from transferlab.config import load_config
from transferlab.data.cache import MemoryStore
from transferlab.errors import ConfigError
from transferlab.models.backbone import Classifier, create_backbone
from transferlab.models.groups import named_groups
from transferlab.optim import build_optimizer, build_scheduler, param_groups, scheduler_step
from transferlab.run import run_training
from transferlab.rundir import RUN_DIR_ENV
from transferlab.strategies import get_strategy, strategy_names
from transferlab.train import ClassifierModule, TrainableGroups, TransferDataModule, build_trainer

TINY = ["train.report=false", "model.name=test_efficientnet", "model.pretrained=false", "preprocess.size=32",
        "train.batch_size=8", "train.workers=0", "data.decode_workers=1", "train.early_stopping=null",
        "data.val_fraction=0.2", "data.test_fraction=0.2", "augment.preset=none", "train.channels_last=false"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


def tiny(name: str = "test_efficientnet", num_classes: int = 3) -> Classifier:
    torch.manual_seed(0)
    return Classifier(create_backbone(name, pretrained=False), num_classes, (0.5,) * 3, (0.5,) * 3)


def rates_over(config, steps_per_epoch: int, total: int) -> dict[str, list[float]]:
    """Each group's learning rate at every optimizer step of the configured schedule."""
    optimizer = build_optimizer(param_groups(tiny(), config, config.optim.lr), config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch, total)
    seen = {g["name"]: [] for g in optimizer.param_groups}
    for step in range(total):
        for group in optimizer.param_groups:
            seen[group["name"]].append(group["lr"])
        optimizer.step()
        scheduler_step(scheduler, step + 1)
    return seen


def test_fine_tune_group_rates_are_exactly_the_configured_ones():
    config = load_config(overrides=["schedule.name=constant", "schedule.warmup_epochs=0"])
    rates = {name: values[0] for name, values in rates_over(config, 5, 10).items()}
    assert rates["early"] == pytest.approx(1e-5, rel=1e-12) and rates["early/no_decay"] == pytest.approx(1e-5)
    assert rates["middle"] == pytest.approx(1e-4, rel=1e-12)
    assert rates["late"] == 1e-3 and rates["head"] == 1e-3
    custom = load_config(overrides=["optim.lr=0.01", "strategy.lr_mult={early: 0.5, middle: 0.25, late: 1, head: 2}",
                                    "schedule.name=constant", "schedule.warmup_epochs=0"])
    rates = {name: values[-1] for name, values in rates_over(custom, 5, 10).items()}
    assert rates["early"] == 0.005 and rates["middle"] == 0.0025 and rates["late"] == 0.01 and rates["head"] == 0.02


def test_every_parameter_is_in_the_optimizer_and_no_decay_follows_timms_rule():
    for name in ("test_efficientnet", "test_vit"):
        model = tiny(name)
        groups = param_groups(model, load_config(overrides=["optim.weight_decay=0.1"]), 1e-3)
        names = {id(p): n for n, p in model.named_parameters()}
        assert sorted(id(p) for g in groups for p in g["params"]) == sorted(names)  # every one, once
        for group in groups:
            for param in group["params"]:
                exempt = param.ndim <= 1 or names[id(param)] in {"backbone.pos_embed", "backbone.cls_token",
                                                                  "backbone.reg_token"}
                assert group["weight_decay"] == (0.0 if exempt else 0.1), names[id(param)]
    vit_groups = param_groups(tiny("test_vit"), load_config(), 1e-3)
    pos = [g for g in vit_groups if any(p.ndim == 3 for p in g["params"])]
    assert pos and all(g["weight_decay"] == 0.0 for g in pos)  # position embedding: 3-d, yet exempt


def test_layer_decay_is_geometric_from_the_head():
    model = tiny()
    groups = param_groups(model, load_config(overrides=["strategy.layer_decay=0.5"]), 0.1)
    scales = sorted({g["lr_scale"] for g in groups}, reverse=True)
    assert scales[0] == 1.0 and all(b == pytest.approx(a * 0.5) for a, b in zip(scales, scales[1:]))
    head = [g for g in groups if g["name"].startswith("head")]
    assert head and all(g["lr_scale"] == 1.0 for g in head)
    early = [g for g in groups if g["name"].startswith("early")]
    assert max(g["lr_scale"] for g in early) < min(g["lr_scale"] for g in groups if g["name"].startswith("late"))


def test_warmup_then_cosine_to_the_minimum_keeping_every_groups_ratio():
    config = load_config(overrides=["schedule.warmup_epochs=1", "schedule.min_lr_ratio=0.1"])
    seen = rates_over(config, steps_per_epoch=4, total=40)
    late, early = np.array(seen["late"]), np.array(seen["early"])
    assert np.all(np.diff(late[:5]) > 0) and late[4] == pytest.approx(1e-3)  # linear warm-up to the peak
    assert np.all(np.diff(late[4:]) <= 1e-15)  # then never rises
    assert late[-1] == pytest.approx(1e-4, rel=0.02)  # ends near min_lr_ratio x peak
    np.testing.assert_allclose(early / late, 0.01, rtol=1e-9)  # each group keeps its ratio at every step


def test_step_onecycle_cyclic_and_constant_have_their_shape():
    step = rates_over(load_config(overrides=["schedule.name=step", "schedule.warmup_epochs=0",
                                             "schedule.step_epochs=2", "schedule.gamma=0.5"]), 10, 60)["late"]
    assert step[0] == step[19] == 1e-3 and step[20] == pytest.approx(5e-4) and step[40] == pytest.approx(2.5e-4)
    one = rates_over(load_config(overrides=["schedule.name=onecycle", "schedule.pct_start=0.25"]), 10, 100)
    late = np.array(one["late"])
    assert late[0] == pytest.approx(1e-3 / 25) and late.argmax() in (24, 25) and late.max() == pytest.approx(1e-3)
    assert late[-1] < late[0] / 1000
    np.testing.assert_allclose(np.array(one["middle"]) / late, 0.1, rtol=1e-9)
    cyclic = np.array(rates_over(load_config(overrides=["schedule.name=cyclic", "schedule.cycle_epochs=1",
                                                        "schedule.cycle_min_ratio=0.2"]), 10, 40)["late"])
    assert cyclic[0] == pytest.approx(2e-4) and cyclic[5] == pytest.approx(1e-3) and cyclic[10] == pytest.approx(2e-4)
    constant = rates_over(load_config(overrides=["schedule.name=constant", "schedule.warmup_epochs=0"]), 10, 50)
    assert set(constant["late"]) == {1e-3}


def test_the_registry_finds_every_strategy_module_and_refuses_unknown_names():
    assert {"feature-extraction", "fine-tune", "gradual", "linear-probe"} <= set(strategy_names())
    with pytest.raises(ConfigError, match="unknown strategy 'spin'"):
        get_strategy("spin", load_config())
    with pytest.raises(ConfigError, match=r"strategy.fine_tune.train_groups: unknown layer group 'top'"):
        get_strategy("fine-tune", load_config(overrides=["strategy.fine_tune.train_groups=[top]"]))
    gradual = get_strategy("gradual", load_config())
    assert [gradual.trainable(e) for e in (0, 4, 5, 10)] == [["head"], ["head"], ["head", "late"],
                                                               ["head", "late", "middle", "early"]]
    assert gradual.config.train.epochs == 20 and gradual.config.strategy.name == "gradual"


def colour_data(tmp_path, per_class: int = 10):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "colors"
    for k, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (24, 24, 3), dtype=np.uint8)
            img[..., k] = rng.integers(160, 256, (24, 24), dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def run_weights(run) -> dict[str, torch.Tensor]:
    from transferlab.rundir import load_model

    return load_model(run).classifier.state_dict()


def initial_state(config) -> dict[str, torch.Tensor]:
    torch.manual_seed(config.seed)
    return create_backbone(config.model.name, pretrained=False, img_size=32).state_dict()


def test_train_groups_limit_what_fine_tuning_changes(tmp_path):
    """strategy.fine_tune.train_groups [late, head] (what auto's small+different choice uses): through the
    real training path, early and middle weights and BatchNorm statistics stay exactly as they
    came, the late group moves."""
    config = load_config(overrides=[*TINY, "strategy.name=fine-tune", "strategy.fine_tune.head_warmup_epochs=0",
                                    "train.epochs=2", "strategy.fine_tune.train_groups=[late, head]", "optim.lr=0.01"])
    run = run_training(str(colour_data(tmp_path)), config, out=tmp_path / "run", progress=False)
    before, after = initial_state(config), run_weights(run)
    groups = named_groups(tiny())
    modules = lambda g: {n.rsplit(".", 1)[0] for n in groups[g]}  # noqa: E731
    for group, should_move in (("early", False), ("middle", False), ("late", True)):
        keys = [k for k in before if f"backbone.{k}".rsplit(".", 1)[0] in modules(group)]
        moved = [k for k in keys if not torch.equal(before[k], after[f"backbone.{k}"])]
        assert bool(moved) == should_move, (group, moved[:3])
    record = json.loads((run / "metrics.json").read_text())["strategy"]
    assert record["label"] == "fine-tune (late, head)"
    assert record["stages"]["main"]["groups"]["early"]["trains_from_epoch"] is None
    assert record["stages"]["main"]["groups"]["late"]["trains_from_epoch"] == 1


def test_train_bn_false_keeps_batchnorm_of_trained_groups_as_it_came(tmp_path):
    config = load_config(overrides=[*TINY, "strategy.name=fine-tune", "strategy.fine_tune.head_warmup_epochs=0",
                                    "train.epochs=2", "strategy.train_bn=false", "optim.lr=0.01"])
    run = run_training(str(colour_data(tmp_path)), config, out=tmp_path / "run", progress=False)
    before, after = initial_state(config), run_weights(run)
    bn = [k for k in before if k.endswith(("running_mean", "running_var")) or ".bn" in k and k.endswith(("weight",
                                                                                                       "bias"))]
    assert bn and all(torch.equal(before[k], after[f"backbone.{k}"]) for k in bn)
    convs = [k for k in before if "conv" in k and k.endswith("weight")]
    assert any(not torch.equal(before[k], after[f"backbone.{k}"]) for k in convs)  # the rest did train


def logged_rates(run, stage: str = "main") -> dict[str, float]:
    with open(next((run / "logs" / stage).glob("v*/metrics.csv")), newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if any(k.startswith("lr-") and r[k] for k in r)]
    return {k.split("/", 1)[1]: float(v) for k, v in rows[-1].items() if k.startswith("lr-") and v}


def test_layer_decay_through_training_gives_each_layer_its_logged_rate(tmp_path):
    config = load_config(overrides=[*TINY, "strategy.name=fine-tune", "strategy.fine_tune.head_warmup_epochs=0",
                                    "train.epochs=1", "strategy.layer_decay=0.5", "schedule.name=constant",
                                    "schedule.warmup_epochs=0"])
    run = run_training(str(colour_data(tmp_path)), config, out=tmp_path / "run", progress=False)
    rates = logged_rates(run)
    assert rates["head.depth0"] == pytest.approx(1e-3) and len({n.split("/")[0] for n in rates}) > 4
    peaks = json.loads((run / "metrics.json").read_text())["strategy"]["stages"]["main"]["groups"]["layer_decay"]
    for name, rate in rates.items():
        depth = int(name.split(".depth")[1].split("/")[0])
        assert rate == pytest.approx(1e-3 * 0.5**depth)  # geometric from the head, as the optimizer ran it
        assert rate == pytest.approx(peaks["peak_lr"][name])  # and as the record says


def test_the_balanced_sampler_balances_what_training_sees(tmp_path):
    from transferlab.data import load_dataset
    from transferlab.features import FeatureStore
    from transferlab.fit import FitContext, Fitting

    root = colour_data(tmp_path, per_class=4)
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(4, 40):  # red gets 10x the images of the others
        Image.fromarray(rng.integers(150, 256, (24, 24, 3), dtype=np.uint8)).save(root / "red" / f"{i}.png")
    config = load_config(overrides=[*TINY, "train.imbalance=sampler", "data.val_fraction=0", "data.test_fraction=0"])
    dataset = load_dataset(str(root), config, progress=False)
    every = np.arange(len(dataset))
    indices = {"train": every, "val": every[:0], "test": every[:0]}
    fitting = Fitting(FitContext(dataset, indices, config, tmp_path / "fit", FeatureStore(dataset, config)))
    assert fitting.imbalance == "sampler"
    loader = TransferDataModule(config, dataset.labels, indices, store=dataset.images,
                                sample_weights=fitting.sample_weights).train_dataloader()
    seen = np.concatenate([y.numpy() for epoch in range(20) for _, y in (loader.sampler.set_epoch(epoch) or loader)])
    shares = np.bincount(seen, minlength=3) / len(seen)
    assert np.bincount(dataset.labels)[dataset.classes.index("red")] == 40
    np.testing.assert_allclose(shares, 1 / 3, atol=0.04)


class RecordGroups(L.Callback):
    """What trains in each epoch: optimizer groups with gradients, and weights before each epoch."""

    def __init__(self):
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.trainable: dict[int, list[str]] = {}

    def on_train_epoch_start(self, trainer, module):
        self.snapshots[trainer.current_epoch] = {k: v.detach().clone() for k, v in module.model.state_dict().items()}

    def on_train_epoch_end(self, trainer, module):
        groups = named_groups(module.model)
        params = dict(module.model.named_parameters())
        self.trainable[trainer.current_epoch] = [g for g, names in groups.items()
                                                 if any(params[n].requires_grad for n in names)]


def test_gradual_unfreezing_switches_at_the_configured_epochs(tmp_path):
    config = load_config(overrides=[*TINY, "seed=3", "strategy.name=gradual", "strategy.gradual.steps=[{epoch: 1, groups: "
                                    "[head]}, {epoch: 2, groups: [late]}, {epoch: 3, groups: [middle, early], "
                                    "lr: 0.0001}]"])
    strategy = get_strategy("gradual", config)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    indices = {"train": np.arange(18), "val": np.arange(18, 24), "test": np.arange(0)}
    datamodule = TransferDataModule(config, np.arange(24) % 3, indices, store=MemoryStore(images))
    model = tiny()
    module = ClassifierModule(model, strategy.config, num_classes=3, lr_scales=strategy.lr_scales())
    recorder = RecordGroups()
    from transferlab.fit import FitContext
    from transferlab.strategies.base import Stage

    ctx = FitContext(None, indices, strategy.config, tmp_path, None, progress=False)
    trainer, _ = build_trainer(ctx, Stage("main", "images", 4), [TrainableGroups(strategy.trainable), recorder])
    trainer.fit(module, datamodule=datamodule)
    assert recorder.trainable[0] == ["head"] and recorder.trainable[1] == ["late", "head"]
    assert recorder.trainable[2] == recorder.trainable[3] == ["early", "middle", "late", "head"]
    scales = {g["name"]: g["lr_scale"] for g in trainer.optimizers[0].param_groups}
    assert scales["early"] == scales["middle"] == pytest.approx(0.1) and scales["late"] == scales["head"] == 1.0
    groups = named_groups(model)
    snap = recorder.snapshots
    changed = lambda a, b, names: any(not torch.equal(snap[a][n], snap[b][n]) for n in names)  # noqa: E731
    backbone_state = [k for k in snap[0] if k.startswith("backbone.")]
    assert changed(0, 1, groups["head"]) and not changed(0, 1, backbone_state)  # BN statistics included
    late_modules = {n.rsplit(".", 1)[0] for n in groups["late"]}
    early_modules = {n.rsplit(".", 1)[0] for n in groups["early"]}
    assert changed(1, 2, [k for k in snap[1] if k.rsplit(".", 1)[0] in late_modules])
    assert not changed(1, 2, [k for k in snap[1] if k.rsplit(".", 1)[0] in early_modules])
    assert changed(2, 3, groups["early"])


def test_the_feature_store_equals_the_fits_own_backbone_on_the_images(color_folder, tmp_path):
    """Heads train on stored features and then predict from images: the store's backbone (a seeded
    random one here) must be exactly the one every fit builds, at any size the model sees."""
    from transferlab.data import load_dataset
    from transferlab.features import FeatureStore
    from transferlab.fit import FitContext, new_classifier

    config = load_config(overrides=[*TINY, "preprocess.size=48"])
    dataset = load_dataset(str(color_folder), config, progress=False)
    every = np.arange(len(dataset))
    store = FeatureStore(dataset, config, progress=False)
    images = torch.from_numpy(dataset.images.take(every)).permute(0, 3, 1, 2)
    for size in (48, 32):  # 32: the model resizes the stored 48 px images inside, as the store does
        ctx = FitContext(dataset, {"train": every, "val": every[:0], "test": every[:0]},
                         load_config(overrides=[*TINY, "preprocess.size=48", f"model.size={size}"]), tmp_path, store)
        model = new_classifier(ctx).eval()
        with torch.no_grad():
            torch.testing.assert_close(store.get(every, size=size), model.features(images), atol=1e-5, rtol=1e-4)


# what each registered strategy needs besides TINY to run in seconds; a new strategy runs here with no change
QUICK = {"fine-tune": ["strategy.fine_tune.head_warmup_epochs=1", "train.epochs=2"],
         "gradual": ["train.epochs=5", "strategy.gradual.steps=[{epoch: 1, groups: [head]}, {epoch: 2, groups: [late]}]"],
         "feature-extraction": ["train.epochs=2"],
         "scratch": ["train.epochs=2"],
         # members at two input sizes of one decoded cache (32 px): the 24 px ones resize in the graph; the
         # two probes share one frozen backbone, stored once
         "ensemble": ["strategy.ensemble.members=[{strategy: linear-probe, size: 32, weight: 2}, "
                      "{strategy: linear-probe, size: 24, weight: 1, settings: {strategy.linear_probe.C: 0.5}}, "
                      "{strategy: fine-tune, size: 24, weight: 1, settings: {train.epochs: 1, "
                      "strategy.fine_tune.head_warmup_epochs: 0}}]"]}


@pytest.mark.parametrize("name", strategy_names())
def test_every_registered_strategy_trains_predicts_evaluates_and_explains(name, tmp_path, capsys):
    """Like scikit-learn's check_estimator over every estimator: each registered strategy goes through
    the real fit path and every command that takes a run handles what it saved."""
    from transferlab.cli import main

    data = colour_data(tmp_path)
    config = load_config(overrides=[*TINY, f"strategy.name={name}", *QUICK.get(name, [])])
    run = run_training(str(data), config, out=tmp_path / "run", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["strategy"]["name"] == name and 0 <= metrics["test"]["accuracy"] <= 1
    image = next((data / "red").iterdir())
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--json", "--top-k", "2", "--engine", "torch"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert len(top) == 2 and 0 <= top[1]["probability"] <= top[0]["probability"] <= 1
    assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]["accuracy"] >= 0
    assert main(["explain", str(run), str(image), "--out", str(tmp_path / "explain")]) == 0
    assert list((tmp_path / "explain").glob("*.png"))
    if name == "ensemble":
        members = json.loads((run / "model" / "model.json").read_text())["members"]
        assert [(m["strategy"], m["size"], m["weight"]) for m in members] == [
            ("linear-probe", 32, pytest.approx(0.5, abs=1e-5)), ("linear-probe", 24, pytest.approx(0.25, abs=1e-5)),
            ("fine-tune", 24, pytest.approx(0.25, abs=1e-5))]
        assert [m["backbone"] for m in members] == [0, 0, 1]
        assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "bundle")]) == 0
        bundle = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
        assert bundle["parity"]["max_abs_diff"] <= 1e-4 and bundle["parity"]["top1_agreement"] == 1.0
        from conftest import post_image

        from transferlab.serve import Server

        with Server(run, port=0, engine="torch") as server:  # the app answers like predict, Grad-CAM included
            status, answer = post_image(server.url, "image", image.name, image.read_bytes(), {"top_k": "2"})
            assert status == 200 and [t["class"] for t in answer["top"]] == [t["class"] for t in top]
            assert np.allclose([t["probability"] for t in answer["top"]], [t["probability"] for t in top], atol=1e-5)
            scores, overlay, _, _ = server.predictor.explain(image.read_bytes())  # what the page shows
            assert max(scores, key=scores.get) == top[0]["class"] and overlay.dtype == np.uint8


@pytest.mark.slow  # two ViT members at two sizes: ~11 s
def test_vit_members_at_several_sizes_keep_their_own_backbones(tmp_path, capsys):
    """Head-only ensemble members shared one pretrained backbone whatever their size: a ViT is built for
    one size (its position embeddings; timm's PatchEmbed asserts it), so the members at 32 px broke or
    silently used the 48 px one. Members of one size still share theirs."""
    from transferlab.cli import main
    from transferlab.rundir import load_model

    data = colour_data(tmp_path)
    members = ("[{strategy: linear-probe, size: 48}, {strategy: linear-probe, size: 32}, "
               "{strategy: linear-probe, size: 32, settings: {strategy.linear_probe.C: 0.5}}]")
    config = load_config(overrides=[*TINY, "model.name=test_vit", "preprocess.size=48", "strategy.name=ensemble",
                                    f"strategy.ensemble.members={members}"])
    run = run_training(str(data), config, out=tmp_path / "run", progress=False)
    meta = json.loads((run / "model" / "model.json").read_text())
    assert [(m["size"], m["backbone"]) for m in meta["members"]] == [(48, 0), (32, 1), (32, 1)]
    model = load_model(run).classifier
    assert [m.backbone.patch_embed.img_size for m in model.members] == [(48, 48), (32, 32), (32, 32)]
    assert model.members[1].backbone is model.members[2].backbone
    image = next((data / "red").iterdir())
    assert main(["predict", str(run), str(image), "--json", "--engine", "torch"]) == 0
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "bundle")]) == 0
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["parity"]["top1_agreement"] == 1.0


SHARD_SCRIPT = """
import os, sys
import numpy as np
import torch.distributed as dist
from transferlab.config import load_config
from transferlab.data import load_dataset
from transferlab.engines.shard import init_from_environment
from transferlab.features import FeatureStore

init_from_environment()
assert dist.is_initialized() and dist.get_world_size() == 2
config = load_config(overrides=sys.argv[3:] + [f"data.cache_dir={sys.argv[2]}/cache{dist.get_rank()}"])
dataset = load_dataset(sys.argv[1], config, progress=False)
read, take = [], dataset.images.take
dataset.images.take = lambda indices: read.extend(indices) or take(indices)  # which images this rank decodes
features = FeatureStore(dataset, config, progress=False).get(np.arange(len(dataset)), size=32).numpy()
np.save(f"{sys.argv[2]}/rank{dist.get_rank()}.npy", features)
np.save(f"{sys.argv[2]}/read{dist.get_rank()}.npy", np.array(read))
dist.barrier()
dist.destroy_process_group()  # gloo's threads torn down before exit, or a rank may abort at exit
"""


@pytest.mark.slow  # two processes, ~10 s alone: make test-slow (CI runs it)
def test_the_frozen_pass_shards_across_two_processes_to_the_same_features(color_folder, tmp_path):
    """torchrun with 2 gloo CPU processes: each rank runs the backbone over its share of the images,
    the shares are gathered, and every rank holds features equal to one process's, in order."""
    import subprocess
    import sys

    from transferlab.data import load_dataset
    from transferlab.features import FeatureStore

    overrides = [*TINY, "train.engine=torch"]
    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(color_folder), str(tmp_path), *overrides],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    config = load_config(overrides=overrides)
    dataset = load_dataset(str(color_folder), config, progress=False)
    alone = FeatureStore(dataset, config, progress=False).get(np.arange(len(dataset)), size=32).numpy()
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"), alone, atol=1e-5, rtol=1e-4)
    shares = [set(np.load(tmp_path / f"read{rank}.npy").tolist()) for rank in (0, 1)]
    assert shares[0].isdisjoint(shares[1]) and len(shares[0]) == len(shares[1]) == len(dataset) // 2


def test_a_small_subsample_costs_only_its_own_images_in_the_feature_store(color_folder):
    """The rule's LogME sample of a large set must not start a pass over every image: a request for
    under half of the images runs the backbone on those only, equal to the same rows of a full pass."""
    from transferlab.data import load_dataset
    from transferlab.features import FeatureStore

    config = load_config(overrides=[*TINY, "train.engine=torch"])
    dataset = load_dataset(str(color_folder), config, progress=False)
    read, take = [], dataset.images.take
    dataset.images.take = lambda indices: read.extend(indices) or take(indices)
    store = FeatureStore(dataset, config, progress=False)
    sample = np.array([1, 7, 12, 20, 28])
    part = store.get(sample, size=32).numpy()
    assert sorted(read) == sorted(sample.tolist())
    whole = store.get(size=32).numpy()
    assert len(read) == len(sample) + len(dataset)
    np.testing.assert_allclose(part, whole[sample], atol=1e-5, rtol=1e-4)


def test_nothing_outside_the_strategies_branches_on_a_strategy_name():
    """strategies/__init__.py: nothing else in the package branches on a strategy's name (fit.py chose the
    views, the search the probe's refit and grid, by name): no comparison against a registered name."""
    import ast
    from pathlib import Path

    import transferlab
    from transferlab.strategies import load_all

    names, root = set(load_all()), Path(transferlab.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        if path.parent.name == "strategies":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                strings = [c.value for c in (node.left, *node.comparators) if isinstance(c, ast.Constant)]
                found += [f"{path.relative_to(root)}:{node.lineno} {s}" for s in strings if s in names]
    assert not found, found


@pytest.mark.slow  # two fits and an export: about 10 s
def test_an_ensemble_with_a_member_from_scratch_loads_predicts_and_exports(tmp_path, capsys):
    """A member trained from scratch is another network (small_cnn) than the pretrained members: model.json names
    each member's own, and the run loads (it was built as the run's backbone and refused its weights: every
    60,000-image Fashion-MNIST run whose search chose the scratch CNN beside probes)."""
    from transferlab.cli import main
    from transferlab.rundir import load_model

    data = colour_data(tmp_path)
    members = ("[{strategy: linear-probe, size: 32, weight: 1}, {strategy: scratch, size: 32, weight: 1, "
               "settings: {train.epochs: 1}}]")
    config = load_config(overrides=[*TINY, "strategy.name=ensemble", f"strategy.ensemble.members={members}"])
    run = run_training(str(data), config, out=tmp_path / "run", progress=False)
    meta = json.loads((run / "model" / "model.json").read_text())
    assert [m["model"] for m in meta["members"]] == ["test_efficientnet", "small_cnn"]
    model = load_model(run)
    assert type(model.classifier.members[1].backbone).__name__ != type(model.classifier.members[0].backbone).__name__
    image = next((data / "red").iterdir())
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--json", "--engine", "torch"]) == 0
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "bundle")]) == 0
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["parity"]["max_abs_diff"] <= 1e-4
