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


class Familiar:
    """A run's unfamiliar-input check on an engine: the pretrained backbone's features of an input (the size and
    normalization the run's audit used) against the training images' (model/familiar.*)."""

    def __init__(self, model: TrainedModel, familiarity, engine: str, images: int):
        from transferlab.data.items import cache_root
        from transferlab.engines import compile_engine, exported, fallbacks, resolve
        from transferlab.engines.modules import backbone_features
        from transferlab.features import backbone_identity, features_folder

        record, config = familiarity.record, model.config
        normalize = tuple(tuple(v) for v in record["normalize"])
        root = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else cache_root()
        folder = features_folder(backbone_identity(config.model, config.seed), normalize, record["size"],
                                 model.spec.size, root)
        module = backbone_features(config, record["size"], model.spec.size, normalize)
        name = engine if engine == "torch" else resolve(engine, device=model.device, images=images,
                                                        cached=exported(folder, "onnxruntime"))
        self.engine = compile_engine(fallbacks(engine, name), module, model.spec.size, folder, device=model.device,
                                     channels_last=False, limit_bytes=int(config.data.disk_limit_gb * 1e9))
        self.familiarity = familiarity

    @staticmethod
    def of(model: TrainedModel, engine: str = "auto", images: int = 1) -> Familiar | None:
        """The run's check, or None for a run without one (older runs, audit.enabled=false)."""
        from transferlab.audit import Familiarity

        familiarity = Familiarity.load(model.run / "model")
        return None if familiarity is None else Familiar(model, familiarity, engine, images)

    def __call__(self, pixels: np.ndarray) -> list[dict]:
        """{"unfamiliar", "unfamiliarity"} of each model-ready uint8 image (N, size, size, 3)."""
        features = self.engine(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
        width = self.familiarity.reference.shape[1]
        return self.familiarity.flags(np.asarray(features)[:, -width:])


def familiarity_companions(model: TrainedModel) -> list:
    """What an export bundle carries to flag unfamiliar inputs: the features graph (the pretrained backbone at the
    audit's size, normalization inside), the training images' unit features (familiar.npy, float16), k and the
    threshold; its parity is that of the unfamiliarity scores. None for a run without a reference."""
    from transferlab.audit import Familiarity
    from transferlab.engines.export import Companion
    from transferlab.engines.modules import backbone_features

    familiarity = Familiarity.load(model.run / "model")
    if familiarity is None:
        return []
    record, width = familiarity.record, familiarity.reference.shape[1]
    module = backbone_features(model.config, record["size"], model.spec.size,
                               tuple(tuple(v) for v in record["normalize"]))

    def parity(expected: np.ndarray, exported: np.ndarray) -> dict:
        a, b = (familiarity.scores(np.asarray(x)[:, -width:]) for x in (expected, exported))
        return {"max_abs_diff": float(np.abs(a - b).max()), "of": "unfamiliarity scores",
                "flags_agree": float(((a > familiarity.threshold) == (b > familiarity.threshold)).mean())}

    how = (f"feed the model's input to the features graph; take its last {width} outputs, divide by their L2 norm; "
           f"unfamiliarity = 1 - the mean of the {familiarity.k} largest dot products with the rows of familiar.npy; "
           f"unfamiliar when above {familiarity.threshold:.6g}")
    return [Companion("unfamiliar", "features", module, {"familiar.npy": model.run / "model" / "familiar.npy"},
                      {k: v for k, v in record.items() if k != "version"} | {"reference": "familiar.npy",
                                                                           "features": width, "how": how},
                      parity)]


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
    familiar = Familiar.of(model, engine, images=len(files))
    k = min(top_k, len(model.classes))
    results: list[dict] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if pending:
            batch = np.stack([pixels for _, pixels in pending])
            probs = predict_pixels(model, batch, engine=compiled, tta=tta)
            flags = familiar(batch) if familiar is not None else [{}] * len(probs)
            for (slot, _), row, flag in zip(pending, probs, flags):
                results[slot] |= model.task.answer(row, model.classes, k) | flag
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
