"""The run directory: its lock, and what it refuses to write through."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import SCRIPT, TINY, TINY_FLAGS, colour_images, interactive_sigint, one_error_line, save
from transferlab.cli import main
from transferlab.config import load_config
from transferlab.run import run_training
from transferlab.rundir import RUN_DIR_ENV, RunError, RunLock


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


@pytest.mark.parametrize("budget", ["abc", "-5", "0s", "0", "0m", "off", "nan", "inf", "30000000000h"])
def test_a_bad_budget_is_refused_before_a_run_directory_exists(budget, tmp_path, isolated, capsys):
    data = colour_images(tmp_path / "data")
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--budget", budget, *TINY_FLAGS]) == 2
    one_error_line(capsys, "--budget")
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
    code = ("import os, sys, time; from pathlib import Path; from transferlab.rundir import RunLock; "
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


# --- one process per run directory ------------------------------------------------------------

def start_training(data: Path, out: Path, epochs: int) -> subprocess.Popen:
    command = [str(SCRIPT), "train", str(data), "--out", str(out), "--strategy", "fine-tune", "--epochs", str(epochs),
               "--quiet", *TINY_FLAGS, "--set", "strategy.fine_tune.head_warmup_epochs=0"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != RUN_DIR_ENV},
                            preexec_fn=interactive_sigint)


def wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        time.sleep(0.1)


@pytest.mark.slow  # a training process and a second console script, ~20 s alone: make test-slow (CI runs it)
def test_a_second_process_on_a_running_run_is_refused_naming_the_owner(tmp_path, isolated):
    data = colour_images(tmp_path / "data")
    first = start_training(data, tmp_path / "run", epochs=5000)
    lock = tmp_path / "run" / ".lock"
    wait_for(lambda: lock.is_file() and str(first.pid) in lock.read_text())
    second = subprocess.run([str(SCRIPT), "train", "--resume", str(tmp_path / "run"), "--quiet"], capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"is in use by process {first.pid}" in second.stderr and second.stderr.count("\n") == 1
    first.send_signal(signal.SIGINT)  # Ctrl-C: the first stops cleanly, the run stays resumable
    _, err = first.communicate(timeout=120)
    resume = f"continue with `transferlab train --resume {tmp_path / 'run'}`"
    assert first.returncode == 130 and resume in err, err[-2000:]
    assert json.loads((tmp_path / "run" / "state.json").read_text())["finished"] is False


def test_a_lock_left_by_a_killed_process_is_stale_and_taken_over(tmp_path, isolated):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from transferlab.rundir import RunLock; RunLock(Path(sys.argv[1])).__enter__(); "
                               "print('held', flush=True); time.sleep(600)", str(run)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    from transferlab.rundir import RunError, RunLock

    with pytest.raises(RunError, match=f"in use by process {holder.pid}"):
        RunLock(run).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunLock(run):  # the kernel dropped the dead process's lock; its lock file does not block
        assert str(os.getpid()) in (run / ".lock").read_text()


# --- a run that fails before its first checkpoint ---------------------------------------------

def test_nothing_is_created_for_refused_weights_and_out_is_checked_before_data(tmp_path, monkeypatch, capsys, isolated):
    monkeypatch.chdir(tmp_path)
    data = colour_images(tmp_path / "data")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not torch")
    assert main(["train", str(data), "--weights", str(bad), "--out", str(tmp_path / "run"), *TINY_FLAGS]) == 2
    one_error_line(capsys, "bad.pth")
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
    import transferlab.data.dataset as dataset_module
    import transferlab.run as pipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("the data was loaded before --out was checked")

    monkeypatch.setattr(dataset_module, "load_dataset", no_loading)
    monkeypatch.setattr(pipeline, "load_dataset", no_loading)
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("x")
    assert main(["train", "builtin:fashion-mnist", "--out", str(used)]) == 2
    one_error_line(capsys, "already exists and is not empty")


def test_a_run_killed_before_its_strategy_was_settled_resumes_from_its_start(tmp_path, monkeypatch, capsys, isolated):
    import transferlab.search as auto

    data = colour_images(tmp_path / "data")
    real = auto.choose

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for kill -9 during the automatic decision

    monkeypatch.setattr(auto, "choose", killed)
    with pytest.raises(KeyboardInterrupt):
        run_training(str(data), load_config(overrides=[*TINY, "train.epochs=1"]), out=tmp_path / "run",
                     progress=False)
    assert {"config.yaml", "state.json", "split.csv"} <= {p.name for p in (tmp_path / "run").iterdir()}
    monkeypatch.setattr(auto, "choose", real)
    assert main(["train", "--out", str(tmp_path / "run"), str(data)]) == 2
    one_error_line(capsys, f"continue it with `transferlab train --resume {tmp_path / 'run'}`")
    assert main(["train", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "state.json").read_text())["finished"] is True


# --- damaged, missing and read-only run files -------------------------------------------------

DAMAGE = {
    "half weights": lambda run: (run / "model" / "weights.safetensors").write_bytes(
        (run / "model" / "weights.safetensors").read_bytes()[:5000]),
    "empty weights": lambda run: (run / "model" / "weights.safetensors").write_bytes(b""),
    "wrong class count": lambda run: (run / "model" / "model.json").write_text(json.dumps(
        dict(json.loads((run / "model" / "model.json").read_text()), classes=["a", "b", "c", "d", "e"]))),
    "no normalize": lambda run: (run / "model" / "model.json").write_text(json.dumps(
        {k: v for k, v in json.loads((run / "model" / "model.json").read_text()).items() if k != "normalize"})),
    "invalid json": lambda run: (run / "model" / "model.json").write_text("{not json"),
    **{f"model.json {key}={value}": (lambda key, value: lambda run: edit_meta(run, key, value))(key, value)
       for key, value in (("resize.size", 100000), ("resize.size", -5), ("resize.mode", "zoom"),
                          ("normalize.std", [0, 0, 0]), ("classes", ["red", "red"]), ("resize.pad_fill", [0, 0, 999]))},
}


def edit_meta(run: Path, key: str, value) -> None:
    meta = json.loads((run / "model" / "model.json").read_text())
    section, _, name = key.rpartition(".")
    (meta[section] if section else meta)[name] = value
    (run / "model" / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_model_files_give_one_line_in_every_command(damage, tmp_path, tiny_run, capsys, isolated):
    run, data = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    DAMAGE[damage](copy)
    image = str(data / "red" / "000.png")
    for argv in (["predict", str(copy), image], ["evaluate", str(copy), str(data), "--quiet"],
                 ["explain", str(copy), image]):
        assert main(argv) == 2, (damage, argv)
        one_error_line(capsys, str(copy / "model"))


def crashed_run(tmp_path: Path, data: Path) -> Path:
    import lightning as L

    class Crash(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(str(data), load_config(overrides=[*TINY, "strategy.name=fine-tune", "train.epochs=3",
                                                       "strategy.fine_tune.head_warmup_epochs=0"]),
                     out=tmp_path / "run", progress=False, extra_callbacks=[Crash()])
    return tmp_path / "run"


def test_resume_with_damaged_files_says_what_to_do(tmp_path, capsys, isolated):
    data = colour_images(tmp_path / "data")
    run = crashed_run(tmp_path, data)
    last = run / "checkpoints" / "main" / "last.ckpt"
    intact = last.read_bytes()
    last.write_bytes(intact[: len(intact) // 2])
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    one_error_line(capsys, "last.ckpt is damaged", "delete it to restart that stage")

    class Payload:
        def __reduce__(self):
            return (print, ("this would run",))

    import torch

    torch.save({"state_dict": {}, "evil": Payload()}, last)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    line = one_error_line(capsys, "holds pickled objects that could run code", absent=("weights_only=False",))
    assert "this would run" not in line
    last.write_bytes(intact)
    (run / "split.csv").rename(run / "split.bak")
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    one_error_line(capsys, "split.csv is missing")
    (run / "split.bak").rename(run / "split.csv")
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # intact again: it resumes


def tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A real small file system (tmpfs, so root is needed), unmounted afterwards."""
    mount = tmp_path / "disk"
    if os.geteuid() != 0 or not tmpfs(mount, "64k"):
        pytest.skip("needs root and tmpfs to make a small or read-only file system")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_read_only_run_directory_suggests_out(small_disk, tiny_run, capsys, isolated):
    run, data = tiny_run
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    copy = small_disk / "run"
    shutil.copytree(run, copy)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert main(["evaluate", str(copy), str(data), "--quiet"]) == 2
    one_error_line(capsys, "read-only", "--out")
    assert main(["evaluate", str(copy), str(data), "--quiet", "--out", str(small_disk.parent / "eval")]) == 0


