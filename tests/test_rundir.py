"""The run directory: its lock, and what it refuses to write through."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import TINY_FLAGS, colour_images, one_error_line
from transferlab.cli import main
from transferlab.run import RUN_DIR_ENV, RunError, RunLock


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


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


@pytest.mark.parametrize("budget", ["abc", "-5", "0s", "nan", "inf", "30000000000h"])
def test_a_bad_budget_is_refused_before_a_run_directory_exists(budget, tmp_path, isolated, capsys):
    data = colour_images(tmp_path / "data")
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--budget", budget, *TINY_FLAGS]) == 2
    one_error_line(capsys, "train.budget")
    assert not (tmp_path / "run").exists()


def test_a_diverged_run_stops_with_one_line_and_is_marked_failed(tmp_path, isolated, capsys):
    data = colour_images(tmp_path / "data")
    run = tmp_path / "run"
    argv = ["train", str(data), "--out", str(run), "--strategy", "feature-extraction", "--lr", "1e30",
            "--epochs", "3", *TINY_FLAGS]
    assert main(argv) == 2
    one_error_line(capsys, "stage head: training diverged in epoch", "lower --lr")
    state = json.loads((run / "state.json").read_text())  # valid JSON: no NaN was written
    assert "diverged" in state["failed"]
    assert main(["train", "--resume", str(run)]) == 2
    one_error_line(capsys, "failed and cannot be resumed")


def test_nan_weights_are_refused_by_every_command_that_loads_a_model(tiny_run, tmp_path, isolated, capsys):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    weights = load_file(run / "model" / "weights.safetensors")
    weights["head.1.weight"][0, 0] = float("nan")
    save_file(weights, run / "model" / "weights.safetensors")
    image = str(next(tiny_run[1].rglob("*.png")))
    for argv in (["predict", str(run), image], ["predict", str(run), image, "--json"],
                 ["evaluate", str(run), str(tiny_run[1])], ["export", str(run), "--format", "onnx"],
                 ["explain", str(run), image, "--out", str(tmp_path / "x")]):
        assert main(argv) == 2, argv
        one_error_line(capsys, "NaN or infinite weights")


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_process(tmp_path):
    """DataLoader workers are forked while the lock is held: after a kill -9 of the trainer, an
    orphaned worker kept `--resume` refused as "in use by <dead pid>" for seconds."""
    import signal
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    code = ("import os, sys, time; from pathlib import Path; from transferlab.run import RunLock; "
            "RunLock(Path(sys.argv[1])).__enter__()\n"
            "if os.fork() == 0: time.sleep(60); os._exit(0)\n"
            "print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with RunLock(run):  # taken at once: the forked child still lives, but holds no lock
            pass
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
