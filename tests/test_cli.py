"""The command line: one line and exit 2 for user mistakes, tables and JSON otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BAD_FILES, TINY_FLAGS, one_error_line
from transferlab.cli import main


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
