"""Feature extraction with cached features vs the naive way (frozen backbone run every epoch).

Same data (Fashion-MNIST, 100 images per class, or digits without it), same split, epochs, head,
optimizer and seed; the naive run keeps the backbone frozen and forwards every training image
in every epoch. Target: >= 10x faster at equal accuracy (within 1 point).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import report  # noqa: E402

from transferlab.cli import quiet_lightning  # noqa: E402
from transferlab.config import load_config  # noqa: E402
from transferlab.data.builtins import fashion_mnist_or_digits  # noqa: E402
from transferlab.run import run_training  # noqa: E402

EPOCHS = 30  # the strategy's default


def main() -> None:
    quiet_lightning()
    data, _ = fashion_mnist_or_digits()
    common = ["data.subset=100", "preprocess.size=96", f"train.epochs={EPOCHS}", "augment.preset=none",
              "train.early_stopping=null", "train.monitor=val_accuracy", "optim.lr=0.003"]
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, extra in (("cached", ["strategy.name=feature-extraction"]),
                            ("naive", ["strategy.name=gradual", "strategy.gradual.steps=[{epoch: 1, groups: [head]}]"])):
            config = load_config(overrides=common + extra + [f"data.cache_dir={tmp}/cache-{name}"])
            start = time.perf_counter()
            run = run_training(data, config, out=Path(tmp) / name, progress=False)
            seconds = time.perf_counter() - start
            metrics = json.loads((run / "metrics.json").read_text())
            results[name] = (seconds, metrics["test"]["accuracy"])
    (fast, acc_fast), (slow, acc_slow) = results["cached"], results["naive"]
    report("bench_feature_extraction", f"cached {fast:.0f} s, test acc {acc_fast:.3f}",
           f"naive {slow:.0f} s, test acc {acc_slow:.3f}", slow / fast, target=10)
    print(f"{'':<28} accuracy difference {100 * (acc_fast - acc_slow):+.1f} points ({data}, {EPOCHS} epochs; "
          "target within 1 point)")


if __name__ == "__main__":
    main()
