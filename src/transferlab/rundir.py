"""The run directory: created fresh (never over an earlier run), locked while a process works in it,
its state typed and versioned, written atomically, and the model it holds read back by predict,
evaluate, explain, export, serve and the report.

    runs/<name>/config.yaml split.csv dataset.json state.json model/ metrics.json predictions.csv
                checkpoints/ logs/ plots/ report.html .lock           (cv: folds/<fold>/... too)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from transferlab.config import Config, apply_override, dump_config, load_config, resume_safe_keys, to_dict
from transferlab.errors import ConfigError, RunError
from transferlab.io import read_json, write_json

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected against a second process there
    fcntl = None

RUN_DIR_ENV = "TRANSFERLAB_RUN_DIR"  # lets DDP worker processes find the directory rank 0 made
LOCK_FILE = ".lock"
STATE_FILE = "state.json"
STATE_VERSION = 2
RESULTS = {"train": "metrics.json", "cv": "cv_metrics.json"}


def is_worker_process() -> bool:
    """True in distributed processes other than the first (they share its run directory and
    leave every write to it: the writers are `rank_zero_only`)."""
    return rank_zero_only.rank > 0 or os.environ.get("NODE_RANK", "0") not in ("", "0")


@dataclass
class RunState:
    """What state.json says about a run (or a cv fold): how far it got and what it settled."""

    kind: str = "train"  # train | cv | fold
    data: str | None = None
    requested: str = "auto"  # the strategy asked for
    stage: str = "start"  # the last stage (or fold) begun
    seconds: float = 0.0  # spent so far, over every attempt
    strategy: str | None = None  # settled strategy (auto decides once)
    decision: dict | None = None  # auto's decision record
    split: dict | None = None  # how the images were split (data.splits.Splitter.describe)
    stages: dict = field(default_factory=dict)  # finished stages' results
    done: list = field(default_factory=list)  # cv: finished folds
    config: dict | None = None  # the settings the run started with (what a resume checks config.yaml against)
    tracking: dict | None = None  # MLflow store and run id
    finished: bool = False
    failed: str | None = None  # why the run cannot be resumed (a diverged loss)
    version: int = STATE_VERSION

    @classmethod
    def load(cls, path: Path) -> RunState:
        data = read_json(path)
        if data.get("version", 1) < STATE_VERSION:  # version 1: "stage: done" meant finished, stages in stage_info
            data = {**data, "finished": data.get("finished") or data.get("stage") == "done",
                    "stages": data.pop("stage_info", {}), "version": STATE_VERSION}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load_or(cls, path: Path, **fresh) -> RunState:
        """The state at `path` when there is one (a resumed fold or member), else a new one of `fresh`'s fields."""
        return cls.load(path) if path.is_file() else cls(**fresh)

    def save(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))


