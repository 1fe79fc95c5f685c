"""Metrics of gathered predictions, computed with scikit-learn so they equal its own functions.

A metric that is undefined for the data at hand (a class absent from the true labels, a class
never predicted) is reported as null, with the reason under `undefined`, never a crash.
The decisions (`pred`) are the task's (tasks.SingleLabel.decide), passed in: nothing here turns
probabilities into classes.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
from lightning.fabric.utilities.rank_zero import rank_zero_only
from sklearn import metrics as skm

ECE_BINS = 15


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (probabilities clipped at 1e-15, as scikit-learn's)."""
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1.0)).mean())


def calibration_curve(y_true: np.ndarray, probs: np.ndarray, pred: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin: mean confidence, accuracy of the decisions `pred` and count (the
    reliability plot)."""
    confidence = probs.max(axis=1)
    correct = (np.asarray(pred) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = {"confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        members = which == b
        if members.any():
            out["confidence"].append(float(confidence[members].mean()))
            out["accuracy"].append(float(correct[members].mean()))
            out["count"].append(int(members.sum()))
    return out


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, pred: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE (Guo et al., 2017): |accuracy - confidence| per confidence bin, weighted by bin size."""
    curve = calibration_curve(y_true, probs, pred, bins)
    total = max(1, sum(curve["count"]))
    return float(sum(n / total * abs(a - c) for c, a, n in zip(curve["confidence"], curve["accuracy"],
                                                                curve["count"])))


# The monitored validation metrics (checkpoint choice, early stopping, stage selection) and
# which way is better for each.
MONITOR_MODE = {"val_loss": "min", "val_accuracy": "max", "val_balanced_accuracy": "max", "val_f1_macro": "max"}


def monitored_values(y_true: np.ndarray, probs: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The MONITOR_MODE metrics of validation probabilities (N, K) and the decisions `pred` (N,) made of them."""
    y_true, pred = np.asarray(y_true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"val_loss": log_loss(probs, y_true),
                "val_accuracy": float((pred == y_true).mean()),
                "val_balanced_accuracy": float(skm.balanced_accuracy_score(y_true, pred)),
                "val_f1_macro": float(skm.f1_score(y_true, pred, labels=np.arange(probs.shape[1]), average="macro",
                                                     zero_division=0))}  # over every class, as compute_metrics


def better(monitor: str, a: float, b: float) -> bool:
    """Whether score `a` beats `b` on `monitor`."""
    return a < b if MONITOR_MODE[monitor] == "min" else a > b


def compute_metrics(y_true, probs, pred, classes: list[str], *, curves: bool = True) -> dict:
    """Every metric of predicted class probabilities `probs` (N, K) and the decisions `pred` (N,) the task made
    of them (tasks.SingleLabel.decide) against true labels `y_true` (N,)."""
    y_true, pred = np.asarray(y_true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if len(y_true) == 0:
        return {"n": 0, "undefined": {"all": "no samples"}}
    undefined: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {"n": int(len(y_true))} | overall(y_true, probs, pred, classes, undefined)
        out["per_class"], roc_points = per_class_metrics(y_true, probs, pred, classes, undefined, curves=curves)
        out |= roc_auc(y_true, probs, classes, undefined)
    if curves:
        out["roc_curves"] = roc_points
        out["calibration"] = calibration_curve(y_true, probs, pred)
    out["undefined"] = undefined
    return out


def overall(y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray, classes: list[str], undefined: dict) -> dict:
    """Accuracies, averaged precision / recall / F1, log loss, ECE and the confusion matrices."""
    k = len(classes)
    labels = np.arange(k)
    out = {"accuracy": float(skm.accuracy_score(y_true, y_pred)),
           "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred))}
    for top in (3, 5):
        if k > top:
            out[f"top{top}_accuracy"] = float(skm.top_k_accuracy_score(y_true, probs, k=top, labels=labels))
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average,
                                                         zero_division=0)
        out[f"precision_{average}"], out[f"recall_{average}"], out[f"f1_{average}"] = float(p), float(r), float(f)
    present, predicted = np.bincount(y_true, minlength=k) > 0, np.bincount(y_pred, minlength=k) > 0
    if not present.all():
        undefined["recall_macro"] = "averaged with 0 for classes absent from the true labels: " + \
            ", ".join(classes[c] for c in labels[~present])
    if not predicted.all():
        undefined["precision_macro"] = "averaged with 0 for classes never predicted: " + \
            ", ".join(classes[c] for c in labels[~predicted])
    out["log_loss"] = float(skm.log_loss(y_true, np.clip(probs, 1e-15, 1), labels=labels))  # always finite
    out["ece"] = expected_calibration_error(y_true, probs, y_pred)
    out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    out["confusion_matrix_normalized"] = skm.confusion_matrix(y_true, y_pred, labels=labels,
                                                              normalize="true").round(6).tolist()  # empty rows: 0
    return out


def per_class_metrics(y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray, classes: list[str], undefined: dict,
                      *, curves: bool) -> tuple[dict, dict]:
    """({class: precision, recall, F1, support, ROC AUC, PR AUC}, {class: ROC curve points})."""
    k = len(classes)
    labels = np.arange(k)
    present, predicted = np.bincount(y_true, minlength=k) > 0, np.bincount(y_pred, minlength=k) > 0
    per_p, per_r, per_f, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class: dict[str, dict] = {}
    roc_points: dict[str, dict] = {}
    for c in labels:
        name, positive = classes[c], y_true == c
        entry = {"precision": float(per_p[c]) if predicted[c] else None,
                 "recall": float(per_r[c]) if present[c] else None,
                 "f1": float(per_f[c]) if present[c] or predicted[c] else None, "support": int(support[c])}
        if not predicted[c]:
            undefined[f"per_class.{name}.precision"] = "class never predicted"
        if positive.all() or not positive.any():
            entry["roc_auc"] = entry["pr_auc"] = None
            undefined[f"per_class.{name}.roc_auc"] = ("class absent from the true labels" if not positive.any()
                                                      else "every sample is of this class")
        else:
            entry["roc_auc"] = float(skm.roc_auc_score(positive, probs[:, c]))
            entry["pr_auc"] = float(skm.average_precision_score(positive, probs[:, c]))
            if curves:
                fpr, tpr, _ = skm.roc_curve(positive, probs[:, c])
                roc_points[name] = {"fpr": fpr.round(6).tolist(), "tpr": tpr.round(6).tolist(),
                                    "auc": entry["roc_auc"]}
        per_class[name] = entry
    return per_class, roc_points


def roc_auc(y_true: np.ndarray, probs: np.ndarray, classes: list[str], undefined: dict) -> dict:
    """ROC AUC: of class 1 for two classes, one-vs-rest macro and weighted for more."""
    labels = np.arange(len(classes))
    present = np.bincount(y_true, minlength=len(classes)) > 0
    if len(classes) == 2:
        if present.all():
            return {"roc_auc": float(skm.roc_auc_score(y_true, probs[:, 1]))}
        undefined["roc_auc"] = "only one class in the true labels"
        return {"roc_auc": None}
    if present.all():
        return {f"roc_auc_ovr_{average}": float(skm.roc_auc_score(y_true, probs, multi_class="ovr", average=average,
                                                                  labels=labels)) for average in ("macro", "weighted")}
    reason = "classes absent from the true labels: " + ", ".join(classes[c] for c in labels[~present])
    undefined["roc_auc_ovr_macro"] = undefined["roc_auc_ovr_weighted"] = reason
    return {"roc_auc_ovr_macro": None, "roc_auc_ovr_weighted": None}


def rank_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum (Mann-Whitney) formula; None without both classes."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    return float((rankdata(scores)[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def resampled_metrics(y: np.ndarray, probs: np.ndarray, pred: np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The scalar metrics of `compute_metrics` (and per-class precision, recall, F1, AUC) of one
    set of predictions and decisions, computed directly from the confusion matrix: fast enough to bootstrap."""
    n, k = probs.shape
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(float)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    weights = support / max(1.0, support.sum())
    out = {"accuracy": tp.sum() / n, "balanced_accuracy": recall[support > 0].mean(),
           "precision_macro": precision.mean(), "recall_macro": recall.mean(), "f1_macro": f1.mean(),
           "precision_weighted": (precision * weights).sum(), "recall_weighted": (recall * weights).sum(),
           "f1_weighted": (f1 * weights).sum(),
           "log_loss": log_loss(probs, y),
           "ece": expected_calibration_error(y, probs, pred)}
    ranked = np.argsort(-probs, axis=1)
    for top in (3, 5):
        if k > top:
            out[f"top{top}_accuracy"] = float((ranked[:, :top] == y[:, None]).any(axis=1).mean())
    aucs = np.array([rank_auc(y == c, probs[:, c]) if 0 < support[c] < n else np.nan for c in range(k)], dtype=float)
    if k == 2:
        out["roc_auc"] = aucs[1]
    elif np.isfinite(aucs).all():
        out["roc_auc_ovr_macro"] = aucs.mean()
        out["roc_auc_ovr_weighted"] = (aucs * weights).sum()
    return out, {"precision": precision, "recall": recall, "f1": f1, "roc_auc": aucs}


def bootstrap_intervals(y_true, probs, pred, classes: list[str], *, resamples: int = 1000, seed: int = 0,
                        level: float = 0.95, units: np.ndarray | None = None) -> tuple[dict, dict]:
    """Percentile bootstrap intervals (the images resampled with replacement) of every scalar
    metric and of per-class precision, recall, F1 and AUC: they stay inside each metric's range.
    With `units` (a unit id per row, each unit the same number of rows: an image's predictions in
    every repeat of a cv), units are resampled, each with all its rows."""
    y, probs = np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.int64)
    rng = np.random.default_rng(seed)
    scalars: dict[str, list[float]] = {}
    per_class: dict[str, list[np.ndarray]] = {}
    units = np.arange(len(y)) if units is None else np.asarray(units)
    _, inverse, counts = np.unique(units, return_inverse=True, return_counts=True)
    assert (counts == counts[0]).all(), "every unit has as many rows"
    members = np.argsort(inverse, kind="stable").reshape(len(counts), counts[0])  # unit -> its rows
    for drawn in rng.integers(0, len(counts), size=(resamples, len(counts))):
        rows = members[drawn].ravel()
        values, classwise = resampled_metrics(y[rows], probs[rows], pred[rows])
        for key, value in values.items():
            scalars.setdefault(key, []).append(float(value))
        for key, value in classwise.items():
            per_class.setdefault(key, []).append(value)
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]

    def interval(samples) -> list[float] | None:
        samples = np.asarray(samples, dtype=float)
        samples = samples[np.isfinite(samples)]
        return [float(v) for v in np.percentile(samples, tails)] if len(samples) >= resamples // 2 else None

    by_class = {c: {key: interval(np.stack(per_class[key])[:, i]) for key in per_class} for i, c in enumerate(classes)}
    return {key: interval(values) for key, values in scalars.items()}, by_class


