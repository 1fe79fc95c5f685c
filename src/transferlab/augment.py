"""Augmentation: config -> a torchvision.transforms.v2 pipeline on uint8 images, plus batch MixUp/CutMix.

Per-image ops run in the listed order on uint8 (3, H, W) tensors read from the decode-once
cache and return uint8 of the same size; normalization happens later, on the device, inside
the model's input layer. Only the training split is augmented; evaluation reads the cache as is.

Every op is a small dataclass (its config keys, typed and checked like the rest of the config)
and a builder that returns a v2 transform; the four ops v2 lacks in the form we need (additive
brightness, Gaussian noise in 0-255 units, multi-hole cutout, and the batch mixer's probability)
are v2 `Transform` subclasses that sample their parameters once in `make_params`. Random draws
use torch's generator, which DataLoader workers seed per worker: the same seed gives the same
augmented batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from transferlab.config import AugmentConfig, ConfigError, merge, read_yaml

Fill = int | tuple[int, int, int]
Interp = Literal["nearest", "bilinear", "bicubic"]
INTERPOLATION = {"nearest": v2.InterpolationMode.NEAREST, "bilinear": v2.InterpolationMode.BILINEAR,
                 "bicubic": v2.InterpolationMode.BICUBIC}


# --- transforms v2 does not have in the form we need -----------------------------------------


class AddBrightness(v2.Transform):
    """I + beta in 0-255 units, beta ~ U(low, high), clipped to [0, 255]."""

    def __init__(self, beta: tuple[float, float]):
        super().__init__()
        self.beta = beta

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"beta": float(torch.empty(()).uniform_(*self.beta))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return apply_255(inpt, lambda x: x + params["beta"])


class GaussianNoise255(v2.Transform):
    """Adds N(0, sigma^2) noise per pixel, sigma in 0-255 units, clipped; uint8 stays uint8."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return apply_255(inpt, lambda x: x + torch.randn_like(x) * self.sigma)


class Cutout(v2.Transform):
    """`holes` squares, each of side U(size) x the shorter side, fully inside the image, set to `fill`."""

    def __init__(self, holes: int, size: tuple[float, float], fill: Fill):
        super().__init__()
        self.holes, self.size, self.fill = holes, size, fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        boxes = []
        for _ in range(self.holes):
            side = max(1, round(float(torch.empty(()).uniform_(*self.size)) * min(height, width)))
            top = int(torch.randint(0, height - side + 1, ()))
            left = int(torch.randint(0, width - side + 1, ()))
            boxes.append((top, left, side))
        return {"boxes": boxes}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = inpt.clone()
        fill = torch.as_tensor(self.fill, dtype=out.dtype).reshape(-1, 1, 1)
        for top, left, side in params["boxes"]:
            out[..., top : top + side, left : left + side] = fill
        return out


