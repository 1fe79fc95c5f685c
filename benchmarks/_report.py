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
