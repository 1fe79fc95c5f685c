"""The run report: one self-contained HTML page (images inlined, no network) per run and per CV.

`build_report(run_dir)` reads only the saved artifacts (JSON, CSV logs, config, pictures drawn
when the run ended), so `transferlab report RUN` rebuilds it at any time. It never fails a run:
a section whose inputs are missing says so, and an error in one section is shown in that
section.
"""

from __future__ import annotations

import base64
import traceback
from collections.abc import Callable
from pathlib import Path

import yaml

from transferlab.metrics import HEADLINE, LABELS, MONITOR_MODE
from transferlab.record import CVRecord, RunRecord
from transferlab.report import plots
from transferlab.run import RunError, read_json

SECTIONS = (("data", "1. Data"), ("preprocessing", "2. Preprocessing and augmentation"), ("strategy", "3. Strategy"),
            ("training", "4. Training"), ("results", "5. Results"), ("errors", "6. Errors"),
            ("reproducibility", "7. Reproducibility"))


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure(path: Path | None, caption: str) -> dict | None:
    return {"src": data_uri(path), "caption": caption} if path and Path(path).is_file() else None


def figures(*items) -> dict:
    return {"kind": "figures", "pictures": [i for i in items if i]}


def table(headers: list[str], rows: list[list], numeric: tuple[int, ...] = ()) -> dict:
    return {"kind": "table", "headers": headers, "rows": rows, "numeric": list(numeric)}


def text(kind: str, value: str) -> dict:
    return {"kind": kind, "text": value}


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