def test_a_full_disk_stops_with_one_line_and_the_run_resumes_after_space_is_freed(small_disk, tmp_path, capsys, isolated):
    data = colour_images(tmp_path / "data")
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)
    run = small_disk / "run"
    argv = ["train", str(data), "--out", str(run), "--strategy", "fine-tune", "--epochs", "2", "--quiet",
            *TINY_FLAGS, "--set", "strategy.fine_tune.head_warmup_epochs=0", "--set", "model.name=test_vit"]
    assert main(argv) == 2
    one_error_line(capsys, "the disk is full", "--resume")
    state = json.loads((run / "state.json").read_text())  # what was written is intact
    assert state["finished"] is False
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert json.loads((run / "state.json").read_text())["finished"] is True


# --- never overwrite a user's file -------------------------------------------------------------

def test_outputs_never_replace_a_users_file_without_force(tmp_path, tiny_run, capsys, isolated):
    run, data = tiny_run
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    args = ["preview", str(data), "--size", "32", "--n", "2", "--rows", "2", "--out", str(victim)]
    assert main(args) == 2
    one_error_line(capsys, "already exists", "--force")
    assert victim.read_bytes() == b"precious"
    assert main([*args, "--force"]) == 0 and victim.read_bytes() != b"precious"
    ranking = tmp_path / "victim.json"
    ranking.write_text("precious")
    rank = ["rank", str(data), "--models", "test_efficientnet", "--size", "32", "--no-pretrained", "--quiet",
            "--out", str(ranking)]
    assert main(rank) == 2 and ranking.read_text() == "precious"
    one_error_line(capsys, "already exists")
    for folder in ("a", "b"):
        save(Image.open(data / ("red" if folder == "a" else "blue") / "000.png"), tmp_path / folder / "000.png")
    assert main(["explain", str(run), str(tmp_path / "a" / "000.png"), str(tmp_path / "b" / "000.png"),
                 "--out", str(tmp_path / "x")]) == 0
    written = capsys.readouterr().out.split()
    assert len(written) == 2 and len(set(written)) == 2 and all(Path(p).is_file() for p in written)


