"""Training runs end to end: the run directory contract, each strategy, resume, predict, DDP."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from transferlab.cli import main
from transferlab.config import load_config
from transferlab.run import run_training
from transferlab.predict import predict_files
from transferlab.rundir import RUN_DIR_ENV, RunError, load_model

TINY = ["train.report=false", "model.name=test_efficientnet", "model.pretrained=false", "preprocess.size=32", "train.batch_size=8",
        "train.workers=0", "data.decode_workers=1", "train.early_stopping=null", "data.val_fraction=0.2",
        "data.test_fraction=0.2", "augment.preset=light"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


def tiny_config(*extra):
    return load_config(overrides=[*TINY, *extra])


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


STAGES = {"feature-extraction": {"head": "head"}, "fine-tune": {"warmup": "head", "main": "classifier"},
          "gradual": {"main": "classifier"}, "linear-probe": {"probe": "head"}}


@pytest.mark.parametrize("strategy", sorted(STAGES))
def test_each_strategy_leaves_a_run_whose_files_agree_with_its_model(color_folder, tmp_path, strategy):
    """For every strategy: the saved model predicts from the image files exactly what
    predictions.csv says, metrics.json's numbers are those predictions' numbers, the split
    partitions the data, and the record names the stages the strategy runs."""
    extra = ["train.epochs=3", f"strategy.name={strategy}", "strategy.fine_tune.head_warmup_epochs=2",
             "strategy.gradual.steps=[{epoch: 1, groups: [head]}, {epoch: 2, groups: [late, middle, early]}]"]
    run = run_training(str(color_folder), tiny_config(*extra), out=tmp_path / "run", progress=False)
    assert list((run / "logs").rglob("metrics.csv")) or strategy == "linear-probe"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["strategy"]["name"] == strategy
    assert {n: s["kind"] for n, s in metrics["strategy"]["stages"].items()} == STAGES[strategy]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["strategy"]["name"] == strategy and config["data"]["source"] == str(color_folder)
    split = read_rows(run / "split.csv")
    assert sorted(r["path"] for r in split) == sorted(p.relative_to(color_folder).as_posix()
                                                      for p in color_folder.rglob("*.png"))
    predictions = read_rows(run / "predictions.csv")
    assert {(r["path"], r["split"]) for r in predictions} == {(r["path"], r["split"]) for r in split
                                                             if r["split"] != "train"}
    test_rows = [r for r in predictions if r["split"] == "test"]
    assert metrics["test"]["accuracy"] == pytest.approx(np.mean([r["pred"] == r["label"] for r in test_rows]))
    assert metrics["test"]["n"] == len(test_rows)
    predicted = predict_files(run, [color_folder / r["path"] for r in test_rows], top_k=3)
    for row, result in zip(test_rows, predicted):
        for entry in result["top"]:
            assert entry["probability"] == pytest.approx(float(row[f"p_{entry['class']}"]), abs=1e-4)
    assert json.loads((run / "state.json").read_text())["finished"] is True


def test_feature_extraction_learns_a_colour_task_with_the_bundled_backbone(color_folder, tmp_path):
    config = load_config(overrides=["preprocess.size=32", "train.workers=0", "data.decode_workers=1",
                                    "train.report=false", "train.epochs=40", "optim.lr=0.01", "data.val_fraction=0.2",
                                    "data.test_fraction=0.2", "strategy.name=feature-extraction"])
    run = run_training(str(color_folder), config, out=tmp_path / "run", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == 1.0
    # the saved model predicts from image files exactly what the run reported
    rows = {r["path"]: r for r in read_rows(run / "predictions.csv")}
    path = next(iter(rows))
    top = predict_files(run, [color_folder / path], top_k=3)[0]["top"]
    for entry in top:
        assert entry["probability"] == pytest.approx(float(rows[path][f"p_{entry['class']}"]), abs=1e-4)


def test_a_new_run_never_overwrites_an_old_one(color_folder, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    with pytest.raises(RunError, match="already exists and is not empty"):
        run_training(str(color_folder), tiny_config("train.epochs=1"), out=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "metrics.json").read_text() == "{}"
    os.chdir(tmp_path)
    first = run_training(str(color_folder), tiny_config("train.epochs=1"), progress=False)
    second = run_training(str(color_folder), tiny_config("train.epochs=1"), progress=False)
    assert first != second and first.parent == second.parent == Path("runs")


class StopAt(L.Callback):
    """Simulates a crash at the start of an epoch (after the previous one was checkpointed)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_model(run).classifier.state_dict()


