"""Stratified K-fold cross-validation as a first-class run: every fold from the same pretrained
weights, statistics and class weights from the fold's training part, an inner validation split
for checkpoint selection, out-of-fold predictions for every image, and mean / std / 95% CI.

With a fold-independent normalization, feature extraction runs the backbone once per image for
the whole CV: every fold reads the same feature cache.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import lightning as L
import numpy as np

from transferlab.config import Config
from transferlab.console import info, warn
from transferlab.data import ImageDataset, holdout_split, load_dataset, stratified_folds, write_split_csv
from transferlab.data.splits import check_folds
from transferlab.errors import DataError
from transferlab.evaluate import aggregate_folds
from transferlab.metrics import compute_metrics, scalar_metrics, write_predictions
from transferlab.pipeline import (choose_strategy, dataset_record, evaluate_parts, finalize_strategy, prepare,
                                  report_dataset_problems, resolve_config, train_stages)
from transferlab.report import safe_build_report
from transferlab.report.gallery import (dataset_pictures, error_candidates, error_gallery, load_candidates,
                                        merge_candidates, save_candidates)
from transferlab.run import (RunError, RunLock, check_out_dir, environment, new_run_dir, read_json, resume_config,
                             save_run_config, write_json)
from transferlab.strategies import resolve_strategy


def fold_name(repeat: int, fold: int, repeats: int) -> str:
    return f"r{repeat + 1}-fold{fold + 1}" if repeats > 1 else f"fold{fold + 1}"


def run_cv(data: str | None, config: Config, *, out: str | Path | None = None, resume: str | Path | None = None,
           progress: bool = True, extra_callbacks: list | None = None,
           resume_overrides: list[str] | tuple = ()) -> Path:
    """Cross-validate on DATA; returns the run directory with cv_metrics.json and predictions.csv."""
    started = time.time()
    with contextlib.ExitStack() as stack:
        if resume is not None:
            run_dir = Path(resume)
            stack.enter_context(RunLock(run_dir))
            state = read_json(run_dir / "cv_state.json")
            if state.get("finished"):
                raise RunError(f"{run_dir} already finished: its results are in {run_dir / 'cv_metrics.json'}")
            config = resume_config(run_dir, state, resume_overrides)
            data = config.data.source
            dataset = load_dataset(data, config, progress=progress)
        else:
            if data is None:
                raise DataError("no DATA given: pass a folder, a CSV manifest or builtin:NAME")
            strategy = resolve_strategy(config)
            config = resolve_config(config, data)
            if strategy != "auto":
                config = finalize_strategy(config, strategy)
            check_out_dir(out)
            dataset = load_dataset(data, config, progress=progress)
            dataset.require_classes()
            check_folds(dataset.labels, config.cv.folds, dataset.classes)
            run_dir = new_run_dir(out, data, f"cv{config.cv.folds}-{strategy}")
            stack.enter_context(RunLock(run_dir))
            state = {"done": [], "data": data, "strategy": strategy}
            save_run_config(run_dir, config, state, "cv_state.json")
        L.seed_everything(config.seed, workers=True, verbose=False)
        folds, repeats = config.cv.folds, config.cv.repeats
        splits = stratified_folds(dataset.labels, dataset.groups, folds=folds, repeats=repeats, seed=config.seed,
                                  classes=dataset.classes)
        if resume is None:
            write_cv_split(run_dir, dataset, splits, folds, repeats)
            first = {f"fold{k + 1}": test for r, k, _, test in splits if r == 0}
            write_json(run_dir / "dataset.json", dataset_record(dataset, first, None))
            report_dataset_problems(dataset, run_dir)
        if progress:
            info(f"{len(dataset):,} images, {len(dataset.classes)} classes; {folds}-fold CV"
                 + (f" x {repeats} repeats" if repeats > 1 else "") + f"; strategy {config.strategy.name}; "
                 f"run directory {run_dir}")

        for number, (repeat, fold, train_part, test_part) in enumerate(splits, start=1):
            name = fold_name(repeat, fold, repeats)
            if name in state["done"]:
                continue
            if progress:
                info(f"[{number}/{len(splits)}] {name}: train {len(train_part):,}, test {len(test_part):,}")
            run_fold(dataset, config, run_dir / "folds" / name, train_part, test_part, repeat=repeat, fold=fold,
                     progress=progress, extra_callbacks=extra_callbacks)
            state["done"].append(name)
            write_json(run_dir / "cv_state.json", state)

        summarize(run_dir, dataset, config, splits, started)
        state["finished"] = True
        write_json(run_dir / "cv_state.json", state)
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
             *, repeat: int, fold: int, progress: bool, extra_callbacks: list | None) -> dict:
    """Train on the fold's training part (with an inner validation split) and score its test part."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    resuming = (fold_dir / "state.json").is_file()
    fold_seed = config.seed + 1000 * repeat + fold
    if config.data.val_fraction > 0:
        inner = holdout_split(dataset.labels[train_part], dataset.groups[train_part],
                              val_fraction=config.data.val_fraction, test_fraction=0.0, seed=fold_seed,
                              classes=dataset.classes)
    else:
        inner = np.array(["train"] * len(train_part))
    indices = {"train": train_part[inner == "train"], "val": train_part[inner == "val"], "test": test_part}
    if not resuming:
        write_split_csv(fold_dir / "split.csv", [dataset.paths[i] for i in np.concatenate(list(indices.values()))],
                        [dataset.classes[dataset.labels[i]] for i in np.concatenate(list(indices.values()))],
                        {"part": [k for k, v in indices.items() for _ in v]})
    state = read_json(fold_dir / "state.json") if resuming else {"stage": "start", "done_stages": []}
    if "strategy" in state:  # the fold's own config holds what its strategy decision set
        p = prepare(dataset, resume_config(fold_dir, state), fold_dir, indices, progress=progress,
                    extra_callbacks=extra_callbacks)
        p.strategy = p.config.strategy.name
    else:
        p = prepare(dataset, config, fold_dir, indices, progress=progress, extra_callbacks=extra_callbacks)
        choose_strategy(p, config.strategy.name, state)  # auto decides from this fold's training part only
        save_run_config(fold_dir, p.config, state)
    train_stages(p, state, fold_dir / "state.json", resume=resuming)
    results, _, rows = evaluate_parts(p, parts=("test",))
    record = {"repeat": repeat + 1, "fold": fold + 1, "n_train": int(len(indices["train"])),
              "n_val": int(len(indices["val"])), "n_test": int(len(test_part)), "test": results["test"],
              "normalization": p.normalize, "stages": p.stage_info, "strategy": p.strategy,
              "decision": state.get("decision")}
    write_json(fold_dir / "metrics.json", record)
    write_predictions(fold_dir / "predictions.csv", rows["paths"], np.array(rows["labels"]), rows["probs"],
                      dataset.classes, extra={"index": rows["index"]})
    if config.train.report:
        try:
            candidates = error_candidates(p.classifier.cpu().eval(), dataset.images, np.array(rows["index"]),
                                          dataset.labels, rows["probs"], seed=config.seed)
            save_candidates(candidates, fold_dir / "errors.npz")
        except Exception as exc:
            warn(f"{fold_dir.name}: error examples not kept: {exc}")
    state["stage"] = "done"
    write_json(fold_dir / "state.json", state)
    return record