def apply_255(inpt: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply `fn` in float 0-255 units and return the input's dtype (uint8 rounded, float in [0, 1])."""
    if not isinstance(inpt, torch.Tensor):
        raise TypeError(f"augmentation expects tensors from the image cache, got {type(inpt).__name__}")
    if inpt.dtype == torch.uint8:
        out = fn(inpt.float()).round_().clamp_(0, 255).to(torch.uint8)
    else:
        out = (fn(inpt * 255.0) / 255.0).clamp_(0, 1)
    return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


# --- per-image ops: config dataclass + builder ------------------------------------------------

OPS: dict[str, tuple[type, Callable[[Any, int], v2.Transform]]] = {}


def op(name: str):
    """Register an op: its dataclass holds the config keys; `build(cfg, size)` makes the transform."""

    def register(cls):
        cls = dataclass(cls)
        OPS[name] = (cls, cls.build)
        return cls

    return register


def maybe(transform: v2.Transform, p: float) -> v2.Transform:
    return transform if p >= 1 else v2.RandomApply([transform], p=p)


@op("hflip")
class HFlip:
    p: float = 0.5

    def build(self, size: int):
        return v2.RandomHorizontalFlip(self.p)


@op("vflip")
class VFlip:
    """Off in every preset: turn on for satellite, aerial and microscopy images."""

    p: float = 0.5

    def build(self, size: int):
        return v2.RandomVerticalFlip(self.p)


@op("rotate")
class Rotate:
    degrees: tuple[float, float] = (-15.0, 15.0)
    p: float = 1.0
    fill: Fill = 0
    interpolation: Interp = "bilinear"
    expand: bool = False  # grow the canvas to keep the corners, then resize back

    def build(self, size: int):
        rotate = v2.RandomRotation(self.degrees, interpolation=INTERPOLATION[self.interpolation],
                                   expand=self.expand, fill=self.fill)
        if self.expand:
            rotate = v2.Compose([rotate, v2.Resize((size, size), antialias=True)])
        return maybe(rotate, self.p)


@op("random_crop")
class RandomCrop:
    """A random window of side `fraction` x size, resized back: translation with a slight zoom."""

    fraction: float = 0.875
    p: float = 1.0

    def build(self, size: int):
        side = max(1, round(size * self.fraction))
        return maybe(v2.Compose([v2.RandomCrop(side), v2.Resize((size, size), antialias=True)]), self.p)


@op("pad_crop")
class PadCrop:
    """Pad by `padding` (a fraction of size, or pixels when >= 1), crop back to size at a random spot."""

    padding: float = 0.125
    padding_mode: Literal["constant", "edge", "reflect", "symmetric"] = "constant"
    fill: Fill = 0
    p: float = 1.0

    def build(self, size: int):
        pixels = round(self.padding * size) if self.padding < 1 else int(self.padding)
        return maybe(v2.RandomCrop(size, padding=pixels, padding_mode=self.padding_mode, fill=self.fill), self.p)


@op("translate")
class Translate:
    """Affine shift by up to `fraction` of the width and height."""

    fraction: tuple[float, float] = (0.1, 0.1)
    fill: Fill = 0
    p: float = 1.0

    def build(self, size: int):
        return maybe(v2.RandomAffine(degrees=0, translate=self.fraction, fill=self.fill), self.p)


@op("resized_crop")
class ResizedCrop:
    """RandomResizedCrop: a window of `scale` x the area and aspect `ratio`, resized to size."""

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333)
    interpolation: Interp = "bilinear"
    p: float = 1.0

    def build(self, size: int):
        return maybe(v2.RandomResizedCrop(size, scale=self.scale, ratio=self.ratio,
                                          interpolation=INTERPOLATION[self.interpolation], antialias=True), self.p)


@op("multiscale")
class MultiScale:
    """Resize to a random `scales` x size, then crop (zoom in) or pad (zoom out) back to size."""

    scales: tuple[float, float] = (0.8, 1.25)
    fill: Fill = 0
    p: float = 1.0

    def build(self, size: int):
        low, high = (max(1, round(size * s)) for s in self.scales)
        return maybe(v2.Compose([v2.RandomResize(low, high + 1, antialias=True),
                                 v2.RandomCrop(size, pad_if_needed=True, fill=self.fill)]), self.p)


@op("shear")
class Shear:
    degrees: tuple[float, float] = (-10.0, 10.0)
    fill: Fill = 0
    p: float = 1.0

    def build(self, size: int):
        return maybe(v2.RandomAffine(degrees=0, shear=(*self.degrees, *self.degrees), fill=self.fill), self.p)


@op("perspective")
class Perspective:
    distortion: float = 0.2
    p: float = 0.5
    fill: Fill = 0

    def build(self, size: int):
        return v2.RandomPerspective(self.distortion, p=self.p, fill=self.fill)


@op("elastic")
class Elastic:
    alpha: float = 50.0
    sigma: float = 5.0
    p: float = 0.5

    def build(self, size: int):
        return maybe(v2.ElasticTransform(alpha=self.alpha, sigma=self.sigma), self.p)