def kill_after_first_checkpoint(data: Path, run: Path, overrides: list[str]) -> None:
    """`transferlab train` in a child process, SIGKILLed with its DataLoader worker once the main
    stage's first epoch is checkpointed."""
    command = [sys.executable, "-m", "transferlab.cli", "train", str(data), "--out", str(run), "--quiet",
               *sum((["--set", s] for s in overrides), [])]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "main" / "last.ckpt").is_file() and child.poll() is None:
            assert time.monotonic() < deadline, "the child never checkpointed its main stage"
            time.sleep(0.02)
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)  # its DataLoader worker too: it shares the run's lock
    finally:
        stderr = child.communicate()[1].decode(errors="replace")
    assert child.returncode == -signal.SIGKILL, stderr[-2000:]
    assert not (run / "metrics.json").exists()


@pytest.mark.parametrize("strategy, stop", [("fine-tune", "crash"), ("gradual", "crash"), ("fine-tune", "kill")])
def test_resume_after_a_crash_reaches_the_same_weights(color_folder, tmp_path, strategy, stop):
    """A run stopped after the main stage's first epoch (an exception, or the process SIGKILLed)
    resumes to exactly the weights of an uninterrupted one: after fine-tuning's head warm-up, and
    with a DataLoader worker process (which draws batches ahead, as soon as Lightning calls iter())."""
    extra = ["train.epochs=4", f"strategy.name={strategy}", "strategy.fine_tune.head_warmup_epochs=1", "train.workers=1",
             "augment.preset=standard", "augment.mixup_alpha=0.4",
             "strategy.gradual.steps=[{epoch: 1, groups: [head]}, {epoch: 3, groups: [late]}]"]
    whole = run_training(str(color_folder), tiny_config(*extra), out=tmp_path / "whole", progress=False)
    if stop == "kill":
        kill_after_first_checkpoint(color_folder, tmp_path / "crashed", [*TINY, *extra])
    else:
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_training(str(color_folder), tiny_config(*extra), out=tmp_path / "crashed", progress=False,
                         extra_callbacks=[StopAt(1)])
        assert not (tmp_path / "crashed" / "metrics.json").exists()
    resumed = run_training(None, load_config(), resume=tmp_path / "crashed", progress=False)
    a, b = final_weights(whole), final_weights(resumed)
    changed = {n: (a[n].double() - b[n].double()).abs().max().item() for n in a if not torch.equal(a[n], b[n])}
    assert not changed, f"{len(changed)} tensors differ, max |dw| {max(changed.values()):.3g}"
    with pytest.raises(RunError, match="already finished"):
        run_training(None, load_config(), resume=resumed, progress=False)


def test_imbalanced_data_gets_class_weights_from_the_training_split(tmp_path):
    from transferlab.fit import imbalance_weights

    config = load_config()
    labels = np.array([0] * 30 + [1] * 5 + [2] * 10)
    weights, samples, mode = imbalance_weights(config, labels, 3)
    assert mode == "weights" and samples is None
    assert weights.tolist() == pytest.approx([45 / 90, 45 / 15, 45 / 30])
    _, samples, mode = imbalance_weights(load_config(overrides=["train.imbalance=sampler"]), labels, 3)
    assert mode == "sampler" and samples[0] == pytest.approx(1 / 30) and samples[30] == pytest.approx(1 / 5)
    assert imbalance_weights(config, np.array([0, 0, 1, 1]), 2)[2] == "none"


