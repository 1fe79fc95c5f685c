"""The run report: one self-contained HTML page (images inlined, no network) per run and per CV.

`build_report(run_dir)` reads only the run record and the saved artifacts (JSON, CSV logs,
pictures drawn when the run ended), so `transferlab report RUN` rebuilds it at any time. It
never fails a run: a section whose inputs are missing says so, and an error in one section is
shown in that section. The sections live in `sections.py`, one function each.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only

from transferlab.metrics import HEADLINE, LABELS
from transferlab.report import sections as _sections  # noqa: F401  (registers the sections)
from transferlab.report.blocks import REGISTRY, Run, fmt, text

SECTIONS = [(key, f"{k}. {title}") for k, (key, title, _) in enumerate(REGISTRY, start=1)]


def headline(run: Run) -> list[dict]:
    if run.is_cv:
        agg = run.metrics.get("aggregate", {})
        return [{"value": f"{agg[k]['mean']:.3f} ± {agg[k]['std'] or 0:.3f}", "label": LABELS[k] + " (CV)"}
                for k in HEADLINE if k in agg and agg[k]["mean"] is not None]
    what, metrics, _ = run.evaluation()
    intervals, n = metrics.get("ci95") or {}, metrics.get("n")
    return [{"value": f"{metrics[k]:.3f}" + (f" [{intervals[k][0]:.3f}, {intervals[k][1]:.3f}]" if k in intervals
                                            else ""),
             "label": f"{LABELS[k]} ({what}{f', {n:,} images' if n else ''}{'; 95% interval' if k in intervals else ''})"}
            for k in HEADLINE if metrics.get(k) is not None]


def build_report(run_dir: str | Path) -> Path:
    """Write RUN/report.html (and its figures under plots/) from the run's saved artifacts."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    run = Run(Path(run_dir))
    sections = []
    for (key, title), (_, _, builder) in zip(SECTIONS, REGISTRY):
        try:
            blocks = builder(run)
        except Exception as exc:  # one broken input must not take the page down
            detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
            blocks = [text("missing", f"this section could not be built: {detail}")]
        sections.append({"id": key, "title": title, "blocks": blocks})
    env = Environment(loader=PackageLoader("transferlab.report", "."), autoescape=select_autoescape(["html", "j2"]))
    data = run.metrics.get("data", {})
    kind = "cross-validation" if run.is_cv else "training run"
    strategy = run.record.display if run.record else ""
    html = env.get_template("template.html.j2").render(
        title=f"transferlab {kind}: {run.dir.name}",
        subtitle=f"{data.get('source', '')} · {fmt(data.get('n_images'))} images · "
                 f"{len(data.get('classes', []))} classes · {run.config.get('model', {}).get('name', '')} · {strategy}",
        headline=headline(run), sections=sections)
    out = run.dir / "report.html"
    from transferlab.io import atomic_write

    atomic_write(out, lambda handle: handle.write(html.encode("utf-8")))
    return out


@rank_zero_only
def safe_build_report(run_dir: str | Path) -> Path | None:
    """build_report that only warns on failure: a report problem never fails a run."""
    try:
        return build_report(run_dir)
    except Exception as exc:
        from transferlab.console import warn

        warn(f"the report could not be written ({type(exc).__name__}: {exc}); rebuild it with "
             f"`transferlab report {run_dir}`")
        return None
