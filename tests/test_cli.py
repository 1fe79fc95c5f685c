"""The command line: one line and exit 2 for user mistakes, tables and JSON otherwise."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BAD_FILES, SCRIPT, TINY_FLAGS, one_error_line, png_bytes, save
from transferlab.cli import main

COMMANDS = ("inspect", "train", "cv", "evaluate", "explain", "report", "rank", "predict", "demo", "preview")


def test_inspect_lists_every_bad_file_and_exits_0(bad_folder, capsys):
    code = main(["inspect", str(bad_folder), "--size", "32", "--set", "data.decode_workers=1"])
    out = capsys.readouterr().out
    assert code == 0
    for path in BAD_FILES:
        assert path.split("/")[1] in out, path
    for phrase in ("empty file", "truncated", "not an image", "too large", "too small", "hidden file",
                   "CONFLICT", "empty_class"):
        assert phrase in out, phrase


def test_inspect_json_is_machine_readable(bad_folder, capsys):
    assert main(["inspect", str(bad_folder), "--size", "32", "--json", "--set", "data.decode_workers=1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == ["cat", "dog"]
    assert {s["path"] for s in summary["skipped"]} == set(BAD_FILES)
    assert len(summary["channel_mean"]) == 3


def test_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "no" / "such" / "dir")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err and "Traceback" not in err
    assert main(["inspect", "builtin:digits", "--set", "data.nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown config key 'data.nope'" in err


def test_the_installed_console_script_answers_like_the_module():
    """What a newcomer types: the `transferlab` script pip installed (and `python -m transferlab.cli`)."""
    script = Path(sys.executable).with_name("transferlab")
    for command in ([str(script)], [sys.executable, "-m", "transferlab.cli"]):
        result = subprocess.run([*command, "inspect", "/no/such/dir"], capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and "does not exist" in result.stderr
        help_text = subprocess.run([*command, "inspect", "--help"], capture_output=True, text=True).stdout
        assert "examples:" in help_text and "--json" in help_text
        version = subprocess.run([*command, "--version"], capture_output=True, text=True).stdout
        assert version.startswith("transferlab ")


def test_preview_writes_a_grid_without_overwriting(color_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["preview", str(color_folder), "--aug", "heavy", "--n", "3", "--size", "32"]
    assert main(args) == 0 and main(args) == 0
    assert (tmp_path / "augment-preview.png").is_file() and (tmp_path / "augment-preview-1.png").is_file()
    assert main([*args, "--out", str(tmp_path / "g.png")]) == 0 and (tmp_path / "g.png").stat().st_size > 1000
    assert main(["preview", str(color_folder), "--aug", "nope"]) == 2
    assert "neither a preset" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["under-a-file", "proc", "name-too-long"])
def test_an_out_that_cannot_be_created_is_one_line_in_every_command(where, tiny_run, tmp_path, monkeypatch, capsys):
    run, data = tiny_run
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a-file").write_text("x")
    out = {"under-a-file": tmp_path / "a-file" / "out", "proc": Path("/proc/transferlab-test/out"),
           "name-too-long": tmp_path / ("n" * 300)}[where]
    image = next(data.rglob("*.png"))
    commands = [["train", str(data), "--out", str(out), *TINY_FLAGS], ["evaluate", str(run), str(data), "--out", str(out)],
                ["explain", str(run), str(image), "--out", str(out)], ["export", str(run), "--format", "onnx", "--out", str(out)],
                ["preview", str(data), "--out", f"{out}.png"],
                ["rank", str(data), "--models", "test_efficientnet", "--out", f"{out}.json"]]
    for argv in commands:
        assert main(argv) == 2, argv
        one_error_line(capsys, "cannot be created", "choose a writable folder")
    assert {p.name for p in tmp_path.iterdir()} <= {"a-file", "cache"}  # nothing left behind


# --- the console script's --help -------------------------------------------------------------

def test_installed_console_script_prints_help_for_every_command(isolated):
    assert SCRIPT.is_file(), f"the console script is not installed next to {sys.executable}"
    for args in (["--help"], ["-h"], *([c, "--help"] for c in COMMANDS)):
        result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.startswith("usage: transferlab"), (args, result.stderr[-500:])
    assert "95% CI" in subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True).stdout


# --- featuremaps --top -1 ---------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_featuremaps_with_a_negative_top_is_refused_at_once(tiny_run, capsys, isolated):
    run, data = tiny_run
    assert main(["explain", str(run), str(data / "red" / "000.png"), "--method", "featuremaps", "--top", "-1"]) == 2
    one_error_line(capsys, "--top", "-1")
    from transferlab.interpret import ExplainError, explain

    with pytest.raises(ExplainError, match="--top 0"):
        explain(run, [data / "red" / "000.png"], method="featuremaps", top=0)


# --- numeric options and names validated at parse time ----------------------------------------

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
def test_bad_numbers_and_names_are_one_line_and_exit_2(argv, fragment, tmp_path, monkeypatch, capsys, isolated):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    one_error_line(capsys, fragment)
    assert not (tmp_path / "runs").exists()


def test_a_non_utf8_config_file_is_one_line(tmp_path, capsys, isolated):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"seed: 1\n# caf\xe9\n")
    assert main(["train", "builtin:digits", "--config", str(config)]) == 2
    one_error_line(capsys, "is not UTF-8 text")


# --- errors give the right advice -------------------------------------------------------------

def test_errors_give_the_right_advice(tmp_path, tiny_run, monkeypatch, capsys, isolated):
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


# --- importing transferlab leaves process-wide state alone ------------------------------------

@pytest.mark.slow  # a run and a predict in-process: ~8 s
def test_importing_and_using_transferlab_leaves_global_state_as_it_was(tmp_path, isolated):
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



def slow_images(root: Path, per_class: int = 10) -> Path:
    """Two classes of 12-megapixel PNGs (each decode takes a tenth of a second or more): a decode pass
    of a few seconds, made quickly (one encoded file per class, its copies told apart by trailing bytes)."""
    for k, name in enumerate(("dark", "light")):
        y, x = np.mgrid[0:3000, 0:4000]
        picture = np.stack([(x // 16 + 80 * k) % 256, (y // 16) % 256, np.full_like(x, 120 * k)], -1)
        encoded = png_bytes(Image.fromarray(picture.astype(np.uint8)))
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i:02d}.png").write_bytes(encoded + f"{i}".encode())  # after IEND: ignored
    return root


@pytest.mark.slow  # a 40-epoch fine-tune through the console script: ~17 s
def test_without_a_terminal_long_steps_write_progress_lines(tmp_path):
    """The console script with its output in a pipe (CI, nohup, a log file): no progress bars, but
    lines saying what runs, how far, the rate and the time left (TRANSFERLAB_LOG_EVERY=1, its floor,
    shortens the 30 s interval so a run of seconds shows them)."""
    env = {**os.environ, "TRANSFERLAB_LOG_EVERY": "1", "TRANSFERLAB_CACHE": str(tmp_path / "cache")}
    data = slow_images(tmp_path / "big")
    done = subprocess.run([str(SCRIPT), "train", str(data), *TINY_FLAGS, "--strategy", "fine-tune",
                           "--epochs", "40", "--batch-size", "2", "--set", "strategy.fine_tune.head_warmup_epochs=0",
                           "--set", "data.cache=disk", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    log = done.stdout + done.stderr
    assert re.search(r"Decoding 20 images: \d+/20 images \(\d+%\), [0-9.,]+ images/s, about \d+m\d\ds left", log), log
    assert re.search(r"training \(main\): \d+/\d+ batches \(\d+%\), [0-9.,]+ batches/s, about \d+m\d\ds left; "
                     r"epoch \d+/40", log), log
    assert "━" not in log  # no bar drawn into the log


@pytest.mark.parametrize("value", ["abc", "0", "-1", "0.5", "nan", "inf"])
def test_a_bad_log_interval_is_one_line(value, color_folder, tmp_path):
    """TRANSFERLAB_LOG_EVERY=abc gave a traceback at import on every command; 0 and -1 printed a line
    per image (60,000 lines on 60,000 images)."""
    env = {**os.environ, "TRANSFERLAB_LOG_EVERY": value, "TRANSFERLAB_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([str(SCRIPT), "inspect", str(color_folder)], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "TRANSFERLAB_LOG_EVERY" in lines[0] and "at least 1" in lines[0], done.stderr
