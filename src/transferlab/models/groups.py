"""Layer groups: timm's `group_matcher` orders a backbone's parameters from input to output; we cut
that order into named groups (early, middle, late) plus our head, which strategies, learning
rates and unfreezing schedules refer to."""

from __future__ import annotations

import math

import torch.nn as nn

GROUP_NAMES = ("early", "middle", "late", "head")


def ordinal_groups(backbone: nn.Module) -> list[list[str]]:
    """Parameter names of `backbone` in input-to-output groups (timm's fine group_matcher)."""
    names = [n for n, _ in backbone.named_parameters()]
    groups: list[list[str]] = []
    try:
        from timm.models import group_parameters

        grouped = group_parameters(backbone, backbone.group_matcher(coarse=False))
        groups = [list(grouped[k]) for k in sorted(grouped)]
    except (AttributeError, NotImplementedError, TypeError):
        # no matcher: one group per top-level child, in registration order
        by_child: dict[str, list[str]] = {}
        for name in names:
            by_child.setdefault(name.split(".")[0], []).append(name)
        groups = list(by_child.values())
    covered = {n for g in groups for n in g}
    leftover = [n for n in names if n not in covered]
    if leftover:
        groups.append(leftover)
    return [g for g in groups if g]


def named_groups(classifier: nn.Module) -> dict[str, list[str]]:
    """{early, middle, late, head} -> parameter names of the classifier (thirds of the backbone)."""
    ordinal = ordinal_groups(classifier.backbone)
    n = len(ordinal)
    cut1, cut2 = math.ceil(n / 3), math.ceil(2 * n / 3)
    prefix = lambda groups: [f"backbone.{name}" for g in groups for name in g]  # noqa: E731
    return {
        "early": prefix(ordinal[:cut1]),
        "middle": prefix(ordinal[cut1:cut2]),
        "late": prefix(ordinal[cut2:]),
        "head": [f"head.{name}" for name, _ in classifier.head.named_parameters()],
    }

