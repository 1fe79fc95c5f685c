"""Figures through matplotlib's object API: no pyplot, no backend switch, so drawing a report or
an explanation leaves the matplotlib state of a notebook or an application untouched."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def subplots(rows: int = 1, columns: int = 1, *, figsize: tuple[float, float], layout: str | None = None, **kwargs):
    """(figure, axes) like pyplot.subplots, on a Figure that belongs to nobody else."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(rows, columns, **kwargs)


def save(fig: Figure, path: Path, dpi: int = 100, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, **kwargs)
    return path
