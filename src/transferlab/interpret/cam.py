"""Grad-CAM family through pytorch-grad-cam: which pixels made the model choose a class. Hooks live
only inside a `with` block, so repeated calls leave no hooks behind."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from transferlab.errors import TransferlabError
from transferlab.interpret.methods import CAM_METHODS as METHODS
from transferlab.tasks import SINGLE, Task


class ExplainError(TransferlabError):
    """An explanation that cannot be made as asked."""


def cam_class(method: str):
    """pytorch-grad-cam's class for `method` (the table in methods.py)."""
    import pytorch_grad_cam

    if method not in METHODS:
        raise ExplainError(f"unknown CAM method '{method}': choose one of {', '.join(METHODS)}")
    return getattr(pytorch_grad_cam, METHODS[method][1])


def is_vit(backbone: nn.Module) -> bool:
    """Token models (ViT, DeiT, BEiT, EVA, ...): blocks over a patch embedding with prefix tokens."""
    return hasattr(backbone, "patch_embed") and hasattr(backbone, "blocks") and hasattr(backbone, "num_prefix_tokens")


def token_reshape(prefix_tokens: int):
    """(B, tokens, C) -> (B, C, h, w): drop the prefix (class / register) tokens, lay patches on their grid."""

    def reshape(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.ndim != 3:
            return tensor
        patches = tensor[:, prefix_tokens:, :]
        side = int(math.isqrt(patches.shape[1]))
        if side * side != patches.shape[1]:
            raise ExplainError(f"{patches.shape[1]} patch tokens do not form a square grid")
        return patches.reshape(tensor.shape[0], side, side, tensor.shape[2]).permute(0, 3, 1, 2)

    return reshape


MIN_CELLS = 4  # the automatic CNN layer keeps at least this many cells per side, or CAMs are blobs


def find_target_layer(classifier: nn.Module, name: str | None = None, input_size: int | None = None
                      ) -> tuple[nn.Module, str, object]:
    """(layer, its name, reshape_transform or None) for CAM on `classifier`.

    CNNs: the last stage of timm's feature_info, or for small inputs the last stage whose map
    is still at least 4x4 cells (at 64 px a stride-32 stage is 2x2: too coarse to show anything).
    """
    backbone = primary(classifier).backbone
    modules = dict(classifier.named_modules())
    if name is not None:
        if name not in modules:
            candidates = [n for n in modules if n.count(".") <= 3 and n.startswith("backbone.")]
            raise ExplainError(f"no layer named '{name}' in this model; valid names include: "
                               f"{', '.join(candidates[-25:])} (all: print(dict(model.named_modules())))")
        reshape = token_reshape(backbone.num_prefix_tokens) if is_vit(backbone) else None
        return modules[name], name, reshape
    if is_vit(backbone):
        layer_name = f"backbone.blocks.{len(backbone.blocks) - 1}.norm1"
        return modules[layer_name], layer_name, token_reshape(backbone.num_prefix_tokens)
    info = getattr(backbone, "feature_info", None)
    if isinstance(info, list) and info:
        stages = [f for f in info if f"backbone.{f['module']}" in modules]
        if input_size:
            fine_enough = [f for f in stages if input_size // f.get("reduction", 1) >= MIN_CELLS]
            stages = fine_enough or stages[:1]
        if stages:
            layer_name = f"backbone.{stages[-1]['module']}"
            return modules[layer_name], layer_name, None
    # no feature_info: the last module whose output is a 4-D feature map
    found: list[str] = []
    handles = [m.register_forward_hook(lambda mod, inp, out, n=n: found.append(n) if isinstance(out, torch.Tensor)
                                       and out.ndim == 4 else None)
               for n, m in classifier.named_modules() if n.startswith("backbone.")]
    try:
        with torch.no_grad():
            classifier(torch.zeros(1, 3, 64, 64))
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        raise ExplainError("could not find a convolutional feature map for CAM: pass --layer NAME")
    return modules[found[-1]], found[-1], None


def primary(model: nn.Module) -> nn.Module:
    """The classifier itself, or an ensemble's heaviest member (what feature maps and attention show)."""
    members = getattr(model, "members", None)
    return model if members is None else members[int(model.weights.argmax())]


def target_layers(model: nn.Module, name: str | None, input_size: int) -> tuple[list[nn.Module], str, object]:
    """(layers, their names, reshape) for CAM. An ensemble's map is Grad-CAM of the ensemble's own
    score: each member's layer at that member's input size (a backbone that members share counts
    once), each map scaled to the input and averaged by pytorch-grad-cam."""
    members = getattr(model, "members", None)
    if members is None or name is not None:  # the backbone's input: after the model's own resize
        layer, found, reshape = find_target_layer(model, name, getattr(getattr(model, "resize", None), "size",
                                                                       input_size))
        return [layer], found, reshape
    layers, names, reshape = [], [], None
    for k, member in enumerate(members):
        (layer,), found, reshape = target_layers(member, None, input_size)
        if all(layer is not seen for seen in layers):
            layers.append(layer)
            names.append(f"members.{k}.{found}")
    return layers, ", ".join(names), reshape


def compute_cams(classifier: nn.Module, images: np.ndarray, *, method: str = "gradcam", layer: str | None = None,
                 target_classes: list[int] | None = None, batch_size: int = 16, task: Task = SINGLE) -> dict:
    """CAMs in [0, 1] at the input size for uint8 images (N, H, W, 3).

    Returns {"cams": (N, H, W) float32, "pred": (N,), "probs": (N, K), "target": (N,), "layer": name}.
    The target class is the one the task is most sure of unless `target_classes` gives one per image.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classifier.eval()
    modules, layer_name, reshape = target_layers(classifier, layer, images.shape[1])
    device = next(classifier.parameters()).device
    x_all = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float()  # a writable copy
    cams, probs = [], []
    with cam_class(method)(model=classifier, target_layers=modules, reshape_transform=reshape) as cam:
        for start in range(0, len(x_all), batch_size):
            batch = x_all[start : start + batch_size].to(device).requires_grad_(True)
            # None: pytorch-grad-cam explains the largest logit, the class every task is most sure of (task.top)
            targets = None if target_classes is None else [
                ClassifierOutputTarget(int(c)) for c in target_classes[start : start + batch_size]]
            cams.append(cam(input_tensor=batch, targets=targets).astype(np.float32))
            probs.append(task.calibrated(cam.outputs.detach()).cpu())  # the logits of the CAM's own forward pass
    probs = torch.cat(probs).numpy()
    pred = task.decide(probs)
    target = np.asarray(target_classes if target_classes is not None else [task.top(p) for p in probs],
                        dtype=np.int64)
    return {"cams": np.clip(np.concatenate(cams), 0.0, 1.0), "pred": pred, "probs": probs, "target": target,
            "layer": layer_name}


def overlay(image: np.ndarray, cam: np.ndarray, *, colormap: str = "jet", alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB image with the heatmap `cam` (same H, W; values in [0, 1]) blended on top."""
    import matplotlib

    heat = matplotlib.colormaps[colormap](np.clip(cam, 0, 1))[..., :3] * 255.0
    blended = (1 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
