"""Predictions of a trained run for image files: top-k classes with probabilities.

Each file goes through the one decode path with the run's own resize settings and limits; a file
that cannot be read is reported with its reason and the others are still predicted. The model
runs on an engine (torch, onnxruntime, openvino), optionally over test-time views.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferlab.data.decode import BadImage, decode_file
from transferlab.data.sources import display_name
from transferlab.errors import ConfigError
from transferlab.rundir import TrainedModel, load_model


def model_engine(model: TrainedModel, engine: str = "auto", images: int = 1, batch: int = 32):
    """The run's classifier (answering probabilities) on `engine`, exported once and cached."""
    from transferlab.data.decode import content_hash
    from transferlab.engines import (Probabilities, cache_folder, check_engine, compile_engine, exported, fallbacks,
                                     resolve)

    module = Probabilities(model.classifier, model.task)
    if engine == "torch":  # no export: nothing to hash or look up
        check_engine(engine)
        return compile_engine("torch", module, model.spec.size, Path(), device=model.device, channels_last=False)
    digest = content_hash((model.run / "model" / "weights.safetensors").read_bytes())
    folder = cache_folder({"kind": "probabilities", "weights": digest, "meta": model.meta})
    name = resolve(engine, device=model.device, images=images, cached=exported(folder, "onnxruntime"), batch=batch)
    return compile_engine(fallbacks(engine, name), module, model.spec.size, folder, device=model.device,
                          channels_last=False, limit_bytes=int(model.config.data.disk_limit_gb * 1e9))


def predict_pixels(model: TrainedModel, pixels: np.ndarray, *, engine, tta: tuple[str, ...] = ()) -> np.ndarray:
    """Class probabilities (N, K) of model-ready uint8 images (N, size, size, 3) on `engine` (model_engine)."""
    from transferlab import tta as views

    return views.averaged(engine, np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)), views.views(tta))


def predict_files(run: str | Path, files: list[str | Path], *, top_k: int = 5, engine: str = "auto",
                  tta: tuple[str, ...] = ()) -> list[dict]:
    """One dict per file: {"path", "top": [{"class", "probability"}...]} (multi-label: also "labels", the labels
    predicted, and every label in "top" with whether it is predicted and its threshold) or {"path", "error"}."""
    if top_k < 1:
        raise ConfigError(f"--top-k {top_k} must be at least 1")
    model = load_model(run)
    compiled = model_engine(model, engine, images=len(files))
    k = min(top_k, len(model.classes))
    results: list[dict] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if pending:
            probs = predict_pixels(model, np.stack([pixels for _, pixels in pending]), engine=compiled, tta=tta)
            for (slot, _), row in zip(pending, probs):
                results[slot] |= model.task.answer(row, model.classes, k)
            pending.clear()

    for file in files:
        results.append({"path": display_name(str(file))})
        try:
            pixels, _ = decode_file(Path(file), model.spec, model.limits)
        except BadImage as exc:
            results[-1]["error"] = str(exc)
            continue
        pending.append((len(results) - 1, pixels))
        if len(pending) >= 32:  # a batch for the engine
            flush()
    flush()
    return results
