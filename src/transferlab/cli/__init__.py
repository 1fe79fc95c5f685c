"""The command line: parse, build a config, call one library function. Nothing else lives here.

A user mistake (a `TransferlabError`, a bad flag, a full disk) prints one line and exits 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys

from transferlab import __version__
from transferlab.cli.commands import (cmd_audit, cmd_demo, cmd_evaluate, cmd_explain, cmd_export, cmd_fit, cmd_inspect,
                                      cmd_predict, cmd_preview, cmd_rank, cmd_report, cmd_serve, quiet_lightning)
from transferlab.cli.options import (EXAMPLES, POSITIVE_INT, SIZE, Parser, add_aug_option, add_config_options,
                                     add_data_options, add_inference_options, add_train_options, colormap_type,
                                     number_type)
from transferlab.config import ENGINE_CHOICES, EXPORT_FORMATS
from transferlab.errors import TransferlabError
from transferlab.interpret.methods import ALL_METHODS
from transferlab.serve import MAX_PIXELS

__all__ = ["main", "build_parser", "quiet_lightning"]


def _inspect_options(inspect: argparse.ArgumentParser) -> None:
    add_data_options(inspect)
    add_config_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def _audit_options(audit: argparse.ArgumentParser) -> None:
    add_data_options(audit)
    add_config_options(audit)
    audit.add_argument("--json", action="store_true", help="print the findings as JSON on stdout")
    audit.add_argument("--out", metavar="JSON", help="where to write them (default audit.json, never overwriting an "
                                                   "existing one)")
    audit.add_argument("--force", action="store_true", help="replace --out if it exists")


def _train_options(train: argparse.ArgumentParser) -> None:
    add_data_options(train, optional=True)
    add_train_options(train)
    add_aug_option(train)
    add_config_options(train)
    train.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")


def _cv_options(cv: argparse.ArgumentParser) -> None:
    add_data_options(cv, optional=True)
    cv.add_argument("--folds", type=number_type(int, 2, 1000), help="number of folds K (default 5)")
    cv.add_argument("--repeats", type=number_type(int, 1, 1000),
                    help="repeat the K folds R times with different shuffles (default 1)")
    add_train_options(cv)
    add_aug_option(cv)
    add_config_options(cv)
    cv.add_argument("--resume", metavar="RUN", help="continue an interrupted cross-validation at its fold")


def _evaluate_options(evaluate: argparse.ArgumentParser) -> None:
    evaluate.add_argument("run", metavar="RUN", help="a run directory written by `transferlab train`")
    evaluate.add_argument("data", metavar="DATA", help="labelled images: folder, CSV manifest or builtin:NAME")
    evaluate.add_argument("--out", metavar="DIR", help="evaluation directory (default RUN/evaluations/<time>-...)")
    evaluate.add_argument("--subset", type=POSITIVE_INT, metavar="N", help="score at most N images per class (seeded)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    add_inference_options(evaluate)


def _explain_options(explain: argparse.ArgumentParser) -> None:
    explain.add_argument("run", metavar="RUN", help="a run directory written by `transferlab train`")
    explain.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    explain.add_argument("--method", default="gradcam", choices=ALL_METHODS, help="what to show (default gradcam)")
    explain.add_argument("--layer", metavar="NAME", help="CAM target layer (default: the backbone's last stage)")
    explain.add_argument("--class", dest="class_name", metavar="NAME", help="explain this class (default: predicted)")
    explain.add_argument("--out", metavar="DIR", help="output folder (default RUN/explanations/<time>-<method>)")
    explain.add_argument("--colormap", default="jet", type=colormap_type,
                         help="matplotlib colormap of the heatmap (default jet)")
    explain.add_argument("--alpha", type=number_type(float, 0, 1), default=0.45,
                         help="heatmap opacity over the image, 0-1 (default 0.45)")
    explain.add_argument("--top", type=number_type(int, 1, 4096), default=8,
                         help="featuremaps: channels per stage (default 8)")


def _report_options(report: argparse.ArgumentParser) -> None:
    report.add_argument("run", metavar="RUN", help="a run directory of `transferlab train` or `transferlab cv`")


def _rank_options(rank: argparse.ArgumentParser) -> None:
    rank.add_argument("data", metavar="DATA", help="class-folder tree, CSV manifest or builtin:NAME")
    rank.add_argument("--models", required=True, metavar="A,B,C",
                      help="comma-separated timm names; NAME=FILE uses local weights")
    rank.add_argument("--subset", type=POSITIVE_INT, metavar="N", help="score on at most N images per class (seeded)")
    rank.add_argument("--size", type=SIZE, metavar="PX", help="input side (default: each backbone's own)")
    rank.add_argument("--no-pretrained", action="store_true", help="score randomly initialised backbones (a baseline)")
    rank.add_argument("--out", metavar="JSON", help="where to write the ranking (default rank-<data>.json)")
    rank.add_argument("--force", action="store_true", help="replace --out if it exists")
    rank.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_options(rank)


def _predict_options(predict: argparse.ArgumentParser) -> None:
    predict.add_argument("run", metavar="RUN", help="a run directory written by `transferlab train`")
    predict.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    predict.add_argument("--top-k", type=POSITIVE_INT, default=5, help="classes to show per image (default 5)")
    predict.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_inference_options(predict)


def _export_options(export: argparse.ArgumentParser) -> None:
    export.add_argument("run", metavar="RUN", help="a run directory written by `transferlab train`")
    export.add_argument("--format", required=True, choices=list(EXPORT_FORMATS),
                        help="what to export to")
    export.add_argument("--out", metavar="DIR", help="bundle folder (default RUN/exports/FORMAT; never reused)")
    export.add_argument("--check", type=number_type(int, 1, 10_000), default=64, metavar="N",
                        help="test images the export must match PyTorch on (default 64)")


def _serve_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("run", metavar="RUN", help="a run directory written by `transferlab train`")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the "
                            "network, without a login)")
    serve.add_argument("--port", type=number_type(int, 0, 65535), default=7860,
                       help="port (default 7860; 0: any free port)")
    serve.add_argument("--engine", default="auto", choices=ENGINE_CHOICES,
                       help="what runs the model (default auto: the documented rule of `predict`)")
    serve.add_argument("--max-upload-mb", type=number_type(float, 0.001, 2048), default=20.0, metavar="MB",
                       help="largest upload accepted, in MB (default 20)")
    serve.add_argument("--max-pixels", type=number_type(int, 1, 2**40), default=MAX_PIXELS, metavar="N",
                       help=f"largest image accepted, in pixels (default {MAX_PIXELS}: photos up to "
                            f"{MAX_PIXELS / 1e6:g} Mpx)")


def _demo_options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--out", metavar="RUN", help="run directory (default runs/<time>-demo-...)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")


def _preview_options(preview: argparse.ArgumentParser) -> None:
    add_data_options(preview)
    add_aug_option(preview)
    add_config_options(preview)
    preview.add_argument("--n", type=number_type(int, 1, 64), default=8,
                         help="augmented versions per image, 1-64 (default 8)")
    preview.add_argument("--rows", type=number_type(int, 1, 64), default=6,
                         help="source images, one per class first, 1-64 (default 6)")
    preview.add_argument("--out", metavar="PNG", help="where to write the grid (default augment-preview.png, "
                                                     "never overwriting an existing one)")
    preview.add_argument("--force", action="store_true", help="replace --out if it exists")


COMMANDS = [  # name, handler, help, its options: the order of `transferlab --help`
    ("inspect", cmd_inspect, "dataset health and statistics: classes, sizes, bad files, duplicates", _inspect_options),
    ("audit", cmd_audit, "likely label errors, near-duplicates, outliers: what to check in the data", _audit_options),
    ("train", cmd_fit, "train a classifier by transfer learning and write a run directory", _train_options),
    ("cv", cmd_fit, "stratified K-fold cross-validation: mean ± std and 95% CI of every metric", _cv_options),
    ("evaluate", cmd_evaluate, "metrics of a trained run on another labelled set", _evaluate_options),
    ("explain", cmd_explain, "what the model looks at: Grad-CAM family, feature maps, attention", _explain_options),
    ("report", cmd_report, "rebuild a run's report.html from its saved artifacts", _report_options),
    ("rank", cmd_rank, "rank candidate backbones by transferability (LogME), without fine-tuning", _rank_options),
    ("predict", cmd_predict, "top-k classes of image files with a trained run", _predict_options),
    ("export", cmd_export, "export a trained run to ONNX, OpenVINO or TorchScript, parity checked", _export_options),
    ("serve", cmd_serve, "try a trained run in the browser (Gradio app) and over HTTP (JSON API)", _serve_options),
    ("demo", cmd_demo, "the whole path on a built-in data set, on a CPU, in minutes", _demo_options),
    ("preview", cmd_preview, "what the augmentation does, as a PNG grid", _preview_options),
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="transferlab",
        description="Turn a folder of labelled images into an honestly evaluated, explainable classifier.",
    )
    parser.add_argument("--version", action="version", version=f"transferlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for name, handler, help_text, options in COMMANDS:
        # argparse %-formats help strings: a literal % (as in "95% CI") must be doubled there
        sub = commands.add_parser(name, help=help_text.replace("%", "%%"), description=help_text,
                                  epilog=EXAMPLES.get(name), formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=handler)
        options(sub)
    return parser


DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}


def os_error_line(command: str, exc: OSError) -> str | None:
    """One line for the machine's refusals a user can act on (full disk, read-only folder)."""
    if exc.errno not in DISK_ERRORS:
        return None
    where = f" writing {exc.filename}" if exc.filename else ""
    advice = ("free some space, then run the same command again (`--resume RUN` continues a train or cv run from "
              "its last checkpoint)" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
              else "choose a writable folder with --out, or fix the permissions")
    return f"transferlab {command}: error: {DISK_ERRORS[exc.errno]}{where}: {advice}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad flag (2) or --help (0): a return code for callers of main(), like the shell's
        return int(exc.code or 0)
    try:
        from transferlab.console import log_every

        log_every()  # a bad TRANSFERLAB_LOG_EVERY is one line before anything runs
        if args.command in ("train", "cv", "evaluate", "rank", "predict"):  # launched by torchrun or SLURM: shard
            from transferlab.engines.shard import init_from_environment

            init_from_environment()
        return args.handler(args)
    except TransferlabError as exc:
        print(f"transferlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"transferlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        line = os_error_line(args.command, exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