class Run:
    """A run directory's artifacts, read once."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.problems: list[str] = []
        self.plots = self.dir / "plots"
        self.is_cv = (self.dir / "cv_metrics.json").is_file()
        self.metrics = self._json("cv_metrics.json" if self.is_cv else "metrics.json")
        self.record: RunRecord | CVRecord | None = None
        if self.metrics:
            self.record = CVRecord.from_json(self.metrics) if self.is_cv else RunRecord.from_json(self.metrics)
        self.dataset = self._json("dataset.json")
        self.curves = self._json("curves.json")
        config_path = self.dir / "config.yaml"
        self.config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else ""
        try:
            self.config = yaml.safe_load(self.config_text) or {} if self.config_text else {}
        except yaml.YAMLError as exc:
            self.problems.append(f"config.yaml could not be read ({str(exc).splitlines()[0]})")
            self.config = {}

    def _json(self, name: str) -> dict:
        path = self.dir / name
        if not path.is_file():
            return {}
        try:
            return read_json(path)
        except (OSError, ValueError, RunError) as exc:
            self.problems.append(f"{name} could not be read ({exc})")
            return {}

    def evaluation(self) -> tuple[str, dict, dict]:
        """(what, metrics, curves) of the split the results section shows: test, else val, else OOF."""
        if self.is_cv:
            return "out-of-fold", self.metrics.get("out_of_fold", {}), self.curves.get("out_of_fold", {})
        for split in ("test", "val"):
            if split in self.metrics:
                return split, self.metrics[split], self.curves.get(split, {})
        return "", {}, {}


def section_data(run: Run) -> list[dict]:
    ds = run.dataset
    if not ds:
        why = next((p for p in run.problems if p.startswith("dataset.json")), "dataset.json is missing")
        return [text("missing", f"{why}: no data summary to show.")]
    blocks = [table([], [
        ["source", ds.get("source")], ["images", fmt(ds.get("n_images"))], ["classes", fmt(ds.get("n_classes"))],
        ["imbalance (largest / smallest class)", fmt(ds.get("imbalance_ratio"), 2)],
        ["modes", ", ".join(f"{m} ({n:,})" for m, n in ds.get("modes", {}).items())],
        ["formats", ", ".join(f"{m} ({n:,})" for m, n in ds.get("formats", {}).items())],
        ["rotated by EXIF orientation", fmt(ds.get("oriented_by_exif", 0))],
        ["skipped / ignored files", f"{len(ds.get('skipped', []))} / {len(ds.get('ignored', []))}"],
        ["duplicate groups (label conflicts)", f"{len(ds.get('duplicates', []))} "
                                               f"({sum(1 for d in ds.get('duplicates', []) if d['conflict'])})"],
        ["duplicate groups across splits", fmt(ds.get("duplicates_across_splits", 0))],
    ])]
    counts = plots.class_counts(ds["counts"], run.plots / "class_counts.png", ds.get("split_counts"))
    sizes = ds.get("image_size", {}).get("all")
    size_plot = plots.image_sizes(sizes, run.plots / "image_sizes.png") if sizes else None
    blocks.append(figures(figure(counts, "images per class (by split or fold)"),
                          figure(size_plot, "original image sizes")))
    samples = figure(run.plots / "samples.png", "random images of each class, as the model sees them")
    blocks.append(figures(samples) if samples else text("missing", "sample images were not saved with this run."))
    for title, rows in (("skipped files", ds.get("skipped", [])), ("ignored files", ds.get("ignored", []))):
        if rows:
            blocks += [text("heading", f"{title} ({len(rows):,})"),
                       table(["file", "reason"], [[r["path"], r["reason"]] for r in rows[:200]])]
    if ds.get("duplicates"):
        blocks += [text("heading", "byte-identical duplicates"),
                   table(["files", "labels"], [[", ".join(d["paths"]), ("CONFLICT: " if d["conflict"] else "")
                                                + ", ".join(d["labels"])] for d in ds["duplicates"][:200]])]
    for warning in ds.get("warnings", []):
        blocks.append(text("note", f"warning: {warning}"))
    return blocks


def settings_rows(section: dict, prefix: str) -> list[list]:
    return [[f"{prefix}.{k}", yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()]
            for k, v in section.items()]


def section_preprocessing(run: Run) -> list[dict]:
    if not run.config:
        return [text("missing", "config.yaml is missing.")]
    blocks = [table(["setting", "value"], settings_rows(run.config.get("preprocess", {}), "preprocess")
                    + settings_rows(run.config.get("augment", {}), "augment"))]
    normalization = run.dataset.get("normalization")
    if normalization:
        blocks.append(text("note", f"normalization: {normalization['method']}, mean "
                                   f"{', '.join(f'{v:.4f}' for v in normalization['mean'])}, std "
                                   f"{', '.join(f'{v:.4f}' for v in normalization['std'])}"
                                   + (f" ({normalization['computed_on']})" if normalization.get("computed_on") else "")))
    try:
        from transferlab.augment import resolve_augment
        from transferlab.config import load_config

        resolved = resolve_augment(load_config(run.dir / "config.yaml").augment).describe()
        blocks += [text("heading", "augmentation ops (training split only)"),
                   table(["op", "settings"], [[d["op"], ", ".join(f"{k}={v}" for k, v in d.items() if k != "op")]
                                              for d in resolved]) if resolved else text("note", "no augmentation")]
    except Exception as exc:  # an old or hand-edited config
        blocks.append(text("missing", f"could not resolve the augmentation ops: {exc}"))
    preview = figure(run.plots / "augment_preview.png", "each row: an image and augmented versions of it")
    blocks.append(figures(preview) if preview else text("missing", "no augmentation preview was saved."))
    return blocks


def best_epochs(run: Run, logs: dict) -> dict[str, int]:
    monitor = run.config.get("train", {}).get("monitor", "val_loss")
    best = {}
    for stage, rows in logs.items():
        epochs, values = plots.epoch_series(rows, monitor)
        if len(values):
            best[stage] = int(epochs[values.argmin() if MONITOR_MODE.get(monitor) == "min" else values.argmax()])
    return best


def training_logs(run: Run) -> dict:
    if run.is_cv:
        folds = sorted((run.dir / "folds").glob("*/logs"))
        return plots.stage_logs(folds[0].parent) if folds else {}
    return plots.stage_logs(run.dir)


def section_strategy(run: Run) -> list[dict]:
    record = run.record
    if record is None:
        return [text("missing", "no run record (metrics.json) to read the strategy from.")]
    model = run.config.get("model", {})
    optim = run.config.get("optim", {})
    blocks = []
    if isinstance(record, CVRecord):
        if record.strategy.get("reason"):
            blocks.append(text("reason", record.strategy["reason"]))
        blocks.append(table([], [["backbone", model.get("name")], ["strategy", record.display],
                                 ["optimizer", f"{optim.get('name')} (weight decay {optim.get('weight_decay')})"],
                                 ["schedule", run.config.get("schedule", {}).get("name")]]))
        blocks += [text("heading", "what each fold trained (auto decides per fold, from its own training part)"),
                   table(["fold", "strategy", "stages (epochs run, best validation score)"],
                         [[f["name"], f.get("strategy", ""), stage_summary(stages)]
                          for f, stages in zip(record.folds, record.strategy.get("settings", []))])]
        rates = record.strategy.get("settings", [{}])[0] if record.strategy.get("settings") else {}
        blocks += rate_blocks(rates, "fold 1")
    else:
        strategy = record.strategy
        if strategy.reason:
            blocks.append(text("reason", strategy.reason))
        blocks.append(table([], [
            ["backbone", model.get("name")], ["weights", model.get("weights") or
                                              ("pretrained" if model.get("pretrained", True) else "none (from scratch)")],
            ["strategy", strategy.display], ["what trains", strategy.summary],
            ["optimizer", f"{optim.get('name')} (weight decay {optim.get('weight_decay')})"],
            ["schedule", run.config.get("schedule", {}).get("name")],
            ["class imbalance", strategy.imbalance]]))
        blocks += rate_blocks(strategy.stages)
        if strategy.stages:
            blocks += [text("heading", "stages"),
                       table(["stage", "trained", "epochs run", "base lr", "best monitored score"],
                             [[name, "head on cached features" if info.get("kind") == "head" else "whole classifier",
                               info.get("epochs_run"), f"{info.get('lr', 0):.2e}", fmt(info.get("score"), 4)]
                              for name, info in strategy.stages.items()])]
        if strategy.selected.get("stage"):
            blocks.append(text("note", f"kept: the {strategy.selected['stage']} stage, best on validation by "
                                       f"{strategy.selected['by']}"))
    logs = training_logs(run)
    rates_plot = plots.learning_rates(logs, run.plots / "learning_rates.png") if logs else None
    blocks.append(figures(figure(rates_plot, "learning rate of each layer group over the steps, as logged"))
                  if rates_plot else text("missing", "no learning-rate log was found."))
    return blocks


def stage_summary(stages: dict) -> str:
    return "; ".join(f"{name} ({info.get('epochs_run')}, {fmt(info.get('score'), 4)})" for name, info in stages.items())


def rate_blocks(stages: dict, where: str = "") -> list[dict]:
    """The peak learning rate each layer group trained at and from which epoch, as recorded."""
    rows = []
    for name, info in stages.items():
        groups = info.get("groups", {})
        decay = groups.get("layer_decay")
        for group, entry in groups.items():
            if group == "layer_decay":
                continue
            start = entry.get("trains_from_epoch")
            rows.append([name, group, fmt(entry.get("lr_scale")), "layer decay" if decay else
                         f"{entry['peak_lr']:.2e}" if entry.get("peak_lr") is not None else "n/a",
                         "never (frozen)" if start is None else f"from epoch {start}"])
        if decay:
            rows += [[name, f"layer group {label}", "", f"{lr:.2e}", f"layer decay {decay['factor']}"]
                     for label, lr in decay["peak_lr"].items() if not label.endswith("/no_decay")]
    if not rows:
        return []
    title = "layer groups: peak learning rates as trained" + (f" ({where})" if where else "")
    return [text("heading", title), table(["stage", "group", "lr multiplier", "peak lr", "trains"], rows, (2, 3))]


def section_training(run: Run) -> list[dict]:
    logs = training_logs(run)
    if not logs:
        return [text("missing", "no training logs (logs/<stage>/v*/metrics.csv) were found.")]
    monitor = run.config.get("train", {}).get("monitor", "val_loss")
    curves = plots.learning_curves(logs, run.plots / "learning_curves.png", monitor, best_epochs(run, logs))
    note = "first fold shown; every fold's logs are under folds/<fold>/logs." if run.is_cv else \
        "TensorBoard: tensorboard --logdir " + str(run.dir / "logs")
    return [figures(figure(curves, "loss and accuracy per epoch; dotted line: the best epoch")), text("note", note)]


def section_results(run: Run) -> list[dict]:
    what, metrics, curves = run.evaluation()
    if not metrics:
        return [text("missing", "no evaluation was saved (metrics.json has no val or test split).")]
    blocks = []
    if run.is_cv:
        agg = run.metrics["aggregate"]
        rows = [[name, fmt(a["mean"]), fmt(a["std"]), f"[{fmt(a['ci95'][0])}, {fmt(a['ci95'][1])}]"
                 if a.get("ci95") else "n/a"] for name in LABELS if (a := agg.get(name)) and a["mean"] is not None]
        blocks += [text("heading", f"{run.metrics['cv']['folds']}-fold cross-validation"
                        + (f" x {run.metrics['cv']['repeats']}" if run.metrics["cv"]["repeats"] > 1 else "")),
                   table(["metric", "mean", "std", "95% CI"], rows, (1, 2, 3)),
                   text("note", run.metrics["cv"].get("note", ""))]
        folds = run.metrics["folds"]
        shown = [m for m in ("accuracy", "f1_macro", "balanced_accuracy") if m in agg]
        blocks += [text("heading", "per fold"),
                   table(["fold", "train", "val", "test", *shown],
                         [[f["name"], f["n_train"], f["n_val"], f["n_test"], *(fmt(f["metrics"].get(m)) for m in shown)]
                          for f in folds], tuple(range(1, 4 + len(shown)))),
                   figures(figure(plots.fold_metrics(folds, run.plots / "fold_metrics.png", shown),
                                  "metrics per fold"))]
    else:
        splits = [s for s in ("val", "test") if s in run.metrics]
        rows = [[name, *(fmt(run.metrics[s].get(name)) for s in splits)] for name in LABELS
                if any(run.metrics[s].get(name) is not None for s in splits)]
        blocks.append(table(["metric", *splits], rows, tuple(range(1, 1 + len(splits)))))
    classes = list(metrics.get("per_class", {}))
    figs = [figure(plots.confusion(metrics["confusion_matrix"], classes, run.plots / "confusion.png",
                                   normalized=False, title=f"confusion matrix ({what}, counts)"),
                   f"confusion matrix, {what}, counts"),
            figure(plots.confusion(metrics["confusion_matrix_normalized"], classes,
                                   run.plots / "confusion_normalized.png", normalized=True,
                                   title=f"confusion matrix ({what}, row-normalised)"),
                   f"confusion matrix, {what}, each row sums to 1 (recall on the diagonal)")]
    if curves.get("roc"):
        figs.append(figure(plots.roc_curves(curves["roc"], run.plots / "roc.png", f"ROC curves ({what})"),
                           "ROC curve per class, one-vs-rest, AUC in the legend"))
    figs.append(figure(plots.per_class_bars(metrics["per_class"], run.plots / "per_class.png",
                                            f"per-class precision, recall, F1 ({what})"), "per-class scores"))
    if curves.get("calibration"):
        figs.append(figure(plots.calibration(curves["calibration"], run.plots / "calibration.png",
                                             f"calibration ({what})", metrics.get("ece")),
                           "reliability: accuracy against confidence; on the diagonal is calibrated"))
    blocks.append(figures(*figs))
    undefined = metrics.get("undefined", {})
    if undefined:
        blocks += [text("heading", "metrics left undefined"),
                   table(["metric", "why"], [[k, v] for k, v in undefined.items()])]
    return blocks


def section_errors(run: Run) -> list[dict]:
    from transferlab.report.gallery import error_gallery, load_candidates, merge_candidates

    saved = sorted(run.dir.glob("errors.npz")) + sorted(run.dir.glob("folds/*/errors.npz"))
    part = run.record.gallery if run.record else "held-out"
    path = None
    if saved:
        classes = (run.metrics.get("data") or {}).get("classes") or list(run.dataset.get("counts", {}))
        path = error_gallery(merge_candidates([load_candidates(p) for p in saved]), classes,
                             run.plots / "errors.png", part=part)
    gallery = figure(path, f"wrong {part} predictions with the highest confidence first, then correct ones; "
                           "heatmap: Grad-CAM of the predicted class")
    if gallery is None:
        return [text("missing", "no error gallery was saved with this run (it needs the model and the images "
                                "when the run ends).")]
    return [figures(gallery)]


def section_reproducibility(run: Run) -> list[dict]:
    env = run.metrics.get("environment", {})
    blocks = [table([], [
        ["run directory", str(run.dir.resolve())], ["seed", fmt(run.config.get("seed"))],
        ["command", env.get("command", "n/a")], ["python", env.get("python", "n/a")],
        ["platform", env.get("platform", "n/a")], ["device", env.get("device", "n/a")],
        ["split file", str(run.dir / "split.csv") + (" (path, label, fold)" if run.is_cv
                                                      else " (path, label, split)")],
    ])]
    if env.get("packages"):
        blocks.append(table(["package", "version"], [[k, v] for k, v in env["packages"].items()]))
    split_counts = run.dataset.get("split_counts")
    if split_counts:
        blocks.append(table(["part", "images"], [[k, sum(v.values())] for k, v in split_counts.items()], (1,)))
    blocks += [text("heading", "resolved config (config.yaml)"),
               text("pre", run.config_text or "config.yaml is missing")]
    return blocks


BUILDERS: dict[str, Callable[[Run], list[dict]]] = {
    "data": section_data, "preprocessing": section_preprocessing, "strategy": section_strategy,
    "training": section_training, "results": section_results, "errors": section_errors,
    "reproducibility": section_reproducibility,
}


def headline(run: Run) -> list[dict]:
    if run.is_cv:
        agg = run.metrics.get("aggregate", {})
        return [{"value": f"{agg[k]['mean']:.3f} ± {agg[k]['std'] or 0:.3f}", "label": LABELS[k] + " (CV)"}
                for k in HEADLINE if k in agg and agg[k]["mean"] is not None]
    what, metrics, _ = run.evaluation()
    return [{"value": f"{metrics[k]:.3f}", "label": f"{LABELS[k]} ({what})"}
            for k in HEADLINE if metrics.get(k) is not None]


def build_report(run_dir: str | Path) -> Path:
    """Write RUN/report.html (and its figures under plots/) from the run's saved artifacts."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    run = Run(Path(run_dir))
    sections = []
    for key, title in SECTIONS:
        try:
            blocks = BUILDERS[key](run)
        except Exception as exc:  # one broken input must not take the page down
            detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
            blocks = [text("missing", f"this section could not be built: {detail}")]
        sections.append({"id": key, "title": title, "blocks": blocks})
    env = Environment(loader=PackageLoader("transferlab.report", "."), autoescape=select_autoescape(["html", "j2"]))
    data = run.metrics.get("data", {})
    kind = "cross-validation" if run.is_cv else "training run"
    strategy = run.record.display if run.record else ""
    html = env.get_template("template.html.j2").render(
        title=f"transferlab {kind}: {run.dir.name}",
        subtitle=f"{data.get('source', '')} · {fmt(data.get('n_images'))} images · "
                 f"{len(data.get('classes', []))} classes · {run.config.get('model', {}).get('name', '')} · {strategy}",
        headline=headline(run), sections=sections)
    out = run.dir / "report.html"
    from transferlab.data.cache import atomic_write

    atomic_write(out, lambda handle: handle.write(html.encode("utf-8")))
    return out


def safe_build_report(run_dir: str | Path) -> Path | None:
    """build_report that only warns on failure: a report problem never fails a run."""
    try:
        return build_report(run_dir)
    except Exception as exc:
        from transferlab.console import warn

        warn(f"the report could not be written ({type(exc).__name__}: {exc}); rebuild it with "
             f"`transferlab report {run_dir}`")
        return None
