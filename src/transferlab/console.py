"""Console output: rich tables and progress bars on stderr, so stdout stays clean for --json."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


@contextlib.contextmanager
def progress_bar(label: str, total: int, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A progress bar for `total` steps; yields `advance(n)`."""
    if not enabled or total == 0:
        yield lambda n=1: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)


def warn(message: str) -> None:
    """One line on stderr (never wrapped: a path or a command in it stays copyable)."""
    console.print(f"[yellow]warning:[/yellow] {escape(message)}", markup=True, soft_wrap=True)


def info(message: str) -> None:
    console.print(message, markup=False, soft_wrap=True)