def test_train_cli_on_a_csv_and_a_builtin_set(tmp_path, color_folder, capsys):
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for file in sorted(color_folder.rglob("*.png")):
            writer.writerow([os.path.relpath(file, tmp_path), file.parent.name])
    sets = ["--set", "train.workers=0", "--set", "data.decode_workers=1", "--set", "model.pretrained=false",
            "--no-report"]
    assert main(["train", str(manifest), "--model", "test_efficientnet", "--size", "32", "--epochs", "2",
                 "--out", str(tmp_path / "csv-run"), "--quiet", *sets]) == 0
    out = capsys.readouterr().out
    assert "run directory:" in out and "accuracy" in out
    # every printed metric with its 95% interval and the split's size (a bootstrap of the split's images)
    test = json.loads((tmp_path / "csv-run" / "metrics.json").read_text())["test"]
    low, high = test["ci95"]["accuracy"]
    assert low <= test["accuracy"] <= high and f"test ({test['n']} images): accuracy {test['accuracy']:.3f} " \
        f"[{low:.3f}, {high:.3f}]" in out
    assert test["n"] == 6 and str(test["n"]) in test["ci95_method"]
    assert main(["train", "builtin:digits", "--subset", "12", "--model", "test_efficientnet", "--size", "32",
                 "--epochs", "1", "--strategy", "fine-tune", "--out", str(tmp_path / "digits-run"), "--quiet",
                 *sets]) == 0
    assert (tmp_path / "digits-run" / "model" / "weights.safetensors").is_file()
    assert main(["train", str(tmp_path / "nothing-here")]) == 2
    assert main(["train", "builtin:digits", "--set", "train.epochs=zero"]) == 2
    assert "expects an integer" in capsys.readouterr().err


def test_predict_reports_bad_files_and_predicts_the_rest(color_folder, tmp_path, capsys):
    run = run_training(str(color_folder), tiny_config("train.epochs=1"), out=tmp_path / "run", progress=False)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a picture")
    good = color_folder / "red" / "red_0.png"
    code = main(["predict", str(run), str(good), str(bad), str(tmp_path / "missing.png"), "--top-k", "2", "--json"])
    assert code == 2
    results = json.loads(capsys.readouterr().out)
    assert len(results[0]["top"]) == 2 and "error" in results[1] and "not found" in results[2]["error"]
    assert main(["predict", str(tmp_path / "no-run"), str(good)]) == 2


def test_find_lr_saves_its_plot(color_folder, tmp_path):
    run = run_training(str(color_folder), tiny_config("train.epochs=2", "train.find_lr=true",
                                                      "strategy.name=feature-extraction"),
                       out=tmp_path / "run", progress=False)
    assert (run / "plots" / "lr_find_head.png").is_file()


