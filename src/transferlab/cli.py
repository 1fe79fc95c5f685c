"""The command line: parse, build a config, call one library function. Nothing else lives here.

A user mistake (a `TransferlabError`) prints one line and exits 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path

from transferlab import __version__
from transferlab.config import Config, load_config, merge
from transferlab.data.sources import check_spec
from transferlab.errors import TransferlabError
from transferlab.strategies import strategy_names

EXAMPLES = {
    "inspect": """examples:
  transferlab inspect builtin:digits
  transferlab inspect ~/photos/pets --json > health.json
  transferlab inspect labels.csv --set data.max_pixels=200000000""",
    "train": """examples:
  transferlab train builtin:digits
  transferlab train ~/photos/pets --strategy fine-tune --epochs 10 --aug standard
  transferlab train labels.csv --model resnet50 --weights resnet50.safetensors --lr 3e-4
  transferlab train ~/photos/pets --strategy gradual --find-lr --out runs/pets-gradual
  transferlab train --resume runs/pets-gradual            # continue an interrupted run
  transferlab train data/ --devices 2 --strategy-ddp ddp  # two GPUs (or CPU processes)""",
    "cv": """examples:
  transferlab cv builtin:digits --folds 5
  transferlab cv ~/photos/pets --folds 10 --repeats 3 --strategy feature-extraction
  transferlab cv subjects.csv --folds 5            # a 'group' column keeps each subject in one fold
  transferlab cv --resume runs/20261125-101500-pets-cv5-feature-extraction""",
    "evaluate": """examples:
  transferlab evaluate runs/fashion builtin:fashion-mnist:test
  transferlab evaluate runs/pets ~/photos/pets-test --out runs/pets/eval-october""",
    "explain": """examples:
  transferlab explain runs/pets cat.jpg --method gradcam
  transferlab explain runs/pets *.jpg --method gradcam++ --class dog --colormap inferno --alpha 0.5
  transferlab explain runs/pets cat.jpg --method featuremaps
  transferlab explain runs/vit cat.jpg --method attention
  transferlab explain runs/pets cat.jpg --method gradcam --layer backbone.blocks.4""",
    "rank": """examples:
  transferlab rank builtin:digits --models tf_efficientnet_lite0,resnet18,convnext_tiny
  transferlab rank photos/ --models tf_efficientnet_lite0,resnet50=weights/resnet50.safetensors --out rank.json""",
    "predict": """examples:
  transferlab predict runs/pets photo1.jpg photo2.png
  transferlab predict runs/pets ~/new/*.jpg --top-k 3 --json > predictions.json""",
    "demo": """examples:
  transferlab demo
  transferlab demo --out runs/my-demo""",
    "preview": """examples:
  transferlab preview builtin:digits --aug heavy --out grid.png
  transferlab preview ~/photos/pets --aug my_augment.yaml --n 6 --rows 4
  transferlab preview labels.csv --set augment.cutmix_alpha=1.0""",
}

# flag -> config key it overrides
FLAG_KEYS = {
    "seed": "seed",
    "subset": "data.subset",
    "size": "preprocess.size",
    "model": "model.name",
    "weights": "model.weights",
    "strategy": "strategy.name",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "precision": "train.precision",
    "accelerator": "train.accelerator",
    "devices": "train.devices",
    "strategy_ddp": "train.ddp",
    "workers": "train.workers",
    "folds": "cv.folds",
    "repeats": "cv.repeats",
}


