"""Regenerate the README's interpretation pictures.

    python docs/make_figures.py CNN_RUN VIT_RUN IMAGE

CNN_RUN: a run on Fashion-MNIST (e.g. `transferlab demo --out runs/demo`); VIT_RUN: a ViT run
(e.g. `transferlab train builtin:fashion-mnist --subset 60 --model vit_tiny_patch16_224
--no-pretrained --size 112 --strategy fine-tune --epochs 8 --out runs/vit`), or `-` to keep the
attention picture as it is; IMAGE: a test image.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from transferlab.interpret import explain
from transferlab.interpret.cam import METHODS, compute_cams, overlay
from transferlab.interpret.explanation import load_pictures
from transferlab.figures import subplots
from transferlab.rundir import load_model

OUT = Path(__file__).parent / "images"


def cam_strip(run: str, image: str) -> None:
    model = load_model(run)
    classifier, meta = model.classifier, model.meta
    _, inputs = load_pictures([image], model.spec, model.limits)
    fig, axes = subplots(1, len(METHODS) + 1, figsize=(2.2 * (len(METHODS) + 1), 2.6), layout="constrained")
    axes[0].imshow(inputs[0])
    axes[0].set_title("image", fontsize=9)
    for ax, method in zip(axes[1:], METHODS):
        result = compute_cams(classifier, inputs, method=method)
        ax.imshow(overlay(inputs[0], result["cams"][0]))
        ax.set_title(method, fontsize=9)
    for ax in axes:
        ax.axis("off")
    pred = meta["classes"][int(result["pred"][0])]
    fig.suptitle(f"the CAM family on the same image (predicted {pred})", fontsize=10)
    fig.savefig(OUT / "cam-methods.png", dpi=90)


def main() -> None:
    cnn_run, vit_run, image = sys.argv[1:4]
    OUT.mkdir(parents=True, exist_ok=True)
    cam_strip(cnn_run, image)
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(cnn_run, "gradcam", "gradcam.png"), (cnn_run, "featuremaps", "featuremaps.png")]
        if vit_run != "-":
            jobs.append((vit_run, "attention", "attention.png"))
        for run, method, name in jobs:
            written = explain(run, [image], method=method, out=Path(tmp) / method)
            shutil.copy(written[0], OUT / name)


if __name__ == "__main__":
    main()