# --- --resume never silently ignores flags or edits -------------------------------------------

def test_resume_refuses_conflicting_flags_and_edits_and_honours_safe_ones(tmp_path, capsys, isolated):
    data = colour_images(tmp_path / "data")
    run = crashed_run(tmp_path, data)
    assert main(["train", "--resume", str(run), "--epochs", "1", "--lr", "0.5", "--strategy", "gradual"]) == 2
    one_error_line(capsys, "--strategy, --epochs, --lr would change them")
    config = run / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("seed: 0", "seed: 1"))
    assert main(["train", "--resume", str(run)]) == 2
    one_error_line(capsys, "was edited since the run started (seed: 0 -> 1)", absent=("data changed",))
    config.write_text(original.replace("size: 32", "size: 64"))  # the model's size (its 20 px images are stored at 20)
    assert main(["train", "--resume", str(run)]) == 2
    one_error_line(capsys, "model.size: 32 -> 64")
    config.write_text(original)
    assert main(["train", "--resume", str(run), "--workers", "0", "--quiet"]) == 0
    assert "train.workers=0 honoured" in capsys.readouterr().err



def test_a_process_that_opened_many_runs_forks_quietly(tmp_path):
    """A notebook or a benchmark opens run after run in one process; a DataLoader worker forked
    after that must close the held lock once, without 'Exception ignored ... Bad file descriptor'."""
    import subprocess
    import sys

    code = f"""
import os
from pathlib import Path
from transferlab.rundir import RunLock
for k in range(3):
    Path("{tmp_path}/run%d" % k).mkdir()
    with RunLock(Path("{tmp_path}/run%d" % k)):
        pass
with RunLock(Path("{tmp_path}/run0")):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Exception ignored" not in done.stderr, done.stderr[-2000:]
