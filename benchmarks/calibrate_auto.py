"""How the similar / different thresholds of `--strategy auto` were set.

LogME and LEEP of the bundled EfficientNet-Lite0 on data sets from near to far from ImageNet,
at two input sizes. The threshold sits between the natural-image sets and the far ones; the
printed table is the evidence (see the README).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _datasets  # noqa: E402

from transferlab.config import load_config  # noqa: E402
from transferlab.data import load_dataset  # noqa: E402
from transferlab.features import extract_features  # noqa: E402
from transferlab.models.backbone import Classifier, create_backbone, imagenet_model  # noqa: E402
from transferlab.transferability import leep, logme  # noqa: E402

SETS = (("photos", "near"), ("textures", "near"), ("faces", "near"), ("microscopy", "different"),
        ("fashion-mnist", "different"), ("digits", "different"), ("gratings", "far"))


def main() -> None:
    head = imagenet_model().get_classifier().eval()
    print(f"{'data set':<14} {'domain':<10} {'size':>5} {'images':>7} {'LogME':>8} {'LEEP':>8} {'seconds':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, domain in SETS:
            spec = _datasets.build(name, Path(tmp))
            for size in (224, 128):
                config = load_config(overrides=[f"preprocess.size={size}", "data.subset=60"])
                dataset = load_dataset(spec, config, progress=False)
                model = Classifier(create_backbone("tf_efficientnet_lite0"), len(dataset.classes), (0.5,) * 3,
                                   (0.5,) * 3).eval()
                start = time.perf_counter()
                features = extract_features(model, dataset.images, np.arange(len(dataset)), progress=False)
                import torch

                with torch.no_grad():
                    probs = head(features).softmax(dim=1).numpy()
                score, source = logme(features.numpy(), dataset.labels), leep(probs, dataset.labels)
                print(f"{name:<14} {domain:<10} {size:>5} {len(dataset):>7} {score:>8.3f} {source:>8.3f} "
                      f"{time.perf_counter() - start:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
