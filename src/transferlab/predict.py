"""Predictions of a trained run for image files: top-k classes with probabilities.

Each file is decoded exactly as in training (the run's resize settings); a file that cannot be
read is reported with its reason and the others are still predicted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from transferlab.data.decode import BadImage, decode_file
from transferlab.preprocess import ResizeSpec
from transferlab.run import load_model


def predict_files(run: str | Path, files: list[str | Path], *, top_k: int = 5, batch_size: int = 32,
                  max_pixels: int = 89_478_485, device: str | None = None) -> list[dict]:
    """One dict per file: {"path", "top": [{"class", "probability"}...]} or {"path", "error"}."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    classifier, meta = load_model(run, device=device)
    spec = ResizeSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["resize"].items()})
    classes = meta["classes"]
    k = max(1, min(top_k, len(classes)))
    results: list[dict] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        batch = torch.from_numpy(np.stack([pixels for _, pixels in pending])).permute(0, 3, 1, 2).to(device)
        with torch.no_grad():
            probs = classifier(batch).softmax(dim=1).cpu()
        values, order = probs.topk(k, dim=1)
        for (slot, _), v, o in zip(pending, values, order):
            results[slot]["top"] = [{"class": classes[int(c)], "probability": round(float(p), 6)} for p, c in zip(v, o)]
        pending.clear()

    for file in files:
        results.append({"path": str(file)})
        try:
            pixels, _ = decode_file(Path(file), spec, max_pixels=max_pixels, min_side=1)
        except BadImage as exc:
            results[-1]["error"] = str(exc)
            continue
        pending.append((len(results) - 1, pixels))
        if len(pending) >= batch_size:
            flush()
    flush()
    return results
