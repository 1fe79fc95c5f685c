"""What the report's sections are made of: the run's artifacts read once (`Run`), the blocks a
section returns (figures, tables, text), and the registry of sections in page order."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import yaml

from transferlab.record import CVRecord, RunRecord
from transferlab.errors import RunError
from transferlab.io import read_json

# (id, title, builder) in page order; `@section` adds one
REGISTRY: list[tuple[str, str, Callable]] = []


def section(key: str, title: str):
    """Register a report section: a function of a `Run` returning blocks, shown in the order
    sections are registered, numbered on the page. One function is all a new section takes."""

    def add(builder: Callable) -> Callable:
        REGISTRY.append((key, title, builder))
        return builder

    return add


def figure(path: Path | None, caption: str) -> dict | None:
    if not (path and Path(path).is_file()):
        return None
    return {"src": "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode(), "caption": caption}


def figures(*items) -> dict:
    return {"kind": "figures", "pictures": [i for i in items if i]}


def table(headers: list[str], rows: list[list], numeric: tuple[int, ...] = ()) -> dict:
    return {"kind": "table", "headers": headers, "rows": rows, "numeric": list(numeric)}


def text(kind: str, value: str) -> dict:
    return {"kind": kind, "text": value}


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


class Run:
    """A run directory's artifacts, read once."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.problems: list[str] = []
        self.plots = self.dir / "plots"
        self.is_cv = (self.dir / "cv_metrics.json").is_file()
        self.metrics = self.json_file("cv_metrics.json" if self.is_cv else "metrics.json")
        self.record: RunRecord | CVRecord | None = None
        if self.metrics:
            self.record = CVRecord.from_json(self.metrics) if self.is_cv else RunRecord.from_json(self.metrics)
        self.dataset = self.json_file("dataset.json")
        self.curves = self.json_file("curves.json")
        config_path = self.dir / "config.yaml"
        self.config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else ""
        try:
            self.config = yaml.safe_load(self.config_text) or {} if self.config_text else {}
        except yaml.YAMLError as exc:
            self.problems.append(f"config.yaml could not be read ({str(exc).splitlines()[0]})")
            self.config = {}

    def json_file(self, name: str) -> dict:
        path = self.dir / name
        if not path.is_file():
            return {}
        try:
            return read_json(path)
        except (OSError, ValueError, RunError) as exc:
            self.problems.append(f"{name} could not be read ({exc})")
            return {}

    def why_missing(self, name: str) -> str:
        """Why the report has nothing from artifact `name`: it could not be read (and why), or it is missing."""
        return next((p for p in self.problems if p.startswith(name)), f"{name} is missing")

    def evaluation(self) -> tuple[str, dict, dict]:
        """(what, metrics, curves) of the split the results section shows: test, else val, else OOF."""
        if self.is_cv:
            return "out-of-fold", self.metrics.get("out_of_fold", {}), self.curves.get("out_of_fold", {})
        for split in ("test", "val"):
            if split in self.metrics:
                return split, self.metrics[split], self.curves.get(split, {})
        return "", {}, {}


