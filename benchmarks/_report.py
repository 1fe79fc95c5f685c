"""One line per benchmark: name, figure, baseline, ratio (and whether it meets its target)."""

from __future__ import annotations

import time
from contextlib import contextmanager


def report(name: str, figure: str, baseline: str, ratio: float, target: float | None = None,
           higher_is_better: bool = True) -> None:
    verdict = ""
    if target is not None:
        ok = ratio >= target if higher_is_better else ratio <= target
        verdict = f"  target {'>=' if higher_is_better else '<='} {target:g}x: {'met' if ok else 'MISSED'}"
    print(f"{name:<28} {figure:<40} baseline {baseline:<36} ratio {ratio:8.2f}x{verdict}", flush=True)


@contextmanager
def timer():
    box = {}
    start = time.perf_counter()
    yield box
    box["seconds"] = time.perf_counter() - start


def interleaved(contenders: dict, repeats: int = 3) -> dict[str, float]:
    """Median of `repeats` runs of each contender (a function returning its measurement), run in
    turns whose order alternates (A B, B A, A B, ...) so drift on a noisy machine hits all alike."""
    import statistics

    names = list(contenders)
    seen: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            seen[name].append(contenders[name]())
    return {name: statistics.median(values) for name, values in seen.items()}


def evict(paths) -> None:
    """Drop files from the page cache (POSIX_FADV_DONTNEED), so a read is a read from the disk."""
    import os

    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
