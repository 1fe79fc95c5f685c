"""The run directory: created fresh (never over an earlier run), locked while a process works in
it, written atomically, read back by predict / evaluate / explain / report / serve.

    runs/<name>/config.yaml split.csv dataset.json model/ metrics.json predictions.csv
                checkpoints/ logs/ plots/ report.html state.json .lock
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import stat
import sys
import time
from pathlib import Path

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from transferlab.errors import ConfigError, RunError, TransferlabError
from transferlab.io import atomic_write, read_json, write_json

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected against a second process there
    fcntl = None

RUN_DIR_ENV = "TRANSFERLAB_RUN_DIR"  # lets DDP worker processes find the directory rank 0 made
LOCK_FILE = ".lock"


def slug(text: str) -> str:
    text = text.removeprefix("builtin:").rstrip("/")
    name = Path(text).stem if "/" in text or "\\" in text else text
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:40] or "data"


def is_worker_process() -> bool:
    """True in distributed processes other than the first (they share its run directory and
    leave every write to it: the writers here are `rank_zero_only`)."""
    return rank_zero_only.rank > 0 or os.environ.get("NODE_RANK", "0") not in ("", "0")


def used_dir_advice(path: Path) -> str:
    """What to do about an existing, non-empty `path` that a new run was asked to use."""
    for state_name, command, results in (("state.json", "train", "metrics.json"),
                                         ("cv_state.json", "cv", "cv_metrics.json")):
        state = path / state_name
        if state.is_file():
            try:
                data = json.loads(state.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            if data.get("stage") == "done" or data.get("finished"):
                return f"{path} holds a finished run (results in {path / results}): choose another --out"
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


def new_run_dir(out: str | Path | None, data: str, strategy: str, base: str | Path = "runs") -> Path:
    """A new, empty run directory: `out`, or runs/<time>-<data>-<strategy>. Never reuses a used one."""
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
        path = Path(base) / f"{stamp}-{slug(data)}-{strategy}"
        k = 1
        while path.exists():
            k += 1
            path = Path(base) / f"{stamp}-{slug(data)}-{strategy}-{k}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunError(f"cannot create {path}: a file is in the way; choose another --out") from None
    os.environ[RUN_DIR_ENV] = str(path.resolve())
    return path


class RunLock:
    """An exclusive lock on a run directory while a train or cv process works in it.

    The lock is an advisory `flock` on RUN/.lock, which also records the owner (pid, command,
    start time) so a second process can say who holds it. The kernel drops the lock when its
    process ends, however it ends, so a stale lock file never blocks anyone.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        if fcntl is None or is_worker_process():
            return self
        path = self.run_dir / LOCK_FILE
        not_a_lock = (f"{path} is not a lock file ({{}}): transferlab never writes through it; remove it, then run "
                      "the same command again")
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
        self.fd = fd
        if not HELD_LOCKS:  # forked children (DataLoader workers) must not keep the lock alive after a kill -9
            os.register_at_fork(after_in_child=lambda: [os.close(held) for held in HELD_LOCKS])
        HELD_LOCKS.add(fd)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            HELD_LOCKS.discard(self.fd)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


HELD_LOCKS: set[int] = set()  # lock descriptors this process holds; a forked child closes its copies


def environment() -> dict:
    """Versions and machine facts for the reproducibility section."""
    import importlib.metadata as md

    versions = {}
    for package in ("transferlab", "torch", "torchvision", "timm", "lightning", "scikit-learn", "numpy", "pillow",
                    "grad-cam", "matplotlib"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(), "command": " ".join(sys.argv),
    }


def device_for(accelerator: str = "auto") -> torch.device:
    """The torch device for a Lightning-style accelerator name (cpu, gpu/cuda, mps, auto)."""
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("auto", "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@rank_zero_only
def save_model(directory: Path, classifier: torch.nn.Module, meta: dict) -> None:
    """model/weights.safetensors (no pickled code) and model/model.json (what rebuilds it)."""
    from safetensors.torch import save

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
    blob = save(state)
    atomic_write(directory / "weights.safetensors", lambda handle: handle.write(blob), durable=True)
    write_json(directory / "model.json", meta)


def missing_model_advice(run: Path) -> str:
    if not run.exists():
        return f"run directory {run} does not exist: give the folder `transferlab train` printed"
    if not run.is_dir():
        return f"{run} is a file, not a run directory: give the folder `transferlab train` printed"
    if (run / "state.json").is_file():
        return (f"{run} has no trained model yet (model/model.json): the run did not finish; continue it with "
                f"`transferlab train --resume {run}`")
    if (run / "cv_state.json").is_file():
        return (f"{run} is a cross-validation run: it scores a way of training and keeps no single model; "
                "train one with `transferlab train` to predict")
    return (f"{run} is not a transferlab run directory (no model/model.json): give the folder `transferlab train` "
            "printed")


@dataclasses.dataclass
class TrainedModel:
    """A run's trained classifier with everything needed to feed it: what predict, evaluate,
    explain, export and serve share."""

    run: Path
    classifier: torch.nn.Module
    meta: dict
    spec: object  # preprocess.ResizeSpec
    limits: object  # data.decode.Limits
    device: torch.device

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]


REQUIRED_META = ("model", "classes", "normalize", "resize")


