"""Does `--strategy auto` pick well? Every 2x2 quadrant's settings, run as fixed strategies, and
auto, on data sets of different size and domain; auto's test accuracy against the best and the
worst fixed choice, and the time each took.

Data (built offline, see _datasets.py): LFW faces vs not (small, natural but tiny and grey),
synthetic gratings (small, far), digits (small, far), crops of natural photos at 300 per class
(large, near) and Fashion-MNIST at 300 per class (large, far). 64 px inputs and 6 fine-tuning
epochs keep it to minutes per run on a CPU; the ranking between strategies, not the absolute
accuracy, is the point.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _datasets  # noqa: E402
from _report import report  # noqa: E402

from transferlab.cli import quiet_lightning  # noqa: E402
from transferlab.config import load_config  # noqa: E402
from transferlab.pipeline import run_training  # noqa: E402
from transferlab.strategies import QUADRANTS  # noqa: E402

# (name, builder arguments, extra config): small and large, near and far from ImageNet
DATA = (("faces", {}, []), ("gratings", {}, []), ("digits", {}, []),
        ("photos", {"per_class": 300, "low": 0.1, "high": 0.3}, []), ("fashion-mnist", {}, ["data.subset=300"]))
COMMON = ["preprocess.size=64", "train.report=false", "train.early_stopping=null", "strategy.head_warmup_epochs=5",
          "train.monitor=val_accuracy"]
NAMES = {(True, True): "small+similar", (True, False): "small+different", (False, True): "large+similar",
         (False, False): "large+different"}


def fixed(quadrant) -> list[str]:
    strategy, _, overrides = QUADRANTS[quadrant]
    out = [f"strategy.name={strategy}", "train.epochs=" + ("30" if strategy == "feature-extraction" else "6")]
    for key, value in overrides.items():
        out.append(f"{key}={json.dumps(value)}")
    return out


def run(spec: str, overrides: list[str], tmp: Path, name: str) -> tuple[float, float, dict]:
    config = load_config(overrides=COMMON + overrides + [f"data.cache_dir={tmp / ('cache-' + name)}"])
    start = time.perf_counter()
    out = run_training(spec, config, out=tmp / name, progress=False)
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics["test"]["accuracy"], seconds, metrics["strategy"]


def main() -> None:
    quiet_lightning()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for data, arguments, extra in DATA:
            spec = _datasets.build(data, tmp, **arguments)
            results = {}
            for quadrant, label in NAMES.items():
                results[label] = run(spec, extra + fixed(quadrant), tmp, f"{data}-{label}")
                print(f"  {data:<14} {label:<16} acc {results[label][0]:.3f}  {results[label][1]:6.0f} s", flush=True)
            accuracy, seconds, strategy = run(spec, extra + ["strategy.name=auto", "train.epochs=null"], tmp,
                                              f"{data}-auto")
            best = max(results, key=lambda k: results[k][0])
            worst = min(results, key=lambda k: results[k][0])
            rows.append((data, strategy, accuracy, seconds, best, results[best], worst, results[worst],
                         sum(r[1] for r in results.values()) / len(results)))
            print(f"  {data:<14} auto -> {strategy['quadrant']}: acc {accuracy:.3f} {seconds:6.0f} s "
                  f"({strategy['reason']})", flush=True)
    print()
    print("| data | images (train/class) | score | auto chose | auto acc | best fixed | worst fixed | auto time | "
          "mean fixed time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for data, strategy, accuracy, seconds, best, best_r, worst, worst_r, mean_time in rows:
        print(f"| {data} | {strategy['images']:,} ({strategy['per_class']:.0f}) | LogME {strategy['score']:.2f} | "
              f"{strategy['quadrant']} | {accuracy:.3f} | {best_r[0]:.3f} ({best}) | {worst_r[0]:.3f} ({worst}) | "
              f"{seconds:.0f} s | {mean_time:.0f} s |")
    auto_mean = sum(r[2] for r in rows) / len(rows)
    best_mean = sum(r[5][0] for r in rows) / len(rows)
    worst_mean = sum(r[7][0] for r in rows) / len(rows)
    report("bench_auto", f"auto mean acc {auto_mean:.3f} (worst fixed {worst_mean:.3f})",
           f"best fixed per set {best_mean:.3f}", auto_mean / best_mean)


if __name__ == "__main__":
    main()
