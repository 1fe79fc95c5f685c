"""Hardening (issue 12): every bad input, careless command and flaky machine gets one clear line;
nothing hangs, explodes, mislabels or is lost. One test (or group) per numbered item of the issue."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, TINY_FLAGS, colour_images, interactive_sigint, one_error_line, save
from transferlab.cli import main
from transferlab.config import load_config
from transferlab.data import load_dataset
from transferlab.data.sources import open_source
from transferlab.pipeline import run_training
from transferlab.run import RUN_DIR_ENV

SCRIPT = Path(sys.executable).with_name("transferlab")  # the console script pip installed
COMMANDS = ("inspect", "train", "cv", "evaluate", "explain", "report", "rank", "predict", "demo", "preview")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


# --- 1. the console script's --help ----------------------------------------------------------

def test_1_installed_console_script_prints_help_for_every_command():
    assert SCRIPT.is_file(), f"the console script is not installed next to {sys.executable}"
    for args in (["--help"], ["-h"], *([c, "--help"] for c in COMMANDS)):
        result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.startswith("usage: transferlab"), (args, result.stderr[-500:])
    assert "95% CI" in subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True).stdout


# --- 2. symlinks: followed once, loops detected, never out of DATA ----------------------------

@pytest.mark.timeout(60)
def test_2_symlink_loops_aliases_and_escapes_are_listed_not_followed(tmp_path):
    root = colour_images(tmp_path / "data")
    outside = colour_images(tmp_path / "elsewhere", classes=("green",))
    (root / "red" / "up").symlink_to("..")  # a loop back to the data root
    (root / "blue" / "again").symlink_to(root / "blue")  # a loop onto its own folder
    (root / "disk").symlink_to("/")  # a class folder that would walk the whole disk
    (root / "green").symlink_to(outside / "green")  # a class folder outside DATA
    (root / "red" / "alias.png").symlink_to(root / "red" / "000.png")  # the same file twice
    (root / "blue" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link
    inner = colour_images(root / ".pool", per_class=2, classes=("x",))  # hidden: not a class of its own
    (root / "red" / "shared").symlink_to(inner / "x")  # a link to a folder inside DATA: followed

    source = open_source(str(root))
    labels = {}
    for item in source.items:
        labels.setdefault(item.label, []).append(item.path)
    assert sorted(labels) == ["blue", "red"]
    assert len(labels["blue"]) == 8 and all(p.startswith("blue/") for p in labels["blue"])
    assert len(labels["red"]) == 10  # its 8 files and the 2 behind the inner link, the alias once
    reasons = {entry["path"]: entry["reason"] for entry in source.ignored}
    assert "folder already read" in reasons["red/up"] and "folder already read" in reasons["blue/again"]
    assert "outside DATA" in reasons["disk"] and "outside DATA" in reasons["green"]
    assert "same file as red/000.png" in reasons["red/alias.png"]
    assert {e["path"]: e["reason"] for e in source.skipped}["blue/gone.png"].startswith("broken symlink")
    assert any("class folder 'disk' is not read" in w for w in source.warnings)
    # DATA itself may be a link: the user named it
    (tmp_path / "link-to-data").symlink_to(outside)
    assert [i.label for i in open_source(str(tmp_path / "link-to-data")).items] == ["green"] * 8


# --- 3. special files: only regular files are read, with a size limit, in every command -------

@pytest.mark.timeout(120)
def test_3_fifos_devices_and_huge_files_never_hang_or_fill_memory(tmp_path, tiny_run, capsys):
    root = colour_images(tmp_path / "data")
    os.mkfifo(root / "red" / "pipe.png")
    manifest = tmp_path / "m.csv"
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(root.rglob("0*.png"))]
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    big = tmp_path / "big.png"
    with open(big, "wb") as handle:  # a sparse 2 GB file named like an image
        handle.truncate(2 * 2**30)
    manifest.write_text("path,label\n" + "\n".join(rows + ["zero.png,red", "big.png,blue", "data/red/pipe.png,red"])
                        + "\n")
    config = load_config(overrides=["preprocess.size=32", "data.decode_workers=1"])
    dataset = load_dataset(str(manifest), config, progress=False)
    reasons = {s["path"]: s["reason"] for s in dataset.skipped}
    assert reasons["zero.png"].startswith("not a regular file (a character device)")
    assert reasons["data/red/pipe.png"].startswith("not a regular file (a FIFO")
    assert reasons["big.png"].startswith("file too large: 2048 MB exceeds data.max_file_mb=512")
    assert len(dataset) == 16
    assert main(["inspect", str(root), "--size", "32"]) == 0  # the FIFO inside a class folder: listed, no hang
    assert "pipe.png" in capsys.readouterr().out
    run, data = tiny_run
    good = data / "red" / "000.png"
    (tmp_path / "folder.png").mkdir()
    assert main(["predict", str(run), str(good), str(root / "red" / "pipe.png"), str(tmp_path / "zero.png"),
                 str(tmp_path / "folder.png"), "--json"]) == 2
    results = json.loads(capsys.readouterr().out)
    assert "top" in results[0] and "FIFO" in results[1]["error"] and "character device" in results[2]["error"]
    assert results[3]["error"].startswith("not a regular file (a folder)")


# --- 4. one decode path: explain refuses a decompression bomb as predict does ------------------

def test_4_explain_and_predict_refuse_the_same_decompression_bomb(tmp_path, tiny_run, capsys):
    run, _ = tiny_run
    bomb = tmp_path / "bomb.png"
    Image.new("1", (16000, 16000)).save(bomb)  # a few hundred KB declaring 256 Mpx
    assert bomb.stat().st_size < 1_000_000
    assert main(["explain", str(run), str(bomb), "--out", str(tmp_path / "x")]) == 2
    one_error_line(capsys, "bomb.png", "too large: 16000x16000", "data.max_pixels")
    assert main(["predict", str(run), str(bomb)]) == 2
    one_error_line(capsys, "too large: 16000x16000")
    assert not (tmp_path / "x").exists()


# --- 5. featuremaps --top -1 ------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_5_featuremaps_with_a_negative_top_is_refused_at_once(tiny_run, capsys):
    run, data = tiny_run
    assert main(["explain", str(run), str(data / "red" / "000.png"), "--method", "featuremaps", "--top", "-1"]) == 2
    one_error_line(capsys, "--top", "-1")
    from transferlab.interpret import ExplainError, explain

    with pytest.raises(ExplainError, match="--top 0"):
        explain(run, [data / "red" / "000.png"], method="featuremaps", top=0)


# --- 6. non-UTF-8 file names ------------------------------------------------------------------

def test_6_a_non_utf8_file_name_trains_and_is_recorded_escaped(tmp_path):
    root = colour_images(tmp_path / "data")
    Image.open(root / "red" / "000.png").transpose(Image.Transpose.ROTATE_90).save(
        os.fsdecode(bytes(root / "red") + b"/caf\xe9.png"))
    run = run_training(str(root), load_config(overrides=[*TINY, "strategy.name=feature-extraction", "train.epochs=1"]),
                       out=tmp_path / "run", progress=False)
    split = (run / "split.csv").read_text(encoding="utf-8")
    assert "red/caf\\xe9.png" in split and len(split.splitlines()) == 18
    assert json.loads((run / "metrics.json").read_text())["data"]["n_images"] == 17


# --- 7. numeric options and names validated at parse time -------------------------------------

@pytest.mark.parametrize("argv,fragment", [
    (["train", "builtin:digits", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["train", "builtin:digits", "--lr", "-1"], "argument --lr: must be > 0"),
    (["train", "builtin:digits", "--lr", "0"], "argument --lr: must be > 0"),
    (["train", "builtin:digits", "--lr", "nan"], "argument --lr: must be a finite number"),
    (["train", "builtin:digits", "--seed", "-1"], "argument --seed"),
    (["train", "builtin:digits", "--size", "0"], "argument --size: must be between 8 and 4096"),
    (["train", "builtin:digits", "--size", "100000"], "argument --size: must be between 8 and 4096"),
    (["train", "builtin:digits", "--subset", "0"], "argument --subset: must be >= 1"),
    (["train", "builtin:digits", "--epochs", "-1"], "argument --epochs: must be >= 1"),
    (["cv", "builtin:digits", "--folds", "1"], "argument --folds"),
    (["predict", "runs/x", "a.png", "--top-k", "0"], "argument --top-k: must be >= 1"),
    (["preview", "builtin:digits", "--rows", "0"], "argument --rows"),
    (["preview", "builtin:digits", "--n", "-2"], "argument --n"),
    (["explain", "runs/x", "a.png", "--colormap", "bogus"], "'bogus' is not a matplotlib colormap"),
    (["explain", "runs/x", "a.png", "--alpha", "2"], "argument --alpha"),
    (["train", "builtin:digits", "--model", "tf_efficientnet_lite0.bogus"], "unknown pretrained tag 'bogus'"),
    (["train", "builtin:digits", "--model", "resnt18"], "did you mean resnet18"),
    (["train", "builtin:digits", "--set", "train.batch_size=0"], "--set: config key 'train.batch_size' must be in [1"),
    (["train", "builtin:digits", "--set", "optim.lr=.nan"], "'optim.lr' must be a finite number"),
    (["train", "builtin:digits", "--set", "strategy.gradual.steps=[{epoch: 0}]"], "'strategy.gradual.steps[0].epoch'"),
])
def test_7_bad_numbers_and_names_are_one_line_and_exit_2(argv, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    one_error_line(capsys, fragment)
    assert not (tmp_path / "runs").exists()


def test_7_a_non_utf8_config_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"seed: 1\n# caf\xe9\n")
    assert main(["train", "builtin:digits", "--config", str(config)]) == 2
    one_error_line(capsys, "is not UTF-8 text")


# --- 8. errors give the right advice ----------------------------------------------------------

def test_8_errors_give_the_right_advice(tmp_path, tiny_run, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run, data = tiny_run
    image = str(data / "red" / "000.png")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert main(["predict", str(plain), image]) == 2
    one_error_line(capsys, "is not a transferlab run directory", absent=("--resume",))
    (tmp_path / "good.png").write_bytes(b"x")
    assert main(["train", str(data), "--out", str(tmp_path / "good.png")]) == 2
    one_error_line(capsys, "is an existing file", absent=("run directory good.png", "--resume"))
    (plain / "notes.txt").write_text("mine")
    assert main(["evaluate", str(run), str(data), "--out", str(plain)]) == 2
    one_error_line(capsys, "already exists and is not empty", absent=("--resume",))
    assert main(["demo", "--out", str(plain)]) == 2
    one_error_line(capsys, "already exists and is not empty", absent=("--resume",))
    assert main(["train", str(data), "--out", str(run)]) == 2
    one_error_line(capsys, "holds a finished run", absent=("--resume",))
    assert main(["train", str(data), "--config", str(tmp_path)]) == 2
    one_error_line(capsys, "is a folder: give the path of a YAML file")
    assert main(["train", str(data), "--lr", "nan"]) == 2
    one_error_line(capsys, "argument --lr", absent=("--set",))
    assert main(["train", str(data), "--set", "optim.lr=0"]) == 2
    one_error_line(capsys, "--set: config key 'optim.lr'")


# --- 9. one process per run directory ---------------------------------------------------------

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


def test_9_a_second_process_on_a_running_run_is_refused_naming_the_owner(tmp_path):
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
    assert json.loads((tmp_path / "run" / "state.json").read_text())["stage"] != "done"


def test_9_a_lock_left_by_a_killed_process_is_stale_and_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from transferlab.run import RunLock; RunLock(Path(sys.argv[1])).__enter__(); "
                               "print('held', flush=True); time.sleep(600)", str(run)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    from transferlab.run import RunError, RunLock

    with pytest.raises(RunError, match=f"in use by process {holder.pid}"):
        RunLock(run).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunLock(run):  # the kernel dropped the dead process's lock; its lock file does not block
        assert str(os.getpid()) in (run / ".lock").read_text()


# --- 10. a run that fails before its first checkpoint -----------------------------------------

def test_10_nothing_is_created_for_refused_weights_and_out_is_checked_before_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = colour_images(tmp_path / "data")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not torch")
    assert main(["train", str(data), "--weights", str(bad), "--out", str(tmp_path / "run"), *TINY_FLAGS]) == 2
    one_error_line(capsys, "bad.pth")
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
    import transferlab.data.dataset as dataset_module
    import transferlab.pipeline as pipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("the data was loaded before --out was checked")

    monkeypatch.setattr(dataset_module, "load_dataset", no_loading)
    monkeypatch.setattr(pipeline, "load_dataset", no_loading)
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("x")
    assert main(["train", "builtin:fashion-mnist", "--out", str(used)]) == 2
    one_error_line(capsys, "already exists and is not empty")


def test_10_a_run_killed_before_its_strategy_was_settled_resumes_from_its_start(tmp_path, monkeypatch, capsys):
    import transferlab.strategies.auto as auto

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
    assert json.loads((tmp_path / "run" / "state.json").read_text())["stage"] == "done"


# --- 11. damaged, missing and read-only run files ---------------------------------------------

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
def test_11_damaged_model_files_give_one_line_in_every_command(damage, tmp_path, tiny_run, capsys):
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


def test_11_resume_with_damaged_files_says_what_to_do(tmp_path, capsys):
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


def test_11_read_only_run_directory_suggests_out(small_disk, tiny_run, capsys):
    run, data = tiny_run
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    copy = small_disk / "run"
    shutil.copytree(run, copy)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert main(["evaluate", str(copy), str(data), "--quiet"]) == 2
    one_error_line(capsys, "read-only", "--out")
    assert main(["evaluate", str(copy), str(data), "--quiet", "--out", str(small_disk.parent / "eval")]) == 0


def test_11_a_full_disk_stops_with_one_line_and_the_run_resumes_after_space_is_freed(small_disk, tmp_path, capsys):
    data = colour_images(tmp_path / "data")
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)
    run = small_disk / "run"
    argv = ["train", str(data), "--out", str(run), "--strategy", "fine-tune", "--epochs", "2", "--quiet",
            *TINY_FLAGS, "--set", "strategy.fine_tune.head_warmup_epochs=0", "--set", "model.name=test_vit"]
    assert main(argv) == 2
    one_error_line(capsys, "the disk is full", "--resume")
    state = json.loads((run / "state.json").read_text())  # what was written is intact
    assert state["stage"] != "done"
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert json.loads((run / "state.json").read_text())["stage"] == "done"


# --- 12. never overwrite a user's file ---------------------------------------------------------

def test_12_outputs_never_replace_a_users_file_without_force(tmp_path, tiny_run, capsys):
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


# --- 13. --resume never silently ignores flags or edits ---------------------------------------

def test_13_resume_refuses_conflicting_flags_and_edits_and_honours_safe_ones(tmp_path, capsys):
    data = colour_images(tmp_path / "data")
    run = crashed_run(tmp_path, data)
    assert main(["train", "--resume", str(run), "--epochs", "1", "--lr", "0.5", "--strategy", "gradual"]) == 2
    one_error_line(capsys, "--strategy, --epochs, --lr would change them")
    config = run / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("seed: 0", "seed: 1"))
    assert main(["train", "--resume", str(run)]) == 2
    one_error_line(capsys, "was edited since the run started (seed: 0 -> 1)", absent=("data changed",))
    config.write_text(original.replace("size: 32", "size: 64"))
    assert main(["train", "--resume", str(run)]) == 2
    one_error_line(capsys, "preprocess.size: 32 -> 64")
    config.write_text(original)
    assert main(["train", "--resume", str(run), "--workers", "0", "--quiet"]) == 0
    assert "train.workers=0 honoured" in capsys.readouterr().err


# --- 14. importing transferlab leaves process-wide state alone --------------------------------

def test_14_importing_and_using_transferlab_leaves_global_state_as_it_was(tmp_path):
    probe = """
