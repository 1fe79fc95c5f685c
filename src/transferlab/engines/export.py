"""`transferlab export`: a trained run as a self-describing bundle, with its parity proven.

    RUN/exports/onnx/            (or --out)
      model.onnx                 uint8 NCHW images [N, 3, S, S] -> probabilities [N, K]; batch dynamic
      bundle.json                classes, input, how to resize, normalization (inside the graph),
                                 versions, and the parity measured at export

The normalization is inside the graph, so a consumer only decodes, resizes (as bundle.json says)
and feeds uint8 pixels. Before anything is kept, the run's own test images (a sample) go
through the exported model and through PyTorch; the export is refused, and nothing is left
behind, when they differ beyond the tolerance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from transferlab.config import EXPORT_FORMATS
from transferlab.errors import TransferlabError

FORMATS = EXPORT_FORMATS  # --format -> the model's file in the bundle
OPSET = 18  # what onnxruntime and OpenVINO of today both read, and the exporter's own lowest
TOLERANCE = 1e-4  # largest difference of any probability from PyTorch's


class ExportError(TransferlabError):
    """An export that cannot be made, or does not match the model."""


@dataclasses.dataclass
class Companion:
    """A second graph a bundle carries beside the model (the unfamiliar-input check's features), its data files,
    what bundle.json says of it, and its parity check: (torch's outputs, the export's) -> a record with
    max_abs_diff, compared with TOLERANCE."""

    key: str  # its entry in bundle.json
    name: str  # its graph's file stem: features.onnx, features.xml, features.ts
    module: nn.Module
    files: dict  # bundle file name -> the source file copied in
    record: dict
    parity: object  # Callable[[np.ndarray, np.ndarray], dict]


def build_graph(module: nn.Module, fmt: str, folder: Path, stem: str, size: int):
    """`module` exported as `fmt` into `folder` (files named `stem`), loaded back on its runtime."""
    from transferlab.engines.runtime import OnnxEngine, OpenVinoEngine, TorchEngine

    if fmt == "torchscript":
        return TorchEngine(to_torchscript(module, size, folder / f"{stem}.ts"), channels_last=False)
    onnx_path = to_onnx(module, size, folder / f"{stem}.onnx")
    if fmt == "onnx":
        return OnnxEngine(onnx_path)
    engine = OpenVinoEngine(to_openvino(onnx_path, folder / f"{stem}.xml"))
    onnx_path.unlink()
    return engine


def example(size: int) -> torch.Tensor:
    return torch.zeros(2, 3, size, size, dtype=torch.uint8)  # a batch of 2 keeps the batch dimension dynamic


def to_onnx(module: nn.Module, size: int, path: Path) -> Path:
    """ONNX (torch's dynamo exporter, opset 18) with a dynamic batch dimension, one file, checked."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    name = next(iter(__import__("inspect").signature(module.forward).parameters))
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example(size),), str(path), dynamo=True, opset_version=OPSET,
                          input_names=["images"], output_names=["output"], external_data=False, verbose=False,
                          dynamic_shapes={name: {0: torch.export.Dim("batch", min=1, max=65536)}})
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def to_openvino(onnx_path: Path, xml: Path) -> Path:
    """OpenVINO IR from the ONNX file, weights kept in float32 (its default halves them)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def to_torchscript(module: nn.Module, size: int, path: Path) -> nn.Module:
    """Traced and saved to `path`; returns the module loaded back from the file (what parity checks)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated upstream; it still loads without Python of ours
        torch.jit.trace(module.eval(), (example(size),)).save(str(path))
        return torch.jit.load(str(path))


