"""The commands: each parses nothing, checks what is cheap to check, then calls one library
function and prints its result. Heavy modules are imported inside, after the cheap checks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transferlab.cli.options import config_from_args, resume_overrides, writable_output
from transferlab.config import load_config, merge
from transferlab.data.sources import check_spec
from transferlab.errors import TransferlabError

def cmd_inspect(args: argparse.Namespace) -> int:
    check_spec(args.data)
    from transferlab.data import load_dataset
    from transferlab.data.health import print_summary

    config = config_from_args(args)
    dataset = load_dataset(args.data, config, progress=not args.json, compact=True)
    summary = dataset.summary()
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print_summary(summary)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    check_spec(args.data)
    out = writable_output(args.out, "audit.json", force=args.force)
    from transferlab.audit import audit_data, summary_lines
    from transferlab.io import write_json

    audit = audit_data(args.data, config_from_args(args), progress=not args.json)
    write_json(out, audit)
    if args.json:
        print(json.dumps(audit, indent=2, ensure_ascii=False))
    else:
        print("\n".join(summary_lines(audit)))
        print(f"written: {out}")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    check_spec(args.data)
    from transferlab.data import load_dataset
    from transferlab.preview import pick_rows, preview_grid

    config = config_from_args(args)
    if config.data.subset is None:  # a couple per class is all the grid shows: decode only those
        config = merge(config, {"data": {"subset": 2}}, origin="preview")
    dataset = load_dataset(args.data, config, progress=False)
    dataset.require_classes(minimum=1)
    rows = pick_rows(dataset.labels, dataset.classes, args.rows, config.seed)
    images = dataset.images.take(rows)
    names = [dataset.classes[dataset.labels[i]] for i in rows]
    out = writable_output(args.out, "augment-preview.png", force=args.force)
    path = preview_grid(images, names, config.augment, out, n=args.n, seed=config.seed)
    print(path)
    return 0


def quiet_lightning() -> None:
    """Lightning's chatter off for the command line (a library import leaves logging alone)."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*(does not have many workers|LeafSpec|TensorBoard|litlogger).*")


def cmd_fit(args: argparse.Namespace) -> int:
    """`train` and `cv`: a new run from DATA, or --resume RUN."""
    from transferlab.rundir import check_out_dir, is_worker_process

    command = args.command
    if args.resume:
        overrides = resume_overrides(args, command)
        check_resumable(args.resume, command)
    else:
        config = config_from_args(args)
        data = args.data or config.data.source
        if not data:
            raise TransferlabError("give DATA (a folder, a CSV manifest or builtin:NAME), or --resume RUN")
        check_spec(data)  # a missing folder is reported before the heavy imports
        check_out_dir(args.out)
    from transferlab.run import run_cv, run_training

    runner = run_training if command == "train" else run_cv
    quiet_lightning()
    if args.resume:
        run_dir = runner(None, load_config(), resume=args.resume, progress=not args.quiet, resume_overrides=overrides)
    else:
        run_dir = runner(data, config, out=args.out, progress=not args.quiet)
    if not is_worker_process():
        print_results(run_dir, command)
    return 0


def print_results(run_dir: Path, command: str) -> None:
    if command == "cv":
        print_cv_table(run_dir)
        print(f"run directory: {run_dir}")
    else:
        from transferlab.run import summary_line

        print(f"run directory: {run_dir}")
        print(summary_line(run_dir))
    report = Path(run_dir) / "report.html"
    if report.is_file():
        print(f"report: {report}")


def cmd_report(args: argparse.Namespace) -> int:
    run = Path(args.run)
    if not ((run / "metrics.json").is_file() or (run / "cv_metrics.json").is_file()):
        raise TransferlabError(f"{run} has no results to report (no metrics.json or cv_metrics.json): give a finished "
                               "run directory")
    from transferlab.report import build_report

    print(build_report(run))
    return 0