@op("brightness_add")
class BrightnessAdd:
    """Additive brightness: I + beta, beta in 0-255 units (e.g. [-50, 50]), clipped."""

    beta: tuple[float, float] = (-50.0, 50.0)
    p: float = 1.0

    def build(self, size: int):
        return maybe(AddBrightness(self.beta), self.p)


@op("brightness")
class Brightness:
    """Multiplicative brightness: I x factor."""

    factor: tuple[float, float] = (0.8, 1.2)
    p: float = 1.0

    def build(self, size: int):
        return maybe(v2.ColorJitter(brightness=self.factor), self.p)


@op("contrast")
class Contrast:
    """Contrast factor alpha: deviations from the mean grey level are scaled by alpha."""

    alpha: tuple[float, float] = (0.5, 2.0)
    p: float = 1.0

    def build(self, size: int):
        return maybe(v2.ColorJitter(contrast=self.alpha), self.p)


@op("saturation")
class Saturation:
    factor: tuple[float, float] = (0.7, 1.3)
    p: float = 1.0

    def build(self, size: int):
        return maybe(v2.ColorJitter(saturation=self.factor), self.p)


@op("hue")
class Hue:
    """Hue shift in HSV, as a fraction of the colour circle (within [-0.5, 0.5])."""

    shift: tuple[float, float] = (-0.05, 0.05)
    p: float = 1.0

    def build(self, size: int):
        return maybe(v2.ColorJitter(hue=self.shift), self.p)


@op("color_jitter")
class ColorJitter:
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02
    p: float = 1.0

    def build(self, size: int):
        return maybe(v2.ColorJitter(self.brightness, self.contrast, self.saturation, self.hue), self.p)


@op("grayscale")
class Grayscale:
    p: float = 0.1

    def build(self, size: int):
        return v2.RandomGrayscale(self.p)


@op("blur")
class Blur:
    kernel: int = 5
    sigma: tuple[float, float] = (0.1, 2.0)
    p: float = 0.5

    def build(self, size: int):
        kernel = self.kernel if self.kernel % 2 else self.kernel + 1
        return maybe(v2.GaussianBlur(kernel, sigma=self.sigma), self.p)


@op("sharpness")
class Sharpness:
    factor: float = 2.0
    p: float = 0.5

    def build(self, size: int):
        return v2.RandomAdjustSharpness(self.factor, p=self.p)


@op("posterize")
class Posterize:
    bits: int = 4
    p: float = 0.5

    def build(self, size: int):
        return v2.RandomPosterize(self.bits, p=self.p)


@op("solarize")
class Solarize:
    threshold: float = 192.0
    p: float = 0.5

    def build(self, size: int):
        return v2.RandomSolarize(self.threshold, p=self.p)


@op("equalize")
class Equalize:
    p: float = 0.5

    def build(self, size: int):
        return v2.RandomEqualize(p=self.p)


@op("autocontrast")
class AutoContrast:
    p: float = 0.5

    def build(self, size: int):
        return v2.RandomAutocontrast(p=self.p)


@op("invert")
class Invert:
    p: float = 0.5

    def build(self, size: int):
        return v2.RandomInvert(p=self.p)


@op("jpeg")
class Jpeg:
    """Re-encode as JPEG at a random quality: robustness to compression artefacts."""

    quality: tuple[int, int] = (50, 95)
    p: float = 0.5

    def build(self, size: int):
        return maybe(v2.JPEG(self.quality), self.p)


@op("noise")
class Noise:
    """Gaussian noise: sigma in 0-255 units, or a fraction of the range with relative: true."""

    sigma: float = 10.0
    relative: bool = False
    p: float = 1.0

    def build(self, size: int):
        return maybe(GaussianNoise255(self.sigma * 255.0 if self.relative else self.sigma), self.p)


