"""The run directory: created fresh (never over an earlier run), written atomically, read back by
predict / evaluate / explain / report.

    runs/<name>/config.yaml split.csv dataset.json model/ metrics.json predictions.csv
                checkpoints/ logs/ plots/ report.html state.json
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

from transferlab.data.cache import atomic_write
from transferlab.errors import TransferlabError

RUN_DIR_ENV = "TRANSFERLAB_RUN_DIR"  # lets DDP worker processes find the directory rank 0 made


class RunError(TransferlabError):
    """A run directory that cannot be used as asked."""


def slug(text: str) -> str:
    text = text.removeprefix("builtin:").rstrip("/")
    name = Path(text).stem if "/" in text or "\\" in text else text
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:40] or "data"


def is_worker_process() -> bool:
    """True in DDP processes other than rank 0 (they share rank 0's run directory)."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "RANK", "NODE_RANK"))


def new_run_dir(out: str | Path | None, data: str, strategy: str, base: str | Path = "runs") -> Path:
    """A new, empty run directory: `out`, or runs/<time>-<data>-<strategy>. Never reuses a used one."""
    if is_worker_process() and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if out is not None:
        path = Path(out).expanduser()
        if is_worker_process():
            path.mkdir(parents=True, exist_ok=True)
            return path
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RunError(f"run directory {path} already exists and is not empty: choose another --out, "
                           f"or continue it with --resume {path}")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(base) / f"{stamp}-{slug(data)}-{strategy}"
        k = 1
        while path.exists():
            k += 1
            path = Path(base) / f"{stamp}-{slug(data)}-{strategy}-{k}"
    path.mkdir(parents=True, exist_ok=True)
    os.environ[RUN_DIR_ENV] = str(path.resolve())
    return path


def write_json(path: str | Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False, default=str)
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


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


def save_model(directory: Path, classifier: torch.nn.Module, meta: dict) -> None:
    """model/weights.safetensors (no pickled code) and model/model.json (what rebuilds it)."""
    from safetensors.torch import save

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
    blob = save(state)
    atomic_write(directory / "weights.safetensors", lambda handle: handle.write(blob))
    write_json(directory / "model.json", meta)


def load_model(run: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """The trained classifier of a run (eval mode) and its model.json."""
    from safetensors.torch import load_file

    from transferlab.models.backbone import Classifier, create_backbone

    run = Path(run)
    model_dir = run / "model"
    if not (model_dir / "model.json").is_file():
        if not run.exists():
            raise RunError(f"run directory {run} does not exist: give the folder `transferlab train` printed")
        raise RunError(f"{run} has no trained model (model/model.json): the run did not finish; "
                       f"continue it with `transferlab train --resume {run}`")
    meta = read_json(model_dir / "model.json")
    backbone = create_backbone(meta["model"], pretrained=False, img_size=meta["resize"]["size"])
    classifier = Classifier(backbone, len(meta["classes"]), meta["normalize"]["mean"], meta["normalize"]["std"],
                            dropout=meta.get("dropout", 0.0))
    classifier.load_state_dict(load_file(str(model_dir / "weights.safetensors")))
    classifier.to(device).eval()
    return classifier, meta
