"""The run directory: its lock, and what it refuses to write through."""

from __future__ import annotations

import os

import pytest

from transferlab.run import RunError, RunLock


def test_a_symlinked_lock_is_refused_and_its_target_left_untouched(tmp_path):
    run, target = tmp_path / "run", tmp_path / "precious.txt"
    run.mkdir()
    target.write_text("keep me")
    (run / ".lock").symlink_to(target)
    with pytest.raises(RunError, match=r"\.lock is not a lock file \(a symlink\)"):
        RunLock(run).__enter__()
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_lock_that_is_a_folder_or_a_fifo_is_one_line(tmp_path, kind):
    run = tmp_path / "run"
    run.mkdir()
    if kind == "folder":
        (run / ".lock").mkdir()
    else:
        os.mkfifo(run / ".lock")
    with pytest.raises(RunError, match=r"\.lock is not a lock file \(a (folder|FIFO)"):
        RunLock(run).__enter__()
