"""The dataset health summary on screen: what `transferlab inspect` shows."""

from __future__ import annotations

from collections import Counter

from rich.table import Table

from transferlab.console import stdout


def print_summary(summary: dict, *, max_listed: int = 50) -> None:
    """Classes and counts, sizes and modes, channel statistics, and every skipped file."""
    counts = summary["counts"]
    total = max(1, summary["n_images"])
    multi = summary.get("task") == "multi-label"
    classes = Table(title=f"{summary['source']}: {summary['n_images']:,} images, {summary['n_classes']} "
                          f"{'labels (multi-label: images with each)' if multi else 'classes'}", title_justify="left")
    classes.add_column("label" if multi else "class")
    classes.add_column("images", justify="right")
    classes.add_column("share", justify="right")
    classes.add_column("", no_wrap=True)
    peak = max(counts.values(), default=1) or 1
    for name, count in counts.items():
        classes.add_row(name, f"{count:,}", f"{100 * count / total:.1f}%", "█" * max(1, round(20 * count / peak)))
    stdout.print(classes)

    stdout.print(facts_table(summary))
    if multi:
        per = summary["labels_per_image"]
        table = Table(title=f"labels per image (mean {per['mean']})", title_justify="left")
        table.add_column("labels", justify="right")
        table.add_column("images", justify="right")
        for n, count in per["images"].items():
            table.add_row(n, f"{count:,}")
        stdout.print(table)
        if summary["co_occurring"]:
            table = Table(title="most frequent pairs of labels on one image", title_justify="left")
            table.add_column("labels")
            table.add_column("images", justify="right")
            for pair in summary["co_occurring"]:
                table.add_row(" + ".join(pair["labels"]), f"{pair['images']:,}")
            stdout.print(table)
    dups = summary["duplicates"]

    for title, rows in (("skipped files", summary["skipped"]), ("ignored files", summary["ignored"])):
        if not rows:
            continue
        table = Table(title=f"{title} ({len(rows):,})", title_justify="left")
        table.add_column("file", overflow="fold")
        table.add_column("reason", overflow="fold")
        for row in rows[:max_listed]:
            table.add_row(row["path"], row["reason"])
        if len(rows) > max_listed:
            reasons = Counter(r["reason"].split(":")[0] for r in rows[max_listed:])
            table.add_row(f"... {len(rows) - max_listed:,} more", "; ".join(f"{r} ({n})" for r, n in reasons.items()))
        stdout.print(table)
    if dups:
        table = Table(title=f"byte-identical duplicates ({len(dups):,} groups)", title_justify="left")
        table.add_column("files", overflow="fold")
        table.add_column("labels")
        for dup in dups[:max_listed]:
            table.add_row(", ".join(dup["paths"]), ("CONFLICT: " if dup["conflict"] else "") + ", ".join(dup["labels"]))
        stdout.print(table)
    for message in summary["warnings"]:
        stdout.print(f"[yellow]warning:[/yellow] {message}")


def facts_table(summary: dict) -> Table:
    """Imbalance, sizes, modes, formats, channel statistics, the cache, skipped files and duplicates."""
    facts = Table(show_header=False, title="statistics", title_justify="left")
    facts.add_column("what")
    facts.add_column("value")
    if summary.get("imbalance_ratio") is not None:
        facts.add_row("imbalance (largest / smallest class)", f"{summary['imbalance_ratio']:.2f}")
    size = summary["image_size"]
    if size["width"]:
        facts.add_row("width (min / median / max)", "{min} / {median:g} / {max}".format(**size["width"]))
        facts.add_row("height (min / median / max)", "{min} / {median:g} / {max}".format(**size["height"]))
        facts.add_row("most common sizes", ", ".join(f"{s['size']} ({s['count']:,})" for s in size["most_common"]))
    facts.add_row("modes", ", ".join(f"{m} ({n:,})" for m, n in summary["modes"].items()) or "-")
    facts.add_row("formats", ", ".join(f"{m} ({n:,})" for m, n in summary["formats"].items()) or "-")
    if summary.get("oriented_by_exif"):
        facts.add_row("rotated by EXIF orientation", f"{summary['oriented_by_exif']:,}")
    if "channel_mean" in summary:
        facts.add_row("channel mean (R, G, B)", ", ".join(f"{v:.4f}" for v in summary["channel_mean"]))
        facts.add_row("channel std (R, G, B)", ", ".join(f"{v:.4f}" for v in summary["channel_std"]))
    cached = summary["cached_as"]
    facts.add_row("cached as", f"{cached['size']}x{cached['size']} ({cached['resize_mode']}, "
                               f"{cached['interpolation']}), {cached['cache']} cache, "
                               f"{cached.get('bytes_per_image', 0):,} bytes per image")
    facts.add_row("skipped / ignored files", f"{len(summary['skipped']):,} / {len(summary['ignored']):,}")
    dups = summary["duplicates"]
    facts.add_row("duplicate groups (label conflicts)",
                  f"{len(dups):,} ({sum(1 for d in dups if d['conflict']):,})")
    return facts
