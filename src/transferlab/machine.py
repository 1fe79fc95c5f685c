"""What the machine gave this program: the CPU time other programs took on the CPUs it may run on.

A run's budget starts with work that has no cost model of its own (decoding, splitting, near-duplicates). When
another program held the CPUs meanwhile, that work took longer than it will next time, and the plan made after
it would be a smaller one for no reason of the data's. `Snapshot` reads the busy time of this process's CPUs
(/proc/stat, one line per CPU) and this process's own CPU time (with its finished children: decoding workers)
at a moment; `Snapshot.taken_by_others()` is the wall seconds since then that other programs took, on average
over those CPUs. Where /proc/stat is not there (macOS, Windows), nothing was taken: the plan is as before.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _busy(cpus: set[int]) -> float | None:
    """Seconds the CPUs `cpus` were busy (not idle, not waiting on I/O) since boot, or None off Linux."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    ticks, busy = os.sysconf("SC_CLK_TCK"), 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            busy += sum(values) - values[3] - values[4]
    return busy / ticks


def _ours() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass(frozen=True)
class Snapshot:
    wall: float
    busy: float | None
    ours: float
    cpus: int

    @staticmethod
    def now() -> Snapshot:
        cpus = _affinity()
        return Snapshot(time.monotonic(), _busy(cpus), _ours(), len(cpus))

    def taken_by_others(self) -> float:
        """Wall seconds since this snapshot that other programs took from this one: the busy time of its CPUs
        that was not its own, over their number (0 where it cannot be read)."""
        later = Snapshot.now()
        if self.busy is None or later.busy is None:
            return 0.0
        others = (later.busy - self.busy) - (later.ours - self.ours)
        return min(max(0.0, others / max(1, self.cpus)), later.wall - self.wall)
