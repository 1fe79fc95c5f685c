"""5-fold cross-validation with feature extraction costs little more than one hold-out run.

1,000 images (Fashion-MNIST, 100 per class; digits without it) at the default backbone size:
the backbone runs once per image for the whole CV (folds share the feature cache), so five head
trainings are all CV adds. Target: CV time <= 1.5x the hold-out run of the same strategy.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import report  # noqa: E402

from transferlab.cli import quiet_lightning  # noqa: E402
from transferlab.config import load_config  # noqa: E402
from transferlab.data.builtins import fashion_mnist_or_digits  # noqa: E402
from transferlab.run import run_cv  # noqa: E402
from transferlab.run import run_training  # noqa: E402


def main() -> None:
    quiet_lightning()
    data, _ = fashion_mnist_or_digits()
    common = ["data.subset=100", "strategy.name=feature-extraction", "cv.folds=5"]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_training(data, load_config(overrides=common + [f"data.cache_dir={tmp}/a"]), out=Path(tmp) / "holdout",
                     progress=False)
        holdout = time.perf_counter() - start
        start = time.perf_counter()
        run_cv(data, load_config(overrides=common + [f"data.cache_dir={tmp}/b"]), out=Path(tmp) / "cv",
               progress=False)
        cv = time.perf_counter() - start
    report("bench_cv", f"5-fold CV {cv:.0f} s", f"hold-out run {holdout:.0f} s", cv / holdout, target=1.5,
           higher_is_better=False)


if __name__ == "__main__":
    main()