def sample_images(model, count: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Up to `count` of the run's test images (else validation, else training), decoded as for
    the model; random images when the run's data is no longer where it was."""
    from transferlab.config import load_config
    from transferlab.data.cache import DecodingStore
    from transferlab.data.sources import open_source
    from transferlab.data.splits import read_split_csv

    run = model.run
    try:
        rows = read_split_csv(run / "split.csv")
        source = open_source(load_config(run / "config.yaml").data.source)
    except Exception:  # a moved data set, an edited run: numerical parity still holds on random pixels
        rows, source = [], None
    for part in ("test", "val", "train"):
        chosen = [r["path"] for r in rows if r.get("split") == part]
        if chosen and source is not None:
            break
    items = {item.path: item for item in (source.items if source else [])}
    chosen = [p for p in (chosen if source else []) if p in items]
    if chosen:
        picks = np.random.default_rng(seed).permutation(len(chosen))[:count]
        store = DecodingStore([items[chosen[i]].file for i in picks],
                              [source.arrays[items[chosen[i]].index] if items[chosen[i]].file is None else None
                               for i in picks], model.spec, model.limits)
        try:
            return store.take(range(len(store))), f"{len(store)} {part} images of the run"
        except Exception:
            pass
    size = model.spec.size
    return (np.random.default_rng(seed).integers(0, 256, (min(count, 16), size, size, 3), dtype=np.uint8),
            "random images (the run's data was not found)")


def compare(reference: np.ndarray, exported: np.ndarray, task) -> dict:
    """Parity of an export's answers with torch's: the largest difference, and how often the task's decisions
    (the class; a multi-label task's labels) agree."""
    agree = task.decide(reference) == task.decide(exported)
    return {"max_abs_diff": float(np.abs(reference - exported).max()),
            "top1_agreement": float(agree.reshape(len(agree), -1).all(axis=1).mean()),
            "tolerance": TOLERANCE}


def export_run(run: str | Path, fmt: str, *, out: str | Path | None = None, samples: int = 64,
               companions=()) -> Path:
    """Export a trained run to `fmt` (onnx, openvino, torchscript) with its parity proven, and each of its
    `companions` (a function of the loaded model -> Companion list) beside it, parity proven too; returns the
    bundle folder. Nothing is written when an exported graph does not match."""
    import transferlab
    from transferlab.engines.modules import Probabilities, versions
    from transferlab.engines.runtime import TorchEngine
    from transferlab.io import write_json
    from transferlab.rundir import check_out_dir, load_model

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}': choose one of {', '.join(FORMATS)}")
    model = load_model(run, device="cpu")
    target = Path(out).expanduser() if out is not None else model.run / "exports" / fmt
    check_out_dir(target)
    images, source = sample_images(model, samples)
    module = Probabilities(model.classifier.to(memory_format=torch.contiguous_format), model.task).eval()
    batch = images.transpose(0, 3, 1, 2)
    reference = TorchEngine(module, channels_last=False)(batch)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        folder = Path(tmp)
        size = model.spec.size
        try:
            answers = build_graph(module, fmt, folder, "model", size)(batch)
        except Exception as exc:  # noqa: BLE001 - the exporters and runtimes raise their own types
            why = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise ExportError(f"the {fmt} export of {model.run} failed ({why}); nothing was written: try another "
                              "--format") from None
        parity = compare(reference, answers, model.task) | {"images": source}
        if parity["max_abs_diff"] > TOLERANCE or parity["top1_agreement"] < 1.0:
            raise ExportError(f"the {fmt} export does not match the model on {source}: probabilities differ by up "
                              f"to {parity['max_abs_diff']:.2e} (tolerance {TOLERANCE:g}), top-1 agrees on "
                              f"{parity['top1_agreement']:.1%}; nothing was written")
        carried = {}
        for companion in (companions(model) if callable(companions) else companions):
            expected = TorchEngine(companion.module.eval(), channels_last=False)(batch)
            try:
                exported = build_graph(companion.module, fmt, folder, companion.name, size)(batch)
            except Exception as exc:  # noqa: BLE001 - as the model's
                why = " ".join(str(exc).split())[:200] or type(exc).__name__
                raise ExportError(f"the {fmt} export of {model.run}'s {companion.name} graph failed ({why}); "
                                  "nothing was written: try another --format") from None
            check = companion.parity(expected, exported) | {"images": source}
            if check["max_abs_diff"] > TOLERANCE:
                raise ExportError(f"the {fmt} export of the {companion.name} graph does not match on {source}: "
                                  f"{check['max_abs_diff']:.2e} apart (tolerance {TOLERANCE:g}); nothing was written")
            for name, source_file in companion.files.items():
                shutil.copyfile(source_file, folder / name)
            carried[companion.key] = companion.record | {"graph": companion.name + Path(FORMATS[fmt]).suffix,
                                                         "parity": check}
        write_json(folder / "bundle.json", {
            "format": fmt, "files": sorted(p.name for p in folder.iterdir()), "classes": model.classes,
            "input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "shape": ["batch", 3, size, size],
                      "channels": "RGB, 0-255, after EXIF orientation; 16-bit values scaled to 8 bits (x 255 / "
                                  "65535); embedded colour profiles converted to sRGB; alpha composited on "
                                  f"{list(model.spec.alpha_background)}"},
            "output": {"name": "output", "meaning": model.task.output()}, "task": model.task.record(),
            "preprocess": dataclasses.asdict(model.spec),
            "normalization": {**model.meta["normalize"], "in_graph": True},
            "model": model.meta["model"], "opset": OPSET if fmt != "torchscript" else None,
            "versions": {"transferlab": transferlab.__version__, **versions()}, "parity": parity,
            "run": str(model.run.resolve()), "seconds": round(time.time() - started, 1)} | carried)
        if target.exists():
            target.rmdir()  # empty: check_out_dir allowed it
        shutil.move(str(folder), str(target))
        folder.mkdir()  # for the TemporaryDirectory's own cleanup
    return target


def read_bundle(folder: Path) -> dict:
    return json.loads((Path(folder) / "bundle.json").read_text(encoding="utf-8"))
