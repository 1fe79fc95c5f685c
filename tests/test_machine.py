"""What other programs take of the CPUs is measured, so that a plan made after a loaded start is not smaller."""

import subprocess
import sys
import time

import pytest

from transferlab import machine
from transferlab.machine import Snapshot

SPIN = "import time\nuntil = time.time() + {s}\nwhile time.time() < until: pass"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_the_cpu_time_other_programs_take_is_counted_and_this_programs_own_is_not():
    seconds = 3.0
    before = Snapshot.now()
    until = time.monotonic() + 1.5
    while time.monotonic() < until:  # this program busy on one CPU: not taken from it
        pass
    own = before.taken_by_others()
    before = Snapshot.now()
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN.format(s=seconds)]) for _ in range(before.cpus)]
    time.sleep(seconds)
    taken = before.taken_by_others()  # before they are reaped: another program's time, not a child's
    for spinner in spinners:
        spinner.kill()
        spinner.wait()
    # one spinner per CPU took most of each CPU for 3 s; this program's own second and a half counted for little
    assert taken >= 0.5 * seconds and taken <= seconds + 0.5, taken
    assert own < 0.5, own


def test_without_proc_stat_nothing_is_taken(monkeypatch):
    monkeypatch.setattr(machine, "_busy", lambda cpus: None)
    assert Snapshot.now().taken_by_others() == 0.0
