"""Pictures that need the images or the model, drawn once when a run ends (the report reuses them):
sample images per class, the augmentation preview, and the most confidently wrong (and some right)
held-out images with Grad-CAM overlays (kept in errors.npz; the report draws them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from lightning.fabric.utilities.rank_zero import rank_zero_only

from transferlab.figures import save, subplots


def names_of_row(value, classes: list[str]) -> str:
    """A label as a caption: the class, or a multi-label row's names joined by commas."""
    value = np.asarray(value)
    if value.ndim:
        return ", ".join(c for c, on in zip(classes, value) if on) or "none"
    return classes[int(value)]


def sample_grid(images, labels: np.ndarray, classes: list[str], path: Path, *, per_class: int = 6,
                max_classes: int = 20, seed: int = 0) -> Path:
    """A row of random images per class (the first `max_classes` classes; multi-label: images with the label)."""
    rng = np.random.default_rng(seed)
    shown = classes[:max_classes]
    fig, axes = subplots(len(shown), per_class, figsize=(1.2 * per_class + 1.2, 1.25 * len(shown) + 0.3),
                             squeeze=False, layout="constrained")
    for r, name in enumerate(shown):
        members = np.flatnonzero(labels[:, r] == 1 if labels.ndim == 2 else labels == r)
        picks = rng.choice(members, size=min(per_class, len(members)), replace=False) if len(members) else []
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(picks):
                ax.imshow(images[int(picks[c])], interpolation="nearest")
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    title = "sample images per class" + (f" (first {max_classes} of {len(classes)} classes)"
                                         if len(classes) > max_classes else "")
    fig.suptitle(title, fontsize=10)
    return save(fig, path, dpi=90)


@rank_zero_only
def dataset_pictures(run_dir: Path, dataset, config) -> None:
    """samples.png and augment_preview.png of a run (each skipped with a warning if it fails)."""
    from transferlab.console import warn
    from transferlab.preview import pick_rows, preview_grid

    plots = Path(run_dir) / "plots"
    try:
        sample_grid(dataset.images, dataset.labels, dataset.classes, plots / "samples.png", seed=config.seed)
    except Exception as exc:
        warn(f"sample images not drawn: {exc}")
    try:
        rows = pick_rows(dataset.labels, dataset.classes, 6, config.seed)
        preview_grid(dataset.images.take(rows), dataset.label_text(np.asarray(rows)), config.augment,
                     plots / "augment_preview.png", n=6, seed=config.seed)
    except Exception as exc:
        warn(f"augmentation preview not drawn: {exc}")
    audit = Path(run_dir) / "audit.json"
    if audit.is_file():
        try:
            audit_pictures(json.loads(audit.read_text(encoding="utf-8")), dataset.images, plots)
        except Exception as exc:
            warn(f"audit pictures not drawn: {exc}")


def audit_pictures(audit: dict, images, plots: Path) -> None:
    """audit_labels.png, audit_duplicates.png, audit_outliers.png: the images the audit flags, as people
    check them (by eye)."""
    from transferlab.audit import fmt_label

    issues = (audit.get("label_issues") or {}).get("items", [])[:16]
    thumbs(images, [(i["index"], f"given {fmt_label(i['given'])}\nlooks {fmt_label(i['suggested'])} "
                                 f"({i['score']:.2f})") for i in issues], plots / "audit_labels.png",
           "likely label errors (lowest self-confidence first)")
    groups = (audit.get("duplicates") or {}).get("groups", [])[:8]
    pairs = [(m["index"], f"{'LEAK ' if g['leak'] else ''}group {k + 1}\n{m['label']}"
              + (f" [{m['split']}]" if "split" in m else "")) for k, g in enumerate(groups) for m in g["members"][:4]]
    thumbs(images, pairs, plots / "audit_duplicates.png", "near-duplicate groups (LEAK: across splits)")
    odd = (audit.get("outliers") or {}).get("items", [])[:12]
    thumbs(images, [(i["index"], f"{i['label']}\n({i['score']:.3f})") for i in odd], plots / "audit_outliers.png",
           "outliers: most unlike the rest (lowest score first)")