def check_resumable(run: str, command: str = "train") -> None:
    """A run of this command that is neither finished nor failed (one line otherwise)."""
    from transferlab.rundir import RESULTS, STATE_FILE, RunState

    path = Path(run)
    if not path.is_dir():
        raise TransferlabError(f"--resume {run}: no such run directory")
    if not (path / STATE_FILE).is_file():
        raise TransferlabError(f"{run} is not a {command} run that can be resumed (no {STATE_FILE})")
    state = RunState.load(path / STATE_FILE)
    if state.kind != command:
        raise TransferlabError(f"{run} is a {'cross-validation' if state.kind == 'cv' else 'training'} run: resume it "
                               f"with `transferlab {state.kind} --resume {run}`")
    if state.finished:
        raise TransferlabError(f"{run} already finished: its results are in {path / RESULTS[command]}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    check_spec(args.data)
    from transferlab.evaluate import evaluate_run
    from transferlab.io import read_json
    from transferlab.metrics import headline, with_interval

    out = evaluate_run(args.run, args.data, out=args.out, subset=args.subset, progress=not args.quiet,
                       engine=args.engine, tta=tta_views(args))
    metrics = read_json(out / "metrics.json")
    values, intervals = headline(metrics["test"]), metrics["test"].get("ci95") or {}
    print(f"{metrics['n_images']:,} images ({metrics['engine']}): "
          + ", ".join(f"{k} {with_interval(v, intervals.get(k))}" for k, v in values.items() if v is not None)
          + " (95% intervals: a bootstrap of the images)")
    if metrics.get("tta"):
        for label in ("without", "with"):
            shown = metrics["tta"][label]
            print(f"{label} test-time augmentation ({', '.join(metrics['tta']['views'][1:])}): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    if metrics["classes_missing_from_data"]:
        print("classes of the model absent from this data: " + ", ".join(metrics["classes_missing_from_data"]))
    print(f"evaluation directory: {out}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from transferlab.interpret import explain

    written = explain(args.run, args.images, method=args.method, layer=args.layer, class_name=args.class_name,
                      out=args.out, colormap=args.colormap, alpha=args.alpha, top=args.top)
    for path in written:
        print(path)
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    check_spec(args.data)
    from transferlab.rank import parse_models, print_ranking, rank_models
    from transferlab.io import write_json
    from transferlab.rundir import slug

    models = parse_models(args.models)
    config = config_from_args(args)
    out = writable_output(args.out, f"rank-{slug(args.data)}.json", force=args.force)
    result = rank_models(args.data, models, config, progress=not args.quiet)
    print_ranking(result)
    write_json(out, result)
    print(f"ranking: {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from transferlab.predict import predict_files

    results = predict_files(args.run, args.images, top_k=args.top_k, engine=args.engine, tta=tta_views(args))
    failed = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for r in results:
            if "error" in r:
                continue
            best = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])
            labels = f"[{', '.join(r['labels']) or 'no label'}] " if "labels" in r else ""
            odd = (f"  UNFAMILIAR (unlike the training images: {r['unfamiliarity']:.3f} past the run's "
                   "threshold; the answer may mean nothing)") if r.get("unfamiliar") else ""
            print(f"{r['path']}: {labels}{best}{odd}")
    for r in failed:
        print(f"transferlab predict: error: {r['path']}: {r['error']}", file=sys.stderr)
    return 2 if failed else 0


def tta_views(args: argparse.Namespace) -> tuple[str, ...]:
    """--tta (the default views) or --tta hflip,crop90."""
    from transferlab.tta import DEFAULT

    if args.tta is None:
        return ()
    return tuple(v for v in args.tta.split(",") if v) or DEFAULT


def cmd_export(args: argparse.Namespace) -> int:
    from transferlab.engines.export import export_run, read_bundle

    from transferlab.predict import familiarity_companions

    folder = export_run(args.run, args.format, out=args.out, samples=args.check, companions=familiarity_companions)
    parity = read_bundle(folder)["parity"]
    decision = "top-1" if (read_bundle(folder).get("task") or {}).get("name") != "multi-label" else "every label's decision"
    print(f"parity on {parity['images']}: probabilities within {parity['max_abs_diff']:.1e} of PyTorch's, {decision} "
          f"agrees on {parity['top1_agreement']:.0%}")
    print(f"bundle: {folder}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from transferlab.serve import serve

    quiet_lightning()
    serve(args.run, host=args.host, port=args.port, engine=args.engine, max_upload_mb=args.max_upload_mb,
          max_pixels=args.max_pixels)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from transferlab.rundir import check_out_dir
    from transferlab.run import run_demo

    check_out_dir(args.out)
    quiet_lightning()
    print_results(run_demo(out=args.out, progress=not args.quiet), "train")
    return 0


def print_cv_table(run_dir: Path) -> None:
    """mean ± std, 95% CI and per-fold values of the headline metrics."""
    from rich.table import Table

    from transferlab.console import stdout
    from transferlab.metrics import LABELS
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