class RunLock:
    """An exclusive lock on a run directory while a train or cv process works in it.

    The lock is an advisory `flock` on RUN/.lock, which also records the owner (pid, command,
    start time) so a second process can say who holds it. The kernel drops the lock when its
    process ends, however it ends, so a stale lock file never blocks anyone; forked children
    (DataLoader workers) close their copy, so they cannot keep it alive after a kill -9.
    """

    held: set[int] = set()  # lock descriptors this process holds
    registered = False

    @staticmethod
    def close_in_child() -> None:
        for fd in RunLock.held:
            with contextlib.suppress(OSError):
                os.close(fd)
        RunLock.held = set()

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        if fcntl is None or is_worker_process():
            return self
        path = self.run_dir / LOCK_FILE
        not_a_lock = f"{path} is not a lock file ({{}}): transferlab never writes through it; remove it, then run " \
                     "the same command again"
        try:  # never through a symlink (it would overwrite its target), never blocking on a FIFO
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK, 0o666)
        except PermissionError:
            raise RunError(f"cannot write to {self.run_dir} (permission denied or read-only): copy the run "
                           "somewhere writable, or start a new run with --out") from None
        except OSError as exc:  # ELOOP: a symlink; EISDIR: a folder
            kind = "a symlink" if os.path.islink(path) else "a folder" if path.is_dir() else exc.strerror
            raise RunError(not_a_lock.format(kind)) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunError(not_a_lock.format("a FIFO or device"))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            try:
                who = json.loads(owner)
                detail = f"process {who['pid']} (`{who['command']}`, since {who['since']})"
            except (ValueError, KeyError, TypeError):
                detail = "another process"
            raise RunError(f"{self.run_dir} is in use by {detail}: wait for it to finish or stop it; two "
                           "processes must never write one run") from None
        owner = json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv) or "python",
                            "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.encode(), 0)
        if not RunLock.registered:  # once per process: a second handler would close the same descriptors again
            os.register_at_fork(after_in_child=RunLock.close_in_child)
            RunLock.registered = True
        self.fd = fd
        RunLock.held.add(fd)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            RunLock.held.discard(self.fd)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class RunDir:
    """A run directory with its state; `create` and `reopen` lock it for the caller's ExitStack."""

    def __init__(self, path: Path, state: RunState):
        self.path, self.state = Path(path), state

    def save_state(self) -> None:
        self.state.save(self.path / STATE_FILE)

    def save_config(self, config: Config) -> None:
        """config.yaml (for people and reruns) and the same settings in the state (what a resume
        checks config.yaml against), written together."""
        if not is_worker_process():
            dump_config(config, self.path / "config.yaml")
        self.state.config = to_dict(config)
        self.save_state()

    @classmethod
    def create(cls, stack: contextlib.ExitStack, out, label: str, config: Config, state: RunState) -> RunDir:
        """A new run directory, locked, holding config.yaml and its state from the first moment (so
        a run stopped at any point resumes)."""
        run = cls(new_run_dir(out, state.data or "data", label), state)
        stack.enter_context(RunLock(run.path))
        run.save_config(config)
        return run

    @classmethod
    def reopen(cls, stack: contextlib.ExitStack, path, overrides=()) -> tuple[RunDir, Config]:
        """A run to resume, locked, with its config; a finished or failed run is refused."""
        run = cls(Path(path), RunState())
        stack.enter_context(RunLock(run.path))
        run.state = RunState.load(run.path / STATE_FILE)
        if run.state.finished:
            raise RunError(f"{run.path} already finished: its results are in "
                           f"{run.path / RESULTS.get(run.state.kind, 'metrics.json')}")
        if run.state.failed:
            raise RunError(f"{run.path} failed and cannot be resumed with the same settings: {run.state.failed}")
        return run, resume_config(run.path, run.state, overrides)


def resume_config(run_dir: Path, state: RunState, overrides=()) -> Config:
    """The config of a run (or fold) to resume: its config.yaml, refused when edited since the run
    started (beyond settings declared resume-safe), plus the honoured `overrides`."""
    from transferlab.console import info

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RunError(f"{path} is missing: --resume needs the settings the run started with; restore the file, or "
                       "start a new run")
    config = load_config(path)
    if state.config is not None:
        before, now, safe = flatten(state.config), flatten(to_dict(config)), resume_safe_keys()
        changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k) and k not in safe]
        if changed:
            shown = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
            raise RunError(f"{path} was edited since the run started ({shown}{' ...' if len(changed) > 4 else ''}): "
                           "--resume continues with the settings it started with; undo the edit, or start a new run "
                           f"with `{rerun_command(run_dir, state)}`")
    for item in overrides:
        config = apply_override(config, item, origin="--resume")
        info(f"resume: {item} honoured (it does not change results)")
    return config


def rerun_command(run_dir: Path, state: RunState) -> str:
    """The command that starts a new run with the settings of `run_dir` (a cv fold: those of its cv)."""
    if state.kind == "fold":
        return f"transferlab cv --config {run_dir.parent.parent / 'config.yaml'} --out NEW"
    return f"transferlab {'cv' if state.kind == 'cv' else 'train'} --config {run_dir / 'config.yaml'} --out NEW"


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "lr_mult":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def slug(text: str) -> str:
    text = text.removeprefix("builtin:").rstrip("/")
    name = Path(text).stem if "/" in text or "\\" in text else text
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:40] or "data"


def used_dir_advice(path: Path) -> str:
    """What to do about an existing, non-empty `path` that a new run was asked to use."""
    if (path / STATE_FILE).is_file():
        try:
            state = RunState.load(path / STATE_FILE)
        except RunError:
            state = RunState()
        command = "cv" if state.kind == "cv" else "train"
        if state.finished:
            return f"{path} holds a finished run (results in {path / RESULTS[command]}): choose another --out"
        return (f"{path} holds an unfinished run: continue it with `transferlab {command} --resume {path}`, "
                "or choose another --out")
    return f"{path} already exists and is not empty: choose another --out (a new run never writes into a used folder)"


