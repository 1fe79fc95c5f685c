"""Does the no-flags default keep its promises as the data grows? `transferlab train
builtin:fashion-mnist` with no flags, on about 1,000, 6,000 and all 60,000 training images, its
output redirected to a file (no terminal), each run with a cold cache, scored on 2,000 images of
the official test split (200 per class, seeded).

Per size: wall time against the budget the run printed (+ the decode, timed by `inspect` on its own
cold cache), peak RSS of the run's process, cache bytes per image, how many progress lines the log
got, what the search tried and cut, held-out accuracy, and the strong 30-line probe (raw pooled
features at the backbone's own 224 px + LogisticRegressionCV) given the same wall time: it
featurises as many training images (stratified, seeded) as 70% of that time affords at its
measured speed, at most 5,000 (scikit-learn's LogisticRegressionCV cannot be stopped, and on
more its fit alone outlasts the run on 2 cores), the rest is its fit (scoring the test images
is outside the time, as for the run).

Targets: wall <= printed budget + decode + 10% at every size; the cache of 60,000 28x28 images
under 300 MB; at 60,000 the default's accuracy not below the probe's within the same time; RSS
growing sub-linearly with the number of images.

    python benchmarks/bench_scale.py [--sizes 1000,6000,60000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import report  # noqa: E402

SCRIPT = Path(sys.executable).with_name("transferlab")
PROBE_CAP = 5000  # training images the probe script featurises at most
MEASURE = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[2:], stdout=open(sys.argv[1], 'w'), "
           "stderr=subprocess.STDOUT); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
           "sys.exit(code)")


def measured(command: list[str], log: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of `command`, its output (stdout and stderr) to `log`."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, str(log), *command], capture_output=True, text=True,
                          env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return seconds, int(done.stdout.strip().splitlines()[-1]) / 1024


def strong_probe(per_class: int | None, seconds: float, run: Path) -> tuple[float, int]:
    """(held-out accuracy, training images used) of the 30-line probe within `seconds`, on the
    images the run trained and chose on (not its own test split)."""
    import csv

    import torch
    from sklearn.linear_model import LogisticRegressionCV

    from transferlab.config import load_config
    from transferlab.data import load_dataset
    from transferlab.models.backbone import create_backbone

    model = create_backbone("tf_efficientnet_lite0").eval()

    def load(spec: str, subset: int | None):
        overrides = ["preprocess.size=224", "preprocess.resize_mode=stretch"] + ([f"data.subset={subset}"] if subset
                                                                                 else [])
        return load_dataset(spec, load_config(overrides=overrides), progress=False)

    def features(dataset, rows):
        out = []
        with torch.no_grad():
            for start in range(0, len(rows), 64):
                batch = torch.from_numpy(dataset.images.take(rows[start : start + 64]))
                out.append(model((batch.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5))
        return torch.cat(out).numpy()

    test = load("builtin:fashion-mnist:test", 200)  # scoring, like auto's evaluation, is outside its time
    tick = time.perf_counter()
    x_test = features(test, np.arange(len(test)))
    per_image = (time.perf_counter() - tick) / len(test)
    started = time.perf_counter()
    train = load("builtin:fashion-mnist", per_class)
    # LogisticRegressionCV cannot be stopped: past 5,000 images its fit alone outlasts the run on 2 cores
    affordable = min(PROBE_CAP, int((0.7 * seconds - (time.perf_counter() - started)) / per_image))
    used = {r["path"] for r in csv.DictReader((run / "split.csv").open()) if r["split"] != "test"}
    allowed = np.array([path in used for path in train.paths])
    rng = np.random.default_rng(5)
    rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero((train.labels == k) & allowed))[
        : max(10, affordable // 10)] for k in range(10)]))
    x = features(train, rows)
    classifier = LogisticRegressionCV(Cs=10, cv=5, scoring="neg_log_loss", max_iter=1000).fit(x, train.labels[rows])
    return float(np.mean(classifier.predict(x_test) == test.labels)), len(rows)


def one_size(images: int, tmp: Path) -> dict:
    per_class = None if images >= 60000 else images // 10
    subset = [] if per_class is None else ["--set", f"data.subset={per_class}"]
    env = {**os.environ, "TRANSFERLAB_CACHE": str(tmp / f"cache{images}")}
    decode, _ = measured([str(SCRIPT), "inspect", "builtin:fashion-mnist", "--json", *subset],
                         tmp / f"inspect{images}.json", {**os.environ, "TRANSFERLAB_CACHE": str(tmp / f"decode{images}")})
    cached = json.loads((tmp / f"inspect{images}.json").read_text())["cached_as"]
    run = tmp / f"run{images}"
    log = tmp / f"train{images}.log"
    wall, rss = measured([str(SCRIPT), "train", "builtin:fashion-mnist", "--out", str(run), *subset], log, env)
    text = log.read_text()
    budget = re.search(r"within ([0-9.]+) min", text)
    budget_s = float(budget.group(1)) * 60 if budget else math.nan
    from transferlab.evaluate import evaluate_run

    evaluation = evaluate_run(run, "builtin:fashion-mnist:test", subset=200, progress=False)
    accuracy = json.loads((evaluation / "metrics.json").read_text())["test"]["accuracy"]
    decision = json.loads((run / "metrics.json").read_text())["strategy"].get("decision") or {}
    candidates = decision.get("candidates", [])
    cut = [c["label"] for c in candidates if c["status"].startswith("skipped")]
    probe, probe_images = strong_probe(per_class, wall, run)
    prior = decision.get("prior", {})
    row = {"images": images, "wall": wall, "budget": budget_s, "decode": decode, "rss": rss,
           "bytes": cached["bytes_per_image"], "cache_mb": cached["bytes_per_image"] * images / 1e6,
           "lines": sum(1 for line in text.splitlines() if " left" in line and "/s" in line),
           "tried": sum(1 for c in candidates if c["status"] == "scored"), "cut": len(cut),
           "prior": f"{prior.get('sampled', 0):,} of {prior.get('images', 0):,}",
           "pool": decision.get("evidence", {}).get("images"), "members": len(decision.get("members", [])),
           "accuracy": accuracy, "probe": probe, "probe_images": probe_images}
    print(f"  {images:>6,} images: wall {wall:.0f} s (budget {budget_s:.0f} s + decode {decode:.0f} s), peak RSS "
          f"{rss:,.0f} MB, {row['bytes']:,} bytes/image, {row['lines']} progress lines, {row['tried']} candidates "
          f"scored, {row['cut']} cut, accuracy {accuracy:.4f}; strong probe {probe:.4f} on {probe_images:,} images "
          f"in the same time", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,6000,60000")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        for images in (int(s) for s in args.sizes.split(",")):
            rows.append(one_size(images, Path(tmp_name)))
    print()
    print("| images | wall (budget + decode) | peak RSS | cache bytes / image (whole cache) | progress lines | "
          "search: scored / cut (LogME on; evidence images) | members | accuracy | strong probe, same time "
          "(images it used) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']:,} | {r['wall']:.0f} s ({r['budget']:.0f} + {r['decode']:.0f} s) | {r['rss']:,.0f} MB | "
              f"{r['bytes']:,} ({r['cache_mb']:.0f} MB) | {r['lines']} | {r['tried']} / {r['cut']} ({r['prior']}; "
              f"{r['pool']:,}) | {r['members']} | {r['accuracy']:.4f} | {r['probe']:.4f} ({r['probe_images']:,}) |")
    worst = max(r["wall"] / (r["budget"] + r["decode"]) for r in rows)
    report("bench_scale[time]", f"worst wall / (budget + decode) {worst:.2f}", "the printed budget", worst,
           target=1.1, higher_is_better=False)
    largest = rows[-1]
    report("bench_scale[cache]", f"{largest['cache_mb']:.0f} MB for {largest['images']:,}", "300 MB",
           largest["cache_mb"] / 300, target=1, higher_is_better=False)
    report("bench_scale[vs probe]", f"{100 * (largest['accuracy'] - largest['probe']):+.2f} pt at "
           f"{largest['images']:,}", "strong probe, same time", largest["accuracy"] / max(largest["probe"], 1e-9),
           target=1)
    if len(rows) > 1:
        growth = math.log(rows[-1]["rss"] / rows[0]["rss"]) / math.log(rows[-1]["images"] / rows[0]["images"])
        report("bench_scale[memory]", f"RSS grows as images^{growth:.2f}", "linear growth (exponent 1)", growth,
               target=1, higher_is_better=False)


if __name__ == "__main__":
    main()