import os, sys, warnings, pkgutil, importlib
import matplotlib
matplotlib.use("svg")
from PIL import Image
Image.MAX_IMAGE_PIXELS = 12345678
# the libraries transferlab builds on set warning filters of their own when imported: import them first
import torch, torchvision, timm, lightning.pytorch, sklearn.metrics, scipy.stats, pytorch_grad_cam, safetensors
before = (Image.MAX_IMAGE_PIXELS, os.umask(0o027), list(warnings.filters), matplotlib.get_backend())
import transferlab
for module in pkgutil.walk_packages(transferlab.__path__, "transferlab."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
from transferlab.data.decode import Limits, open_image
from transferlab.report.plots import class_counts
open_image(open(sys.argv[1], "rb").read(), Limits(max_pixels=10**9))
class_counts({"a": 1, "b": 2}, __import__("pathlib").Path(sys.argv[2]))
after = (Image.MAX_IMAGE_PIXELS, os.umask(0o027), list(warnings.filters), matplotlib.get_backend())
assert before[0] == after[0], ("PIL.Image.MAX_IMAGE_PIXELS", before[0], after[0])
assert after[1] == 0o027, ("umask", oct(after[1]))
assert before[2] == after[2], "warning filters changed"
assert before[3] == after[3] == "svg", ("matplotlib backend", before[3], after[3])
print("clean")
"""
    image = save(Image.new("RGB", (40, 30)), tmp_path / "a.png")
    result = subprocess.run([sys.executable, "-c", probe, str(image), str(tmp_path / "plot.png")], capture_output=True,
                            text=True, timeout=300)
    assert result.stdout.strip() == "clean", result.stderr[-3000:]
