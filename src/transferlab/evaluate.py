"""Honest evaluation: score a fitted model on its held-out parts, aggregate metrics over folds
(mean, std, 95% CI), and score a trained run on another labelled set (`transferlab evaluate`)."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferlab.data import load_dataset
from transferlab.data.sources import check_spec
from transferlab.errors import DataError
from transferlab.io import write_json
from transferlab.metrics import CURVES, scalar_metrics, write_predictions
from transferlab.rundir import STATE_FILE, RunState, check_out_dir, load_model, new_run_dir
from transferlab.tasks import SINGLE, Task


@dataclass
class Predictions:
    """Per image of the scored parts: its path, true label, class probabilities, part, index."""

    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    part: list[str] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    task: Task = SINGLE

    def of(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """(dataset indices, probabilities) of one part."""
        rows = np.array([k for k, name in enumerate(self.part) if name == part], dtype=np.int64)
        return np.array(self.index, dtype=np.int64)[rows], self.matrix()[rows]

    def matrix(self) -> np.ndarray:
        return np.concatenate(self.probs) if self.probs else np.zeros((0, 0))

    def write(self, path: Path, classes: list[str], column: str = "split") -> None:
        write_predictions(path, self.paths, np.array(self.labels), self.matrix(), classes, task=self.task,
                          extra={column: self.part} if column != "index" else {"index": self.index})


# resamples of a split's images behind the 95% interval of each of its metrics (fewer on a large split: each
# resample scores every image)
SPLIT_BOOTSTRAP, SPLIT_BOOTSTRAP_LARGE, LARGE_SPLIT = 1000, 200, 20_000


def split_intervals(task, targets: np.ndarray, probs: np.ndarray, classes: list[str], seed: int) -> dict:
    """{"ci95": {metric: [low, high]}, "ci95_method": what it is}: a percentile bootstrap of the split's images,
    the split's size stated beside it."""
    if len(targets) == 0:
        return {}
    resamples = SPLIT_BOOTSTRAP if len(targets) <= LARGE_SPLIT else SPLIT_BOOTSTRAP_LARGE
    intervals = task.split_intervals(targets, probs, resamples=resamples, seed=seed)
    return {"ci95": {k: v for k, v in intervals.items() if v is not None},
            "ci95_method": f"95% percentile bootstrap of the {len(targets):,} images ({resamples:,} resamples)"}


def evaluate_parts(result, ctx, parts=("val", "test"), calibration: dict | None = None
                   ) -> tuple[dict, dict, Predictions]:
    """Every metric, the ROC / calibration curves and the predictions of each non-empty part of the
    fit context `ctx` by the model a fit (`FitResult`) kept, at the task's calibrated temperature. With a
    `calibration` record, each part's ECE and reliability curve before the temperature go beside them
    (`ece_before`, curves' `calibration_before`)."""
    dataset = ctx.dataset
    metrics, curves, rows = {}, {}, Predictions(task=dataset.task)
    for part in parts:
        idx = ctx.indices.get(part, np.zeros(0, dtype=np.int64))
        if len(idx) == 0:
            continue
        raw = result.probabilities(ctx, part)
        probs = dataset.task.calibrate(raw)
        scored = dataset.task.metrics(dataset.labels[idx], probs, dataset.classes)
        curves[part] = {key: scored.pop(name) for key, name in CURVES.items() if name in scored}
        if calibration is not None:
            scored["ece"] = dataset.task.ece(dataset.labels[idx], probs)
            scored["ece_before"] = dataset.task.ece(dataset.labels[idx], raw)
            curves[part]["calibration"] = dataset.task.reliability(dataset.labels[idx], probs)
            curves[part]["calibration_before"] = dataset.task.reliability(dataset.labels[idx], raw)
        metrics[part] = scored | split_intervals(dataset.task, dataset.labels[idx], probs, dataset.classes,
                                                 ctx.config.seed)
        rows.paths += [dataset.paths[i] for i in idx]
        rows.labels += list(dataset.labels[idx])  # class indices, or 0/1 rows
        rows.probs.append(probs)
        rows.part += [part] * len(idx)
        rows.index += [int(i) for i in idx]
    return metrics, curves, rows


def aggregate(values: list[float | None]) -> dict:
    """mean and sample std (ddof 1) over folds. Undefined fold values (None) are left out and
    counted; with fewer than 2 defined values the std is null. (The interval comes from the
    bootstrap of the out-of-fold predictions: `metrics.bootstrap_intervals`.)"""
    defined = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    out: dict = {"n": len(defined), "undefined_folds": len(values) - len(defined), "values": values}
    mean = float(np.mean(defined)) if defined else None
    std = float(np.std(defined, ddof=1)) if len(defined) > 1 else None
    return out | {"mean": mean, "std": std, "ci95": None}