@op("cutout")
class CutoutOp:
    """`holes` squares of side `size` (fraction of the shorter side) set to `fill`."""

    holes: int = 1
    size: tuple[float, float] = (0.1, 0.3)
    fill: Fill = 0
    p: float = 1.0

    def build(self, size: int):
        return maybe(Cutout(self.holes, self.size, self.fill), self.p)


@op("erasing")
class Erasing:
    """Random erasing (Zhong et al.): one rectangle of `scale` x the area and aspect `ratio`."""

    p: float = 0.5
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)
    value: int = 0

    def build(self, size: int):
        return v2.RandomErasing(p=self.p, scale=self.scale, ratio=self.ratio, value=self.value)


@op("randaugment")
class RandAugmentOp:
    num_ops: int = 2
    magnitude: int = 9

    def build(self, size: int):
        return v2.RandAugment(num_ops=self.num_ops, magnitude=self.magnitude)


@op("trivialaugment")
class TrivialAugmentOp:
    def build(self, size: int):
        return v2.TrivialAugmentWide()


@op("autoaugment")
class AutoAugmentOp:
    policy: Literal["imagenet", "cifar10", "svhn"] = "imagenet"

    def build(self, size: int):
        return v2.AutoAugment(v2.AutoAugmentPolicy(self.policy))


@op("augmix")
class AugMixOp:
    severity: int = 3

    def build(self, size: int):
        return v2.AugMix(severity=self.severity)


# --- presets ----------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "none": {"ops": [], "mixup_alpha": 0.0, "cutmix_alpha": 0.0},
    "light": {"ops": [{"op": "hflip"}, {"op": "pad_crop", "padding": 0.0625, "padding_mode": "reflect"}],
              "mixup_alpha": 0.0, "cutmix_alpha": 0.0},
    "standard": {
        "ops": [{"op": "hflip"}, {"op": "resized_crop", "scale": [0.6, 1.0]},
                {"op": "rotate", "degrees": [-10, 10], "p": 0.5},
                {"op": "color_jitter", "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02}],
        "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
    },
}
PRESETS["heavy"] = {
    "ops": PRESETS["standard"]["ops"] + [{"op": "noise", "sigma": 8.0, "p": 0.5},
                                         {"op": "cutout", "holes": 1, "size": [0.1, 0.3], "p": 0.5}],
    "mixup_alpha": 0.2, "cutmix_alpha": 0.0,
}


@dataclass
class ResolvedAugment:
    """The ops that will run (typed), and the batch mixing settings."""

    ops: list[Any] = field(default_factory=list)
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5

    def describe(self) -> list[dict[str, Any]]:
        """Ops as plain dicts with every setting filled in (for config dumps and the report)."""
        names = {cls: name for name, (cls, _) in OPS.items()}
        out = [{"op": names[type(o)], **dataclasses.asdict(o)} for o in self.ops]
        if self.mixup_alpha:
            out.append({"op": "mixup", "alpha": self.mixup_alpha, "p": self.mix_prob})
        if self.cutmix_alpha:
            out.append({"op": "cutmix", "alpha": self.cutmix_alpha, "p": self.mix_prob})
        return out


def parse_op(spec: Any, where: str) -> Any:
    """One `{op: name, key: value, ...}` mapping -> its typed op, with errors naming the key."""
    if isinstance(spec, str):
        spec = {"op": spec}
    if not isinstance(spec, dict) or "op" not in spec:
        raise ConfigError(f"{where} must be a mapping with an 'op' key (e.g. {{op: rotate, degrees: [-10, 10]}})")
    name = spec["op"]
    if name in ("mixup", "cutmix"):
        raise ConfigError(f"{where}: {name} works on batches: set augment.{name}_alpha instead")
    if name not in OPS:
        raise ConfigError(f"{where}: unknown augmentation '{name}' (known: {', '.join(sorted(OPS))})")
    cls, _ = OPS[name]
    params = {k: v for k, v in spec.items() if k != "op"}
    resolved = merge(cls(), params, origin="augment", prefix=f"{where}.")
    check_op(resolved, where)
    return resolved


def check_op(resolved: Any, where: str) -> None:
    for f in dataclasses.fields(resolved):
        value = getattr(resolved, f.name)
        if f.name == "p" and not 0 <= value <= 1:
            raise ConfigError(f"{where}.p={value} must be a probability in [0, 1]")
        if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value) \
                and f.name != "fraction" and value[0] > value[1]:
            raise ConfigError(f"{where}.{f.name}={list(value)} must be [low, high] with low <= high")