def thumbs(images, entries: list[tuple[int, str]], path: Path, title: str) -> Path | None:
    """A grid of the images at `entries` (index, caption), 6 a row; none drawn (and an old one removed) for none."""
    path.unlink(missing_ok=True)
    if not entries:
        return None
    columns = min(6, len(entries))
    rows = (len(entries) + columns - 1) // columns
    fig, axes = subplots(rows, columns, figsize=(1.9 * columns, 2.2 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for k, (index, caption) in enumerate(entries):
        ax = axes.flat[k]
        ax.imshow(images[index], interpolation="nearest")
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, path, dpi=90)


def error_candidates(classifier, images, indices: np.ndarray, labels: np.ndarray, probs: np.ndarray, *,
                     seed: int = 0, task=None) -> dict:
    """The 8 most confidently wrong and 4 right images among `indices` (rows of `probs`), with
    Grad-CAM overlays for the predicted class: arrays ready to keep and draw."""
    from transferlab.interpret.cam import compute_cams, overlay
    from transferlab.tasks import SINGLE

    task = task or SINGLE
    wrong, right = 8, 4
    pred = task.decide(probs)
    confidence = task.confidence(probs)
    truth = labels[indices]
    correct = task.correct(probs, truth)
    wrong_rows = np.flatnonzero(~correct)
    wrong_rows = wrong_rows[np.argsort(-confidence[wrong_rows])][:wrong]
    right_rows = np.flatnonzero(correct)
    rng = np.random.default_rng(seed)
    right_rows = rng.choice(right_rows, size=min(right, len(right_rows)), replace=False) if len(right_rows) else \
        right_rows
    rows = np.concatenate([wrong_rows, right_rows]).astype(np.int64)
    if len(rows) == 0:
        return {"overlays": np.zeros((0, 1, 1, 3), np.uint8)}
    pictures = images.take(indices[rows])
    cams = compute_cams(classifier, pictures, method="gradcam", task=task)["cams"]
    overlays = np.stack([overlay(p, c) for p, c in zip(pictures, cams)])
    return {"overlays": overlays, "pictures": pictures, "true": truth[rows], "pred": pred[rows],
            "confidence": confidence[rows], "wrong": np.array([True] * len(wrong_rows) + [False] * len(right_rows)),
            "index": indices[rows]}


def merge_candidates(parts: list[dict], *, wrong: int = 8, right: int = 4) -> dict:
    """The most confident mistakes (and the first right ones) across several candidate sets (folds)."""
    parts = [p for p in parts if len(p.get("overlays", ())) and "wrong" in p]
    if not parts:
        return {"overlays": np.zeros((0, 1, 1, 3), np.uint8)}
    shapes = {p["overlays"].shape[1:] for p in parts}
    if len(shapes) > 1:
        parts = [p for p in parts if p["overlays"].shape[1:] == parts[0]["overlays"].shape[1:]]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    wrong_rows = np.flatnonzero(merged["wrong"])
    wrong_rows = wrong_rows[np.argsort(-merged["confidence"][wrong_rows])][:wrong]
    right_rows = np.flatnonzero(~merged["wrong"])[:right]
    keep = np.concatenate([wrong_rows, right_rows]).astype(np.int64)
    return {k: v[keep] for k, v in merged.items()}


def error_gallery(candidates: dict, classes: list[str], path: Path, part: str = "validation") -> Path | None:
    """Rows of image + Grad-CAM pairs: the confident mistakes of `part` first, then correct ones."""
    overlays = candidates.get("overlays")
    if overlays is None or len(overlays) == 0:
        return None
    count, columns = len(overlays), 4
    rows = (count + columns - 1) // columns
    fig, axes = subplots(rows, 2 * columns, figsize=(2.0 * 2 * columns, 2.35 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for k in range(count):
        r, c = divmod(k, columns)
        truth, pred = (names_of_row(candidates[key][k], classes) for key in ("true", "pred"))
        verdict = "WRONG" if candidates["wrong"][k] else "right"
        axes[r, 2 * c].imshow(candidates["pictures"][k], interpolation="nearest")
        axes[r, 2 * c].set_title(f"{verdict}: true {truth}", fontsize=7, color="firebrick" if verdict == "WRONG"
                                 else "darkgreen")
        axes[r, 2 * c + 1].imshow(candidates["overlays"][k], interpolation="nearest")
        axes[r, 2 * c + 1].set_title(f"pred {pred} ({candidates['confidence'][k]:.2f})", fontsize=7)
    fig.suptitle(f"most confidently wrong {part} images, then correct ones (Grad-CAM of the prediction)",
                 fontsize=9)
    return save(fig, path, dpi=90)


@rank_zero_only
def save_error_examples(classifier, dataset, indices: np.ndarray, probs: np.ndarray, path: Path, *,
                        seed: int = 0) -> None:
    """errors.npz: the most confident mistakes (and some right answers) among `indices`, with
    their Grad-CAM overlays, for the report's error gallery. Never fails the run."""
    from transferlab.console import warn

    if len(indices) == 0:
        return
    try:
        candidates = error_candidates(classifier, dataset.images, indices, dataset.labels, probs, seed=seed,
                                      task=dataset.task)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **candidates)
    except Exception as exc:
        warn(f"error examples not kept: {exc}")


def load_candidates(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
