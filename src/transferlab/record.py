"""The one run record, as it happened: `RunRecord` (metrics.json of `train`), `FoldRecord` (folds/<name>/
metrics.json of `cv`) and `CVRecord` (cv_metrics.json), and what a finished fit writes; readers take facts from it,
never from the config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.io import read_json, write_json

BOOTSTRAP = 1000  # resamples of the out-of-fold predictions behind every interval of cv
BOOTSTRAP_LARGE, LARGE_SET = 200, 20_000  # resamples above LARGE_SET images (each resample scores every image)


def environment() -> dict:
    """Versions and machine facts for the reproducibility section."""
    import importlib.metadata as md
    import os
    import platform
    import sys

    import torch

    versions = {}
    for package in ("transferlab", "torch", "torchvision", "timm", "lightning", "scikit-learn", "numpy", "pillow",
                    "grad-cam", "matplotlib"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(), "command": " ".join(sys.argv),
    }


@dataclass
class StrategyRecord:
    """The strategy of one fit: asked, chosen and why, each stage's settings as used."""

    name: str
    requested: str
    label: str  # e.g. "fine-tune (late, head)"
    summary: str = ""
    decision: dict | None = None  # auto's measured decision
    stages: dict = field(default_factory=dict)  # name -> StageResult fields (groups, rates, scores, epochs)
    selected: dict = field(default_factory=dict)  # the stage kept, by which validation score
    imbalance: str = "none"
    seconds: float = 0.0

    @property
    def display(self) -> str:
        """`fine-tune (late, head)`, or `auto -> fine-tune (late, head)` when auto chose it."""
        return f"auto -> {self.label}" if self.requested == "auto" else self.label

    @property
    def reason(self) -> str | None:
        return (self.decision or {}).get("reason")


@dataclass
class RunRecord:
    """metrics.json of a `train` run."""

    metrics: dict  # "val" / "test" -> every metric of that split
    strategy: StrategyRecord
    data: dict
    train_seconds: float
    environment: dict = field(default_factory=environment)
    gallery: str = "validation"  # the split whose images the error gallery shows

    def to_json(self) -> dict:
        return {**self.metrics, "strategy": dataclasses.asdict(self.strategy), "data": self.data,
                "train_seconds": self.train_seconds, "environment": self.environment, "gallery": self.gallery}

    @property
    def display(self) -> str:
        return self.strategy.display

    @classmethod
    def from_json(cls, data: dict) -> RunRecord:
        return cls(metrics={k: data[k] for k in ("val", "test") if k in data}, strategy=strategy_of(data),
                   data=data.get("data", {}), train_seconds=data.get("train_seconds", 0.0),
                   environment=data.get("environment", {}), gallery=data.get("gallery", "validation"))


@dataclass
class FoldRecord:
    """folds/<name>/metrics.json of a `cv` run."""

    name: str
    repeat: int
    fold: int
    n_train: int
    n_val: int
    n_test: int
    test: dict  # every metric of the held-out fold
    strategy: StrategyRecord
    normalization: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> FoldRecord:
        return cls(**{k: v for k, v in data.items() if k != "strategy"}, strategy=strategy_of(data))


@dataclass
class CVRecord:
    """cv_metrics.json: per fold, aggregated, out of fold."""

    folds: list[dict]  # name, counts, scalar metrics and per-class metrics of each fold, and its strategy label
    aggregate: dict
    per_class: dict
    out_of_fold: dict
    cv: dict  # folds, repeats, splitter, seed, interval method
    strategy: dict  # the folds' strategies: one name (or "mixed"), what each fold decided
    data: dict
    seconds: float
    environment: dict = field(default_factory=environment)
    gallery: str = "out-of-fold"

    @classmethod
    def from_json(cls, data: dict) -> CVRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def display(self) -> str:
        labels = self.strategy.get("labels") or [self.strategy.get("name", "")]
        label = labels[0] if len(set(labels)) == 1 else "mixed: " + ", ".join(sorted(set(labels)))
        return f"auto -> {label}" if self.strategy.get("requested") == "auto" else label


def strategy_of(data: dict) -> StrategyRecord:
    entry = dict(data.get("strategy") or {})
    names = {f.name for f in dataclasses.fields(StrategyRecord)}
    entry.setdefault("name", "")
    entry.setdefault("requested", entry["name"])
    entry.setdefault("label", entry["name"])
    return StrategyRecord(**{k: v for k, v in entry.items() if k in names})


