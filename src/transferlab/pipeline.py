"""`transferlab train`: one fit on a stratified hold-out split, evaluated, recorded, reported.

    run_training(DATA, config, out=...) -> runs/<name>/   (config.yaml split.csv dataset.json model/
                                                          metrics.json predictions.csv report.html ...)

Everything that can be checked is checked before the run directory exists (config, --out, the
data, the weights); from the moment it exists it holds config.yaml, split.csv and state.json, so
a run stopped at any point resumes (`resume=RUN`), and it is locked while this process works in
it. The fit itself is `fit.fit`, the same path every cross-validation fold takes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from transferlab.config import Config, budget_seconds, load_config, merge
from transferlab.tracking import Tracker, check_tracking, run_summary, run_tags
from transferlab.console import info, warn
from transferlab.data import ImageDataset, holdout_split, load_dataset, write_split_csv
from transferlab.data.splits import read_split_csv
from transferlab.errors import DataError, DivergedError
from transferlab.evaluate import evaluate_parts
from transferlab.fit import FitJob, FitResult, fit
from transferlab.metrics import headline
from transferlab.preprocess import backbone_defaults
from transferlab.record import RunRecord, StrategyRecord, save_record
from transferlab.strategies.auto import SIZES
from transferlab.run import (RunError, check_out_dir, is_worker_process, read_json, reopen_run, save_model, start_run,
                             write_json)

SPLITS = ("train", "val", "test")


def resolve_config(config: Config, data: str) -> Config:
    """The config with every default that depends on the data or the backbone filled in (the
    strategy fills its own when it is settled)."""
    defaults = backbone_defaults(config.model.name)
    size = config.preprocess.size
    if config.strategy.name == "auto":  # the sizes auto's search tries; the run starts at the largest
        sizes = config.strategy.auto.sizes or ([size] if size is not None else [
            s for s in SIZES if s < defaults["size"]] + [min(defaults["size"], max(SIZES))])
        config = merge(config, {"strategy": {"auto": {"sizes": sorted(set(sizes))}}}, origin="auto")
        size = max(sizes) if size is None or size not in sizes else size
    pre = dataclasses.replace(config.preprocess, size=defaults["size"] if size is None else size,
                              interpolation=config.preprocess.interpolation or defaults["interpolation"])
    optim = dataclasses.replace(config.optim, weight_decay=config.optim.decay())
    data_config = dataclasses.replace(config.data, source=data)
    config = dataclasses.replace(config, preprocess=pre, optim=optim, data=data_config)
    budget_seconds(config)  # a bad --budget fails before a run directory exists
    if config.strategy.name != "auto":
        from transferlab.strategies import get_strategy

        get_strategy(config.strategy.name, config)  # an unknown name or bad settings fail before anything runs
    return config


def read_split(dataset: ImageDataset, run_dir: Path) -> np.ndarray:
    """The hold-out split of a run being resumed, from its split.csv."""
    path = run_dir / "split.csv"
    if not path.is_file():
        raise RunError(f"{path} is missing: a resumed run must keep its split; restore the file, or start a new run")
    try:
        by_path = {row["path"]: row["split"] for row in read_split_csv(path)}
    except (KeyError, ValueError, UnicodeDecodeError):
        raise RunError(f"{path} is damaged (not a path,label,split table): restore it, or start a new run") from None
    missing = [p for p in dataset.paths if p not in by_path]
    if missing or len(by_path) != len(dataset):
        raise RunError(f"the data changed since {run_dir} started ({len(missing)} images not in its split.csv): "
                       "resume with the same data, or start a new run")
    return np.array([by_path[p] for p in dataset.paths])


def load_new(data: str | None, config: Config, out, progress: bool) -> tuple[Config, ImageDataset]:
    """What every new run checks before its directory exists: DATA given, the config resolved
    (an unknown strategy or model refused), --out usable, the data loaded with two classes or more."""
    if data is None:
        raise DataError("no DATA given: pass a folder, a CSV manifest or builtin:NAME")
    config = resolve_config(config, data)
    check_out_dir(out)
    check_tracking(config)
    dataset = load_dataset(data, config, progress=progress)
    dataset.require_classes()
    return config, dataset


def report_dataset_problems(dataset: ImageDataset, run_dir: Path) -> None:
    for message in dataset.warnings:
        warn(message)
    if dataset.skipped:
        warn(f"{len(dataset.skipped)} file(s) skipped (listed in {run_dir / 'dataset.json'})")


def run_training(data: str | None, config: Config, *, out: str | Path | None = None, resume: str | Path | None = None,
                 progress: bool = True, extra_callbacks: list | None = None,
                 resume_overrides: list[str] | tuple = ()) -> Path:
    """Train a classifier on DATA and write its run directory; returns the directory."""
    started = time.time()
    show = progress and not is_worker_process()
    with contextlib.ExitStack() as stack:
        if resume is None:
            requested = config.strategy.name
            config, dataset = load_new(data, config, out, show)
            split = holdout_split(dataset.labels, dataset.groups, val_fraction=config.data.val_fraction,
                                  test_fraction=config.data.test_fraction, seed=config.seed, classes=dataset.classes)
            indices = {name: np.flatnonzero(split == name) for name in SPLITS}
            job = FitJob(dataset, indices, config, None, progress=progress, callbacks=extra_callbacks)  # weights load
            state = {"stage": "start", "data": data, "requested": requested}
            run_dir = job.directory = start_run(stack, out, data, requested, config, state)
            write_split_csv(run_dir / "split.csv", dataset.paths, [dataset.classes[i] for i in dataset.labels],
                            {"split": list(split)})
        else:
            run_dir, state, config = reopen_run(stack, resume, resume_overrides)
            dataset = load_dataset(config.data.source, config, progress=show)
            split = read_split(dataset, run_dir)
            indices = {name: np.flatnonzero(split == name) for name in SPLITS}
            job = FitJob(dataset, indices, config, run_dir, progress=progress, callbacks=extra_callbacks)
        L.seed_everything(config.seed, workers=True, verbose=False)
        job.tracker = Tracker.open(config, state, name=run_dir.name, tags=run_tags(config, run_dir))
        write_json(run_dir / "state.json", state)
        write_json(run_dir / "dataset.json", dataset.summary(parts=indices, normalization=job.normalize))
        if show:
            report_dataset_problems(dataset, run_dir)
            if job.tracker.describe():
                info(job.tracker.describe())
            info(f"{len(dataset):,} images, {len(dataset.classes)} classes; split "
                 + ", ".join(f"{k} {len(v):,}" for k, v in indices.items()) + f"; run directory {run_dir}")
        try:
            result = fit(job, state=state, requested=state["requested"])
        except KeyboardInterrupt:
            if not is_worker_process():
                warn(f"interrupted: continue with `transferlab train --resume {run_dir}`")
                job.tracker.finish("KILLED")
            raise
        except Exception as exc:
            if not is_worker_process():
                job.tracker.finish("FAILED")
                mark_failed(exc, state, run_dir / "state.json")
            raise
        if not is_worker_process():
            finish(result, state, run_dir, started)
            run_summary(job.tracker, result.config, read_json(run_dir / "metrics.json"), run_dir)
            job.tracker.finish()
    return run_dir


def mark_failed(exc: Exception, state: dict, path: Path) -> None:
    """A diverged run cannot succeed by resuming with the same settings: its state says so."""
    if isinstance(exc, DivergedError):
        state["failed"] = str(exc)
        write_json(path, state)


def finish(result: FitResult, state: dict, run_dir: Path, started: float) -> None:
    """Evaluate the kept model on val and test; write model/, metrics.json, curves.json,
    predictions.csv, the pictures that need the images, and the report."""
    job, dataset = result.job, result.job.dataset
    write_json(run_dir / "dataset.json", dataset.summary(parts=job.indices, normalization=job.normalize))
    metrics, curves, rows = evaluate_parts(result)
    gallery = "val" if "val" in metrics else "test"
    record = RunRecord(metrics=metrics, strategy=StrategyRecord(**result.record(state["requested"])),
                       data={"source": result.config.data.source, "n_images": len(dataset),
                             "splits": {k: int(len(v)) for k, v in job.indices.items()}, "classes": dataset.classes},
                       train_seconds=round(time.time() - started, 1),
                       gallery={"val": "validation", "test": "test"}[gallery])
    save_record(record, run_dir / "metrics.json")
    write_json(run_dir / "curves.json", curves)
    if rows.paths:
        rows.write(run_dir / "predictions.csv", dataset.classes)
    classifier = result.classifier.cpu().to(memory_format=torch.contiguous_format)
    save_model(run_dir / "model", classifier, {
        "model": result.config.model.name, "classes": dataset.classes, "normalize": job.normalize,
        "resize": dataclasses.asdict(dataset.spec), "dropout": result.config.model.dropout,
        "strategy": result.strategy.name, "num_features": classifier.num_features, "source": result.config.data.source})
    state["stage"] = "done"
    write_json(run_dir / "state.json", state)
    if result.config.train.report:
        from transferlab.report import safe_build_report
        from transferlab.report.gallery import dataset_pictures, save_error_examples

        dataset_pictures(run_dir, dataset, result.config)
        save_error_examples(classifier.eval(), dataset, *rows.of(gallery), run_dir / "errors.npz",
                            seed=result.config.seed)
        safe_build_report(run_dir)


def summary_line(run_dir: Path) -> str:
    """`test: accuracy 0.912, f1_macro 0.910, ...` of the test split (or val) of a finished run."""
    metrics = read_json(Path(run_dir) / "metrics.json")
    split = "test" if "test" in metrics else "val"
    if split not in metrics:
        return "no evaluation split"
    return f"{split}: " + ", ".join(f"{k} {v:.3f}" for k, v in headline(metrics[split]).items() if v is not None)


def demo_config() -> Config:
    """The demo's settings: a stratified subset at a CPU-friendly size, the default strategy."""
    return load_config(overrides=["data.subset=60", "augment.preset=light", "train.budget=3m"])


def run_demo(out: str | Path | None = None, progress: bool = True) -> Path:
    """The whole path on Fashion-MNIST (a stratified subset; digits if it is not installed) at
    128 px on a CPU in about two minutes, with the default `auto` strategy, so the demo shows
    the measured decision too."""
    from transferlab.data.builtins import fashion_mnist_or_digits

    data, why = fashion_mnist_or_digits()
    if why:
        warn(why)
    return run_training(data, demo_config(), out=out, progress=progress)
