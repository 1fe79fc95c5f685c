"""`transferlab cv`: stratified K-fold cross-validation as a first-class run, K fits through the
same `fit.fit` as `train` plus aggregation (as scikit-learn's `cross_validate` relates to `fit`).

Every fold starts from the same pretrained weights; statistics and class weights come from the
fold's training part, an inner validation split picks its checkpoint, and its held-out fold is
scored once. Out-of-fold predictions cover every image; metrics get mean / std / 95% CI. With a
fold-independent normalization, feature extraction runs the backbone once per image for the
whole CV: every fold reads the same feature cache.
"""

from __future__ import annotations

import contextlib
import csv
import time
from pathlib import Path

import lightning as L
import numpy as np

from transferlab.config import Config, budget_seconds, merge
from transferlab.console import info
from transferlab.data import ImageDataset, holdout_split, load_dataset, stratified_folds, write_split_csv
from transferlab.data.splits import check_folds
from transferlab.evaluate import aggregate_folds, evaluate_parts
from transferlab.fit import FitJob, fit
from transferlab.metrics import LABELS, bootstrap_intervals, compute_metrics, scalar_metrics, write_predictions
from transferlab.models.backbone import create_backbone
from transferlab.pipeline import load_new, mark_failed, report_dataset_problems
from transferlab.record import CVRecord, FoldRecord, StrategyRecord, save_record
from transferlab.run import read_json, reopen_run, start_run, write_json
from transferlab.tracking import Tracker, cv_summary, fold_summary, run_tags

STATE = "cv_state.json"
BOOTSTRAP = 1000  # resamples of the out-of-fold predictions behind every interval


def fold_name(repeat: int, fold: int, repeats: int) -> str:
    return f"r{repeat + 1}-fold{fold + 1}" if repeats > 1 else f"fold{fold + 1}"


def run_cv(data: str | None, config: Config, *, out: str | Path | None = None, resume: str | Path | None = None,
           progress: bool = True, extra_callbacks: list | None = None,
           resume_overrides: list[str] | tuple = ()) -> Path:
    """Cross-validate on DATA; returns the run directory with cv_metrics.json and predictions.csv."""
    started = time.time()
    with contextlib.ExitStack() as stack:
        if resume is None:
            requested = config.strategy.name
            config, dataset = load_new(data, config, out, progress)
            check_folds(dataset.labels, config.cv.folds, dataset.classes)
            create_backbone(config.model.name, pretrained=config.model.pretrained, weights=config.model.weights,
                            img_size=dataset.spec.size)  # unusable weights fail before a run directory exists
            state = {"done": [], "data": data, "requested": requested}
            run_dir = start_run(stack, out, data, f"cv{config.cv.folds}-{requested}", config, state, STATE)
        else:
            run_dir, state, config = reopen_run(stack, resume, resume_overrides, STATE)
            dataset = load_dataset(config.data.source, config, progress=progress)
        L.seed_everything(config.seed, workers=True, verbose=False)
        tracker = Tracker.open(config, state, name=run_dir.name, tags={**run_tags(config, run_dir),
                                                                        "transferlab.kind": "cv"})
        write_json(run_dir / STATE, state)
        if progress and tracker.describe():
            info(tracker.describe())
        folds, repeats = config.cv.folds, config.cv.repeats
        budget = budget_seconds(merge(config, {"strategy": {"name": state["requested"]}}, origin="cv"))
        splits = stratified_folds(dataset.labels, dataset.groups, folds=folds, repeats=repeats, seed=config.seed,
                                  classes=dataset.classes)
        if resume is None:
            write_cv_split(run_dir, dataset, splits, folds, repeats)
            first = {f"fold{k + 1}": test for r, k, _, test in splits if r == 0}
            write_json(run_dir / "dataset.json", dataset.summary(parts=first))
            report_dataset_problems(dataset, run_dir)
        if progress:
            info(f"{len(dataset):,} images, {len(dataset.classes)} classes; {folds}-fold CV"
                 + (f" x {repeats} repeats" if repeats > 1 else "") + f"; strategy {state['requested']}; "
                 f"run directory {run_dir}")
        for number, (repeat, fold, train_part, test_part) in enumerate(splits, start=1):
            name = fold_name(repeat, fold, repeats)
            if name in state["done"]:
                continue
            if progress:
                info(f"[{number}/{len(splits)}] {name}: train {len(train_part):,}, test {len(test_part):,}")
            try:
                run_fold(dataset, config, run_dir / "folds" / name, train_part, test_part, name=name, repeat=repeat,
                         fold=fold, requested=state["requested"], progress=progress, callbacks=extra_callbacks,
                         share=None if budget is None else budget / len(splits), parent=tracker)
            except BaseException as exc:
                tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
                mark_failed(exc, state, run_dir / STATE)
                raise
            state["done"].append(name)
            write_json(run_dir / STATE, state)
        summarize(run_dir, dataset, config, splits, started, state["requested"])
        cv_summary(tracker, config, read_json(run_dir / "cv_metrics.json"), run_dir)
        tracker.finish()
        state["finished"] = True
        write_json(run_dir / STATE, state)
    return run_dir


