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
    label: str
    file: Path | None = None  # None for images held in `Source.arrays`
    group: str | None = None  # items sharing a group always land in the same split or fold
    index: int | None = None  # position in `Source.arrays` for built-in sets


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


def cache_root() -> Path:
    """Where transferlab keeps caches and downloads: $TRANSFERLAB_CACHE or ~/.cache/transferlab."""
    return Path(os.environ.get("TRANSFERLAB_CACHE") or Path.home() / ".cache" / "transferlab").expanduser()
