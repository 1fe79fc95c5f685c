"""Cross-validation runs and evaluation of a trained run on another set."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from PIL import Image

from conftest import save
from transferlab.cli import main
from transferlab.config import load_config
from transferlab.run import run_cv
from transferlab.data import load_dataset
from transferlab.errors import DataError
from transferlab.evaluate import evaluate_run
from transferlab.run import run_training
from transferlab.rundir import RUN_DIR_ENV

TINY = ["train.report=false", "model.name=test_efficientnet", "model.pretrained=false", "preprocess.size=32", "train.batch_size=8",
        "train.workers=0", "data.decode_workers=1", "train.early_stopping=null", "train.epochs=2", "cv.folds=3"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_cv_writes_folds_aggregates_and_out_of_fold_predictions(color_folder, tmp_path):
    run = run_cv(str(color_folder), load_config(overrides=[*TINY, "audit.enabled=true"]), out=tmp_path / "cv",
                 progress=False)
    result = json.loads((run / "cv_metrics.json").read_text())
    assert [f["name"] for f in result["folds"]] == ["fold1", "fold2", "fold3"]
    accuracy = result["aggregate"]["accuracy"]
    values = [f["metrics"]["accuracy"] for f in result["folds"]]
    assert accuracy["values"] == values and accuracy["mean"] == pytest.approx(np.mean(values))
    assert accuracy["std"] == pytest.approx(np.std(values, ddof=1)) and len(accuracy["ci95"]) == 2
    assert "bootstrap" in result["cv"]["interval"]
    for name, entry in result["aggregate"].items():  # every interval inside the metric's range
        if entry["ci95"] and name != "log_loss":
            assert 0 <= entry["ci95"][0] <= entry["ci95"][1] <= 1, name
    assert result["cv"]["splitter"] == "StratifiedKFold"
    split = rows(run / "split.csv")
    assert sorted({r["fold"] for r in split}) == ["1", "2", "3"]
    for fold in ("1", "2", "3"):  # stratified: each class has 10 images, so 3 or 4 per fold
        counts = [sum(1 for r in split if r["fold"] == fold and r["label"] == c) for c in ("red", "green", "blue")]
        assert all(3 <= c <= 4 for c in counts)
    oof = rows(run / "predictions.csv")
    assert sorted(r["path"] for r in oof) == sorted(r["path"] for r in split)  # every image exactly once
    for r in oof:  # predicted in the fold where it was held out
        assert r["fold"] == next(s["fold"] for s in split if s["path"] == r["path"])
    for fold in (1, 2, 3):
        parts = rows(run / "folds" / f"fold{fold}" / "split.csv")
        train = {r["path"] for r in parts if r["part"] in ("train", "val")}
        test = {r["path"] for r in parts if r["part"] == "test"}
        assert not train & test and len(train | test) == 30
    audit = json.loads((run / "audit.json").read_text())  # the audit reads every image's out-of-fold prediction
    assert audit["label_issues"]["images"] == 30 and "out-of-fold" in audit["label_issues"]["on"]
    assert len(audit["outliers"]["items"]) == 20


def test_a_repeated_cv_scores_every_repeat_and_says_how_many_resamples(color_folder, tmp_path, monkeypatch):
    """The out-of-fold metrics and intervals of a repeated cv came from the first repeat only (the
    others were read and dropped), and a set over 20,000 images drew 200 resamples while the record
    said 1,000."""
    import transferlab.record as record

    monkeypatch.setattr(record, "LARGE_SET", 10)  # these 30 images count as a large set
    run = run_cv(str(color_folder), load_config(overrides=TINY + ["cv.folds=2", "cv.repeats=2",
                                                                  "strategy.name=linear-probe"]),
                 out=tmp_path / "cv", progress=False)
    result = json.loads((run / "cv_metrics.json").read_text())
    oof = rows(run / "predictions.csv")
    assert result["out_of_fold"]["n"] == len(oof) == 60  # each image once per repeat
    per_repeat = [np.mean([r["label"] == r["pred"] for r in oof if r["repeat"] == k]) for k in ("1", "2")]
    assert result["out_of_fold"]["accuracy"] == pytest.approx(np.mean(per_repeat))
    assert "200 resamples" in result["cv"]["interval"] and "all 2 repeats" in result["cv"]["interval"]
    assert result["cv"]["splitter"] == "RepeatedStratifiedKFold" and result["cv"]["repeats"] == 2


def test_no_fold_statistics_use_its_test_part(tmp_path):
    root = tmp_path / "planted"
    rng = np.random.default_rng(0)
    for k, name in enumerate(("a", "b", "c")):
        for i in range(9):
            img = rng.integers(0, 100, (16, 16, 3), dtype=np.uint8)
            if i == 0:
                img[:] = 255  # planted: one white image per class
            save(Image.fromarray(img), root / name / f"{i}.png")
    config = load_config(overrides=TINY + ["preprocess.normalize=zscore", "train.epochs=1"])
    run = run_cv(str(root), config, out=tmp_path / "cv", progress=False)
    dataset = load_dataset(str(root), config, progress=False, compact=True)  # the pixels as the run stored them
    index = {p: i for i, p in enumerate(dataset.paths)}
    planted_test_folds = 0
    for fold in (1, 2, 3):
        parts = rows(run / "folds" / f"fold{fold}" / "split.csv")
        train = [index[r["path"]] for r in parts if r["part"] == "train"]
        test = [index[r["path"]] for r in parts if r["part"] == "test"]
        recorded = json.loads((run / "folds" / f"fold{fold}" / "metrics.json").read_text())["normalization"]
        pixels = dataset.images.take(train).reshape(-1, 3).astype(np.float64) / 255
        np.testing.assert_allclose(recorded["mean"], pixels.mean(axis=0), atol=1e-9)
        np.testing.assert_allclose(recorded["std"], pixels.std(axis=0), atol=1e-9)
        if any(dataset.paths[i].endswith("/0.png") for i in test):
            planted_test_folds += 1
            with_test = dataset.images.take(train + test).reshape(-1, 3).astype(np.float64) / 255
            assert recorded["mean"][0] < with_test.mean(axis=0)[0] - 0.01
    assert planted_test_folds >= 1


def test_feature_extraction_runs_the_backbone_once_for_the_whole_cv(color_folder, tmp_path, monkeypatch):
    from transferlab.features import FeatureStore

    calls = []
    original = FeatureStore.compute

    def counting(self, indices, *args, **kwargs):
        calls.append(len(indices))
        return original(self, indices, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "compute", counting)
    config = load_config(overrides=TINY + ["strategy.name=feature-extraction", "train.epochs=3"])
    run_cv(str(color_folder), config, out=tmp_path / "cv", progress=False)
    assert calls == [30]


class CrashInFold(L.Callback):
    def __init__(self, fold_dir_name: str):
        self.name = fold_dir_name

    def on_train_epoch_start(self, trainer, module):
        if self.name in str(trainer.default_root_dir) and trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_an_interrupted_cv_resumes_at_its_fold(color_folder, tmp_path, capsys):
    config = load_config(overrides=TINY + ["strategy.name=fine-tune", "strategy.fine_tune.head_warmup_epochs=0"])
    whole = run_cv(str(color_folder), config, out=tmp_path / "whole", progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cv(str(color_folder), config, out=tmp_path / "cut", progress=False, extra_callbacks=[CrashInFold("fold2")])
    first_fold = tmp_path / "cut" / "folds" / "fold1" / "metrics.json"
    stamp = first_fold.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["cv", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    table = capsys.readouterr().out  # what the command prints at the end: mean ± std, CI and each fold
    assert "3-fold cross-validation" in table and "accuracy" in table and "fold3" in table
    assert first_fold.stat().st_mtime_ns == stamp  # the finished fold was not trained again
    a = json.loads((whole / "cv_metrics.json").read_text())["aggregate"]
    b = json.loads((tmp_path / "cut" / "cv_metrics.json").read_text())["aggregate"]
    assert a["accuracy"]["values"] == b["accuracy"]["values"]
    assert a["log_loss"]["values"] == pytest.approx(b["log_loss"]["values"], abs=1e-6)


def test_an_edited_cv_is_refused_with_the_command_that_repeats_a_cv(color_folder, tmp_path, capsys):
    """The refusal suggested `transferlab train --config ...` for a cross-validation run."""
    config = load_config(overrides=TINY + ["strategy.name=feature-extraction"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cv(str(color_folder), config, out=tmp_path / "cut", progress=False, extra_callbacks=[CrashInFold("fold2")])
    settings = tmp_path / "cut" / "config.yaml"
    settings.write_text(settings.read_text().replace("seed: 0", "seed: 1"))
    capsys.readouterr()
    assert main(["cv", "--resume", str(tmp_path / "cut"), "--quiet"]) == 2
    line = capsys.readouterr().err.strip()
    assert f"transferlab cv --config {settings} --out NEW" in line and "train" not in line.split("(")[0], line


def test_cv_errors_name_the_problem(color_folder, tmp_path, capsys):
    os.makedirs(tmp_path / "few" / "a")
    for i, name in enumerate(["a"] * 6 + ["b"] * 2):
        save(Image.fromarray(np.full((16, 16, 3), i * 20, np.uint8)), tmp_path / "few" / name / f"{i}.png")
    assert main(["cv", str(tmp_path / "few"), "--folds", "3", "--size", "32"]) == 2
    assert "class 'b' has 2 image(s), fewer than --folds 3" in capsys.readouterr().err
    assert main(["cv", str(color_folder), "--folds", "1", "--size", "32"]) == 2
    assert "argument --folds: must be between 2 and 1000, got 1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_cv_with_groups_keeps_subjects_in_one_fold(color_folder, tmp_path):
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        for i, file in enumerate(sorted(color_folder.rglob("*.png"))):
            writer.writerow([file, file.parent.name, f"subject{i // 2}"])
    run = run_cv(str(manifest), load_config(overrides=TINY + ["train.epochs=1"]), out=tmp_path / "cv",
                 progress=False)
    result = json.loads((run / "cv_metrics.json").read_text())
    assert result["cv"]["splitter"] == "StratifiedGroupKFold"
    split = rows(run / "split.csv")
    subject_folds = {}
    for i, r in enumerate(sorted(split, key=lambda r: r["path"])):
        subject_folds.setdefault(i // 2, set()).add(r["fold"])
    assert all(len(f) == 1 for f in subject_folds.values())


def test_evaluate_matches_classes_by_name(color_folder, tmp_path, capsys):
    run = run_training(str(color_folder), load_config(overrides=TINY + ["train.epochs=1"]), out=tmp_path / "run",
                       progress=False)
    partial = tmp_path / "partial"
    for name in ("blue", "red"):  # green is missing: reported, not fatal
        for file in sorted((color_folder / name).glob("*.png"))[:4]:
            save(Image.open(file), partial / name / file.name)
    out = evaluate_run(run, str(partial), out=tmp_path / "eval", progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 8 and metrics["classes_missing_from_data"] == ["green"]
    assert metrics["test"]["per_class"]["green"]["roc_auc"] is None
    assert len(rows(out / "predictions.csv")) == 8
    save(Image.open(next(color_folder.rglob("*.png"))), partial / "purple" / "x.png")
    with pytest.raises(DataError, match="does not know: purple"):
        evaluate_run(run, str(partial), progress=False)
    assert main(["evaluate", str(run), str(partial)]) == 2
    assert "does not know: purple" in capsys.readouterr().err


FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_evaluate_on_the_official_fashion_mnist_test_split(tmp_path):
    run = run_training("builtin:fashion-mnist", load_config(overrides=TINY + ["data.subset=6", "train.epochs=1"]),
                       out=tmp_path / "run", progress=False)
    out = evaluate_run(run, "builtin:fashion-mnist:test", subset=5, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 50 and metrics["classes_missing_from_data"] == []
    assert out.parent == run / "evaluations"