@pytest.mark.slow  # two processes, ~10 s alone: make test-slow (CI runs it)
def test_ddp_two_cpu_processes_train_and_evaluate(color_folder, tmp_path):
    """A real 2-process DDP run (gloo) through the command line, as a user launches it."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop(RUN_DIR_ENV, None)
    command = [sys.executable, "-m", "transferlab.cli", "train", str(color_folder), "--model", "test_efficientnet",
               "--size", "32", "--epochs", "2", "--strategy", "fine-tune", "--accelerator", "cpu", "--devices", "2",
               "--strategy-ddp", "ddp", "--out", str(tmp_path / "ddp"), "--quiet",
               "--no-report",
               *sum((["--set", s] for s in ("train.workers=0", "data.decode_workers=1", "model.pretrained=false",
                                             "strategy.fine_tune.head_warmup_epochs=1")), [])]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 6
    assert not (tmp_path / "runs").exists()  # the second process used rank 0's directory


def test_a_run_config_reproduces_the_run(color_folder, tmp_path):
    first = run_training(str(color_folder), tiny_config("train.epochs=2", "strategy.name=fine-tune"),
                         out=tmp_path / "a", progress=False)
    again = run_training(str(color_folder), load_config(first / "config.yaml"), out=tmp_path / "b",
                         progress=False)
    assert (first / "split.csv").read_text() == (again / "split.csv").read_text()
    a, b = final_weights(first), final_weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["train", "--config", str(first / "config.yaml"), "--out", str(tmp_path / "c"), "--quiet"]) == 0


def test_feature_extraction_with_augmented_views(color_folder, tmp_path):

    config = tiny_config("strategy.name=feature-extraction", "train.epochs=2", "strategy.feature_extraction.views=2",
                         "augment.preset=standard")
    run = run_training(str(color_folder), config, out=tmp_path / "v", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["splits"]["train"] == 18
    cached = list((tmp_path / "cache" / "features").glob("*.npy"))
    assert len(cached) == 3  # plain features of all images + 2 augmented views of the training images
    rows = sorted(len(np.load(f)) for f in cached)
    assert rows == [18, 18, 30]


def test_a_winning_warmup_stage_keeps_the_backbone_it_was_trained_on(color_folder, tmp_path):
    """When fine-tuning loses to its head warm-up on validation, the kept model is the warm-up's:
    its head AND the untouched backbone, not the head on the fine-tuned backbone."""
    from transferlab.models.backbone import create_backbone

    config = tiny_config("strategy.name=fine-tune", "strategy.fine_tune.head_warmup_epochs=3", "train.epochs=2",
                         "optim.lr=3.0", "train.monitor=val_loss", "augment.preset=none")
    run = run_training(str(color_folder), config, out=tmp_path / "run", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["strategy"]["selected"]["stage"] == "warmup"
    torch.manual_seed(config.seed)
    original = create_backbone("test_efficientnet", pretrained=False, img_size=32).state_dict()
    kept = final_weights(run)
    for name, value in original.items():
        assert torch.equal(kept[f"backbone.{name}"], value), name
    val = metrics["val"]["log_loss"]
    assert val == pytest.approx(metrics["strategy"]["selected"]["scores"]["warmup"], rel=0.05)


def test_the_report_says_what_a_probe_run_did_and_which_augmentation_ran(color_folder, tmp_path):
    """A probe or ensemble run's report showed "no learning-rate log was found" and "no training logs ...
    were found" (empty sections that read as broken), and listed augmentation ops that a fit on frozen
    features never used; a feature extraction with augmented views lists the ops its views ran."""
    import re

    def sections(run) -> dict[str, str]:
        page = (run / "report.html").read_text()
        return dict(re.findall(r'<section id="(\w+)">(.*?)</section>', page, re.S))

    probe = run_training(str(color_folder), tiny_config("train.report=true", "strategy.name=linear-probe"),
                         out=tmp_path / "probe", progress=False)
    page = sections(probe)
    assert "no learning-rate log was found" not in page["strategy"] and "no training logs" not in page["training"]
    assert "linear probe: one convex solve on cached features" in page["training"]
    assert "no augmentation ran" in page["preprocessing"] and "pad_crop" not in page["preprocessing"]
    os.environ.pop(RUN_DIR_ENV, None)
    views = run_training(str(color_folder), tiny_config("train.report=true", "strategy.name=feature-extraction",
                                                        "strategy.feature_extraction.views=1", "train.epochs=1"),
                         out=tmp_path / "views", progress=False)
    page = sections(views)
    assert "no augmentation ran" not in page["preprocessing"] and "pad_crop" in page["preprocessing"]
    recorded = json.loads((views / "metrics.json").read_text())["strategy"]["stages"]["head"]["augmentation"]
    assert [op["op"] for op in recorded] == ["hflip", "pad_crop"]