def resolve_augment(config: AugmentConfig) -> ResolvedAugment:
    """The preset, with `ops` replacing its op list and the alphas overriding its batch mixing."""
    preset = PRESETS[config.preset]
    specs = preset["ops"] if config.ops is None else config.ops
    ops = [parse_op(spec, f"augment.ops[{i}]") for i, spec in enumerate(specs)]
    mixup = preset["mixup_alpha"] if config.mixup_alpha is None else config.mixup_alpha
    cutmix = preset["cutmix_alpha"] if config.cutmix_alpha is None else config.cutmix_alpha
    for key, value in (("mixup_alpha", mixup), ("cutmix_alpha", cutmix)):
        if value < 0:
            raise ConfigError(f"augment.{key}={value} must be >= 0 (0 turns it off)")
    return ResolvedAugment(ops=ops, mixup_alpha=mixup, cutmix_alpha=cutmix,
                           mix_prob=config.mix_prob, switch_prob=config.switch_prob)


def augment_from_arg(value: str) -> dict[str, Any]:
    """`--aug PRESET|FILE` -> augment config overrides. A file holds a list of ops or a mapping."""
    if value in PRESETS:
        return {"preset": value}
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"--aug {value}: neither a preset ({', '.join(PRESETS)}) nor an existing YAML file")
    loaded = read_yaml(path, f"--aug {value}")
    if isinstance(loaded, list):
        return {"preset": "none", "ops": loaded}
    if isinstance(loaded, dict):
        return loaded.get("augment", loaded)
    raise ConfigError(f"--aug {value} must hold a list of ops or a mapping of augment settings")


def build_train_transform(config: AugmentConfig | ResolvedAugment, size: int) -> v2.Compose:
    """uint8 (3, size, size) -> uint8 (3, size, size): the per-image training augmentation."""
    resolved = config if isinstance(config, ResolvedAugment) else resolve_augment(config)
    return v2.Compose([o.build(size) for o in resolved.ops] or [v2.Identity()])


class BatchMix:
    """MixUp / CutMix on a batch (torchvision v2), applied with probability `prob`.

    Returns float images and soft targets (rows sum to 1; F.cross_entropy takes them). When both
    are on, CutMix is chosen with `switch_prob`.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 prob: float = 1.0, switch_prob: float = 0.5):
        self.num_classes, self.prob, self.switch_prob = num_classes, prob, switch_prob
        self.mixup = v2.MixUp(alpha=mixup_alpha, num_classes=num_classes) if mixup_alpha > 0 else None
        self.cutmix = v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes) if cutmix_alpha > 0 else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.float() if images.dtype == torch.uint8 else images
        if torch.rand(()) >= self.prob or len(images) < 2:
            return images, F.one_hot(labels, self.num_classes).to(images.dtype)
        use_cutmix = self.cutmix is not None and (self.mixup is None or torch.rand(()) < self.switch_prob)
        return (self.cutmix if use_cutmix else self.mixup)(images, labels)


def build_batch_mix(config: AugmentConfig | ResolvedAugment, num_classes: int) -> BatchMix | None:
    resolved = config if isinstance(config, ResolvedAugment) else resolve_augment(config)
    if not (resolved.mixup_alpha or resolved.cutmix_alpha):
        return None
    return BatchMix(num_classes, resolved.mixup_alpha, resolved.cutmix_alpha, resolved.mix_prob, resolved.switch_prob)