# flags that never change what a run computes: honoured by --resume (everything else is refused there)
RESUME_SAFE_FLAGS = {"workers": "train.workers", "no_report": "train.report"}
PRECISIONS = ("64", "32", "16", "bf16", "64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed",
              "transformer-engine")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `transferlab train: error: argument --lr: ... (see --help)`."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def number_type(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                what: str = "") -> Callable[[str], float]:
    """An argparse type: a finite `kind` number in [low, high] (low excluded with `low_open`)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if (low is not None and (value < low or (low_open and value == low))) or (high is not None and value > high):
            span = (f"> {low:g}" if low_open else f">= {low:g}") if high is None else \
                f"between {low:g} and {high:g}"
            raise argparse.ArgumentTypeError(f"must be {what or span}, got {text}")
        return value

    parse.__name__ = "integer" if kind is int else "number"
    return parse


POSITIVE_INT = number_type(int, 1)
NONNEGATIVE_INT = number_type(int, 0)
POSITIVE_FLOAT = number_type(float, 0, low_open=True)
SIZE = number_type(int, 8, 4096, what="between 8 and 4096 pixels")
SEED = number_type(int, 0, 2**32 - 1)


def devices_type(text: str) -> str:
    """auto, a number of devices, or a comma-separated list of device indices."""
    if text == "auto" or text == "-1" or re.fullmatch(r"[1-9]\d*|\d+(,\d+)+,?", text):
        return text
    raise argparse.ArgumentTypeError(f"expects auto, a number of devices (e.g. 2) or indices (e.g. 0,1), got {text!r}")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file overriding the defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set data.val_fraction=0.2 (repeatable)")
    parser.add_argument("--seed", type=SEED, help="seed of every random step (default 0)")


def add_data_options(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """DATA (optional where --resume or a config's data.source can stand in) and the data flags."""
    parser.add_argument("data", metavar="DATA", nargs="?" if optional else None,
                        help="class-folder tree, CSV manifest (path,label[,group]) or builtin:NAME")
    parser.add_argument("--subset", type=POSITIVE_INT, metavar="N", help="keep at most N images per class (seeded)")
    parser.add_argument("--size", type=SIZE, metavar="PX", help="input side in pixels, 8-4096 (default: the backbone's)")
    parser.add_argument("--model", metavar="NAME", help="timm backbone name (default tf_efficientnet_lite0)")


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults < --config file < --set overrides < explicit flags (--aug last of all)."""
    config = load_config(getattr(args, "config", None), list(getattr(args, "overrides", []) or []))
    for flag, key, value in flag_values(args):
        config = merge(config, nest(key, value), origin=f"--{flag.replace('_', '-')}")
    if getattr(args, "aug", None):
        from transferlab.augment import augment_from_arg

        config = merge(config, {"augment": augment_from_arg(args.aug)}, origin=f"--aug {args.aug}")
    return config


def flag_values(args: argparse.Namespace) -> list[tuple[str, str, object]]:
    """(flag, config key, value) of every config-changing flag given on the command line."""
    found = [(flag, key, getattr(args, flag)) for flag, key in FLAG_KEYS.items() if getattr(args, flag, None) is not None]
    for flag, key, value in (("no_pretrained", "model.pretrained", False), ("find_lr", "train.find_lr", True),
                             ("no_report", "train.report", False)):
        if getattr(args, flag, False):
            found.append((flag, key, value))
    return found


def nest(key: str, value) -> dict:
    nested = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def add_aug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--aug", metavar="PRESET|FILE",
                        help="augmentation preset (none, light, standard, heavy) or a YAML file of ops")


def writable_output(out: str | None, default: str, *, force: bool) -> Path:
    """--out, refused when it exists (unless --force), or `default` numbered so nothing is replaced."""
    if out is None:
        return unused_path(Path(default))
    path = Path(out).expanduser()
    if path.is_dir():
        raise TransferlabError(f"--out {path} is a folder: give a file name, e.g. {path / default}")
    if path.exists() and not force:
        raise TransferlabError(f"--out {path} already exists: choose another name, or pass --force to replace it")
    return path


def unused_path(path: Path) -> Path:
    """`path`, or `stem-1.suffix`, `stem-2.suffix`, ... whichever does not exist yet."""
    candidate, k = path, 0
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
    return candidate


def cmd_inspect(args: argparse.Namespace) -> int:
    check_spec(args.data)
    from transferlab.data import load_dataset
    from transferlab.data.health import print_summary

    config = config_from_args(args)
    dataset = load_dataset(args.data, config, progress=not args.json)
    summary = dataset.summary()
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print_summary(summary)
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


def add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", metavar="FILE", help="local .pth / .safetensors backbone weights")
    parser.add_argument("--no-pretrained", action="store_true", help="train from scratch (a baseline)")
    parser.add_argument("--strategy", choices=["auto", *strategy_names()],
                        help="how to adapt the backbone (default auto)")
    parser.add_argument("--epochs", type=POSITIVE_INT,
                        help="epochs (default: 30 feature-extraction, 10 fine-tune, 20 gradual)")
    parser.add_argument("--batch-size", type=POSITIVE_INT, help="batch size (default 32)")
    parser.add_argument("--lr", type=POSITIVE_FLOAT, help="peak learning rate of the head (default 1e-3)")
    parser.add_argument("--out", metavar="RUN", help="run directory (default runs/<time>-<data>-<strategy>)")
    parser.add_argument("--find-lr", action="store_true", help="run Lightning's LR finder first and use its pick")
    parser.add_argument("--precision", choices=PRECISIONS, metavar="P",
                        help="Lightning precision: 32-true (default), 16-mixed, bf16-mixed, ...")
    parser.add_argument("--accelerator", choices=ACCELERATORS, help="cpu, gpu, mps or auto (default)")
    parser.add_argument("--devices", type=devices_type, help="number of devices, indices (0,1) or auto (default)")
    parser.add_argument("--strategy-ddp", metavar="NAME", help="Lightning distributed strategy, e.g. ddp")
    parser.add_argument("--workers", type=NONNEGATIVE_INT, help="DataLoader workers (default: cores - 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-report", action="store_true", help="skip the figures and report.html at the end")


def quiet_lightning() -> None:
    """Lightning's chatter off for the command line (a library import leaves logging alone)."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*(does not have many workers|LeafSpec|TensorBoard|litlogger).*")


def resume_overrides(args: argparse.Namespace, command: str) -> list[str]:
    """The flags a --resume honours (they do not change results); any other setting is refused
    with one line, since the run continues with the settings it started with."""
    refused = [f"--{flag.replace('_', '-')}" for flag, _, _ in flag_values(args) if flag not in RESUME_SAFE_FLAGS]
    refused += [name for name, given in (("--config", args.config), ("--set", args.overrides),
                                         ("--aug", getattr(args, "aug", None)), ("DATA", args.data)) if given]
    if refused:
        raise TransferlabError(
            f"--resume continues {args.resume} with the settings in its config.yaml; {', '.join(refused)} would change "
            f"them: drop {'it' if len(refused) == 1 else 'them'}, or start a new run with those settings: "
            f"`transferlab {command} --config {Path(args.resume) / 'config.yaml'} ... --out NEW`")
    return [f"{key}={json.dumps(value)}" for flag, key, value in flag_values(args) if flag in RESUME_SAFE_FLAGS]


def cmd_train(args: argparse.Namespace) -> int:
    from transferlab.run import check_out_dir

    if args.resume:
        overrides = resume_overrides(args, "train")
        check_resumable(args.resume)
    else:
        config = config_from_args(args)
        data = args.data or config.data.source
        if not data:
            raise TransferlabError("give DATA (a folder, a CSV manifest or builtin:NAME), or --resume RUN")
        check_spec(data)  # a missing folder is reported before the heavy imports
        check_out_dir(args.out)
    from transferlab.pipeline import run_training, summary_line
    from transferlab.run import is_worker_process

    quiet_lightning()
    if args.resume:
        run_dir = run_training(None, load_config(), resume=args.resume, progress=not args.quiet,
                               resume_overrides=overrides)
    else:
        run_dir = run_training(data, config, out=args.out, progress=not args.quiet)
    if not is_worker_process():
        print(f"run directory: {run_dir}")
        print(summary_line(run_dir))
        print_report_path(run_dir)
    return 0


def print_report_path(run_dir: Path) -> None:
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


def check_resumable(run: str, state_name: str = "state.json", command: str = "train") -> None:
    from transferlab.run import read_json

    path = Path(run)
    state = path / state_name
    if not path.is_dir():
        raise TransferlabError(f"--resume {run}: no such run directory")
    if not state.is_file():
        other = "cv_state.json" if state_name == "state.json" else "state.json"
        if (path / other).is_file():
            raise TransferlabError(f"{run} is a {'cross-validation' if other == 'cv_state.json' else 'training'} run: "
                                   f"resume it with `transferlab {'cv' if command == 'train' else 'train'} --resume {run}`")
        raise TransferlabError(f"{run} is not a {command} run that can be resumed (no {state_name})")
    data = read_json(state)
    if data.get("stage") == "done" or data.get("finished"):
        results = "metrics.json" if command == "train" else "cv_metrics.json"
        raise TransferlabError(f"{run} already finished: its results are in {path / results}")


def cmd_cv(args: argparse.Namespace) -> int:
    from transferlab.run import check_out_dir

    if args.resume:
        overrides = resume_overrides(args, "cv")
        check_resumable(args.resume, "cv_state.json", "cv")
    else:
        config = config_from_args(args)
        data = args.data or config.data.source
        if not data:
            raise TransferlabError("give DATA (a folder, a CSV manifest or builtin:NAME), or --resume RUN")
        check_spec(data)
        check_out_dir(args.out)
    from transferlab.cv import print_cv_table, run_cv

    quiet_lightning()
    if args.resume:
        run_dir = run_cv(None, load_config(), resume=args.resume, progress=not args.quiet,
                         resume_overrides=overrides)
    else:
        run_dir = run_cv(data, config, out=args.out, progress=not args.quiet)
    print_cv_table(run_dir)
    print(f"run directory: {run_dir}")
    print_report_path(run_dir)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    check_spec(args.data)
    from transferlab.evaluate import evaluate_run
    from transferlab.metrics import headline
    from transferlab.run import read_json

    out = evaluate_run(args.run, args.data, out=args.out, subset=args.subset, progress=not args.quiet)
    metrics = read_json(out / "metrics.json")
    values = headline(metrics["test"])
    print(f"{metrics['n_images']:,} images: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items() if v is not None))
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
    from transferlab.run import slug, write_json

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

    results = predict_files(args.run, args.images, top_k=args.top_k)
    failed = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for r in results:
            if "error" in r:
                continue
            best = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])
            print(f"{r['path']}: {best}")
    for r in failed:
        print(f"transferlab predict: error: {r['path']}: {r['error']}", file=sys.stderr)
    return 2 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from transferlab.pipeline import run_demo, summary_line
    from transferlab.run import check_out_dir

    check_out_dir(args.out)
    quiet_lightning()
    run_dir = run_demo(out=args.out, progress=not args.quiet)
    print(f"run directory: {run_dir}")
    print(summary_line(run_dir))
    print_report_path(run_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="transferlab",
        description="Turn a folder of labelled images into an honestly evaluated, explainable classifier.",
    )
    parser.add_argument("--version", action="version", version=f"transferlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        # argparse %-formats help strings: a literal % (as in "95% CI") must be doubled there
        sub = commands.add_parser(name, help=help_text.replace("%", "%%"), description=help_text,
                                  epilog=EXAMPLES.get(name), formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=handler)
        return sub

    inspect = command("inspect", cmd_inspect, "dataset health and statistics: classes, sizes, bad files, duplicates")
    add_data_options(inspect)
    add_config_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")

    train = command("train", cmd_train, "train a classifier by transfer learning and write a run directory")
    add_data_options(train, optional=True)
    add_train_options(train)
    add_aug_option(train)
    add_config_options(train)
    train.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")

    cv = command("cv", cmd_cv, "stratified K-fold cross-validation: mean ± std and 95% CI of every metric")
    add_data_options(cv, optional=True)
    cv.add_argument("--folds", type=number_type(int, 2, 1000), help="number of folds K (default 5)")
    cv.add_argument("--repeats", type=number_type(int, 1, 1000),
                    help="repeat the K folds R times with different shuffles (default 1)")
    add_train_options(cv)
    add_aug_option(cv)
    add_config_options(cv)
    cv.add_argument("--resume", metavar="RUN", help="continue an interrupted cross-validation at its fold")

    evaluate = command("evaluate", cmd_evaluate, "metrics of a trained run on another labelled set")
    evaluate.add_argument("run", metavar="RUN", help="a run directory written by `transferlab train`")
    evaluate.add_argument("data", metavar="DATA", help="labelled images: folder, CSV manifest or builtin:NAME")
    evaluate.add_argument("--out", metavar="DIR", help="evaluation directory (default RUN/evaluations/<time>-...)")
    evaluate.add_argument("--subset", type=POSITIVE_INT, metavar="N", help="score at most N images per class (seeded)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")

    explain = command("explain", cmd_explain, "what the model looks at: Grad-CAM family, feature maps, attention")
    explain.add_argument("run", metavar="RUN", help="a run directory written by `transferlab train`")
    explain.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    explain.add_argument("--method", default="gradcam",
                         choices=["gradcam", "gradcam++", "eigencam", "scorecam", "layercam", "featuremaps",
                                  "attention"], help="what to show (default gradcam)")
    explain.add_argument("--layer", metavar="NAME", help="CAM target layer (default: the backbone's last stage)")
    explain.add_argument("--class", dest="class_name", metavar="NAME", help="explain this class (default: predicted)")
    explain.add_argument("--out", metavar="DIR", help="output folder (default RUN/explanations/<time>-<method>)")
    explain.add_argument("--colormap", default="jet", type=colormap_type,
                         help="matplotlib colormap of the heatmap (default jet)")
    explain.add_argument("--alpha", type=number_type(float, 0, 1), default=0.45,
                         help="heatmap opacity over the image, 0-1 (default 0.45)")
    explain.add_argument("--top", type=number_type(int, 1, 4096), default=8,
                         help="featuremaps: channels per stage (default 8)")

    report = command("report", cmd_report, "rebuild a run's report.html from its saved artifacts")
    report.add_argument("run", metavar="RUN", help="a run directory of `transferlab train` or `transferlab cv`")

    rank = command("rank", cmd_rank, "rank candidate backbones by transferability (LogME), without fine-tuning")
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

    predict = command("predict", cmd_predict, "top-k classes of image files with a trained run")
    predict.add_argument("run", metavar="RUN", help="a run directory written by `transferlab train`")
    predict.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    predict.add_argument("--top-k", type=POSITIVE_INT, default=5, help="classes to show per image (default 5)")
    predict.add_argument("--json", action="store_true", help="print JSON on stdout")

    demo = command("demo", cmd_demo, "the whole path on a built-in data set, on a CPU, in minutes")
    demo.add_argument("--out", metavar="RUN", help="run directory (default runs/<time>-demo-...)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    preview = command("preview", cmd_preview, "what the augmentation does, as a PNG grid")
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
    return parser


def colormap_type(name: str) -> str:
    import matplotlib

    if name not in matplotlib.colormaps:
        raise argparse.ArgumentTypeError(f"{name!r} is not a matplotlib colormap (e.g. jet, viridis, inferno, magma)")
    return name


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
