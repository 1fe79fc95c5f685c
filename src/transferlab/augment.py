"""Augmentation: a table from op name to a torchvision.transforms.v2 class, plus batch MixUp/CutMix.

Per-image ops run in the listed order on uint8 (3, H, W) tensors read from the decode-once cache
and return uint8 of the same size; normalization happens later, inside the model. Only the
training split is augmented. Each op's keys are the v2 constructor's own, checked against its
signature (a few are renamed to the names the README documents, e.g. `factor` for ColorJitter's
`brightness`), and `p` wraps any op in RandomApply. Three ops v2 lacks in the form we need are
small v2 transforms here: additive brightness, Gaussian noise in 0-255 units, multi-hole cutout.
Random draws use torch's generator, which training seeds per (seed, epoch, image).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from transferlab.config import AugmentConfig, ConfigError, read_yaml


# --- transforms v2 does not have in the form we need -----------------------------------------


def apply_255(inpt: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply `fn` in float 0-255 units and return the input's dtype (uint8 rounded, float in [0, 1])."""
    if inpt.dtype == torch.uint8:
        out = fn(inpt.float()).round_().clamp_(0, 255).to(torch.uint8)
    else:
        out = (fn(inpt * 255.0) / 255.0).clamp_(0, 1)
    return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class AddBrightness(v2.Transform):
    """I + beta in 0-255 units, beta ~ U(low, high), clipped to [0, 255]."""

    def __init__(self, beta: tuple[float, float] = (-50.0, 50.0)):
        super().__init__()
        self.beta = beta

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"beta": float(torch.empty(()).uniform_(*self.beta))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return apply_255(inpt, lambda x: x + params["beta"])


class GaussianNoise255(v2.Transform):
    """N(0, sigma^2) noise per pixel, sigma in 0-255 units (or a fraction of the range with
    `relative`), clipped; uint8 stays uint8."""

    def __init__(self, sigma: float = 10.0, relative: bool = False):
        super().__init__()
        self.sigma = sigma * 255.0 if relative else sigma

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return apply_255(inpt, lambda x: x + torch.randn_like(x) * self.sigma)


class Cutout(v2.Transform):
    """`holes` squares, each of side U(size) x the shorter side, fully inside the image, set to `fill`."""

    def __init__(self, holes: int = 1, size: tuple[float, float] = (0.1, 0.3), fill: int | tuple = 0):
        super().__init__()
        self.holes, self.size, self.fill = holes, size, fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        boxes = []
        for _ in range(self.holes):
            side = max(1, round(float(torch.empty(()).uniform_(*self.size)) * min(height, width)))
            boxes.append((int(torch.randint(0, height - side + 1, ())), int(torch.randint(0, width - side + 1, ())),
                          side))
        return {"boxes": boxes}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = inpt.clone()
        fill = torch.as_tensor(self.fill, dtype=out.dtype).reshape(-1, 1, 1)
        for top, left, side in params["boxes"]:
            out[..., top : top + side, left : left + side] = fill
        return out


# --- ops that need the image size or combine v2 transforms -----------------------------------


def rotate(size: int, degrees=(-15.0, 15.0), interpolation="bilinear", expand=False, center=None, fill=0):
    """Rotation; with `expand` the canvas grows to keep the corners, then is resized back."""
    turn = v2.RandomRotation(degrees, interpolation=interpolation, expand=expand, center=center, fill=fill)
    return v2.Compose([turn, v2.Resize((size, size), antialias=True)]) if expand else turn


def random_crop(size: int, fraction=0.875):
    """A random window of side `fraction` x size, resized back: translation with a slight zoom."""
    return v2.Compose([v2.RandomCrop(max(1, round(size * fraction))), v2.Resize((size, size), antialias=True)])


def pad_crop(size: int, padding=0.125, padding_mode="constant", fill=0):
    """Pad by `padding` (a fraction of size, or pixels when >= 1), crop back to size at a random spot."""
    pixels = round(padding * size) if padding < 1 else int(padding)
    return v2.RandomCrop(size, padding=pixels, padding_mode=padding_mode, fill=fill)


def multiscale(size: int, scales=(0.8, 1.25), fill=0):
    """Resize to a random `scales` x size, then crop (zoom in) or pad (zoom out) back to size."""
    low, high = (max(1, round(size * s)) for s in scales)
    return v2.Compose([v2.RandomResize(low, high + 1, antialias=True),
                       v2.RandomCrop(size, pad_if_needed=True, fill=fill)])


def shear(degrees=(-10.0, 10.0), fill=0):
    """Affine shear in x and y by up to `degrees`."""
    return v2.RandomAffine(degrees=0, shear=(*degrees, *degrees), fill=fill)