# the curves a task's metrics hold, by the key curves.json keeps them under (single-label: ROC and the reliability
# curve; multi-label: precision-recall per label)
CURVES = {"roc": "roc_curves", "calibration": "calibration", "pr": "pr_curves"}

# Every scalar metric people read, in the order they are shown, with its label (CLI summaries,
# the CV table and the report all take theirs from here).
LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "top3_accuracy": "top-3 accuracy",
          "top5_accuracy": "top-5 accuracy", "precision_macro": "macro precision", "recall_macro": "macro recall",
          "f1_macro": "macro F1", "f1_weighted": "weighted F1", "roc_auc": "AUC-ROC",
          "roc_auc_ovr_macro": "AUC-ROC (OvR)", "roc_auc_ovr_weighted": "AUC-ROC (OvR, weighted)",
          "log_loss": "log loss", "ece": "calibration error", "ece_before": "calibration error before the temperature",
          "average_precision_macro": "mAP", "f1_micro": "micro F1", "f1_samples": "samples F1",
          "subset_accuracy": "subset accuracy", "hamming_loss": "Hamming loss", "roc_auc_macro": "AUC-ROC (macro)"}
HEADLINE = ("accuracy", "balanced_accuracy", "average_precision_macro", "f1_macro", "f1_micro", "subset_accuracy",
            "hamming_loss", "roc_auc", "roc_auc_ovr_macro", "roc_auc_macro", "log_loss", "ece")