def load_record(run_dir: str | Path) -> RunRecord | CVRecord:
    """The record of a finished run directory (train or cv)."""
    run_dir = Path(run_dir)
    if (run_dir / "cv_metrics.json").is_file():
        return CVRecord.from_json(read_json(run_dir / "cv_metrics.json"))
    return RunRecord.from_json(read_json(run_dir / "metrics.json"))


# --- what a finished fit writes -------------------------------------------------------------------

def write_dataset_json(run_dir: Path, dataset, parts: dict, normalization: dict | None = None) -> None:
    write_json(run_dir / "dataset.json", dataset.summary(parts=parts, normalization=normalization))


def model_meta(result, ctx) -> dict:
    """model.json of a fit's model: one classifier at its size, or an ensemble's members (those on
    the untouched pretrained backbone share backbone 0)."""
    config, dataset = result.config, ctx.dataset
    meta = {"model": config.model.name, "classes": dataset.classes, "normalize": ctx.normalization,
            "resize": dataclasses.asdict(dataset.spec), "dropout": config.model.dropout,
            "strategy": result.strategy.name, "label": result.strategy.label(), "source": config.data.source,
            "size": ctx.size, "taps": config.model.taps, "task": dataset.task.record()}
    if len(result.members) == 1:
        member = result.members[0][1]
        return meta | {"size": member.ctx.size, "dropout": member.config.model.dropout, "label": member.strategy.label(),
                       "strategy": member.strategy.name, "taps": member.config.model.taps}
    if result.members:
        from transferlab.fit import shared_backbone_key
        from transferlab.models.backbone import fixed_input

        index: dict = {}  # a shared pretrained backbone's key, or the member itself -> its number in weights
        meta["members"] = [{"size": m.ctx.size, "weight": round(w, 6), "strategy": m.strategy.name,
                            "model": m.config.model.name,  # its own network (a member from scratch: small_cnn)
                            "label": m.strategy.label(), "taps": m.config.model.taps,
                            "backbone": index.setdefault(shared_backbone_key(m, fixed_input(config.model.name))
                                                         if m.stages[m.selected].kind == "head" else ("own", k),
                                                         len(index))}
                           for k, (w, m) in enumerate(result.members)]
    return meta


def settle_task(result, ctx, decision: dict | None) -> tuple[dict | None, dict]:
    """(what the task's decision needs, the calibration), chosen on held-out predictions before anything is
    scored: the temperature, then a multi-label task's thresholds on the calibrated probabilities, on the
    validation split; when the model trained on it, auto's choice on the search's out-of-fold predictions (its
    record); else none (temperature 1)."""
    import numpy as np

    task, val = ctx.dataset.task, ctx.indices.get("val")
    held = not result.trained_on_val and val is not None and len(val) > 0
    raw, targets = (result.probabilities(ctx, "val"), ctx.dataset.labels[val]) if held else (None, None)
    fixed = result.config.task.temperature  # set, or written by auto from its out-of-fold fit
    if fixed is None and held:
        calibration = task.fit_temperature(raw, targets, "validation split")
    else:
        calibration = (decision or {}).get("calibration") or (
            {"temperature": fixed, "on": "task.temperature"} if fixed is not None else
            {"temperature": 1.0, "on": "none fitted: no held-out predictions"})
        task.temperature = float(calibration["temperature"] if fixed is None else fixed)
    searched = (decision or {}).get("task") or {}
    if task.chooses and not held and searched.get("values"):
        task.thresholds = np.asarray(searched["values"], dtype=float)  # as the search chose them (a resume too)
        return searched, calibration
    return task.settle(None if raw is None else task.calibrate(raw), targets, "validation split"), calibration


