"""Interpretation: what a trained model looks at.

    explain(run, images, method="gradcam")  -> PNG files (CAM overlays, feature-map grids,
                                               attention grids), one per image

CAM methods come from pytorch-grad-cam; feature maps from timm's forward_intermediates;
attention from timm's AttentionExtract with fused attention turned off while it runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferlab.interpret.cam import METHODS, ExplainError, cam_to_original, compute_cams, find_target_layer, overlay
from transferlab.interpret.maps import attention_maps, attention_rollout, feature_maps, token_attention

ALL_METHODS = (*METHODS, "featuremaps", "attention")
MAX_SIDE = 768  # overlays of huge photos are drawn at most this large


def load_pictures(files: list[str | Path], spec) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Originals (oriented RGB) and model inputs of image files; a bad file is an error naming it."""
    from transferlab.data.decode import BadImage, open_image, read_bytes, to_rgb
    from transferlab.preprocess import resize_image

    originals, inputs, names = [], [], []
    for file in files:
        try:
            image, _ = open_image(read_bytes(Path(file)), max_pixels=1 << 62, min_side=1)
            rgb = to_rgb(image, spec.alpha_background)
        except BadImage as exc:
            raise ExplainError(f"{file}: {exc}") from None
        scale = min(1.0, MAX_SIDE / max(rgb.size))
        shown = rgb if scale == 1.0 else rgb.resize((round(rgb.size[0] * scale), round(rgb.size[1] * scale)))
        originals.append(np.asarray(shown))
        inputs.append(resize_image(rgb, spec))
        names.append(Path(file).stem)
    return originals, np.stack(inputs), names


def explain(run: str | Path, files: list[str | Path], *, method: str = "gradcam", layer: str | None = None,
            class_name: str | None = None, out: str | Path | None = None, colormap: str = "jet",
            alpha: float = 0.45, top: int = 8) -> list[Path]:
    """Explain the predictions of a trained run for image files; returns the PNGs written."""
    from transferlab.preprocess import ResizeSpec
    from transferlab.run import load_model, new_run_dir

    if method not in ALL_METHODS:
        raise ExplainError(f"unknown method '{method}': choose one of {', '.join(ALL_METHODS)}")
    classifier, meta = load_model(run)
    classes = meta["classes"]
    target = None
    if class_name is not None:
        if class_name not in classes:
            raise ExplainError(f"class '{class_name}' is not one of the model's classes: {', '.join(classes)}")
        target = classes.index(class_name)
    spec = ResizeSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["resize"].items()})
    originals, inputs, names = load_pictures(files, spec)
    if not 0 <= alpha <= 1:
        raise ExplainError(f"--alpha {alpha} must be in [0, 1]")
    from transferlab.interpret import render

    jobs = []  # (file name, draw function): everything is computed before anything is written
    if method in METHODS:
        result = compute_cams(classifier, inputs, method=method, layer=layer,
                              target_classes=None if target is None else [target] * len(inputs))
        for i, name in enumerate(names):
            height, width = originals[i].shape[:2]
            blended = overlay(originals[i], cam_to_original(result["cams"][i], (width, height), spec),
                              colormap=colormap, alpha=alpha)
            title = cam_title(method, result, i, classes)
            jobs.append((f"{name}-{method.replace('+', 'p')}.png",
                         lambda path, i=i, blended=blended, title=title: render.cam_figure(
                             originals[i], blended, path, title=title, colormap=colormap)))
    elif method == "featuremaps":
        if layer is not None:
            raise ExplainError("featuremaps shows every stage; --layer applies to the CAM methods")
        for i, name in enumerate(names):
            stages = feature_maps(classifier, inputs[i], top=top)
            jobs.append((f"{name}-featuremaps.png",
                         lambda path, i=i, stages=stages: render.feature_grid(inputs[i], stages, path)))
    else:
        for i, name in enumerate(names):
            maps = attention_maps(classifier, inputs[i])
            heads = token_attention(maps["attention"], maps["prefix_tokens"], maps["grid"])
            rollout = attention_rollout(maps["attention"], maps["prefix_tokens"], maps["grid"])
            jobs.append((f"{name}-attention.png",
                         lambda path, i=i, heads=heads, rollout=rollout, layers=maps["layer_names"]:
                         render.attention_grid(inputs[i], heads, rollout, layers, path, colormap=colormap,
                                               alpha=alpha)))
    directory = new_run_dir(out, method.replace("+", "p"), "explain", base=Path(run) / "explanations")
    written = []
    for file_name, draw in jobs:
        draw(directory / file_name)
        written.append(directory / file_name)
    return written


def cam_title(method: str, result: dict, i: int, classes: list[str]) -> str:
    pred, target = int(result["pred"][i]), int(result["target"][i])
    label = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "EigenCAM", "scorecam": "Score-CAM",
             "layercam": "LayerCAM"}[method]
    return (f"predicted {classes[pred]} ({result['probs'][i, pred]:.2f}) · {label} for {classes[target]} "
            f"· layer {result['layer'].removeprefix('backbone.')}")


__all__ = ["explain", "compute_cams", "feature_maps", "attention_maps", "attention_rollout", "token_attention",
           "overlay", "find_target_layer", "ExplainError", "ALL_METHODS"]