def with_interval(value: float, interval: list[float] | None, digits: int = 3) -> str:
    """`0.893 [0.840, 0.940]`: a metric and its 95% interval (the value alone without one)."""
    return f"{value:.{digits}f}" + (f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else "")


def headline(metrics: dict) -> dict[str, float | None]:
    """The few numbers worth printing."""
    return {k: metrics[k] for k in HEADLINE if k in metrics}


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """Top-level numeric metrics (what cross-validation aggregates)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"}


@rank_zero_only
def write_predictions(path: str | Path, paths: list[str], y_true, probs, classes: list[str], *, task,
                      extra: dict[str, list] | None = None) -> None:
    """predictions.csv: path, label, pred (the `task`'s decision; a multi-label one's labels joined by `;`),
    p_<class> for every class, and any extra columns."""
    probs = np.asarray(probs)
    extra = extra or {}
    decided = task.decide(probs) if len(probs) else []

    def names(row) -> str:
        row = np.asarray(row)
        if row.ndim:  # a 0/1 row of a multi-label task
            return ";".join(c for c, on in zip(classes, row) if on)
        return classes[int(row)] if row >= 0 else ""

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "pred", *extra, *(f"p_{c}" for c in classes)])
        for i, p in enumerate(paths):
            label = names(y_true[i]) if y_true is not None else ""
            writer.writerow([p, label, names(decided[i]), *(extra[c][i] for c in extra),
                             *(f"{v:.6f}" for v in probs[i])])
