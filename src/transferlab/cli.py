"""The command line: parse, build a config, call one library function. Nothing else lives here.

A user mistake (a `TransferlabError`) prints one line and exits 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from transferlab import __version__
from transferlab.config import Config, load_config, merge
from transferlab.errors import TransferlabError

EXAMPLES = {
    "inspect": """examples:
  transferlab inspect builtin:digits
  transferlab inspect ~/photos/pets --json > health.json
  transferlab inspect labels.csv --set data.max_pixels=200000000""",
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
}


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file overriding the defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set data.val_fraction=0.2 (repeatable)")
    parser.add_argument("--seed", type=int, help="seed of every random step (default 0)")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA", help="class-folder tree, CSV manifest (path,label) or builtin:NAME")
    parser.add_argument("--subset", type=int, metavar="N", help="keep at most N images per class (seeded)")
    parser.add_argument("--size", type=int, metavar="PX", help="input side in pixels (default: the backbone's)")
    parser.add_argument("--model", metavar="NAME", help="timm backbone name (default tf_efficientnet_lite0)")


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults < --config file < --set overrides < explicit flags (--aug last of all)."""
    overrides = list(getattr(args, "overrides", []) or [])
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    config = load_config(getattr(args, "config", None), overrides)
    if getattr(args, "aug", None):
        from transferlab.augment import augment_from_arg

        config = merge(config, {"augment": augment_from_arg(args.aug)}, origin=f"--aug {args.aug}")
    return config


def add_aug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--aug", metavar="PRESET|FILE",
                        help="augmentation preset (none, light, standard, heavy) or a YAML file of ops")


def unused_path(path: Path) -> Path:
    """`path`, or `stem-1.suffix`, `stem-2.suffix`, ... whichever does not exist yet."""
    candidate, k = path, 0
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
    return candidate


def cmd_inspect(args: argparse.Namespace) -> int:
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
    out = Path(args.out) if args.out else unused_path(Path("augment-preview.png"))
    path = preview_grid(images, names, config.augment, out, n=args.n, seed=config.seed)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferlab",
        description="Turn a folder of labelled images into an honestly evaluated, explainable classifier.",
    )
    parser.add_argument("--version", action="version", version=f"transferlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES.get(name),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=handler)
        return sub

    inspect = command("inspect", cmd_inspect, "dataset health and statistics: classes, sizes, bad files, duplicates")
    add_data_options(inspect)
    add_config_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")

    preview = command("preview", cmd_preview, "what the augmentation does, as a PNG grid")
    add_data_options(preview)
    add_aug_option(preview)
    add_config_options(preview)
    preview.add_argument("--n", type=int, default=8, help="augmented versions per image (default 8)")
    preview.add_argument("--rows", type=int, default=6, help="source images, one per class first (default 6)")
    preview.add_argument("--out", metavar="PNG", help="where to write the grid (default augment-preview.png, "
                                                     "never overwriting an existing one)")
    return parser



def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except TransferlabError as exc:
        print(f"transferlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"transferlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
