"""The report's figures, from a run's saved artifacts (JSON, CSV logs); each is also saved as a PNG
under plots/. Every function takes plain data and a path, and returns the path."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np

from transferlab.figures import save, subplots

COLORS = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def class_counts(counts: dict[str, int], path: Path, split_counts: dict | None = None) -> Path:
    """Images per class (stacked by split when known)."""
    names = list(counts)
    height = max(2.6, 0.28 * len(names) + 1.2)
    fig, ax = subplots(figsize=(7, min(height, 14)), layout="constrained")
    y = np.arange(len(names))
    if split_counts:
        left = np.zeros(len(names))
        for k, (part, per_class) in enumerate(split_counts.items()):
            values = np.array([per_class.get(c, 0) for c in names])
            ax.barh(y, values, left=left, color=COLORS[k % len(COLORS)], label=part)
            left += values
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.barh(y, [counts[c] for c in names], color=COLORS[0])
    ax.set_yticks(y, names, fontsize=8 if len(names) < 30 else 6)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.set_title("images per class")
    return save(fig, path)


def image_sizes(sizes: list[list[int]], path: Path) -> Path:
    """Width x height of the original images, marker area by count."""
    fig, ax = subplots(figsize=(5, 4), layout="constrained")
    array = np.array(sizes, dtype=float)
    area = 20 + 400 * array[:, 2] / array[:, 2].max()
    ax.scatter(array[:, 0], array[:, 1], s=area, alpha=0.6, color=COLORS[0], edgecolor="k", linewidth=0.3)
    for w, h, n in array[:3]:
        ax.annotate(f"{int(w)}x{int(h)} ({int(n):,})", (w, h), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.set_title("original image sizes")
    return save(fig, path)


def stage_logs(run_dir: Path) -> dict[str, list[dict]]:
    """Logged rows per stage; versions (a resumed run starts a new one) are concatenated, later
    rows winning for epochs logged twice."""
    logs: dict[str, list[dict]] = {}
    for stage_dir in sorted(p for p in (run_dir / "logs").glob("*") if p.is_dir()):
        rows: list[dict] = []
        for version in sorted(stage_dir.glob("v*/metrics.csv"), key=lambda p: int(p.parent.name[1:])):
            with open(version, newline="", encoding="utf-8") as handle:
                new = list(csv.DictReader(handle))
            resumed_from = min((int(r["epoch"]) for r in new if r.get("epoch")), default=None)
            if resumed_from is not None:
                rows = [r for r in rows if not r.get("epoch") or int(r["epoch"]) < resumed_from]
            rows += new
        if rows:
            logs[stage_dir.name] = rows
    return logs


def epoch_series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "") and r.get("epoch")]
    if not points:
        return np.zeros(0), np.zeros(0)
    epochs, values = zip(*sorted(dict(points).items()))
    return np.array(epochs) + 1, np.array(values)


def learning_curves(logs: dict[str, list[dict]], path: Path, monitor: str, best: dict[str, int]) -> Path:
    """Loss and accuracy per epoch for train and validation, one column per stage, best epoch marked."""
    fig, axes = subplots(2, len(logs), figsize=(5.2 * len(logs), 6), squeeze=False, layout="constrained")
    for col, (stage, rows) in enumerate(logs.items()):
        for row, metric in enumerate(("loss", "accuracy")):
            ax = axes[row, col]
            for part, style in (("train", "-"), ("val", "--")):
                key = f"{part}_{metric}_epoch" if part == "train" and metric == "loss" else f"{part}_{metric}"
                epochs, values = epoch_series(rows, key)
                if len(values):
                    ax.plot(epochs, values, style, marker="o", markersize=3, label=part)
            if stage in best:
                ax.axvline(best[stage], color="grey", linestyle=":", label=f"best ({monitor})")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_ylabel(metric)
            ax.set_title(f"{stage}: {metric}", fontsize=10)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    return save(fig, path)


def learning_rates(logs: dict[str, list[dict]], path: Path) -> Path | None:
    """Learning rate of each parameter group over optimizer steps (as the scheduler set it)."""
    stages = [s for s in logs if any(k.startswith("lr-") for k in logs[s][0])]
    if not stages:
        return None
    fig, axes = subplots(1, len(stages), figsize=(5.2 * len(stages), 3.4), squeeze=False, layout="constrained")
    for ax, stage in zip(axes[0], stages):
        rows = logs[stage]
        keys = [k for k in rows[0] if k.startswith("lr-") and not k.endswith("/no_decay")]
        for k, key in enumerate(keys):
            points = sorted({int(r["step"]): float(r[key]) for r in rows if r.get(key) not in (None, "")}.items())
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=key.split("/", 1)[-1], color=COLORS[k % len(COLORS)])
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("learning rate")
        ax.set_title(f"{stage}: learning rate per layer group", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    return save(fig, path)


def confusion(matrix: list[list[float]], classes: list[str], path: Path, *, normalized: bool, title: str) -> Path:
    data = np.array(matrix, dtype=float)
    size = min(12, 2.5 + 0.45 * len(classes))
    fig, ax = subplots(figsize=(size + 1, size), layout="constrained")
    image = ax.imshow(data, cmap="Blues", vmin=0, vmax=1 if normalized else None)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(classes) <= 20:
        threshold = data.max() / 2 if data.max() else 1
        for i in range(len(classes)):
            for j in range(len(classes)):
                text = f"{data[i, j]:.2f}" if normalized else f"{int(data[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if data[i, j] > threshold else "black")
    return save(fig, path)


def pr_curves(curves: dict, path: Path, title: str) -> Path:
    """Precision-recall per label (multi-label), average precision in the legend."""
    fig, ax = subplots(figsize=(5.5, 5), layout="constrained")
    for k, (name, curve) in enumerate(curves.items()):
        ax.plot(curve["recall"], curve["precision"], color=COLORS[k % len(COLORS)], linewidth=1.3,
                label=f"{name} (AP {curve['ap']:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7 if len(curves) < 12 else 5, loc="lower left")
    ax.grid(alpha=0.3)
    return save(fig, path)


def roc_curves(curves: dict, path: Path, title: str) -> Path:
    """ROC per class (one-vs-rest), AUC in the legend; the binary case shows the positive class."""
    fig, ax = subplots(figsize=(5.5, 5), layout="constrained")
    items = list(curves.items())
    if len(items) == 2:
        items = items[1:]
    for k, (name, curve) in enumerate(items):
        ax.plot(curve["fpr"], curve["tpr"], color=COLORS[k % len(COLORS)], linewidth=1.3,
                label=f"{name} (AUC {curve['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=7 if len(items) < 12 else 5, loc="lower right")
    ax.grid(alpha=0.3)
    return save(fig, path)


def per_class_bars(per_class: dict[str, dict], path: Path, title: str) -> Path:
    names = list(per_class)
    x = np.arange(len(names))
    width = 0.27
    fig, ax = subplots(figsize=(max(6, 0.55 * len(names) + 2), 3.8), layout="constrained")
    for k, key in enumerate(("precision", "recall", "f1")):
        values = [np.nan if per_class[c].get(key) is None else per_class[c][key] for c in names]
        ax.bar(x + (k - 1) * width, values, width, label=key, color=COLORS[k])
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=3, loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    return save(fig, path)


def calibration(curve: dict, path: Path, title: str, ece: float | None, before: dict | None = None,
                ece_before: float | None = None, temperature: float | None = None) -> Path:
    """Reliability diagram: accuracy against confidence per bin, bin sizes below; with `before`, the curve
    before the calibration's temperature beside it."""
    fig, (ax, counts) = subplots(2, 1, figsize=(5, 5.4), height_ratios=(3, 1), sharex=True,
                                     layout="constrained")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    if before is not None:
        ax.plot(before["confidence"], before["accuracy"], marker="s", color=COLORS[2], alpha=0.8,
                label="before the temperature" + (f" (ECE {ece_before:.3f})" if ece_before is not None else ""))
    ax.plot(curve["confidence"], curve["accuracy"], marker="o", color=COLORS[0],
            label="model" if before is None else f"at temperature {temperature:.2f}"
            + (f" (ECE {ece:.3f})" if ece is not None else ""))
    ax.set_ylabel("accuracy")
    ax.set_title(title + (f" (ECE {ece:.3f})" if ece is not None and before is None else ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    counts.bar(curve["confidence"], curve["count"], width=1 / 15 * 0.9, color=COLORS[1])
    counts.set_xlabel("confidence")
    counts.set_ylabel("images")
    counts.set_xlim(0, 1)
    return save(fig, path)


def fold_metrics(folds: list[dict], path: Path, names: list[str]) -> Path:
    """Each fold's value of the headline metrics, with their mean."""
    fig, ax = subplots(figsize=(6.5, 3.6), layout="constrained")
    for k, name in enumerate(names):
        values = [f["metrics"].get(name) for f in folds]
        xs = [i + 1 for i, v in enumerate(values) if v is not None]
        ys = [v for v in values if v is not None]
        ax.plot(xs, ys, marker="o", color=COLORS[k], label=name)
        if ys:
            ax.axhline(np.mean(ys), color=COLORS[k], linestyle=":", linewidth=1)
    ax.set_xticks(range(1, len(folds) + 1), [f["name"] for f in folds], rotation=30, fontsize=8)
    ax.set_title("metrics per fold (dotted: mean)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)


def candidates(entries: list[dict], members: list[str], path: Path) -> Path | None:
    """auto's candidates: each one's accuracy (± one standard error) on the evidence images, by input
    size, one line per variant (the probe: one per C); the ensemble's members circled."""
    scored = [c for c in entries if c.get("accuracy") is not None]
    if not scored:
        return None
    fig, ax = subplots(figsize=(7, 4.2), layout="constrained")
    lines: dict[str, list[dict]] = {}
    for c in scored:
        lines.setdefault(c["label"].rsplit(" @ ", 1)[0], []).append(c)
    for k, (name, group) in enumerate(sorted(lines.items())):
        group.sort(key=lambda c: c["size"])
        ax.errorbar([c["size"] for c in group], [c["accuracy"] for c in group], yerr=[c["se"] for c in group],
                    fmt="o-" if len(group) > 1 else "s", capsize=3, color=COLORS[k % len(COLORS)], label=name,
                    alpha=0.8)
    chosen = [c for c in scored if c["label"] in members]
    ax.scatter([c["size"] for c in chosen], [c["accuracy"] for c in chosen], s=260, facecolors="none",
               edgecolors="black", linewidths=1.5, label="ensemble members", zorder=5)
    ax.set_xlabel("input size (px)")
    ax.set_ylabel("accuracy on the evidence images (± 1 SE)")
    ax.set_title("auto: the candidates it measured (out of fold; fine-tuning on the validation split)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return save(fig, path)
