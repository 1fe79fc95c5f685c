"""Feature maps per layer (timm's forward_intermediates) and Vision Transformer attention per layer
and head (timm's AttentionExtract), with attention rollout."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn as nn

from transferlab.interpret.cam import ExplainError, is_vit, primary


def stage_names(backbone: nn.Module) -> list[str]:
    info = getattr(backbone, "feature_info", None)
    if isinstance(info, list):
        return [f["module"] for f in info]
    return [f"stage{i}" for i in range(len(getattr(backbone, "blocks", [])) or 0)]


def backbone_input(classifier: nn.Module, image: np.ndarray) -> tuple[nn.Module, torch.Tensor]:
    """(the backbone shown, in eval mode; one uint8 (H, W, 3) image as its normalized input batch)."""
    classifier = primary(classifier).eval()
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    return classifier.backbone, classifier.normalize(pixels.to(next(classifier.parameters()).device))


@torch.no_grad()
def feature_maps(classifier: nn.Module, image: np.ndarray, *, top: int = 8) -> list[dict]:
    """For each stage: the `top` most active channels of one uint8 (H, W, 3) image, as {"name",
    "size", "channels", "maps" (top, h, w) in [0, 1]}."""
    backbone, x = backbone_input(classifier, image)
    if not hasattr(backbone, "forward_intermediates"):
        raise ExplainError(f"{type(backbone).__name__} has no forward_intermediates in this timm version: "
                           "feature maps need a timm model that supports it")
    names = stage_names(backbone)
    result = []
    for index, output in enumerate(backbone.forward_intermediates(x, intermediates_only=True)):
        maps = output[0].float().cpu()
        strength = maps.mean(dim=(1, 2))
        order = strength.argsort(descending=True)[:top]
        picked = maps[order]
        low = picked.amin(dim=(1, 2), keepdim=True)
        high = picked.amax(dim=(1, 2), keepdim=True)
        picked = (picked - low) / (high - low).clamp_min(1e-8)
        name = names[index] if index < len(names) else f"stage{index}"
        result.append({"name": name, "size": tuple(maps.shape[1:]), "channels": order.tolist(),
                       "maps": picked.numpy()})
    return result


@contextlib.contextmanager
def unfused_attention(model: nn.Module):
    """Attention computed explicitly (softmax, then attn_drop) so the probabilities can be read;
    the fused setting is restored afterwards."""
    saved = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    try:
        for module, _ in saved:
            module.fused_attn = False
        yield
    finally:
        for module, value in saved:
            module.fused_attn = value


@torch.no_grad()
def attention_maps(classifier: nn.Module, image: np.ndarray) -> dict:
    """Attention probabilities of every layer and head for one uint8 (H, W, 3) image.

    Returns {"attention": (layers, heads, tokens, tokens), "prefix_tokens": int, "grid": (h, w),
    "layer_names": [...]} ; every row of every map sums to 1.
    """
    from timm.utils import AttentionExtract

    backbone, x = backbone_input(classifier, image)
    names = [name for name, _ in backbone.named_modules() if name.endswith("attn_drop")]
    if not names or not is_vit(backbone):
        raise ExplainError(f"{getattr(backbone, 'default_cfg', {}).get('architecture', type(backbone).__name__)} has "
                           "no attention layers: use --method gradcam or featuremaps, or train a ViT "
                           "(e.g. --model vit_tiny_patch16_224)")
    with unfused_attention(backbone):
        extractor = AttentionExtract(backbone, names=names, method="hook")
        try:
            captured = extractor(x)
        finally:
            for handle in extractor.hooks._handles:  # FeatureHooks keeps its handles privately
                handle.remove()
    stack = torch.stack([captured[n][0].float().cpu() for n in names])  # (layers, heads, T, T)
    prefix = int(backbone.num_prefix_tokens)
    side = int(math.isqrt(stack.shape[-1] - prefix))
    return {"attention": stack.numpy(), "prefix_tokens": prefix, "grid": (side, side),
            "layer_names": [n.removesuffix(".attn.attn_drop") for n in names]}


def token_attention(attention: np.ndarray, prefix: int, grid: tuple[int, int]) -> np.ndarray:
    """(layers, heads, h, w): what the class token (or, without one, the mean token) attends to."""
    if prefix > 0:
        rows = attention[:, :, 0, prefix:]
    else:
        rows = attention[:, :, :, prefix:].mean(axis=2)
    return rows.reshape(*attention.shape[:2], *grid)


def attention_rollout(attention: np.ndarray, prefix: int, grid: tuple[int, int]) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020): heads averaged, the residual added as 0.5 I,
    rows renormalised, multiplied through the layers; the class-token row over the patches, (h, w)."""
    tokens = attention.shape[-1]
    result = np.eye(tokens)
    for layer in attention:
        mixed = 0.5 * layer.mean(axis=0) + 0.5 * np.eye(tokens)
        mixed = mixed / mixed.sum(axis=-1, keepdims=True)
        result = mixed @ result
    row = result[0, prefix:] if prefix > 0 else result[prefix:, prefix:].mean(axis=0)
    return row.reshape(grid)
