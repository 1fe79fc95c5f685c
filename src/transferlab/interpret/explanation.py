"""`explain`: CAM overlays, feature-map grids or attention grids of image files, one PNG each."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.interpret.cam import METHODS, ExplainError, compute_cams, overlay
from transferlab.interpret.methods import ALL_METHODS
from transferlab.interpret.maps import attention_maps, attention_rollout, feature_maps, token_attention
from transferlab.preprocess import to_original

MAX_SIDE = 768  # overlays of huge photos are drawn at most this large
MIN_SIDE = 256  # and of tiny images (a 28x28 scan) at least this large, by whole pixels


def picture(data: bytes, spec, limits, *, reduce: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(original: oriented RGB with its longer side at most MAX_SIDE and, for small images, blown
    up by a whole factor to at least MIN_SIDE with nearest-neighbour so each pixel stays visible,
    model input) of encoded image `data`, through the one decode path with the run's limits
    (raises BadImage): what explain and serve show. `reduce` (serve): an image over twice the
    size both need is decoded at a reduced scale (open_image's `fit`); others stay exact."""
    from PIL import Image

    from transferlab.data.decode import load_rgb
    from transferlab.preprocess import resize_image

    fit = (MAX_SIDE, int(spec.size / spec.crop_pct) + 1) if reduce else None
    rgb, _ = load_rgb(data, limits, spec.alpha_background, fit)
    longer = max(rgb.size)
    if longer > MAX_SIDE:
        scale = MAX_SIDE / longer
        shown = rgb.resize((round(rgb.size[0] * scale), round(rgb.size[1] * scale)))
    elif longer < MIN_SIDE:
        factor = -(-MIN_SIDE // longer)
        shown = rgb.resize((rgb.size[0] * factor, rgb.size[1] * factor), Image.NEAREST)
    else:
        shown = rgb
    return np.asarray(shown), resize_image(rgb, spec)


def load_pictures(files: list[str | Path], spec, limits) -> tuple[list[np.ndarray], np.ndarray]:
    """Originals and model inputs of image files (`picture` of each); a bad file is an error naming it."""
    from transferlab.data.decode import BadImage, read_file
    from transferlab.data.sources import display_name

    originals, inputs = [], []
    for file in files:
        try:
            original, pixels = picture(read_file(Path(file), limits.max_bytes), spec, limits)
        except BadImage as exc:
            raise ExplainError(f"{display_name(str(file))}: {exc}") from None
        originals.append(original)
        inputs.append(pixels)
    return originals, np.stack(inputs)


def output_names(files: list[str | Path]) -> list[str]:
    """A distinct name per input file: its stem, with as many parent folders as it takes to tell
    files of the same name apart (`a/000.png`, `b/000.png` -> `a_000`, `b_000`), numbered last."""
    from transferlab.data.sources import display_name

    parts = [Path(os.path.abspath(f)).parts for f in files]
    names = []
    for k, p in enumerate(parts):
        depth = 1
        while depth < len(p) and any(q[-depth:] == p[-depth:] for j, q in enumerate(parts) if j != k):
            depth += 1
        name = "_".join([*p[-depth:-1], Path(p[-1]).stem])
        names.append(re.sub(r"[^\w.-]+", "-", display_name(name)).strip("-") or "image")
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


@dataclass(frozen=True)
class ExplainOptions:
    """What `explain` draws and how; checked when made, so a bad value fails before anything is read."""

    method: str = "gradcam"  # a CAM method, featuremaps or attention
    layer: str | None = None  # the CAM methods' target layer (default: the last convolution / block)
    class_name: str | None = None  # the class explained (default: the predicted one)
    colormap: str = "jet"
    alpha: float = 0.45  # weight of the heat map over the image
    top: int = 8  # featuremaps: channels shown per stage

    def __post_init__(self):
        import matplotlib

        if self.method not in ALL_METHODS:
            raise ExplainError(f"unknown method '{self.method}': choose one of {', '.join(ALL_METHODS)}")
        if self.colormap not in matplotlib.colormaps:
            raise ExplainError(f"--colormap {self.colormap} is not a matplotlib colormap "
                               "(e.g. jet, viridis, inferno, magma)")
        if not 0 <= self.alpha <= 1:
            raise ExplainError(f"--alpha {self.alpha} must be in [0, 1]")
        if not 1 <= self.top <= 4096:
            raise ExplainError(f"--top {self.top} must be between 1 and 4096 channels")
        if self.layer is not None and self.method == "featuremaps":
            raise ExplainError("featuremaps shows every stage; --layer applies to the CAM methods")


def explain(run: str | Path, files: list[str | Path], *, out: str | Path | None = None, **options) -> list[Path]:
    """Explain the predictions of a trained run for image files; returns the PNGs written. `options`
    are ExplainOptions' fields (method="gradcam", layer, class_name, colormap, alpha, top)."""
    from transferlab.rundir import check_out_dir, load_model, new_run_dir

    look = ExplainOptions(**options)
    method, colormap, alpha = look.method, look.colormap, look.alpha
    check_out_dir(out)
    model = load_model(run)
    classifier, classes, spec = model.classifier, model.classes, model.spec
    target = None
    if look.class_name is not None:
        if look.class_name not in classes:
            raise ExplainError(f"class '{look.class_name}' is not one of the model's classes: {', '.join(classes)}")
        target = classes.index(look.class_name)
    originals, inputs = load_pictures(files, spec, model.limits)
    names = output_names(files)
    from transferlab.interpret import render

    jobs = []  # (file name, draw function): everything is computed before anything is written
    if method in METHODS:
        task = model.task
        result = compute_cams(classifier, inputs, method=method, layer=look.layer, task=task,
                              target_classes=None if target is None else [target] * len(inputs))
        maps = [(i, int(result["target"][i]), result["cams"][i]) for i in range(len(inputs))]
        if target is None:  # a multi-label image's other predicted labels: a map each
            extra = [(i, k) for i in range(len(inputs)) for k in task.explained(result["probs"][i])
                     if k != int(result["target"][i])]
            if extra:
                more = compute_cams(classifier, inputs[[i for i, _ in extra]], method=method, layer=look.layer,
                                    task=task, target_classes=[k for _, k in extra])
                maps += [(i, k, cam) for (i, k), cam in zip(extra, more["cams"])]
        several = {i for i, _, _ in maps if sum(1 for j, _, _ in maps if j == i) > 1}
        for i, k, cam in sorted(maps, key=lambda m: (m[0], m[1])):
            name = names[i]
            height, width = originals[i].shape[:2]
            blended = overlay(originals[i], to_original(cam, (width, height), spec), colormap=colormap, alpha=alpha)
            title = cam_title(method, result, i, classes, k, task)
            suffix = f"-{safe_name(classes[k])}" if i in several else ""
            jobs.append((f"{name}-{method.replace('+', 'p')}{suffix}.png",
                         lambda path, i=i, blended=blended, title=title: render.cam_figure(
                             originals[i], blended, path, title=title, colormap=colormap)))
    elif method == "featuremaps":
        for i, name in enumerate(names):
            stages = feature_maps(classifier, inputs[i], top=look.top)
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


def cam_title(method: str, result: dict, i: int, classes: list[str], target: int, task) -> str:
    label = METHODS[method][0]
    return (f"{task.caption(result['probs'][i], classes)} · {label} for {classes[target]} "
            f"· layer {result['layer'].removeprefix('backbone.')}")


def safe_name(text: str) -> str:
    """A class name as a part of a file name."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60] or "class"