def finish_train(result, ctx, run, decision: dict | None, started: float, pictures) -> None:
    """Evaluate the kept model on val and test; write model/, metrics.json, curves.json,
    predictions.csv, dataset.json, the pictures that need the images, and the report."""
    import time

    from transferlab.evaluate import evaluate_parts
    from transferlab.rundir import is_worker_process, save_model
    from transferlab.tracking import run_summary

    if is_worker_process():
        return
    dataset = ctx.dataset
    clock = time.monotonic()
    write_dataset_json(run.path, dataset, ctx.indices, ctx.normalization)
    parts = ("test",) if result.trained_on_val else ("val", "test")
    settled, calibration = settle_task(result, ctx, decision)
    metrics, curves, rows = evaluate_parts(result, ctx, parts, calibration=calibration)
    seconds = {"evaluate": round(time.monotonic() - clock, 1)}
    if settled:
        metrics["task"] = {"name": dataset.task.name, **settled}
    metrics["calibration"] = calibration
    gallery = "val" if "val" in metrics else "test"
    record = RunRecord(metrics=metrics, strategy=StrategyRecord(**result.record(run.state.requested, decision)),
                       data={"source": result.config.data.source, "n_images": len(dataset),
                             "splits": {k: int(len(v)) for k, v in ctx.indices.items()}, "classes": dataset.classes},
                       train_seconds=round(time.time() - started, 1),
                       gallery={"val": "validation", "test": "test"}[gallery])
    written = record.to_json()
    write_json(run.path / "metrics.json", written)
    write_json(run.path / "curves.json", curves)
    if rows.paths:
        rows.write(run.path / "predictions.csv", dataset.classes)
    save_model(run.path / "model", result.classifier, model_meta(result, ctx))
    if result.config.audit.enabled:
        clock = time.monotonic()
        audit_train(result, ctx, run, rows)
        seconds["audit"] = round(time.monotonic() - clock, 1)
    clock = time.monotonic()
    pictures(run.path, dataset, result.config, result.classifier.eval(), rows.of(gallery))
    seconds["report"] = round(time.monotonic() - clock, 1)
    search = ((decision or {}).get("budget") or {}).get("search_seconds")
    # where the run's time went: before the fit (decoding, splitting, the near-duplicate pass), the search, the
    # final fit, and after it
    written["seconds"] = {**(ctx.seconds or {}), **({"search": search} if search is not None else {}),
                          "fit": round(result.seconds, 1), **seconds}
    write_json(run.path / "metrics.json", written)
    run_summary(ctx.tracker, result.config, written, run.path)


def audit_train(result, ctx, run, rows) -> None:
    """audit.json (label issues, near-duplicates and leakage across this run's splits, outliers) and the model's
    familiarity reference (model/familiar.*: what predict and serve flag unfamiliar inputs with)."""
    from transferlab.audit import audit_run, summary_lines
    from transferlab.console import info
    from transferlab.search import HELD_OUT

    audit, familiarity = audit_run(result, ctx, run.path / HELD_OUT, rows, progress=ctx.progress)
    write_json(run.path / "audit.json", audit)
    familiarity.save(run.path / "model")
    if ctx.progress:
        for line in summary_lines(audit):
            info(line)


def finish_fold(result, ctx, fold, decision: dict | None, pictures) -> None:
    """A cv fold: its held-out part scored, its record, predictions and error examples written."""
    from transferlab.evaluate import evaluate_parts
    from transferlab.tracking import fold_summary

    settle_task(result, ctx, decision)
    metrics, _, rows = evaluate_parts(result, ctx, ("test",), calibration={})
    indices = ctx.indices
    record = FoldRecord(name=fold.name, repeat=fold.repeat + 1, fold=fold.fold + 1,
                        n_train=int(len(indices["train"])), n_val=int(len(indices["val"])),
                        n_test=int(len(indices["test"])), test=metrics["test"],
                        strategy=StrategyRecord(**result.record(fold.run.state.requested, decision)),
                        normalization=ctx.normalization)
    write_json(fold.run.path / "metrics.json", dataclasses.asdict(record))
    rows.write(fold.run.path / "predictions.csv", ctx.dataset.classes, column="index")
    pictures(fold.run.path, ctx.dataset, result.config, result.classifier.cpu().eval(), rows.of("test"), report=False)
    fold_summary(ctx.tracker, result.config, read_json(fold.run.path / "metrics.json"))
    ctx.tracker.finish()
    fold.run.state.finished = True
    fold.run.save_state()


def read_fold_probs(fold_dir: Path, classes: list[str]):
    import csv

    import numpy as np

    with open(fold_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    index = np.array([int(r["index"]) for r in rows], dtype=np.int64)
    return index, np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])