def read_fold_probs(fold_dir: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import csv

    with open(fold_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    index = np.array([int(r["index"]) for r in rows], dtype=np.int64)
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    return index, probs


def summarize(run_dir: Path, dataset: ImageDataset, config: Config, splits, started: float) -> dict:
    """cv_metrics.json (per fold and aggregated) and the out-of-fold predictions.csv."""
    folds, repeats = config.cv.folds, config.cv.repeats
    records, oof_rows = [], {"paths": [], "labels": [], "probs": [], "repeat": [], "fold": []}
    pooled: dict[int, np.ndarray] = {}
    for repeat, fold, _, _ in splits:
        fold_dir = run_dir / "folds" / fold_name(repeat, fold, repeats)
        record = read_json(fold_dir / "metrics.json")
        records.append(record)
        index, probs = read_fold_probs(fold_dir, dataset.classes)
        pooled.setdefault(repeat, np.zeros((len(dataset), len(dataset.classes))))[index] = probs
        oof_rows["paths"] += [dataset.paths[i] for i in index]
        oof_rows["labels"] += list(dataset.labels[index])
        oof_rows["probs"].append(probs)
        oof_rows["repeat"] += [repeat + 1] * len(index)
        oof_rows["fold"] += [fold + 1] * len(index)
    fold_metrics = [r["test"] for r in records]
    summary = aggregate_folds(fold_metrics)
    oof = compute_metrics(dataset.labels, pooled[0], dataset.classes, curves=True)
    curves = {"roc": oof.pop("roc_curves"), "calibration": oof.pop("calibration")}
    result = {
        "folds": [{"name": fold_name(r["repeat"] - 1, r["fold"] - 1, repeats), "repeat": r["repeat"],
                   "fold": r["fold"], "n_train": r["n_train"], "n_val": r["n_val"], "n_test": r["n_test"],
                   "metrics": scalar_metrics(r["test"]), "per_class": r["test"].get("per_class", {})}
                  for r in records],
        "aggregate": summary["metrics"],
        "per_class": summary["per_class"],
        "out_of_fold": oof,
        "cv": {"folds": folds, "repeats": repeats, "splitter": "StratifiedGroupKFold" if len(
            np.unique(dataset.groups)) < len(dataset) else ("RepeatedStratifiedKFold" if repeats > 1 else
                                                             "StratifiedKFold"),
               "seed": config.seed, "inner_val_fraction": config.data.val_fraction,
               "note": "the 95% CI is a t interval over folds; folds share training data, so it is optimistic"},
        "strategy": cv_strategy(config, records),
        "data": {"source": config.data.source, "n_images": len(dataset), "classes": dataset.classes},
        "seconds": round(time.time() - started, 1),
        "environment": environment(),
    }
    write_json(run_dir / "cv_metrics.json", result)
    write_json(run_dir / "curves.json", {"out_of_fold": curves})
    write_predictions(run_dir / "predictions.csv", oof_rows["paths"], np.array(oof_rows["labels"]),
                      np.concatenate(oof_rows["probs"]), dataset.classes,
                      extra={"repeat": oof_rows["repeat"], "fold": oof_rows["fold"]})
    if config.train.report:
        dataset_pictures(run_dir, dataset, config)
        try:
            parts = [load_candidates(f) for f in sorted((run_dir / "folds").glob("*/errors.npz"))]
            error_gallery(merge_candidates(parts), dataset.classes, run_dir / "plots" / "errors.png")
        except Exception as exc:
            warn(f"error gallery not drawn: {exc}")
        safe_build_report(run_dir)
    return result


def cv_strategy(config: Config, records: list[dict]) -> dict:
    """The strategy of the CV: the folds' (auto decides per fold, from that fold's training part)."""
    chosen = [r.get("strategy") or config.strategy.name for r in records]
    out = {"name": chosen[0] if len(set(chosen)) == 1 else "mixed", "requested": config.strategy.name,
           "per_fold": chosen}
    decisions = [r["decision"] for r in records if r.get("decision")]
    if decisions:
        out.update({k: decisions[0][k] for k in ("images", "per_class", "score", "method", "similar", "decision")})
        agree = len({d["decision"] for d in decisions}) == 1
        out["reason"] = (f"fold 1: {decisions[0]['reason']}" + ("; every fold decided the same"
                                                                  if agree else "; the folds decided differently"))
        out["folds"] = decisions
    return out


def print_cv_table(run_dir: Path) -> None:
    """mean ± std, 95% CI and per-fold values of the headline metrics."""
    from rich.table import Table

    from transferlab.console import stdout

    result = read_json(Path(run_dir) / "cv_metrics.json")
    folds = result["folds"]
    table = Table(title=f"{result['cv']['folds']}-fold cross-validation"
                  + (f" x {result['cv']['repeats']}" if result["cv"]["repeats"] > 1 else "")
                  + f" ({result['strategy']['name']}, {result['data']['n_images']:,} images)", title_justify="left")
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    table.add_column("95% CI", justify="right")
    for f in folds:
        table.add_column(f["name"], justify="right")
    order = ["accuracy", "balanced_accuracy", "f1_macro", "precision_macro", "recall_macro", "roc_auc",
             "roc_auc_ovr_macro", "top3_accuracy", "log_loss", "ece"]
    for name in [m for m in order if m in result["aggregate"]]:
        agg = result["aggregate"][name]
        if agg["mean"] is None:
            continue
        spread = f"{agg['mean']:.3f} ± {agg['std']:.3f}" if agg["std"] is not None else f"{agg['mean']:.3f}"
        ci = f"[{agg['ci95'][0]:.3f}, {agg['ci95'][1]:.3f}]" if agg["ci95"] else "-"
        table.add_row(name, spread, ci, *("-" if v is None else f"{v:.3f}" for v in agg["values"]))
    stdout.print(table)