def write_cv_split(run_dir: Path, dataset: ImageDataset, splits, folds: int, repeats: int) -> None:
    """split.csv: path, label and the fold each image is tested in (one column per repeat)."""
    columns: dict[str, list] = {}
    for repeat, fold, _, test in splits:
        column = columns.setdefault("fold" if repeats == 1 else f"fold_r{repeat + 1}", [0] * len(dataset))
        for i in test:
            column[i] = fold + 1
    write_split_csv(run_dir / "split.csv", dataset.paths, [dataset.classes[i] for i in dataset.labels], columns)


def run_fold(dataset: ImageDataset, config: Config, fold_dir: Path, train_part: np.ndarray, test_part: np.ndarray,
             *, name: str, repeat: int, fold: int, requested: str, progress: bool, callbacks: list | None,
             share: float | None = None, parent: Tracker | None = None) -> None:
    """Fit on the fold's training part (an inner validation split picks the checkpoint) and score
    its held-out part: folds/<name>/ holds its split, state, checkpoints, record and predictions.
    `share`: the seconds of train.budget this fold may spend."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    inner = (holdout_split(dataset.labels[train_part], dataset.groups[train_part],
                           val_fraction=config.data.val_fraction, test_fraction=0.0,
                           seed=config.seed + 1000 * repeat + fold, classes=dataset.classes)
             if config.data.val_fraction > 0 else np.array(["train"] * len(train_part)))
    indices = {"train": train_part[inner == "train"], "val": train_part[inner == "val"], "test": test_part}
    state_path = fold_dir / "state.json"
    if state_path.is_file():
        state = read_json(state_path)
        from transferlab.run import resume_config

        if "strategy" in state:  # the fold's own config holds what its strategy decision set
            config = resume_config(fold_dir, state)
    else:
        state = {"stage": "start", "requested": requested}
        order = np.concatenate(list(indices.values()))
        write_split_csv(fold_dir / "split.csv", [dataset.paths[i] for i in order],
                        [dataset.classes[dataset.labels[i]] for i in order],
                        {"part": [k for k, v in indices.items() for _ in v]})
    deadline = None if share is None else time.monotonic() + share - state.get("seconds", 0.0)
    job = FitJob(dataset, indices, config, fold_dir, progress=progress, callbacks=callbacks, deadline=deadline)
    job.tracker = Tracker.open(config, state, name=name, parent=parent, tags={"transferlab.kind": "fold"})
    write_json(state_path, state)
    try:
        result = fit(job, state=state, requested=requested)
    except BaseException as exc:
        job.tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    metrics, _, rows = evaluate_parts(result, parts=("test",))
    save_record(FoldRecord(name=name, repeat=repeat + 1, fold=fold + 1, n_train=int(len(indices["train"])),
                           n_val=int(len(indices["val"])), n_test=int(len(test_part)), test=metrics["test"],
                           strategy=StrategyRecord(**result.record(requested)), normalization=job.normalize),
                fold_dir / "metrics.json")
    rows.write(fold_dir / "predictions.csv", dataset.classes, column="index")
    if result.config.train.report:
        from transferlab.report.gallery import save_error_examples

        save_error_examples(result.classifier.cpu().eval(), dataset, *rows.of("test"), fold_dir / "errors.npz",
                            seed=config.seed)
    fold_summary(job.tracker, result.config, read_json(fold_dir / "metrics.json"))
    job.tracker.finish()
    state["stage"] = "done"
    write_json(fold_dir / "state.json", state)


def read_fold_probs(fold_dir: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    with open(fold_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    index = np.array([int(r["index"]) for r in rows], dtype=np.int64)
    return index, np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])


def summarize(run_dir: Path, dataset: ImageDataset, config: Config, splits, started: float, requested: str) -> None:
    """cv_metrics.json (per fold, aggregated, out of fold), the out-of-fold predictions.csv, the report."""
    folds, repeats = config.cv.folds, config.cv.repeats
    records, oof = [], {"paths": [], "labels": [], "probs": [], "repeat": [], "fold": []}
    pooled: dict[int, np.ndarray] = {}
    for repeat, fold, _, _ in splits:
        fold_dir = run_dir / "folds" / fold_name(repeat, fold, repeats)
        records.append(FoldRecord.from_json(read_json(fold_dir / "metrics.json")))
        index, probs = read_fold_probs(fold_dir, dataset.classes)
        pooled.setdefault(repeat, np.zeros((len(dataset), len(dataset.classes))))[index] = probs
        oof["paths"] += [dataset.paths[i] for i in index]
        oof["labels"] += list(dataset.labels[index])
        oof["probs"].append(probs)
        oof["repeat"] += [repeat + 1] * len(index)
        oof["fold"] += [fold + 1] * len(index)
    summary = aggregate_folds([r.test for r in records])
    out_of_fold = compute_metrics(dataset.labels, pooled[0], dataset.classes, curves=True)
    intervals, class_intervals = bootstrap_intervals(dataset.labels, pooled[0], dataset.classes, seed=config.seed,
                                                     resamples=BOOTSTRAP if len(dataset) <= 20_000 else 200)
    for name, entry in summary["metrics"].items():
        entry["ci95"] = intervals.get(name)
    for name, entries in summary["per_class"].items():
        for key, entry in entries.items():
            entry["ci95"] = class_intervals[name].get(key)
    curves = {"roc": out_of_fold.pop("roc_curves"), "calibration": out_of_fold.pop("calibration")}
    grouped = len(np.unique(dataset.groups)) < len(dataset)
    record = CVRecord(
        folds=[{"name": r.name, "repeat": r.repeat, "fold": r.fold, "n_train": r.n_train, "n_val": r.n_val,
                "n_test": r.n_test, "metrics": scalar_metrics(r.test), "per_class": r.test.get("per_class", {}),
                "strategy": r.strategy.label} for r in records],
        aggregate=summary["metrics"], per_class=summary["per_class"], out_of_fold=out_of_fold,
        cv={"folds": folds, "repeats": repeats, "seed": config.seed, "inner_val_fraction": config.data.val_fraction,
            "splitter": "StratifiedGroupKFold" if grouped else ("RepeatedStratifiedKFold" if repeats > 1
                                                                else "StratifiedKFold"),
            "interval": f"95% percentile bootstrap of the out-of-fold predictions ({BOOTSTRAP:,} resamples of the "
                        "images); mean and std are over folds",
            "note": "folds share training data, so the spread over folds understates the spread over new training sets"},
        strategy=cv_strategy(records, requested),
        data={"source": config.data.source, "n_images": len(dataset), "classes": dataset.classes},
        seconds=round(time.time() - started, 1))
    save_record(record, run_dir / "cv_metrics.json")
    write_json(run_dir / "curves.json", {"out_of_fold": curves})
    write_predictions(run_dir / "predictions.csv", oof["paths"], np.array(oof["labels"]), np.concatenate(oof["probs"]),
                      dataset.classes, extra={"repeat": oof["repeat"], "fold": oof["fold"]})
    if config.train.report:
        from transferlab.report import safe_build_report
        from transferlab.report.gallery import dataset_pictures

        dataset_pictures(run_dir, dataset, config)
        safe_build_report(run_dir)


def cv_strategy(records: list[FoldRecord], requested: str) -> dict:
    """The folds' strategies (auto decides per fold, from that fold's training part)."""
    names = [r.strategy.name for r in records]
    decisions = [r.strategy.decision for r in records if r.strategy.decision]
    out = {"name": names[0] if len(set(names)) == 1 else "mixed", "requested": requested,
           "per_fold": names, "labels": [r.strategy.label for r in records],
           "settings": [r.strategy.stages for r in records]}
    if decisions:
        agree = len({(d.get("chosen"), d.get("size")) for d in decisions}) == 1
        out["reason"] = f"fold 1: {decisions[0]['reason']}" + ("; every fold decided the same" if agree
                                                               else "; the folds decided differently")
        out["folds"] = decisions
    return out


def print_cv_table(run_dir: Path) -> None:
    """mean ± std, 95% CI and per-fold values of the headline metrics."""
    from rich.table import Table

    from transferlab.console import stdout
    from transferlab.record import load_record

    record = load_record(run_dir)
    table = Table(title=f"{record.cv['folds']}-fold cross-validation"
                  + (f" x {record.cv['repeats']}" if record.cv["repeats"] > 1 else "")
                  + f" ({record.display}, {record.data['n_images']:,} images)", title_justify="left")
    for column in ("metric", "mean ± std", "95% CI", *(f["name"] for f in record.folds)):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name in [m for m in LABELS if m in record.aggregate and record.aggregate[m]["mean"] is not None]:
        agg = record.aggregate[name]
        spread = f"{agg['mean']:.3f} ± {agg['std']:.3f}" if agg["std"] is not None else f"{agg['mean']:.3f}"
        ci = f"[{agg['ci95'][0]:.3f}, {agg['ci95'][1]:.3f}]" if agg["ci95"] else "-"
        table.add_row(name, spread, ci, *("-" if v is None else f"{v:.3f}" for v in agg["values"]))
    stdout.print(table)
