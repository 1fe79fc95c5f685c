"""Multi-label, no flags: `transferlab train labels.csv` against the 30-line peer a careful user writes.

The set: canvases of 56 x 56 pixels, a 2 x 2 grid of 28 px cells, each canvas holding one to four
Fashion-MNIST garments in random cells (the others black); its labels are the garment classes it
holds (a class twice counts once). Training canvases are built from the official training file,
test canvases from the official test file, each with this script's own seeds (`--draws`), so no
garment image is in both. Every contender gets the same images and the bundled EfficientNet-Lite0.

Contenders:
- default: `transferlab train labels.csv` (a path,labels manifest) with no flags, its own budget;
  wall time from the command's start to its end (decode included), scored by `transferlab
  evaluate` on the test canvases (the thresholds the run chose, in model.json);
- peer: raw pooled features at the backbone's own 224 px + one LogisticRegressionCV per label
  (C by 5-fold log loss), threshold 0.5.

Printed per draw and over draws: mAP (macro average precision), macro and micro F1, subset
accuracy, wall time. Targets: the default's mAP and macro F1 at least the peer's (mean of the
draws), its wall time within its printed budget (+10%).

    python benchmarks/bench_multilabel.py [--train 1000] [--test 1000] [--draws 2] [--budget 10m]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _report import report  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
SCRIPT = Path(sys.executable).with_name("transferlab")
CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def idx(name: str) -> np.ndarray:
    """An official Fashion-MNIST IDX file, read by the tool's own reader (data/builtins.py)."""
    from transferlab.data.builtins import read_idx

    return read_idx(FMNIST / name)


def canvases(part: str, count: int, seed: int, folder: Path) -> Path:
    """`count` canvases from the official `part` file, written as PNGs with a path,labels manifest."""
    images, labels = idx(f"{part}-images-idx3-ubyte.gz"), idx(f"{part}-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        canvas = np.zeros((56, 56), np.uint8)
        held = rng.choice(4, size=rng.integers(1, 5), replace=False)
        picks = rng.choice(len(images), size=len(held), replace=False)
        for cell, pick in zip(held, picks):
            r, c = divmod(int(cell), 2)
            canvas[28 * r: 28 * r + 28, 28 * c: 28 * c + 28] = images[pick]
        Image.fromarray(canvas).save(folder / f"{i:05d}.png")
        rows.append((f"{folder.name}/{i:05d}.png", sorted({CLASSES[labels[p]] for p in picks})))
    manifest = folder.parent / f"{folder.name}.csv"
    manifest.write_text("path,labels\n" + "".join(f"{p},{';'.join(n)}\n" for p, n in rows), encoding="utf-8")
    return manifest


def targets_of(manifest: Path) -> np.ndarray:
    lines = manifest.read_text(encoding="utf-8").splitlines()[1:]
    return np.array([[int(c in line.split(",", 1)[1].split(";")) for c in CLASSES] for line in lines])


def scores(targets: np.ndarray, probs: np.ndarray, decided: np.ndarray) -> dict:
    from sklearn import metrics as skm

    present = [k for k in range(targets.shape[1]) if 0 < targets[:, k].sum() < len(targets)]
    return {"mAP": float(np.mean([skm.average_precision_score(targets[:, k], probs[:, k]) for k in present])),
            "f1_macro": float(skm.f1_score(targets, decided, average="macro", zero_division=0)),
            "f1_micro": float(skm.f1_score(targets, decided, average="micro", zero_division=0)),
            "subset_accuracy": float(skm.accuracy_score(targets, decided))}


def default(train: Path, test: Path, out: Path, budget: str | None) -> tuple[dict, float, float | None]:
    """The no-flags command (plus --budget when given), its wall time and printed budget, scored on `test`."""
    command = [str(SCRIPT), "train", str(train), "--out", str(out), "--quiet", *(["--budget", budget] if budget else [])]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"transferlab train failed: {done.stderr[-2000:]}")
    printed = re.search(r"within ([0-9.]+) min", done.stderr + done.stdout)
    evaluated = subprocess.run([str(SCRIPT), "evaluate", str(out), str(test), "--out", str(out) + "-eval", "--quiet"],
                               capture_output=True, text=True)
    if evaluated.returncode != 0:
        raise SystemExit(f"transferlab evaluate failed: {evaluated.stderr[-2000:]}")
    import csv

    with open(str(out) + "-eval/predictions.csv", newline="", encoding="utf-8") as handle:
        rows = {r["path"]: r for r in csv.DictReader(handle)}
    order = [line.split(",", 1)[0] for line in test.read_text(encoding="utf-8").splitlines()[1:]]
    probs = np.array([[float(rows[p][f"p_{c}"]) for c in CLASSES] for p in order])
    decided = np.array([[int(c in rows[p]["pred"].split(";")) for c in CLASSES] for p in order])
    budget_s = None
    record = json.loads((out / "metrics.json").read_text())
    decision = record.get("strategy", {}).get("decision") or {}
    if (record.get("seconds") or {}).get("budget"):  # the whole run's budget (the search has a share of it)
        budget_s = record["seconds"]["budget"]
    elif decision.get("budget", {}).get("seconds"):
        budget_s = decision["budget"]["seconds"]
    elif printed:
        budget_s = float(printed.group(1)) * 60
    return scores(targets_of(test), probs, decided), seconds, budget_s


