"""The sections of the run report, in page order. Each reads the run record and the saved
artifacts only (never the config to rebuild what happened) and returns blocks; an error in one
is shown in that section, never fatal. Add one with `@section(id, title)`."""

from __future__ import annotations

import yaml

from transferlab.metrics import LABELS, MONITOR_MODE
from transferlab.record import CVRecord
from transferlab.report import plots
from transferlab.report.blocks import Run, figure, figures, fmt, section, table, text


@section("data", "Data")
def section_data(run: Run) -> list[dict]:
    ds = run.dataset
    if not ds:
        return [text("missing", f"{run.why_missing('dataset.json')}: no data summary to show.")]
    blocks = [table([], [
        ["source", ds.get("source")], ["images", fmt(ds.get("n_images"))], ["classes", fmt(ds.get("n_classes"))],
        ["imbalance (largest / smallest class)", fmt(ds.get("imbalance_ratio"), 2)],
        *([key, ", ".join(f"{m} ({n:,})" for m, n in ds.get(key, {}).items())] for key in ("modes", "formats")),
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


@section("preprocessing", "Preprocessing and augmentation")
def section_preprocessing(run: Run) -> list[dict]:
    if not run.config:
        return [text("missing", f"{run.why_missing('config.yaml')}.")]
    blocks = [table(["setting", "value"], [
        [f"{key}.{k}", yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()]
        for key in ("preprocess", "augment") for k, v in run.config.get(key, {}).items()])]
    normalization = run.dataset.get("normalization")
    if normalization:
        where = f" ({normalization['computed_on']})" if normalization.get("computed_on") else ""
        blocks.append(text("note", f"normalization: {normalization['method']}, mean "
                                   f"{', '.join(f'{v:.4f}' for v in normalization['mean'])}, std "
                                   f"{', '.join(f'{v:.4f}' for v in normalization['std'])}{where}"))
    stages = recorded_stages(run)
    used = [stage for stage in stages if stage.get("augmentation")]
    if used:
        ops = used[0]["augmentation"]
        names = sorted({stage["name"] for stage in used})
        blocks += [text("heading", f"augmentation ops (training images only; stage {', '.join(names)})"),
                   table(["op", "settings"], [[d["op"], ", ".join(f"{k}={v}" for k, v in d.items() if k != "op")]
                                              for d in ops])]
    elif stages:
        blocks.append(text("note", "no augmentation ran: every model of this run was fitted on the cached features "
                                   "of the unaugmented training images (the augmentation settings above were "
                                   "not used)"))
    else:
        blocks.append(text("missing", "the run record lists no stages, so the augmentation that ran is unknown."))
    preview = figure(run.plots / "augment_preview.png", "each row: an image and augmented versions of it")
    if used or not stages:
        blocks.append(figures(preview) if preview else text("missing", "no augmentation preview was saved."))
    return blocks


def recorded_stages(run: Run) -> list[dict]:
    """Every stage the run trained (every cv fold's), as its record holds them: what ran, not the config."""
    if run.record is None:
        return []
    if isinstance(run.record, CVRecord):
        return [stage for stages in run.record.strategy.get("settings") or [] for stage in stages.values()]
    return list(run.record.strategy.stages.values())


def closed_form(run: Run) -> bool:
    """Every model of the run was fitted in one convex solve on cached features (linear probes): no
    epochs, no learning rate, no logs."""
    stages = recorded_stages(run)
    return bool(stages) and all(stage.get("epochs_run") == 0 and str(stage.get("weights", "")).endswith(
        ".safetensors") for stage in stages)


NO_EPOCHS = ("every model of this run is a linear probe: one convex solve on cached features (its C chosen by "
             "cross-validation of the training features), so no epochs ran and no {} was logged")


def training_logs(run: Run) -> dict:
    """Logged rows per stage: the run's (cv: its first fold's), and each ensemble member's as member/stage."""
    base = run.dir
    if run.is_cv:
        folds = sorted((run.dir / "folds").glob("*/logs"))
        if not folds:
            return {}
        base = folds[0].parent
    logs = plots.stage_logs(base)
    for member in sorted(p for p in (base / "members").glob("*") if p.is_dir()):
        logs |= {f"{member.name}/{stage}": rows for stage, rows in plots.stage_logs(member).items()}
    return logs


@section("strategy", "Strategy")
def section_strategy(run: Run) -> list[dict]:
    record = run.record
    if record is None:
        return [text("missing", "no run record (metrics.json) to read the strategy from.")]
    model, optim = run.config.get("model", {}), run.config.get("optim", {})
    training = [["optimizer", f"{optim.get('name')} (weight decay {optim.get('weight_decay')})"],
                ["schedule", run.config.get("schedule", {}).get("name")]]
    blocks = []
    if isinstance(record, CVRecord):
        if record.strategy.get("reason"):
            blocks.append(text("reason", record.strategy["reason"]))
        blocks.append(table([], [["backbone", model.get("name")], ["strategy", record.display], *training]))
        blocks += [text("heading", "what each fold trained (auto decides per fold, from its own training part)"),
                   table(["fold", "strategy", "stages (epochs run, best validation score)"],
                         [[f["name"], f.get("strategy", ""), stage_summary(stages)]
                          for f, stages in zip(record.folds, record.strategy.get("settings", []))])]
        blocks += rate_blocks((record.strategy.get("settings") or [{}])[0], "fold 1")
    else:
        strategy = record.strategy
        if strategy.reason:
            blocks.append(text("reason", strategy.reason))
        blocks += search_blocks(run, strategy.decision or {})
        weights = model.get("weights") or ("pretrained" if model.get("pretrained", True) else "none (from scratch)")
        blocks.append(table([], [
            ["backbone", model.get("name")], ["weights", weights],
            ["strategy", strategy.display], ["what trains", strategy.summary], *training,
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
                  if rates_plot else text("note", NO_EPOCHS.format("learning rate")) if closed_form(run)
                  else text("missing", "no learning-rate log was found."))
    return blocks


def search_blocks(run: Run, decision: dict) -> list[dict]:
    """Rule against evidence: what the 2x2 rule said, what each candidate scored (out of fold, or on
    the validation split), the ensemble's members with their weights, own scores and costs."""
    if not decision.get("candidates"):
        return []
    prior, budget, ensemble = decision["prior"], decision.get("budget") or {}, decision.get("ensemble") or {}
    by_label = {c["label"]: c for c in decision["candidates"]}
    cost = decision.get("inference_ms") or {}
    members = [[label, f"{m['weight']:.2f}", score(by_label.get(label, {})), fmt(cost.get(str(m["size"])), 1)]
               for label, m in zip(decision.get("chosen", []), decision.get("members", []))]
    rows = [[c["label"], c["status"], c["rows"], score(c), fmt(c.get("log_loss"), 3), f"{c['seconds']:.1f}"]
            for c in decision["candidates"]]
    limit = "no limit" if budget.get("seconds") is None else f"{budget['seconds']:.0f} s"
    picture = plots.candidates(decision["candidates"], decision.get("chosen", []), run.plots / "auto_candidates.png")
    return [text("heading", "how auto decided: the rule, then the evidence, then an ensemble"),
            table([], [["the rule says", f"{prior['candidate']} ({prior['quadrant']}, {prior['method']} "
                                         f"{prior['score']:.2f})"],
                       ["evidence", f"{ensemble.get('images', 0):,} images, {ensemble.get('on')} predictions"],
                       ["ensemble's selection score", f"accuracy {fmt(ensemble.get('accuracy'))}, log loss "
                                                      f"{fmt(ensemble.get('log_loss'))} (chosen on these images: "
                                                      "optimistic; the test split estimates it)"],
                       ["budget", f"{limit} (search {budget.get('search_seconds', 0):.0f} s)"]]),
            text("heading", "the ensemble: each member with its weight, its own score and its inference cost"),
            table(["member", "weight", "its own accuracy ± SE", "backbone ms / image"], members, (1, 3)),
            table(["candidate", "status", "scored on", "accuracy ± SE", "log loss", "seconds"], rows, (4, 5)),
            figures(figure(picture, "each candidate's accuracy by input size; the ensemble's members circled"))]


def score(candidate: dict) -> str:
    return "" if candidate.get("accuracy") is None else f"{candidate['accuracy']:.3f} ± {candidate['se']:.3f}"


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


@section("training", "Training")
def section_training(run: Run) -> list[dict]:
    logs = training_logs(run)
    if not logs and closed_form(run):
        return [text("note", NO_EPOCHS.format("loss curve"))]
    if not logs:
        return [text("missing", "no training logs (logs/<stage>/v*/metrics.csv) were found.")]
    monitor = run.config.get("train", {}).get("monitor", "val_loss")
    best = {}
    for stage, rows in logs.items():
        epochs, values = plots.epoch_series(rows, monitor)
        if len(values):
            best[stage] = int(epochs[values.argmin() if MONITOR_MODE.get(monitor) == "min" else values.argmax()])
    curves = plots.learning_curves(logs, run.plots / "learning_curves.png", monitor, best)
    note = "first fold shown; every fold's logs are under folds/<fold>/logs." if run.is_cv else \
        "TensorBoard: tensorboard --logdir " + str(run.dir / "logs")
    tracking = run.config.get("tracking", {})
    if tracking.get("tracker") == "csv":
        note = "CSV logs: logs/<stage>/v*/metrics.csv"
    state = run.json_file("cv_state.json" if run.is_cv else "state.json").get("tracking")
    if tracking.get("tracker") == "mlflow" and state:
        note = (f"MLflow: experiment {tracking.get('experiment')}, run {state['run_id']} "
                f"(mlflow ui --backend-store-uri {state['uri']})")
    return [figures(figure(curves, "loss and accuracy per epoch; dotted line: the best epoch")), text("note", note)]


@section("results", "Results")
def section_results(run: Run) -> list[dict]:
    what, metrics, curves = run.evaluation()
    if not metrics:
        return [text("missing", "no evaluation was saved (metrics.json has no val or test split).")]
    blocks = []
    if run.is_cv:
        agg, cv = run.metrics["aggregate"], run.metrics["cv"]
        rows = [[name, fmt(a["mean"]), fmt(a["std"]), f"[{fmt(a['ci95'][0])}, {fmt(a['ci95'][1])}]"
                 if a.get("ci95") else "n/a"] for name in LABELS if (a := agg.get(name)) and a["mean"] is not None]
        blocks += [text("heading", f"{cv['folds']}-fold cross-validation"
                        + (f" x {cv['repeats']}" if cv["repeats"] > 1 else "")),
                   table(["metric", "mean over folds", "std over folds", "95% CI"], rows, (1, 2, 3)),
                   text("note", "95% CI: " + cv.get("interval", "a t interval over folds (older run)") + ". "
                        + cv.get("note", ""))]
        folds = run.metrics["folds"]
        shown = [m for m in ("accuracy", "f1_macro", "balanced_accuracy", "average_precision_macro", "f1_micro",
                             "subset_accuracy") if m in agg][:3]
        blocks += [text("heading", "per fold"),
                   table(["fold", "train", "val", "test", *shown],
                         [[f["name"], f["n_train"], f["n_val"], f["n_test"], *(fmt(f["metrics"].get(m)) for m in shown)]
                          for f in folds], tuple(range(1, 4 + len(shown)))),
                   figures(figure(plots.fold_metrics(folds, run.plots / "fold_metrics.png", shown),
                                  "metrics per fold"))]
    else:
        splits = [s for s in ("val", "test") if s in run.metrics]

        def cell(split: str, name: str) -> str:
            value, interval = run.metrics[split].get(name), (run.metrics[split].get("ci95") or {}).get(name)
            return fmt(value) + (f" [{fmt(interval[0])}, {fmt(interval[1])}]" if value is not None and interval
                                 else "")

        rows = [[name, *(cell(s, name) for s in splits)] for name in LABELS
                if any(run.metrics[s].get(name) is not None for s in splits)]
        blocks.append(table(["metric", *(f"{s} ({run.metrics[s].get('n', 0):,} images)" for s in splits)], rows,
                            tuple(range(1, 1 + len(splits)))))
        methods = {run.metrics[s].get("ci95_method") for s in splits} - {None}
        if methods:
            blocks.append(text("note", "In brackets: 95% intervals, a percentile bootstrap of each split's images "
                                       "(" + "; ".join(sorted(methods)) + ")."))
    classes = list(metrics.get("per_class", {}))
    figs = []
    if "confusion_matrix" in metrics:  # one label per image
        figs += [figure(plots.confusion(metrics["confusion_matrix"], classes, run.plots / "confusion.png",
                                        normalized=False, title=f"confusion matrix ({what}, counts)"),
                        f"confusion matrix, {what}, counts"),
                 figure(plots.confusion(metrics["confusion_matrix_normalized"], classes,
                                        run.plots / "confusion_normalized.png", normalized=True,
                                        title=f"confusion matrix ({what}, row-normalised)"),
                        f"confusion matrix, {what}, each row sums to 1 (recall on the diagonal)")]
    if any("threshold" in entry for entry in metrics.get("per_class", {}).values()):  # multi-label: per label
        blocks += [text("heading", f"per label ({what})"),
                   table(["label", "threshold", "precision", "recall", "F1", "average precision", "ROC AUC", "support"],
                         [[c, fmt(e.get("threshold")), fmt(e.get("precision")), fmt(e.get("recall")), fmt(e.get("f1")),
                           fmt(e.get("average_precision")), fmt(e.get("roc_auc")), e.get("support")]
                          for c, e in metrics["per_class"].items()], (1, 2, 3, 4, 5, 6, 7)),
                   text("note", "each label's threshold maximises its F1 on held-out predictions (task.threshold "
                                "fixes one for all); metrics.json holds them")]
        if metrics.get("errors_together"):
            blocks += [text("heading", f"labels wrong together on one image ({what})"),
                       table(["labels", "images"], [[" + ".join(e["labels"]), e["images"]]
                                                    for e in metrics["errors_together"]], (1,))]
    if curves.get("pr"):
        figs.append(figure(plots.pr_curves(curves["pr"], run.plots / "pr.png", f"precision-recall ({what})"),
                           "precision-recall curve per label, average precision in the legend"))
    if curves.get("roc"):
        figs.append(figure(plots.roc_curves(curves["roc"], run.plots / "roc.png", f"ROC curves ({what})"),
                           "ROC curve per class, one-vs-rest, AUC in the legend"))
    figs.append(figure(plots.per_class_bars(metrics["per_class"], run.plots / "per_class.png",
                                            f"per-class precision, recall, F1 ({what})"), "per-class scores"))
    if curves.get("calibration"):
        calibrated = (run.metrics.get("calibration") or {}).get("temperature")
        figs.append(figure(plots.calibration(curves["calibration"], run.plots / "calibration.png",
                                             f"calibration ({what})", metrics.get("ece"),
                                             curves.get("calibration_before"), metrics.get("ece_before"),
                                             calibrated),
                           "reliability: how often right against confidence; on the diagonal is calibrated"
                           + (f"; the temperature ({calibrated:.2f}) was fitted on the "
                              f"{run.metrics['calibration']['on']}" if curves.get("calibration_before") else "")))
    blocks.append(figures(*figs))
    undefined = metrics.get("undefined", {})
    if undefined:
        blocks += [text("heading", "metrics left undefined"),
                   table(["metric", "why"], [[k, v] for k, v in undefined.items()])]
    return blocks


@section("errors", "Errors")
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


@section("audit", "Audit of the data")
def section_audit(run: Run) -> list[dict]:
    from transferlab.audit import fmt_label

    audit = run.json_file("audit.json")
    if not audit:
        return [text("missing", "no audit.json in this run (audit.enabled=false, or a run older than the audit)")]
    blocks = []
    issues = audit.get("label_issues") or {}
    if issues.get("count") is None:
        blocks.append(text("note", f"Likely label errors: not estimated ({issues.get('note', 'no predictions')})."))
    else:
        blocks += [text("heading", f"likely label errors: {issues['count']:,} of {issues['images']:,} images "
                                   f"({issues['share']:.1%})"),
                   text("note", f"On {issues['on']}; {issues['method']}. Check these by eye: a flagged image may "
                                "be hard rather than mislabelled."),
                   table(["image", "given", "suggested", "score"],
                         [[i["path"], fmt_label(i["given"]), fmt_label(i["suggested"]), fmt(i["score"])]
                          for i in issues["items"][:20]], (3,))]
    dup = audit.get("duplicates") or {}
    leak = dup.get("leakage") or {}
    blocks += [text("heading", f"near-duplicates: {len(dup.get('groups', [])):,} groups, {dup.get('images', 0):,} "
                               f"images" + (f"; {leak['groups']:,} groups straddle splits (leakage)" if leak else "")),
               text("note", f"{dup.get('method', '')}; similarity at least {dup.get('similarity', 0):g} "
                            "(audit.similarity). data.dedupe=near keeps each group in one split.")]
    if dup.get("groups"):
        blocks.append(table(["group", "members (label, split)", "leak", "labels differ"],
                            [[k + 1, "; ".join(f"{m['path']} ({m['label']}{', ' + m['split'] if 'split' in m else ''})"
                                               for m in g["members"]), "yes" if g["leak"] else "",
                              "yes" if g["labels_differ"] else ""] for k, g in enumerate(dup["groups"][:20])]))
    odd = audit.get("outliers") or {}
    if odd.get("items"):
        blocks += [text("heading", f"outliers: the {len(odd['items'])} images most unlike the rest"),
                   text("note", odd.get("method", ""))]
    familiar = audit.get("unfamiliar")
    if familiar:
        blocks.append(text("note", f"Unfamiliar inputs: predict and serve flag an image whose {familiar['score']} is "
                                   f"above {familiar['threshold']:.4f}, which flags {familiar['false_alarm']:.0%} of "
                                   f"the {familiar['set_on']}"
                                   + (f"; it flags {familiar['flagged_test']:.1%} of the test split"
                                      if familiar.get("flagged_test") is not None else "") + "."))
    figs = [figure(run.plots / name, caption) for name, caption in (
        ("audit_labels.png", "likely label errors: given and suggested labels, self-confidence"),
        ("audit_duplicates.png", "near-duplicate groups with their splits"),
        ("audit_outliers.png", "outliers, with cleanlab's score")) if (run.plots / name).is_file()]
    if figs:
        blocks.append(figures(*figs))
    return blocks


@section("reproducibility", "Reproducibility")
def section_reproducibility(run: Run) -> list[dict]:
    env = run.metrics.get("environment", {})
    blocks = [table([], [
        ["run directory", str(run.dir.resolve())], ["seed", fmt(run.config.get("seed"))],
        *([key, env.get(key, "n/a")] for key in ("command", "python", "platform", "device")),
        ["split file", f"{run.dir / 'split.csv'} (path, label, {'fold' if run.is_cv else 'split'})"],
    ])]
    if env.get("packages"):
        blocks.append(table(["package", "version"], [[k, v] for k, v in env["packages"].items()]))
    split_counts = run.dataset.get("split_counts")
    if split_counts:
        blocks.append(table(["part", "images"], [[k, sum(v.values())] for k, v in split_counts.items()], (1,)))
    blocks += [text("heading", "resolved config (config.yaml)"),
               text("pre", run.config_text or "config.yaml is missing")]
    return blocks
