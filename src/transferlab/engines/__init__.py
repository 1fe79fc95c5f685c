"""Inference back ends: the same model run by torch, onnxruntime or OpenVINO.

Every engine takes uint8 NCHW images (the decode-once cache's pixels) and returns float32 numpy:
class probabilities for a classifier, pooled features for a backbone. Normalization is inside
the exported graph, so a consumer needs no Python of ours. Exports are made once per model and
input size and kept in the cache folder (`<cache>/engines/<key>/`).

`auto` follows the rule of the README's Engines section (measured by benchmarks/bench_inference.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from transferlab.config import ENGINES
from transferlab.engines.modules import Features, Probabilities, versions
from transferlab.errors import ConfigError, TransferlabError
from transferlab.io import digest_key

AUTO_MIN_IMAGES = 2000
__all__ = ["AUTO_MIN_IMAGES", "EngineError", "Features", "Probabilities", "cache_folder", "check_engine", "compile_engine",
           "exported", "fallbacks", "resolve", "run_batches", "versions"]


def installed(name: str) -> bool:
    return name == "torch" or importlib.util.find_spec(name) is not None  # each engine's package bears its name


def check_engine(name: str) -> None:
    if name != "auto" and name not in ENGINES:
        raise ConfigError(f"unknown engine '{name}': choose auto, {', '.join(ENGINES)}")
    if name != "auto" and not installed(name):
        raise ConfigError(f"engine {name} is not installed: pip install {name} (or choose --engine torch)")


def resolve(name: str, *, device: torch.device, images: int, cached: bool, batch: int = 32) -> str:
    """The engine `name` stands for: `auto` by the README's rule (exporting takes seconds, which a
    handful of images do not repay), others as they are."""
    check_engine(name)
    if name != "auto":
        return name
    if device.type != "cpu" or not (cached or images >= AUTO_MIN_IMAGES):
        return "torch"
    if batch == 1 and installed("openvino"):  # one image at a time (a server): OpenVINO's latency mode
        return "openvino"
    return "onnxruntime" if installed("onnxruntime") else "torch"


def cache_folder(identity: dict, root: Path | None = None) -> Path:
    """`<cache>/engines/<key>`: where the exports of one model at one input size live."""
    from transferlab.data.items import cache_root

    return (root or cache_root()) / "engines" / digest_key(identity | versions())[:24]


FILES = {"onnxruntime": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
MANIFEST = "manifest.json"  # sha256 of each exported file and of the weights it came from; written last


def exported(folder: Path, engine: str) -> bool:
    """Whether `folder` claims an export for `engine` (compile_engine verifies it before use)."""
    return all(name in read_manifest(folder).get("files", {}) for name in FILES[engine])


def read_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def weights_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


NOT_EXPORTED = "not exported yet"


def problem(folder: Path, engine: str, source: str) -> str | None:
    """Why the cached export of `engine` in `folder` cannot be used for weights `source`: NOT_EXPORTED
    when there is none (a fresh cache), another reason when what is there is damaged or foreign; None
    when it can be trusted."""
    manifest, exists = read_manifest(folder), [(folder / name).exists() for name in FILES[engine]]
    if not manifest:
        return "has no manifest" if any(exists) else NOT_EXPORTED
    if manifest.get("source") != source:
        return "was made from other weights"
    claimed = manifest.get("files", {})
    if not any(exists) and not any(name in claimed for name in FILES[engine]):
        return NOT_EXPORTED
    for name in FILES[engine]:
        path = folder / name
        if not path.is_file():
            return f"lacks {name}"
        if file_digest(path) != claimed.get(name):
            return f"has a {name} that differs from the one exported (damaged or replaced)"
    return None


class EngineError(TransferlabError):
    """An engine that cannot compile or run a model."""


PREFERENCE = ("openvino", "onnxruntime", "torch")  # what `auto` falls back through, fastest on a CPU first


def fallbacks(requested: str, chosen: str) -> list[str]:
    """The engines to try for `requested` (a name, or auto) once `resolve` chose `chosen`: a named
    engine alone; for auto, the choice and then the slower ones that are installed, torch last."""
    if requested != "auto" or chosen == "torch":
        return [chosen]
    return [chosen, *(e for e in PREFERENCE[PREFERENCE.index(chosen) + 1:] if installed(e))]


def compile_engine(engines: str | list[str], module: nn.Module, size: int, folder: Path, *,
                   device: torch.device | str = "cpu", channels_last: bool = True, limit_bytes: int | None = None):
    """A callable uint8 NCHW numpy -> float32 numpy running `module` on the first of `engines` that
    compiles it and runs one image, exported into `folder` the first time (a cached export is verified
    against its manifest and the module's weights, and rebuilt saying why when it does not match; the
    cache folder is then trimmed to `limit_bytes`). Falling back to the next engine is said in one
    line; when none can, an EngineError says why."""
    from transferlab.console import warn

    engines = [engines] if isinstance(engines, str) else list(engines)
    module = module.eval()
    for k, engine in enumerate(engines):
        try:
            compiled = build_engine(engine, module, size, folder, device=device, channels_last=channels_last)
            compiled(np.zeros((1, 3, size, size), np.uint8))  # it compiles, and it runs
        except Exception as exc:  # noqa: BLE001 - each engine's library raises its own types
            why = " ".join(str(exc).split())[:200] or type(exc).__name__
            if k + 1 == len(engines):
                raise EngineError(f"the {engine} engine cannot run this model ({why}): choose another with --engine "
                                  "(torch runs every model)") from None
            warn(f"the {engine} engine cannot run this model ({why[:120]}): using {engines[k + 1]} instead")
            continue
        if engine != "torch" and limit_bytes is not None:
            from transferlab.data.cache import trim_cache

            trim_cache(folder.parent.parent, limit_bytes, keep=set(folder.rglob("*")), deletable=("features", "engines"))
        return compiled
    raise AssertionError(engines)


def build_engine(engine: str, module: nn.Module, size: int, folder: Path, *, device, channels_last: bool):
    """`module` on `engine`, its export made or verified in `folder` (compile_engine's one try)."""
    from transferlab.engines import runtime

    if engine == "torch":
        return runtime.TorchEngine(module, device=device, channels_last=channels_last)
    from transferlab.engines.export import to_onnx, to_openvino

    source = weights_digest(module)
    for step, build in (("onnxruntime", lambda tmp: to_onnx(module, size, tmp / "model.onnx")),
                        ("openvino", lambda tmp: to_openvino(folder / "model.onnx", tmp / "model.xml"))):
        why = problem(folder, step, source)
        if why is not None:
            if why != NOT_EXPORTED:
                from transferlab.console import warn

                warn(f"the cached {step} export in {folder} {why}: rebuilding it")
            published(folder, step, source, build)
        if step == engine:
            os.utime(folder / MANIFEST)  # recency, for trimming the cache
            return runtime.OnnxEngine(folder / "model.onnx") if engine == "onnxruntime" else \
                runtime.OpenVinoEngine(folder / "model.xml")
    raise AssertionError(engine)


def published(folder: Path, engine: str, source: str, build) -> None:
    """`build(tmp)` writes the files of `engine` into a private folder; they are moved into
    `folder`, then the manifest with their digests is written last. An interrupted or failed
    export (a refused onnx.checker, Ctrl-C) leaves nothing that a later run would trust."""
    from transferlab.io import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    if manifest.get("source") != source:  # what other weights left is not theirs to keep
        manifest = {"source": source, "files": {}}
        for name in (n for files in FILES.values() for n in files):
            (folder / name).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
        build(Path(tmp))
        for name in FILES[engine]:
            manifest["files"][name] = file_digest(Path(tmp) / name)
            os.replace(Path(tmp) / name, folder / name)
    text = json.dumps(manifest, indent=1).encode()
    atomic_write(folder / MANIFEST, lambda handle: handle.write(text))


def run_batches(engine, images, indices, batch_size: int, *, transform=None, seed: int = 0,
                label: str | None = None) -> np.ndarray:
    """Outputs of `engine` for the stored images at `indices`, in batches (the one inference loop);
    with `transform`, each image is augmented first, seeded per image; with `label`, a progress bar
    (on rank 0 only, when engines/shard.py splits the pass across processes)."""
    from transferlab.console import progress_bar
    from transferlab.data.loader import seed_item
    from transferlab.engines.shard import rank_and_size

    indices, out = np.asarray(indices, dtype=np.int64), []
    shown = label is not None and rank_and_size()[0] == 0
    with progress_bar(label or "", total=len(indices), enabled=shown) as advance:
        for start in range(0, len(indices), batch_size):
            part = indices[start : start + batch_size]
            batch = np.ascontiguousarray(images.take(part).transpose(0, 3, 1, 2))
            if transform is not None:
                views = []
                for i, image in zip(part, torch.from_numpy(batch)):
                    seed_item(seed, 0, int(i))
                    views.append(transform(image))
                batch = torch.stack(views).numpy()
            out.append(engine(batch))
            advance(len(part))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
