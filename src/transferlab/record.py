"""The one run record: what a `train` or `cv` run did, as it happened.

`train` writes a `RunRecord` to metrics.json, `cv` a `FoldRecord` per fold (folds/<name>/
metrics.json) and a `CVRecord` to cv_metrics.json. The report, the CV table and `serve` read
these records (and the saved artifacts) and never rebuild facts from the config: the strategy's
label, the learning rates each layer group actually had, what each fold decided, which images
the error gallery shows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.run import environment, read_json, write_json


@dataclass
class StrategyRecord:
    """The strategy of one fit: asked, chosen and why, each stage's settings as used."""

    name: str
    requested: str
    label: str  # e.g. "fine-tune (late, head)"
    summary: str = ""
    decision: dict | None = None  # auto's measured decision
    stages: dict = field(default_factory=dict)  # name -> StageResult fields (groups, rates, scores, epochs)
    selected: dict = field(default_factory=dict)  # the stage kept, by which validation score
    imbalance: str = "none"
    seconds: float = 0.0

    @property
    def display(self) -> str:
        """`fine-tune (late, head)`, or `auto -> fine-tune (late, head)` when auto chose it."""
        return f"auto -> {self.label}" if self.requested == "auto" else self.label

    @property
    def reason(self) -> str | None:
        return (self.decision or {}).get("reason")


@dataclass
class RunRecord:
    """metrics.json of a `train` run."""

    metrics: dict  # "val" / "test" -> every metric of that split
    strategy: StrategyRecord
    data: dict
    train_seconds: float
    environment: dict = field(default_factory=environment)
    gallery: str = "validation"  # the split whose images the error gallery shows

    def to_json(self) -> dict:
        return {**self.metrics, "strategy": dataclasses.asdict(self.strategy), "data": self.data,
                "train_seconds": self.train_seconds, "environment": self.environment, "gallery": self.gallery}

    @property
    def display(self) -> str:
        return self.strategy.display

    @classmethod
    def from_json(cls, data: dict) -> RunRecord:
        return cls(metrics={k: data[k] for k in ("val", "test") if k in data}, strategy=strategy_of(data),
                   data=data.get("data", {}), train_seconds=data.get("train_seconds", 0.0),
                   environment=data.get("environment", {}), gallery=data.get("gallery", "validation"))


@dataclass
class FoldRecord:
    """folds/<name>/metrics.json of a `cv` run."""

    name: str
    repeat: int
    fold: int
    n_train: int
    n_val: int
    n_test: int
    test: dict  # every metric of the held-out fold
    strategy: StrategyRecord
    normalization: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> FoldRecord:
        return cls(**{k: v for k, v in data.items() if k != "strategy"}, strategy=strategy_of(data))


@dataclass
class CVRecord:
    """cv_metrics.json: per fold, aggregated, out of fold."""

    folds: list[dict]  # name, counts, scalar metrics and per-class metrics of each fold, and its strategy label
    aggregate: dict
    per_class: dict
    out_of_fold: dict
    cv: dict  # folds, repeats, splitter, seed, interval method
    strategy: dict  # the folds' strategies: one name (or "mixed"), what each fold decided
    data: dict
    seconds: float
    environment: dict = field(default_factory=environment)
    gallery: str = "out-of-fold"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> CVRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def display(self) -> str:
        labels = self.strategy.get("labels") or [self.strategy.get("name", "")]
        label = labels[0] if len(set(labels)) == 1 else "mixed: " + ", ".join(sorted(set(labels)))
        return f"auto -> {label}" if self.strategy.get("requested") == "auto" else label


def strategy_of(data: dict) -> StrategyRecord:
    entry = dict(data.get("strategy") or {})
    names = {f.name for f in dataclasses.fields(StrategyRecord)}
    entry.setdefault("name", "")
    entry.setdefault("requested", entry["name"])
    entry.setdefault("label", entry["name"])
    return StrategyRecord(**{k: v for k, v in entry.items() if k in names})


def load_record(run_dir: str | Path) -> RunRecord | CVRecord:
    """The record of a finished run directory (train or cv)."""
    run_dir = Path(run_dir)
    if (run_dir / "cv_metrics.json").is_file():
        return CVRecord.from_json(read_json(run_dir / "cv_metrics.json"))
    return RunRecord.from_json(read_json(run_dir / "metrics.json"))


def save_record(record: RunRecord | CVRecord | FoldRecord, path: Path) -> None:
    write_json(path, record.to_json())