def check_out_dir(out: str | Path | None) -> None:
    """Refuse an unusable --out at once, before any data is loaded."""
    if out is None or is_worker_process():
        return
    path = Path(out).expanduser()
    probe_writable(path, folder=True)
    if path.exists() and not path.is_dir():
        raise RunError(f"--out {path} is an existing file: give a folder for the run directory")
    if path.is_dir() and any(path.iterdir()):
        raise RunError(used_dir_advice(path))


def probe_writable(path: Path, *, folder: bool) -> None:
    """Refuse an output path that cannot be created (under a file, in /proc, a name too long, a
    read-only folder) with one line, by creating what is missing and removing it again."""
    path = Path(path).absolute()
    made: list[Path] = []
    try:
        missing = [p for p in (path, *path.parents) if not os.path.lexists(p)][::-1]
        for part in missing if folder else missing[:-1]:
            part.mkdir()
            made.append(part)
        if not folder and not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            made.append(path)
    except OSError as exc:
        raise RunError(f"--out {path} cannot be created ({exc.strerror or exc}"
                       f"{f': {exc.filename}' if exc.filename and Path(exc.filename) != path else ''}): "
                       "choose a writable folder") from None
    finally:
        for part in reversed(made):
            part.unlink() if part.is_file() else part.rmdir()


def new_run_dir(out: str | Path | None, data: str, label: str, base: str | Path = "runs") -> Path:
    """A new, empty run directory: `out`, or runs/<time>-<data>-<label>. Never reuses a used one."""
    if is_worker_process() and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if out is not None:
        path = Path(out).expanduser()
        if is_worker_process():
            path.mkdir(parents=True, exist_ok=True)
            return path
        check_out_dir(path)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, k = Path(base) / f"{stamp}-{slug(data)}-{label}", 1
        while path.exists():
            k += 1
            path = Path(base) / f"{stamp}-{slug(data)}-{label}-{k}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunError(f"cannot create {path}: a file is in the way; choose another --out") from None
    os.environ[RUN_DIR_ENV] = str(path.resolve())
    return path


# --- the model a run holds ------------------------------------------------------------------------

@rank_zero_only
def save_model(directory: Path, model: torch.nn.Module, meta: dict) -> None:
    """model/weights.safetensors (no pickled code; tensors shared by ensemble members stored once)
    and model/model.json (what rebuilds it)."""
    from safetensors.torch import save_model as save_tensors

    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".weights.{os.getpid()}.tmp"
    try:
        save_tensors(model.cpu().to(memory_format=torch.contiguous_format), str(temporary))
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, directory / "weights.safetensors")
    finally:
        temporary.unlink(missing_ok=True)
    write_json(directory / "model.json", meta)


def missing_model_advice(run: Path) -> str:
    if not run.exists():
        return f"run directory {run} does not exist: give the folder `transferlab train` printed"
    if not run.is_dir():
        return f"{run} is a file, not a run directory: give the folder `transferlab train` printed"
    if (run / STATE_FILE).is_file():
        try:
            kind = RunState.load(run / STATE_FILE).kind
        except RunError:
            kind = "train"
        if kind == "cv":
            return (f"{run} is a cross-validation run: it scores a way of training and keeps no single model; "
                    "train one with `transferlab train` to predict")
        return (f"{run} has no trained model yet (model/model.json): the run did not finish; continue it with "
                f"`transferlab train --resume {run}`")
    return (f"{run} is not a transferlab run directory (no model/model.json): give the folder `transferlab train` "
            "printed")


@dataclasses.dataclass
class TrainedModel:
    """A run's trained model (one classifier or an ensemble) with everything needed to feed it:
    what predict, evaluate, explain, export and serve share."""

    run: Path
    classifier: torch.nn.Module
    meta: dict
    spec: object  # preprocess.ResizeSpec: how images become the model's input
    limits: object  # data.decode.Limits
    device: torch.device
    config: Config  # the run's config.yaml (defaults without one)

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def task(self):
        """The label space the model answers in (tasks.py), with its thresholds."""
        from transferlab.tasks import task_of

        return task_of(self.meta)