def peer(train: Path, test: Path) -> tuple[dict, float]:
    """The 30-line peer: pooled features at 224 px + a LogisticRegressionCV per label, threshold 0.5."""
    import torch
    from sklearn.linear_model import LogisticRegressionCV

    from transferlab.models.backbone import create_backbone

    started = time.perf_counter()
    model = create_backbone("tf_efficientnet_lite0").eval()

    def features(manifest: Path) -> np.ndarray:
        paths = [manifest.parent / line.split(",", 1)[0] for line in manifest.read_text().splitlines()[1:]]
        out = []
        with torch.no_grad():
            for start in range(0, len(paths), 64):
                batch = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BICUBIC))
                                  for p in paths[start:start + 64]])
                x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
                out.append(model((x - 0.5) / 0.5).numpy())
        return np.concatenate(out)

    x, y = features(train), targets_of(train)
    x_test = features(test)
    probs = np.zeros((len(x_test), len(CLASSES)))
    for k in range(len(CLASSES)):
        fitted = LogisticRegressionCV(Cs=10, cv=5, scoring="neg_log_loss", max_iter=3000).fit(x, y[:, k])
        probs[:, k] = fitted.predict_proba(x_test)[:, 1]
    seconds = time.perf_counter() - started
    return scores(targets_of(test), probs, (probs >= 0.5).astype(int)), seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=1000, help="training canvases per draw")
    parser.add_argument("--test", type=int, default=1000, help="test canvases per draw")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--budget", default=None, help="passed to the default as --budget (default: none given)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for draw in range(args.draws):
            base = tmp / f"draw{draw}"
            train = canvases("train", args.train, 100 + draw, base / "train")
            test = canvases("t10k", args.test, 200 + draw, base / "test")
            ours, seconds, budget = default(train, test, base / "run", args.budget)
            theirs, peer_seconds = peer(train, test)
            rows.append((ours, seconds, budget, theirs, peer_seconds))
            for name, s, t in (("default", ours, seconds), ("peer", theirs, peer_seconds)):
                print(f"  draw {draw} {name:<8} mAP {s['mAP']:.4f}  macro F1 {s['f1_macro']:.4f}  micro F1 "
                      f"{s['f1_micro']:.4f}  subset accuracy {s['subset_accuracy']:.4f}  {t:6.0f} s"
                      + (f" (budget {budget:.0f} s)" if name == "default" and budget else ""), flush=True)
    print()
    print("| draw | contender | mAP | macro F1 | micro F1 | subset accuracy | wall |")
    print("|---|---|---|---|---|---|---|")
    for draw, (ours, seconds, budget, theirs, peer_seconds) in enumerate(rows):
        for name, s, t in (("`transferlab train labels.csv`", ours, seconds), ("30-line peer", theirs, peer_seconds)):
            print(f"| {draw} | {name} | {s['mAP']:.4f} | {s['f1_macro']:.4f} | {s['f1_micro']:.4f} | "
                  f"{s['subset_accuracy']:.4f} | {t:.0f} s |")
    for key in ("mAP", "f1_macro"):
        ours = float(np.mean([r[0][key] for r in rows]))
        theirs = float(np.mean([r[3][key] for r in rows]))
        report(f"bench_multilabel[{key}]", f"{ours:.4f} vs {theirs:.4f} (mean of {len(rows)} draws)",
               "pooled features @ 224 + LogisticRegressionCV per label", ours / theirs, target=1.0)
    timed = [r[1] / r[2] for r in rows if r[2]]
    if timed:
        report("bench_multilabel[time]", f"worst wall / budget {max(timed):.2f}", "its printed budget", max(timed),
               target=1.1, higher_is_better=False)


if __name__ == "__main__":
    main()
