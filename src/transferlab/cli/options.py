"""The command line's vocabulary: one-line argparse errors, checked number types, the options
several commands share, and how flags become config overrides (with their own name as origin)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from collections.abc import Callable
from pathlib import Path

from transferlab.config import ENGINE_CHOICES, Config, load_config, merge, resume_safe_keys, setting_of, unflatten
from transferlab.errors import TransferlabError
from transferlab.strategies import strategy_names

EXAMPLES = {
    "audit": """examples:
  transferlab audit ~/photos/pets                  # prints the findings, writes audit.json
  transferlab audit labels.csv --json > audit.json
  transferlab audit builtin:digits --size 96 --set audit.similarity=0.99 --out digits-audit.json""",
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
    "export": """examples:
  transferlab export runs/pets --format onnx              # RUN/exports/onnx/model.onnx + bundle.json
  transferlab export runs/pets --format openvino --out deploy/pets-ov
  transferlab export runs/pets --format torchscript --check 200""",
    "predict": """examples:
  transferlab predict runs/pets photo1.jpg photo2.png
  transferlab predict runs/pets ~/new/*.jpg --top-k 3 --json > predictions.json
  transferlab predict runs/pets photo.jpg --engine onnxruntime --tta""",
    "serve": """examples:
  transferlab serve runs/pets                           # open http://127.0.0.1:7860/
  transferlab serve runs/pets --port 8080 --engine onnxruntime
  curl -F image=@cat.jpg http://127.0.0.1:7860/api/predict""",
    "demo": """examples:
  transferlab demo
  transferlab demo --out runs/my-demo""",
    "preview": """examples:
  transferlab preview builtin:digits --aug heavy --out grid.png
  transferlab preview ~/photos/pets --aug my_augment.yaml --n 6 --rows 4
  transferlab preview labels.csv --set augment.cutmix_alpha=1.0""",
}

# flag -> the config key it sets; its type, choices, range, help and default come from the key's declaration
FLAG_KEYS = {"seed": "seed", "subset": "data.subset", "size": "preprocess.size", "model": "model.name",
             "weights": "model.weights", "strategy": "strategy.name", "epochs": "train.epochs",
             "batch_size": "train.batch_size", "lr": "optim.lr", "precision": "train.precision",
             "accelerator": "train.accelerator", "devices": "train.devices", "strategy_ddp": "train.ddp",
             "workers": "train.workers", "budget": "train.budget", "engine": "train.engine", "folds": "cv.folds",
             "repeats": "cv.repeats", "tracker": "tracking.tracker", "tracker_uri": "tracking.uri",
             "experiment": "tracking.experiment", "task": "task.name"}
SWITCHES = {"no_pretrained": ("model.pretrained", False), "find_lr": ("train.find_lr", True),
            "no_report": ("train.report", False)}  # flags without a value


def add_setting(parser: argparse.ArgumentParser, flag: str, *, metavar: str | None = None, **extra) -> None:
    """The flag of a config key, as the key's declaration says: its type or choices, range and help."""
    key = FLAG_KEYS[flag.removeprefix("--").replace("-", "_")]
    annotation, field = setting_of(key)
    kinds = [a for a in (typing.get_args(annotation) or (annotation,)) if a is not type(None)]
    options: dict = {"metavar": metavar}
    if typing.get_origin(kinds[0]) is typing.Literal:
        options = {"choices": typing.get_args(kinds[0])}
    elif kinds[0] in (int, float) and len(kinds) == 1:
        options["type"] = number_type(kinds[0], interval=field.metadata["interval"], what=extra.pop("what", ""))
    elif field.metadata["check"] is not None:
        options["type"] = checked(field.metadata["check"])
    default = field.default if field.default is not dataclasses.MISSING else None
    shown = "" if default is None or "default" in field.metadata["help"] else f" (default {default})"
    parser.add_argument(flag, help=extra.pop("help", field.metadata["help"]) + shown, **options, **extra)


def checked(check: Callable) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None
        return text

    return parse


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `transferlab train: error: argument --lr: ... (see --help)`."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def number_type(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                interval: str | None = None, what: str = "") -> Callable[[str], float]:
    """An argparse type: a finite `kind` number in [low, high] (low excluded with `low_open`), or in a
    declared `interval` such as "(0, inf]"."""
    if interval is not None:
        low, high = (float(v) for v in interval[1:-1].split(","))
        low_open, high = interval[0] == "(", None if math.isinf(high) else high

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
SIZE = number_type(int, 8, 4096, what="between 8 and 4096 pixels")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file overriding the defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set data.val_fraction=0.2 (repeatable)")
    add_setting(parser, "--seed")


def add_data_options(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """DATA (optional where --resume or a config's data.source can stand in) and the data flags."""
    parser.add_argument("data", metavar="DATA", nargs="?" if optional else None,
                        help="class-folder tree, CSV manifest (path,label[,group]) or builtin:NAME")
    add_setting(parser, "--subset", metavar="N")
    add_setting(parser, "--size", metavar="PX", what="between 8 and 4096 pixels")
    add_setting(parser, "--model", metavar="NAME")


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults < --config file < --set overrides < explicit flags (--aug last of all)."""
    config = load_config(getattr(args, "config", None), list(getattr(args, "overrides", []) or []))
    for flag, key, value in flag_values(args):
        config = merge(config, unflatten({key: value}), origin=f"--{flag.replace('_', '-')}")
    if getattr(args, "aug", None):
        from transferlab.augment import augment_from_arg

        config = merge(config, {"augment": augment_from_arg(args.aug)}, origin=f"--aug {args.aug}")
    return config


def flag_values(args: argparse.Namespace) -> list[tuple[str, str, object]]:
    """(flag, config key, value) of every config-changing flag given on the command line."""
    found = [(flag, key, getattr(args, flag)) for flag, key in FLAG_KEYS.items()
             if getattr(args, flag, None) is not None]
    return found + [(flag, key, value) for flag, (key, value) in SWITCHES.items() if getattr(args, flag, False)]


def add_aug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--aug", metavar="PRESET|FILE",
                        help="augmentation preset (none, light, standard, heavy) or a YAML file of ops")


def writable_output(out: str | None, default: str, *, force: bool) -> Path:
    """--out, refused when it exists (unless --force), or `default` numbered so nothing is replaced."""
    if out is None:
        return unused_path(Path(default))
    path = Path(out).expanduser()
    from transferlab.rundir import probe_writable

    probe_writable(path, folder=False)
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


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", default="auto", choices=ENGINE_CHOICES,
                        help="what runs the model (default auto: onnxruntime on a CPU for 2,000 images or more, or "
                             "when its export is cached; else torch)")
    parser.add_argument("--tta", nargs="?", const="", metavar="VIEWS",
                        help="test-time augmentation: average over the image and its views (default hflip; or a "
                             "list such as hflip,crop90)")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", choices=["auto", *strategy_names()],
                        help="how to adapt the backbone (default auto)")
    for flag in ("--weights", "--epochs", "--batch-size", "--lr", "--precision", "--accelerator", "--devices",
                 "--strategy-ddp", "--workers", "--budget", "--engine", "--tracker", "--tracker-uri", "--experiment",
                 "--task"):
        add_setting(parser, flag, metavar=flag.removeprefix("--").split("-")[0].upper())
    parser.add_argument("--no-pretrained", action="store_true", help="train from scratch (a baseline)")
    parser.add_argument("--out", metavar="RUN", help="run directory (default runs/<time>-<data>-<strategy>)")
    parser.add_argument("--find-lr", action="store_true", help="run Lightning's LR finder first and use its pick")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-report", action="store_true", help="skip the figures and report.html at the end")


def colormap_type(name: str) -> str:
    import matplotlib

    if name not in matplotlib.colormaps:
        raise argparse.ArgumentTypeError(f"{name!r} is not a matplotlib colormap (e.g. jet, viridis, inferno, magma)")
    return name


def resume_overrides(args: argparse.Namespace, command: str) -> list[str]:
    """The flags a --resume honours (their keys are declared resume-safe: they do not change
    results); any other setting is refused with one line, since the run continues with the
    settings it started with."""
    safe = resume_safe_keys()
    refused = [f"--{flag.replace('_', '-')}" for flag, key, _ in flag_values(args) if key not in safe]
    refused += [name for name, given in (("--config", args.config), ("--set", args.overrides),
                                         ("--aug", getattr(args, "aug", None)), ("DATA", args.data)) if given]
    if refused:
        raise TransferlabError(
            f"--resume continues {args.resume} with the settings in its config.yaml; {', '.join(refused)} would change "
            f"them: drop {'it' if len(refused) == 1 else 'them'}, or start a new run with those settings: "
            f"`transferlab {command} --config {Path(args.resume) / 'config.yaml'} ... --out NEW`")
    return [f"{key}={json.dumps(value)}" for flag, key, value in flag_values(args) if key in safe]
