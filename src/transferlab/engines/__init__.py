"""Inference back ends: the same model run by torch, onnxruntime or OpenVINO.

Every engine takes uint8 NCHW images (the decode-once cache's pixels) and returns float32 numpy:
class probabilities for a classifier, pooled features for a backbone. Normalization is inside
the exported graph, so a consumer needs no Python of ours. Exports are made once per model and
input size and kept in the cache folder (`<cache>/engines/<key>/`).

The `auto` rule (documented in the README, measured by benchmarks/bench_inference.py): on a CPU,
when the export is already cached or there are at least `AUTO_MIN_IMAGES` images to run
(exporting takes seconds, which a handful of images do not repay), OpenVINO for one image at a
time and onnxruntime for batches (the faster of the two at each on the machines measured);
torch otherwise, and always on a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from transferlab.errors import ConfigError

ENGINES = ("torch", "onnxruntime", "openvino")
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
AUTO_MIN_IMAGES = 2000


def installed(name: str) -> bool:
    return name == "torch" or importlib.util.find_spec(MODULES[name]) is not None


def check_engine(name: str) -> None:
    if name != "auto" and name not in ENGINES:
        raise ConfigError(f"unknown engine '{name}': choose auto, {', '.join(ENGINES)}")
    if name in MODULES and not installed(name):
        raise ConfigError(f"engine {name} is not installed: pip install {MODULES[name]} (or choose --engine torch)")


def resolve(name: str, *, device: torch.device, images: int, cached: bool, batch: int = 32) -> str:
    """The engine `name` stands for: `auto` by the rule above, others as they are."""
    check_engine(name)
    if name != "auto":
        return name
    if device.type != "cpu" or not (cached or images >= AUTO_MIN_IMAGES):
        return "torch"
    if batch == 1 and installed("openvino"):  # one image at a time (a server): OpenVINO's latency mode
        return "openvino"
    return "onnxruntime" if installed("onnxruntime") else "torch"


class Probabilities(nn.Module):
    """A classifier that answers softmax probabilities: what a deployed model returns."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(images).softmax(dim=-1)


class Features(nn.Module):
    """A classifier's backbone alone: uint8 images -> pooled features."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"torch": torch.__version__}
    for package in ("onnx", "onnxscript", "onnxruntime", "openvino"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return out


def cache_folder(identity: dict) -> Path:
    """`<cache>/engines/<key>`: where the exports of one model at one input size live."""
    from transferlab.data.sources import cache_root
    from transferlab.features import cache_key

    return cache_root() / "engines" / cache_key(identity | versions())[:24]


def exported(folder: Path, engine: str) -> bool:
    return (folder / {"onnxruntime": "model.onnx", "openvino": "model.xml"}[engine]).is_file()


def compile_engine(engine: str, module: nn.Module, size: int, folder: Path, *, device: torch.device | str = "cpu",
                   channels_last: bool = True):
    """A callable uint8 NCHW numpy -> float32 numpy running `module` on `engine` (exported into
    `folder` the first time)."""
    from transferlab.engines import runtime

    module = module.eval()
    if engine == "torch":
        return runtime.TorchEngine(module, device=device, channels_last=channels_last)
    from transferlab.engines.export import to_onnx, to_openvino

    onnx_path, xml = folder / "model.onnx", folder / "model.xml"
    if not onnx_path.is_file():
        published(folder, ("model.onnx",), lambda tmp: to_onnx(module, size, tmp / "model.onnx"))
    if engine == "onnxruntime":
        return runtime.OnnxEngine(onnx_path)
    if not xml.is_file():
        published(folder, ("model.bin", "model.xml"), lambda tmp: to_openvino(onnx_path, tmp / "model.xml"))
    return runtime.OpenVinoEngine(xml)


def published(folder: Path, names: tuple[str, ...], build) -> None:
    """`build(tmp)` writes `names` into a private folder; they are then moved into `folder`, the
    file whose presence means "exported" last. An interrupted or failed export (a refused
    onnx.checker, Ctrl-C) leaves nothing in the cache that a later run would trust."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
        build(Path(tmp))
        for name in names:
            os.replace(Path(tmp) / name, folder / name)


def run_batches(engine, images, indices, batch_size: int) -> np.ndarray:
    """Outputs of `engine` for the cached images at `indices`, in batches."""
    out = [engine(np.ascontiguousarray(images.take(indices[start : start + batch_size]).transpose(0, 3, 1, 2)))
           for start in range(0, len(indices), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
