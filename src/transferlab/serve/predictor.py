"""What the web app and the HTTP API share: one trained run, loaded once, answering for encoded
image bytes through the same decode path and limits as `predict` and `explain`.

The class probabilities run on the chosen engine; Grad-CAM needs gradients, so it runs on the
torch classifier. Both are serialised by one lock: a server's requests come from many threads,
and a CAM hooks the shared model while it runs. The work of a request (decode, model, CAM) runs
on WORKERS threads, so at most that many pictures are decoded at once, and its caller waits at
most TIMEOUT_S for the answer.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import threading
from concurrent import futures
from pathlib import Path

import numpy as np

from transferlab.data.decode import BadImage, check_size, read_file
from transferlab.io import read_json
from transferlab.rundir import load_model

MAX_EXAMPLES = 8
SAFE_NAME = re.compile(r"[^\w.-]+")
WORKERS = 2  # pictures decoded (and explained) at once: a large one takes a few hundred MB while it is
TIMEOUT_S = 60  # the longest a request waits for its turn and its answer


class Busy(BadImage):
    """No answer within TIMEOUT_S: the server is busy (not the image's fault); HTTP 503."""

    def __init__(self):
        super().__init__(f"no answer within {TIMEOUT_S} s: the server is busy, try again", "busy")


def bounded(method):
    """`method` run on the predictor's workers; its caller waits at most TIMEOUT_S (then Busy)."""

    @functools.wraps(method)
    def run(self, *args):
        future = self.workers.submit(method, self, *args)
        try:
            return future.result(TIMEOUT_S)
        except futures.TimeoutError:
            future.cancel()
            raise Busy() from None

    return run


class Predictor:
    """A run's classifier on an engine, with its model card and example images."""

    def __init__(self, run: str | Path, *, engine: str, max_pixels: int):
        from transferlab.engines import AUTO_MIN_IMAGES
        from transferlab.predict import Familiar, model_engine

        self.run = Path(run)
        self.model = load_model(self.run)
        # a server answers images one at a time for as long as it runs: an export repays itself
        self.engine = model_engine(self.model, engine, images=AUTO_MIN_IMAGES, batch=1)
        self.engine_name = self.engine.name
        self.familiar = Familiar.of(self.model, engine, images=AUTO_MIN_IMAGES)  # None: the run has no reference
        self.lock = threading.Lock()
        self.workers = futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="transferlab-decode")
        self.limits = dataclasses.replace(self.model.limits, max_pixels=max_pixels)
        self.card = model_card(self.run, self.model.meta)

    @property
    def classes(self) -> list[str]:
        return self.model.classes

    def decode(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(original picture, model input) of `data`; BadImage says why it cannot be used."""
        from transferlab.interpret.explanation import picture

        check_size(data, self.limits.max_bytes)  # an upload did not come through read_file
        try:
            return picture(data, self.model.spec, self.limits, reduce=True)
        except BadImage as exc:  # the pixel limit of a server is its own option
            raise BadImage(str(exc).replace("data.max_pixels", "--max-pixels"), exc.kind) from None

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities (K,) of one model-ready image, on the engine."""
        from transferlab.predict import predict_pixels

        with self.lock:
            return predict_pixels(self.model, pixels[None], engine=self.engine)[0]

    def flag(self, pixels: np.ndarray) -> dict:
        """{"unfamiliar", "unfamiliarity"} of one model-ready image ({} for a run without a reference)."""
        if self.familiar is None:
            return {}
        with self.lock:
            return self.familiar(pixels[None])[0]

    @bounded
    def predict(self, data: bytes, top_k: int = 5) -> dict:
        """The answer for encoded image `data`: {"top": its top `top_k` classes with their probabilities}
        (a multi-label model's also "labels", those predicted; every label in "top"), and whether the image is
        unlike the training images ("unfamiliar", with its score)."""
        _, pixels = self.decode(data)
        return self.model.task.answer(self.probabilities(pixels), self.classes, max(1, top_k)) | self.flag(pixels)

    def decision(self, scores: dict[str, float]) -> str:
        """What the model predicts from `scores` ({class: probability}): the class, or the labels predicted."""
        answer = self.model.task.answer(np.array([scores[c] for c in self.classes]), self.classes, 1)
        return ", ".join(answer["labels"]) or "no label" if "labels" in answer else answer["top"][0]["class"]

    def caption(self, scores: dict[str, float], flag: dict | None = None) -> str:
        """The prediction in words, with its probabilities: `predicted coat (0.93)`, or every label predicted; with
        a warning when the image is unlike the training images."""
        words = self.model.task.caption(np.array([scores[c] for c in self.classes]), self.classes)
        return words + (UNFAMILIAR if (flag or {}).get("unfamiliar") else "")

    @bounded
    def explain(self, data: bytes, class_name: str | None = None) -> tuple[dict[str, float], np.ndarray, str, dict]:
        """({class: probability}, the Grad-CAM overlay on the original picture, the class it
        explains: `class_name`, or the predicted one; whether the image is unfamiliar, as `flag`)."""
        from transferlab.interpret.cam import compute_cams, overlay
        from transferlab.preprocess import to_original

        original, pixels = self.decode(data)
        probs = self.probabilities(pixels)
        target = self.classes.index(class_name) if class_name in self.classes else self.model.task.top(probs)
        with self.lock:
            result = compute_cams(self.model.classifier, pixels[None], method="gradcam", target_classes=[target],
                                  task=self.model.task)
        height, width = original.shape[:2]
        blended = overlay(original, to_original(result["cams"][0], (width, height), self.model.spec))
        return {c: float(p) for c, p in zip(self.classes, probs)}, blended, self.classes[target], self.flag(pixels)


UNFAMILIAR = " - UNFAMILIAR: unlike the images this model was trained on; the answer may mean nothing"


def model_card(run: Path, meta: dict) -> dict:
    """What a user of the app should know about the model: data, classes, strategy, test metrics."""
    from transferlab.metrics import LABELS, headline

    metrics = read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
    split = next((s for s in ("test", "val") if s in metrics), None)
    strategy = metrics.get("strategy", {})
    data = metrics.get("data", {})
    return {"run": run.name, "model": meta["model"], "classes": meta["classes"], "source": meta.get("source"),
            "images": data.get("n_images"), "splits": data.get("splits"),
            "strategy": strategy.get("label") or meta.get("strategy"), "input_size": meta["resize"]["size"],
            "evaluated_on": split, "n": metrics[split].get("n") if split else None,
            "metrics": {LABELS.get(k, k): v for k, v in headline(metrics[split]).items() if v is not None}
            if split else {},
            "report": (run / "report.html").is_file()}


def example_images(run: Path, source: str | None, folder: Path) -> list[Path]:
    """Up to MAX_EXAMPLES images of the held-out split named in split.csv (test, else validation),
    one per class, copied into `folder` (the app serves nothing from the user's data folder)."""
    from PIL import Image

    from transferlab.data.sources import open_source
    from transferlab.data.splits import read_split_csv

    if not source or not (run / "split.csv").is_file():
        return []
    rows = read_split_csv(run / "split.csv")
    held = [r for r in rows if r.get("split") == "test"] or [r for r in rows if r.get("split") == "val"]
    chosen: dict[str, str] = {}
    for row in held:
        chosen.setdefault(row["label"], row["path"])
    wanted = list(chosen.values())[:MAX_EXAMPLES]
    if not wanted:
        return []
    try:
        opened = open_source(source)
        items = {item.path: item for item in opened.items}
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for k, path in enumerate(wanted):
            item = items.get(path)
            if item is None:
                continue
            target = folder / f"{k:02d}-{SAFE_NAME.sub('-', item.label)[:40]}"
            if item.file is not None:
                target = target.with_suffix(Path(item.file).suffix.lower() or ".png")
                target.write_bytes(read_file(Path(item.file)))
            else:
                target = target.with_suffix(".png")
                Image.fromarray(opened.arrays[item.index]).save(target)
            written.append(target)
        return written
    except Exception:  # the data moved or changed since training: the app works without examples
        return []