def aggregate_folds(fold_metrics: list[dict]) -> dict:
    """Every scalar metric and per-class precision / recall / F1 / AUC, aggregated over folds."""
    names: list[str] = []
    for metrics in fold_metrics:
        names += [k for k in scalar_metrics(metrics) if k not in names]
    for metrics in fold_metrics:  # a metric null in some fold is still aggregated
        names += [k for k, v in metrics.items() if v is None and k not in names and k != "undefined"]
    out = {"metrics": {name: aggregate([m.get(name) for m in fold_metrics]) for name in names}}
    classes = list(fold_metrics[0].get("per_class", {})) if fold_metrics else []
    out["per_class"] = {
        c: {key: aggregate([m["per_class"].get(c, {}).get(key) for m in fold_metrics])
            for key in ("precision", "recall", "f1", "roc_auc")}
        for c in classes
    }
    return out


def evaluate_run(run: str | Path, data: str, *, out: str | Path | None = None, subset: int | None = None,
                 progress: bool = True, engine: str = "auto", tta: tuple[str, ...] = ()) -> Path:
    """Metrics of a trained run on another labelled set; classes are matched by name.

    Images are decoded with the run's own preprocessing; the run's training subset does not
    apply (every image of DATA is scored unless `subset` says otherwise). The model runs on
    `engine`; with `tta` views the probabilities are averaged over them, and metrics.json holds
    accuracy, log loss and ECE with and without them.
    """
    from transferlab import tta as test_views
    from transferlab.engines import run_batches
    from transferlab.predict import model_engine

    run = Path(run)
    check_spec(data)
    model = load_model(run)
    check_out_dir(out)
    config = dataclasses.replace(model.config, data=dataclasses.replace(model.config.data, subset=subset, source=data),
                                 task=dataclasses.replace(model.config.task, name=model.task.name))  # the model's
    dataset = load_dataset(data, config, progress=progress)
    if len(dataset) == 0:
        raise DataError(f"{data} has no usable images to evaluate on")
    known = {c: i for i, c in enumerate(model.classes)}
    unknown = [c for c in dataset.classes if c not in known]
    if unknown:
        raise DataError(f"{data} has classes the model of {run} does not know: {', '.join(unknown)} "
                        f"(it knows: {', '.join(model.classes)}); evaluate on a set with the same class names")
    missing = [c for c in model.classes if c not in set(dataset.classes)]
    if dataset.labels.ndim == 2:  # 0/1 columns in the model's class order (a label the set lacks: all 0)
        labels = np.zeros((len(dataset), len(model.classes)), dtype=np.int64)
        labels[:, [known[c] for c in dataset.classes]] = dataset.labels
    else:
        labels = np.array([known[dataset.classes[i]] for i in dataset.labels], dtype=np.int64)
    views = test_views.views(tta)
    started = time.time()
    compiled = model_engine(model, engine, images=len(dataset) * len(views))
    every, batch = np.arange(len(dataset)), config.train.eval_batch_size
    per_view = np.stack([run_batches(lambda b, v=view: compiled(np.ascontiguousarray(v(b))), dataset.images, every,
                                     batch) for _, view in views])
    probs = per_view.mean(axis=0)
    metrics = model.task.metrics(labels, probs, model.classes) | split_intervals(model.task, labels, probs,
                                                                                 model.classes, config.seed)
    comparison = None
    if tta:
        plain = model.task.metrics(labels, per_view[0], model.classes, curves=False)
        comparison = {"views": [name for name, _ in views], **{
            label: {k: m[k] for k in ("accuracy", "log_loss", "ece")} for label, m in (("without", plain),
                                                                                      ("with", metrics))}}
    curves = {key: metrics.pop(name) for key, name in CURVES.items() if name in metrics}
    out_dir = new_run_dir(out, data, "eval", base=run / "evaluations")
    write_json(out_dir / "metrics.json", {
        "test": metrics, "run": str(run), "data": data, "n_images": len(dataset),
        "classes_missing_from_data": missing, "skipped": len(dataset.skipped),
        "seconds": round(time.time() - started, 1), "engine": compiled.name, "tta": comparison,
    })
    write_json(out_dir / "curves.json", {"test": curves})
    write_predictions(out_dir / "predictions.csv", dataset.paths, labels, probs, model.classes, task=model.task)
    track_evaluation(run, config, out_dir, metrics, data=data, engine=compiled.name, tta=tta)
    return out_dir


def track_evaluation(run: Path, config, out_dir: Path, metrics: dict, *, data: str, engine: str, tta) -> None:
    """A run trained with --tracker mlflow: the evaluation becomes a child of its MLflow run, in
    its experiment (the store and run id come from the run's state.json)."""
    from transferlab.tracking import Tracker

    state = RunState.load_or(run / STATE_FILE)
    if config.tracking.tracker != "mlflow" or not state.tracking:
        return
    parent = Tracker("mlflow", state.tracking["uri"], state.tracking["run_id"])
    tracker = Tracker.open(config, RunState(), name=f"evaluate {data}", parent=parent,
                           tags={"transferlab.kind": "evaluation", "transferlab.run_dir": str(run.resolve())})
    tracker.params({"data": data, "engine": engine, "tta": ",".join(tta) if tta else "none"}, prefix="evaluate.")
    tracker.metrics(scalar_metrics(metrics), prefix="test_")
    tracker.artifacts(out_dir, ("metrics.json", "curves.json", "predictions.csv"))
    tracker.finish()

