"""Console output: rich tables and progress bars on stderr, so stdout stays clean for --json."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


LOG_EVERY_ENV = "TRANSFERLAB_LOG_EVERY"
LOG_EVERY_DEFAULT, LOG_EVERY_FLOOR = 30.0, 1.0  # seconds between progress lines in a log, and the shortest allowed


def log_every() -> float:
    """The seconds between progress lines in a log ($TRANSFERLAB_LOG_EVERY, default 30); a value that
    is not a number of at least LOG_EVERY_FLOOR seconds is a ConfigError (the CLI checks it first)."""
    from transferlab.errors import ConfigError

    text = os.environ.get(LOG_EVERY_ENV, "").strip()
    if not text:
        return LOG_EVERY_DEFAULT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= LOG_EVERY_FLOOR):
        raise ConfigError(f"{LOG_EVERY_ENV}={text!r} is not a number of seconds of at least {LOG_EVERY_FLOOR:g} "
                          f"between progress lines: set it to e.g. 10, or unset it for {LOG_EVERY_DEFAULT:g}")
    return value


def size_text(count: float) -> str:
    """A number of bytes in the unit that shows it (512 B, 96 KB, 1.4 MB, 2.3 GB; powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.{1 if count < 10 * scale else 0}f} {unit}"
    return f"{count:.0f} B"


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class LogLines:
    """Progress for a log (no terminal: CI, nohup, a notebook's captured output): one line every
    log_every() seconds saying what, how far, the rate and the time left."""

    def __init__(self, label: str, total: int, unit: str = "images"):
        self.label, self.total, self.unit, self.done = label, total, unit, 0
        self.started = self.last = time.monotonic()
        self.every = log_every()

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            info(f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%), "
                 f"{rate:,.1f} {self.unit}/s, about {duration((self.total - self.done) / max(rate, 1e-9))} left"
                 + (f"; {note}" if note else ""))


@contextlib.contextmanager
def progress_bar(label: str, total: int, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A progress bar for `total` steps in a terminal, progress lines in a log; yields `advance(n)`."""
    if not enabled or total == 0:
        yield lambda n=1: None
        return
    if not console.is_terminal:
        lines = LogLines(label, total)
        yield lines.advance
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
