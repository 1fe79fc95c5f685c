"""The command line: parse, build a config, call one library function. Nothing else lives here.

A user mistake (a `TransferlabError`) prints one line and exits 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from transferlab import __version__
from transferlab.config import Config, load_config
from transferlab.errors import TransferlabError

EXAMPLES = {
    "inspect": """examples:
  transferlab inspect builtin:digits
  transferlab inspect ~/photos/pets --json > health.json
  transferlab inspect labels.csv --set data.max_pixels=200000000""",
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
    """Defaults < --config file < --set overrides < explicit flags."""
    overrides = list(getattr(args, "overrides", []) or [])
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    return load_config(getattr(args, "config", None), overrides)


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