def check_meta(meta: dict, spec, origin: str) -> None:
    """model.json's values under the constraints of the config keys they come from (a resize of
    100,000 px or -5, a std of 0, duplicate class names are refused before anything is built)."""
    from transferlab.config import merge

    members = meta.get("members") or [{}]
    merge(Config(), {"preprocess": {"size": spec.size, "resize_mode": spec.mode, "interpolation": spec.interpolation,
                                    "crop_pct": spec.crop_pct, "pad_fill": list(spec.pad_fill)},
                     "data": {"alpha_background": list(spec.alpha_background)},
                     "model": {"dropout": meta.get("dropout", 0.0)},
                     "strategy": {"auto": {"sizes": [m.get("size", spec.size) for m in members]}}}, origin=origin)
    classes, norm = meta["classes"], meta["normalize"]
    if not classes or len(set(classes)) != len(classes) or not all(isinstance(c, str) and c for c in classes):
        raise ValueError("classes must be distinct, non-empty names")
    values = [*norm["mean"], *norm["std"]]
    if len(values) != 6 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) \
            or min(norm["std"]) <= 0:
        raise ValueError("normalize needs 3 finite means and 3 positive standard deviations")


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load model/weights.safetensors into `model`, where a tensor that members share is stored once
    under one of its names. (safetensors' own load_model miscounts shared BatchNorm step counters:
    torch fills a missing `num_batches_tracked` in, so a name it stored once looks unexpected.)"""
    from safetensors.torch import load_file

    state, own = load_file(str(path)), model.state_dict()
    stored = {t.data_ptr() for name, t in own.items() if name in state}
    unexpected = sorted(set(state) - set(own))
    missing = [name for name, t in own.items() if name not in state and t.data_ptr() not in stored]
    if unexpected or missing:
        raise RuntimeError(f"weights do not fit\n{'Unexpected' if unexpected else 'Missing'} key(s) in state_dict: "
                           + ", ".join(f'"{k}"' for k in (unexpected or missing)))
    model.load_state_dict(state, strict=False)


def load_model(run: str | Path, device: str | torch.device | None = None) -> TrainedModel:
    """The trained model of a run (eval mode), its preprocessing, decode limits and config."""
    from transferlab.data.decode import Limits
    from transferlab.models import build_model, device_for
    from transferlab.preprocess import ResizeSpec

    run = Path(run)
    meta_file, weights = run / "model" / "model.json", run / "model" / "weights.safetensors"
    if not meta_file.is_file():
        raise RunError(missing_model_advice(run))
    meta = read_json(meta_file)
    missing = [k for k in ("model", "classes", "normalize", "resize") if k not in meta] + [
        f"normalize.{k}" for k in ("mean", "std") if k not in meta.get("normalize", {})]
    if missing or not isinstance(meta.get("classes"), list):
        raise RunError(f"{meta_file} lacks {', '.join(missing) or 'a list of classes'}: the file is damaged or not "
                       "from transferlab; restore it or train again")
    config = load_config(run / "config.yaml") if (run / "config.yaml").is_file() else load_config()
    try:
        spec = ResizeSpec.from_dict(meta["resize"])
        check_meta(meta, spec, str(meta_file))
    except (TypeError, ValueError, KeyError, ConfigError) as exc:
        why = str(exc).removeprefix(f"{meta_file}: ")[:160]
        raise RunError(f"{meta_file} is damaged ({why}): restore it, or train again") from None
    model = build_model(meta, spec.size)
    try:
        load_weights(model, weights)
    except FileNotFoundError:
        raise RunError(f"{weights} is missing: restore it, or train again") from None
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        first = (lines[1] if len(lines) > 1 else lines[0] if lines else "").strip()
        raise RunError(f"{weights} does not fit {meta_file} ({meta['model']}, {len(meta['classes'])} "
                       f"classes): {first[:160]}; the two files come from different runs") from None
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise RunError(f"{weights} is damaged ({str(exc)[:100]}): restore it, or train again") from None
    if not all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()):
        raise RunError(f"{weights} holds NaN or infinite weights (its training diverged): train again with a lower "
                       "learning rate")
    device = torch.device(device) if device is not None else device_for(config.train.accelerator)
    model.to(device).eval()
    return TrainedModel(run=run, classifier=model, meta=meta, spec=spec, limits=Limits.of(config.data), device=device,
                        config=config)