def check_meta(meta: dict, spec, origin: str) -> None:
    """model.json's values under the constraints of the config keys they come from (a resize of
    100,000 px or -5, a std of 0, duplicate class names are refused before anything is built)."""
    from transferlab.config import Config, merge

    merge(Config(), {"preprocess": {"size": spec.size, "resize_mode": spec.mode, "interpolation": spec.interpolation,
                                    "crop_pct": spec.crop_pct, "pad_fill": list(spec.pad_fill)},
                     "data": {"alpha_background": list(spec.alpha_background)},
                     "model": {"dropout": meta.get("dropout", 0.0)}}, origin=origin)
    classes, norm = meta["classes"], meta["normalize"]
    if not classes or len(set(classes)) != len(classes) or not all(isinstance(c, str) and c for c in classes):
        raise ValueError("classes must be distinct, non-empty names")
    values = [*norm["mean"], *norm["std"]]
    if len(values) != 6 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) \
            or min(norm["std"]) <= 0:
        raise ValueError("normalize needs 3 finite means and 3 positive standard deviations")


def load_model(run: str | Path, device: str | torch.device | None = None) -> TrainedModel:
    """The trained classifier of a run (eval mode), its preprocessing and decode limits."""
    from safetensors.torch import load_file

    from transferlab.config import load_config
    from transferlab.data.decode import Limits
    from transferlab.models.backbone import Classifier, create_backbone
    from transferlab.preprocess import ResizeSpec

    run = Path(run)
    model_dir = run / "model"
    if not (model_dir / "model.json").is_file():
        raise RunError(missing_model_advice(run))
    meta = read_json(model_dir / "model.json")
    missing = [k for k in REQUIRED_META if k not in meta] + [
        f"normalize.{k}" for k in ("mean", "std") if k not in meta.get("normalize", {})]
    if missing or not isinstance(meta.get("classes"), list):
        raise RunError(f"{model_dir / 'model.json'} lacks {', '.join(missing) or 'a list of classes'}: the file is "
                       "damaged or not from transferlab; restore it or train again")
    config = load_config(run / "config.yaml") if (run / "config.yaml").is_file() else load_config()
    try:
        spec = ResizeSpec.from_dict(meta["resize"])
        check_meta(meta, spec, str(model_dir / "model.json"))
    except (TypeError, ValueError, ConfigError) as exc:
        why = str(exc).removeprefix(f"{model_dir / 'model.json'}: ")[:160]
        raise RunError(f"{model_dir / 'model.json'} is damaged ({why}): restore it, or train again") from None
    backbone = create_backbone(meta["model"], pretrained=False, img_size=spec.size)
    classifier = Classifier(backbone, len(meta["classes"]), meta["normalize"]["mean"], meta["normalize"]["std"],
                            dropout=meta.get("dropout", 0.0))
    weights = model_dir / "weights.safetensors"
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise RunError(f"{weights} is missing: restore it, or train again") from None
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise RunError(f"{weights} is damaged ({str(exc)[:100]}): restore it, or train again") from None
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise RunError(f"{weights} holds NaN or infinite weights (its training diverged): train again with a lower "
                       "learning rate")
    try:
        classifier.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)[:120]
        raise RunError(f"{weights} does not fit {model_dir / 'model.json'} ({meta['model']}, {len(meta['classes'])} "
                       f"classes): {first[:160]}; the two files come from different runs") from None
    device = torch.device(device) if device is not None else device_for(config.train.accelerator)
    classifier.to(device).eval()
    return TrainedModel(run=run, classifier=classifier, meta=meta, spec=spec, limits=Limits.of(config.data),
                        device=device)


@rank_zero_only
def save_run_config(run_dir: Path, config, state: dict, state_name: str = "state.json") -> None:
    """config.yaml (for people and reruns) and the same settings in the run's state (what a resume
    checks config.yaml against), written together."""
    from transferlab.config import dump_config, to_dict

    dump_config(config, run_dir / "config.yaml")
    state["config"] = to_dict(config)
    write_json(run_dir / state_name, state)


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "lr_mult":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_config(run_dir: Path, state: dict, overrides: list[str] | tuple = ()):
    """The config of a run to resume: its config.yaml, refused when edited since the run started
    (beyond settings that do not change results), plus the honoured `overrides`."""
    from transferlab.config import apply_override, load_config, resume_safe_keys, to_dict
    from transferlab.console import info

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RunError(f"{path} is missing: --resume needs the settings the run started with; restore the file, or "
                       "start a new run")
    config = load_config(path)
    recorded, safe = state.get("config"), resume_safe_keys()
    if recorded is not None:
        before, now = flatten(recorded), flatten(to_dict(config))
        changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k) and k not in safe]
        if changed:
            shown = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
            raise RunError(f"{path} was edited since the run started ({shown}{' ...' if len(changed) > 4 else ''}): "
                           "--resume continues with the settings it started with; undo the edit, or start a new run "
                           f"with `transferlab train --config {path} --out NEW`")
    for item in overrides:
        config = apply_override(config, item, origin="--resume")
        info(f"resume: {item} honoured (it does not change results)")
    return config


def start_run(stack, out, data: str, label: str, config, state: dict, state_name: str = "state.json") -> Path:
    """A new run directory, locked, holding config.yaml and its state from the first moment (so a
    run stopped at any point resumes)."""
    run_dir = new_run_dir(out, data, label)
    stack.enter_context(RunLock(run_dir))
    save_run_config(run_dir, config, state, state_name)
    return run_dir


def reopen_run(stack, resume, overrides=(), state_name: str = "state.json"):
    """(run directory, state, config) of a run to resume, locked; a finished run is refused."""
    run_dir = Path(resume)
    stack.enter_context(RunLock(run_dir))
    state = read_json(run_dir / state_name)
    if state.get("stage") == "done" or state.get("finished"):
        results = "cv_metrics.json" if state_name == "cv_state.json" else "metrics.json"
        raise RunError(f"{run_dir} already finished: its results are in {run_dir / results}")
    if state.get("failed"):
        raise RunError(f"{run_dir} failed and cannot be resumed with the same settings: {state['failed']}")
    return run_dir, state, resume_config(run_dir, state, overrides)
