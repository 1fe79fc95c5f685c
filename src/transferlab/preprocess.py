"""Deterministic preprocessing: resize (nearest / bilinear / bicubic; stretch, crop or pad) and
normalization (min-max, z-score from the training split, ImageNet, or the backbone's own).

Resizing happens once, when an image enters the decode-once cache, with PIL (antialiased when
it shrinks an image). Normalization happens on the fly on uint8 tensors read from the cache.
Defaults (size, interpolation, mean/std) come from the backbone's timm `pretrained_cfg`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from transferlab.config import Config
from transferlab.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class ResizeSpec:
    """Everything that decides the cached pixels of an image (part of the disk-cache key)."""

    size: int
    mode: str = "crop"
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    pad_fill: tuple[int, int, int] = (0, 0, 0)
    alpha_background: tuple[int, int, int] = (255, 255, 255)

    @classmethod
    def from_dict(cls, data: dict) -> ResizeSpec:
        """The spec saved in a run's model.json (lists back to tuples); unknown keys are an error."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def key(self) -> str:
        return (f"{self.size}-{self.mode}-{self.interpolation}-{self.crop_pct:g}-"
                f"{'.'.join(map(str, self.pad_fill))}-{'.'.join(map(str, self.alpha_background))}")


def backbone_defaults(model_name: str) -> dict:
    """Input size, interpolation, mean and std of `model_name`, from timm's `resolve_data_config`
    over the model's pretrained_cfg (timm's defaults where the model has none)."""
    from timm.data import resolve_data_config

    from transferlab.models.backbone import pretrained_cfg

    data = resolve_data_config(args={}, pretrained_cfg=pretrained_cfg(model_name) or {"architecture": model_name})
    return {
        "size": int(data["input_size"][-1]),
        "interpolation": data["interpolation"] if data["interpolation"] in RESAMPLE else "bilinear",
        "mean": tuple(float(v) for v in data["mean"]),
        "std": tuple(float(v) for v in data["std"]),
    }


def resize_spec(config: Config) -> ResizeSpec:
    """The resize settings of `config`, with backbone defaults filled in."""
    pre = config.preprocess
    defaults = backbone_defaults(config.model.name) if pre.size is None or pre.interpolation is None else {}
    size = defaults["size"] if pre.size is None else pre.size
    if not 0.05 < pre.crop_pct <= 1.0:
        raise ConfigError(f"preprocess.crop_pct={pre.crop_pct} must be in (0.05, 1]")
    return ResizeSpec(
        size=size,
        mode=pre.resize_mode,
        interpolation=defaults["interpolation"] if pre.interpolation is None else pre.interpolation,
        crop_pct=pre.crop_pct,
        pad_fill=tuple(pre.pad_fill),
        alpha_background=tuple(config.data.alpha_background),
    )


def crop_box(width: int, height: int, spec: ResizeSpec) -> tuple[int, int, int]:
    """(left, top, side) of the centred square `crop` keeps of a width x height picture."""
    side = max(1, round(min(width, height) * spec.crop_pct))
    return (width - side) // 2, (height - side) // 2, side


def pad_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a width x height picture letterboxed into a size x size square."""
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return (size - new_w) // 2, (size - new_h) // 2, new_w, new_h


def resize_image(image: Image.Image, spec: ResizeSpec) -> np.ndarray:
    """An RGB PIL image resized to `spec.size` square as uint8 (H, W, 3).

    stretch: both sides to size (aspect ratio changes). crop: the centred square of side
    `crop_pct * shorter side`, resized to size. pad: the longer side to size, the rest filled
    with `pad_fill` (letterbox).
    """
    resample = RESAMPLE[spec.interpolation]
    size = spec.size
    width, height = image.size
    if spec.mode == "stretch":
        out = image.resize((size, size), resample)
    elif spec.mode == "crop":
        left, top, side = crop_box(width, height, spec)
        out = image.crop((left, top, left + side, top + side)).resize((size, size), resample)
    elif spec.mode == "pad":
        left, top, new_w, new_h = pad_box(width, height, size)
        out = Image.new("RGB", (size, size), spec.pad_fill)
        out.paste(image.resize((new_w, new_h), resample), (left, top))
    else:  # the config type check keeps other values out
        raise AssertionError(spec.mode)
    return np.asarray(out, dtype=np.uint8)


def to_original(values: np.ndarray, original_size: tuple[int, int], spec: ResizeSpec) -> np.ndarray:
    """The inverse of `resize_image` for a map over the model's input (a CAM): laid back onto the
    original picture (width, height). stretch resizes back; crop places it on the square it came
    from (outside it the model saw nothing: 0); pad drops the bars."""
    width, height = original_size
    picture = Image.fromarray(values.astype(np.float32), mode="F")
    if spec.mode == "stretch":
        return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR))
    if spec.mode == "crop":
        left, top, side = crop_box(width, height, spec)
        out = np.zeros((height, width), np.float32)
        out[top : top + side, left : left + side] = np.asarray(picture.resize((side, side),
                                                                              Image.Resampling.BILINEAR))
        return out
    left, top, new_w, new_h = pad_box(width, height, values.shape[0])
    inner = picture.crop((left, top, left + new_w, top + new_h))
    return np.asarray(inner.resize((width, height), Image.Resampling.BILINEAR))


def channel_stats(images, indices: np.ndarray | None = None, chunk: int = 256) -> tuple[tuple, tuple]:
    """Per-channel mean and std in [0, 1] units of uint8 (N, H, W, 3) images, over `indices`.

    Counts a 256-bin histogram per channel, chunk by chunk: exact (integer sums) and never
    holds more than one chunk of the cache in memory.
    """
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    if len(indices) == 0:
        raise ValueError("channel statistics need at least one image")
    histogram = np.zeros((3, 256), dtype=np.int64)
    for start in range(0, len(indices), chunk):
        part = indices[start : start + chunk]
        batch = images[part] if isinstance(images, np.ndarray) else images.take(part)
        for channel in range(3):
            histogram[channel] += np.bincount(batch[..., channel].ravel(), minlength=256)
    levels = np.arange(256, dtype=np.float64) / 255.0
    count = histogram.sum(axis=1)
    mean = (histogram * levels).sum(axis=1) / count
    var = (histogram * np.square(levels[None, :] - mean[:, None])).sum(axis=1) / count
    return tuple(float(v) for v in mean), tuple(float(v) for v in np.sqrt(var))


@dataclass(frozen=True)
class Normalizer:
    """The mean and std (in [0, 1] units) the classifier normalizes its uint8 input with, and how
    they were chosen; `Classifier.normalize` applies them."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    method: str

    def to_dict(self) -> dict:
        return {"method": self.method, "mean": list(self.mean), "std": list(self.std)}


def build_normalizer(config: Config, images=None, indices: np.ndarray | None = None) -> Normalizer:
    """The normalization of `config.preprocess.normalize`; zscore takes the channel statistics of `images` at
    `indices` (a fit's TRAINING part only, so nothing about the validation or test images leaks into its input)."""
    method = config.preprocess.normalize
    if method == "minmax":
        return Normalizer((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), method)
    if method == "imagenet":
        return Normalizer(IMAGENET_MEAN, IMAGENET_STD, method)
    if method == "model":
        defaults = backbone_defaults(config.model.name)
        return Normalizer(defaults["mean"], defaults["std"], method)
    if images is None:
        raise ValueError("zscore normalization needs the training split's channel statistics")
    mean, std = channel_stats(images, indices)
    std = tuple(max(s, 1e-6) for s in std)  # a constant channel must not divide by zero
    return Normalizer(tuple(mean), std, method)
