"""A small convolutional network trained from its own initialisation, registered with timm as `small_cnn`
(so it is a backbone like any other: the classifier, the layer groups, Grad-CAM, every engine and every
export take it). On a large set of small images from a far domain it beats every transferred candidate a
CPU can afford (60,000 Fashion-MNIST images: 93.1% in 6.5 minutes on 2 cores, where a probe of the bundled
EfficientNet-Lite0 reaches about 89%); the search offers it there (strategies/scratch.py).

    stem    conv 3x3 (w) -> conv 3x3 (w)                     at the images' own size
    stage1  max-pool 2 -> conv 3x3 (2w) -> conv 3x3 (2w)
    stage2  max-pool 2 -> conv 3x3 (4w)
    head    global average pool -> (dropout -> linear)       num_features = 4w

Each conv is followed by BatchNorm and ReLU. No pretrained weights exist: build it with pretrained=False.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, register_model
from timm.models._registry import generate_default_cfgs

NAME = "small_cnn"


def conv(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs),
                         nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """The network above, with timm's backbone interface (num_features, forward_features / forward_head,
    reset_classifier, feature_info, forward_intermediates, group_matcher)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width: int = 32, drop_rate: float = 0.0,
                 **kwargs):
        super().__init__()
        self.stem = nn.Sequential(conv(in_chans, width), conv(width, width))
        self.stages = nn.Sequential(nn.Sequential(nn.MaxPool2d(2), conv(width, 2 * width), conv(2 * width, 2 * width)),
                                    nn.Sequential(nn.MaxPool2d(2), conv(2 * width, 4 * width)))
        self.num_features = 4 * width
        self.feature_info = [{"module": "stem", "num_chs": width, "reduction": 1},
                             {"module": "stages.0", "num_chs": 2 * width, "reduction": 2},
                             {"module": "stages.1", "num_chs": 4 * width, "reduction": 4}]
        self.drop_rate = drop_rate
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^stem\.(\d+)", "blocks": r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        if self.drop_rate:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """(the last feature map, every stage's output) as timm's models give them."""
        outputs = [x := self.stem(x)]
        for stage in self.stages:
            outputs.append(x := stage(x))
        return outputs if intermediates_only else (x, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs({f"{NAME}.untrained": {
    "input_size": (3, 28, 28), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear",
    "num_classes": 1000, "first_conv": "stem.0.0", "classifier": "fc"}})


@register_model
def small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    """timm's factory of the small CNN (width 32)."""
    return build_model_with_cfg(SmallCNN, NAME, pretrained, **kwargs)
