"""What a data source lists: labelled items, the source they came from with what it left out, and
where transferlab keeps its caches. The sources (sources.py, builtins.py) make these; nothing here
reads a file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Item:
    """One labelled image: `path` names it in split.csv and predictions; `file` is where it lives."""

    path: str
    label: str  # the class; a multi-label row's names joined by ";" (its `labels`)
    file: Path | None = None  # None for images held in `Source.arrays`
    group: str | None = None  # items sharing a group always land in the same split or fold
    index: int | None = None  # position in `Source.arrays` for built-in sets
    labels: tuple[str, ...] | None = None  # a multi-label manifest's names for the image (none: a negative)


@dataclass
class Source:
    """What a data spec points at: items to decode, and what was left out and why."""

    spec: str
    kind: str  # folder | csv | builtin
    items: list[Item]
    arrays: np.ndarray | None = None  # built-in sets: uint8 (N, H, W) aligned with items
    classes: list[str] | None = None  # the set's own class order (built-in sets); else sorted by name
    ignored: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # listed but unusable (missing file, bad row)
    warnings: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    label_columns: list[str] | None = None  # a manifest of one 0/1 column per class: those columns, in order
    multilabel: bool = False  # the manifest gave a set of labels per image (a labels column, or 0/1 columns)


def cache_root() -> Path:
    """Where transferlab keeps caches and downloads: $TRANSFERLAB_CACHE or ~/.cache/transferlab."""
    return Path(os.environ.get("TRANSFERLAB_CACHE") or Path.home() / ".cache" / "transferlab").expanduser()