def finish_cv(run, dataset, config, folds: list[tuple[int, int, str]], started: float, tracker, pictures) -> None:
    """cv_metrics.json (per fold, aggregated, out of fold), the out-of-fold predictions.csv, the report."""
    import time

    import numpy as np

    from transferlab.evaluate import aggregate_folds
    from transferlab.metrics import CURVES, scalar_metrics, write_predictions
    from transferlab.tracking import cv_summary

    run_dir, requested = run.path, run.state.requested
    records, oof = [], {"paths": [], "labels": [], "probs": [], "repeat": [], "fold": []}
    pooled: dict = {}
    parts = np.full(len(dataset), "unused", dtype=object)  # each image's test fold (the first repeat's)
    for repeat, fold, name in folds:
        fold_dir = run_dir / "folds" / name
        records.append(FoldRecord.from_json(read_json(fold_dir / "metrics.json")))
        index, probs = read_fold_probs(fold_dir, dataset.classes)
        if repeat == 0:
            parts[index] = f"fold {fold + 1}"
        pooled.setdefault(repeat, np.zeros((len(dataset), len(dataset.classes))))[index] = probs
        oof["paths"] += [dataset.paths[i] for i in index]
        oof["labels"] += list(dataset.labels[index])
        oof["probs"].append(probs)
        oof["repeat"] += [repeat + 1] * len(index)
        oof["fold"] += [fold + 1] * len(index)
    summary = aggregate_folds([r.test for r in records])
    # every repeat's out-of-fold predictions, each image once per repeat: the metrics are their mean over
    # repeats, and the bootstrap resamples images (with all of an image's repeats), so the interval is of that
    everyone = np.concatenate([pooled[r] for r in sorted(pooled)])
    labels = np.concatenate([dataset.labels] * len(pooled))
    out_of_fold = dataset.task.metrics(labels, everyone, dataset.classes, curves=True)
    resamples = BOOTSTRAP if len(dataset) <= LARGE_SET else BOOTSTRAP_LARGE
    intervals, class_intervals = dataset.task.intervals(labels, everyone, dataset.classes, seed=config.seed,
                                                        resamples=resamples, units=np.tile(np.arange(len(dataset)),
                                                                                           len(pooled)))
    for name, entry in summary["metrics"].items():
        entry["ci95"] = intervals.get(name)
    for name, entries in summary["per_class"].items():
        for key, entry in entries.items():
            entry["ci95"] = class_intervals[name].get(key)
    curves = {key: out_of_fold.pop(field) for key, field in CURVES.items() if field in out_of_fold}
    split = dict(run.state.split or {})
    record = CVRecord(
        folds=[{"name": r.name, "repeat": r.repeat, "fold": r.fold, "n_train": r.n_train, "n_val": r.n_val,
                "n_test": r.n_test, "metrics": scalar_metrics(r.test), "per_class": r.test.get("per_class", {}),
                "strategy": r.strategy.label} for r in records],
        aggregate=summary["metrics"], per_class=summary["per_class"], out_of_fold=out_of_fold,
        cv={**split, "splitter": split.get("method"),
            "interval": f"95% percentile bootstrap of the out-of-fold predictions ({resamples:,} resamples of the "
                        "images" + (f", each with its predictions from all {len(pooled)} repeats" if len(pooled) > 1
                                    else "") + "); mean and std are over folds",
            "out_of_fold": "the held-out predictions of every image" + (
                f" in each of the {len(pooled)} repeats, pooled (each image counted once per repeat)"
                if len(pooled) > 1 else ""),
            "note": "folds share training data, so the spread over folds understates the spread over new training sets"},
        strategy=cv_strategy(records, requested),
        data={"source": config.data.source, "n_images": len(dataset), "classes": dataset.classes},
        seconds=round(time.time() - started, 1))
    write_json(run_dir / "cv_metrics.json", dataclasses.asdict(record))
    write_json(run_dir / "curves.json", {"out_of_fold": curves})
    write_predictions(run_dir / "predictions.csv", oof["paths"], np.array(oof["labels"]), np.concatenate(oof["probs"]),
                      dataset.classes, task=dataset.task, extra={"repeat": oof["repeat"], "fold": oof["fold"]})
    if config.audit.enabled:
        from transferlab.audit import cv_audit, summary_lines
        from transferlab.console import info

        audit = cv_audit(dataset, config, sum(pooled.values()) / len(pooled), parts)
        write_json(run_dir / "audit.json", audit)
        for line in summary_lines(audit):
            info(line)
    pictures(run_dir, dataset, config)
    cv_summary(tracker, config, read_json(run_dir / "cv_metrics.json"), run_dir, record.display)


def cv_strategy(records: list[FoldRecord], requested: str) -> dict:
    """The folds' strategies (auto decides per fold, from that fold's training part)."""
    names = [r.strategy.name for r in records]
    decisions = [r.strategy.decision for r in records if r.strategy.decision]
    out = {"name": names[0] if len(set(names)) == 1 else "mixed", "requested": requested,
           "per_fold": names, "labels": [r.strategy.label for r in records],
           "settings": [r.strategy.stages for r in records]}
    if decisions:
        agree = len({tuple(d.get("chosen") or ()) for d in decisions}) == 1
        out["reason"] = f"fold 1: {decisions[0]['reason']}" + ("; every fold decided the same" if agree
                                                               else "; the folds decided differently")
        out["folds"] = decisions
    return out