@dataclass(frozen=True)
class Op:
    """One row of the table: what builds the transform and how the documented keys map onto it."""

    make: Callable[..., v2.Transform]
    rename: dict[str, str] = field(default_factory=dict)  # documented key -> constructor keyword
    defaults: dict[str, Any] = field(default_factory=dict)  # our documented defaults where v2's differ or lack
    p: float = 1.0  # default probability when the constructor has no `p` of its own (then RandomApply)
    sized: bool = False  # make(size, ...)

    @property
    def native_p(self) -> bool:
        return "p" in inspect.signature(self.make).parameters

    def parameters(self) -> dict[str, Any]:
        """Every key this op accepts (the constructor's, under their documented names, and p),
        with its default (ours, else the constructor's; None where it has none)."""
        targets = {v: k for k, v in self.rename.items()}
        found = {}
        for k, param in inspect.signature(self.make).parameters.items():
            if k in ("inplace", "antialias") or (k == "size" and self.sized):
                continue
            default = None if param.default is inspect.Parameter.empty else param.default
            found[targets.get(k, k)] = getattr(default, "value", default)  # enums as their plain value
        if "p" not in found:
            found["p"] = self.p
        return found | self.defaults


OPS: dict[str, Op] = {
    "hflip": Op(v2.RandomHorizontalFlip),
    "vflip": Op(v2.RandomVerticalFlip),
    "rotate": Op(rotate, sized=True),
    "random_crop": Op(random_crop, sized=True),
    "pad_crop": Op(pad_crop, sized=True),
    "translate": Op(v2.RandomAffine, rename={"fraction": "translate"}, defaults={"degrees": 0, "fraction": (0.1, 0.1)}),
    "resized_crop": Op(v2.RandomResizedCrop, defaults={"scale": (0.5, 1.0)}, sized=True),
    "multiscale": Op(multiscale, sized=True),
    "shear": Op(shear),
    "perspective": Op(v2.RandomPerspective, rename={"distortion": "distortion_scale"}, defaults={"distortion": 0.2}),
    "elastic": Op(v2.ElasticTransform, p=0.5),
    "brightness_add": Op(AddBrightness),
    "brightness": Op(v2.ColorJitter, rename={"factor": "brightness"}, defaults={"factor": (0.8, 1.2)}),
    "contrast": Op(v2.ColorJitter, rename={"alpha": "contrast"}, defaults={"alpha": (0.5, 2.0)}),
    "saturation": Op(v2.ColorJitter, rename={"factor": "saturation"}, defaults={"factor": (0.7, 1.3)}),
    "hue": Op(v2.ColorJitter, rename={"shift": "hue"}, defaults={"shift": (-0.05, 0.05)}),
    "color_jitter": Op(v2.ColorJitter, defaults={"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02}),
    "grayscale": Op(v2.RandomGrayscale),
    "blur": Op(v2.GaussianBlur, rename={"kernel": "kernel_size"}, defaults={"kernel": 5}, p=0.5),
    "sharpness": Op(v2.RandomAdjustSharpness, rename={"factor": "sharpness_factor"}, defaults={"factor": 2.0}),
    "posterize": Op(v2.RandomPosterize, defaults={"bits": 4}),
    "solarize": Op(v2.RandomSolarize, defaults={"threshold": 192.0}),
    "equalize": Op(v2.RandomEqualize),
    "autocontrast": Op(v2.RandomAutocontrast),
    "invert": Op(v2.RandomInvert),
    "jpeg": Op(v2.JPEG, defaults={"quality": (50, 95)}, p=0.5),
    "noise": Op(GaussianNoise255),
    "cutout": Op(Cutout),
    "erasing": Op(v2.RandomErasing),
    "randaugment": Op(v2.RandAugment),
    "trivialaugment": Op(v2.TrivialAugmentWide),
    "autoaugment": Op(v2.AutoAugment),
    "augmix": Op(v2.AugMix),
}
RANGED = {"degrees", "scale", "ratio", "beta", "factor", "alpha", "shift", "sigma", "quality", "size", "scales"}

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


def check_op(spec: Any, where: str) -> tuple[str, dict[str, Any]]:
    """(op name, its settings with every default filled in) of one `{op: name, key: value}`
    mapping; unknown ops and keys, probabilities outside [0, 1] and reversed ranges raise."""
    if isinstance(spec, str):
        spec = {"op": spec}
    if not isinstance(spec, dict) or "op" not in spec:
        raise ConfigError(f"{where} must be a mapping with an 'op' key (e.g. {{op: rotate, degrees: [-10, 10]}})")
    name = spec["op"]
    if name in ("mixup", "cutmix"):
        raise ConfigError(f"{where}: {name} works on batches: set augment.{name}_alpha instead")
    if name not in OPS:
        raise ConfigError(f"{where}: unknown augmentation '{name}' (known: {', '.join(sorted(OPS))})")
    op = OPS[name]
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "op"}
    accepted = op.parameters()
    for key in given:
        if key not in accepted:
            raise ConfigError(f"{where}: unknown key '{where}.{key}' for {name} (valid: {', '.join(accepted)})")
    settings = {k: v for k, v in (accepted | given).items() if v is not None or k in given}
    p = settings.get("p")
    if p is not None and not 0 <= p <= 1:
        raise ConfigError(f"{where}.p={p} must be a probability in [0, 1]")
    for key, value in settings.items():
        if key in RANGED and isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
            raise ConfigError(f"{where}.{key}={list(value)} must be [low, high] with low <= high")
    return name, settings


def build_op(name: str, settings: dict[str, Any], size: int, where: str = "augment") -> v2.Transform:
    """The v2 transform of a checked op at image side `size`."""
    op = OPS[name]
    kwargs = {op.rename.get(k, k): v for k, v in settings.items() if k != "p" or op.native_p}
    if name == "blur":
        kwargs["kernel_size"] += 1 - kwargs["kernel_size"] % 2  # Gaussian kernels are odd
    if name == "autoaugment" and isinstance(kwargs.get("policy"), str):
        kwargs["policy"] = v2.AutoAugmentPolicy(kwargs["policy"])
    try:
        transform = op.make(size, **kwargs) if op.sized else op.make(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} ({name}): {exc}") from None
    p = 1.0 if op.native_p else settings.get("p", op.p)
    return transform if p >= 1 else v2.RandomApply([transform], p=p)


@dataclass
class ResolvedAugment:
    """The ops that will run, each with every setting, and the batch mixing settings."""

    ops: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5

    def describe(self) -> list[dict[str, Any]]:
        """Ops as plain dicts (for config dumps and the report)."""
        out = [{"op": name, **settings} for name, settings in self.ops]
        out += [{"op": kind, "alpha": alpha, "p": self.mix_prob}
                for kind, alpha in (("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)) if alpha]
        return out


def resolve_augment(config: AugmentConfig) -> ResolvedAugment:
    """The preset, with `ops` replacing its op list and the alphas overriding its batch mixing."""
    preset = PRESETS[config.preset]
    specs = preset["ops"] if config.ops is None else config.ops
    ops = [check_op(spec, f"augment.ops[{i}]") for i, spec in enumerate(specs)]
    mixup = preset["mixup_alpha"] if config.mixup_alpha is None else config.mixup_alpha
    cutmix = preset["cutmix_alpha"] if config.cutmix_alpha is None else config.cutmix_alpha
    for key, value in (("mixup_alpha", mixup), ("cutmix_alpha", cutmix)):
        if value < 0:
            raise ConfigError(f"augment.{key}={value} must be >= 0 (0 turns it off)")
    return ResolvedAugment(ops=ops, mixup_alpha=mixup, cutmix_alpha=cutmix, mix_prob=config.mix_prob,
                           switch_prob=config.switch_prob)


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
    return v2.Compose([build_op(name, settings, size, f"augment.ops[{i}]")
                       for i, (name, settings) in enumerate(resolved.ops)] or [v2.Identity()])


def build_batch_mix(config: AugmentConfig | ResolvedAugment, num_classes: int) -> v2.Transform | None:
    """MixUp / CutMix on (float images, labels) batches with probability mix_prob (CutMix chosen
    with switch_prob when both are on): v2's own, giving soft targets; None when both are off."""
    resolved = config if isinstance(config, ResolvedAugment) else resolve_augment(config)
    mixers = [(v2.CutMix(alpha=resolved.cutmix_alpha, num_classes=num_classes), resolved.switch_prob)
              if resolved.cutmix_alpha else None,
              (v2.MixUp(alpha=resolved.mixup_alpha, num_classes=num_classes), 1 - resolved.switch_prob)
              if resolved.mixup_alpha else None]
    mixers = [m for m in mixers if m is not None]
    if not mixers:
        return None
    mixer = mixers[0][0] if len(mixers) == 1 else v2.RandomChoice([m for m, _ in mixers], p=[w for _, w in mixers])
    return mixer if resolved.mix_prob >= 1 else v2.RandomApply([mixer], p=resolved.mix_prob)
