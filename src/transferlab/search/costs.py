"""What the search's plan costs, measured on the engine and device that run each part, and corrected from
the parts that ran (ARCHITECTURE.md: costs are measured, not assumed).

- A frozen pass at a size: FeatureStore.time_passes, the median of several timed batches after a warm-up on
  the engine the pass itself runs on (onnxruntime or OpenVINO where they pay, as the passes do), every size
  of the plan's grid in the same rounds: the machine's state then weighs on all of them alike.
- A training image of a candidate: fit.training_seconds, the median of an epoch's first optimizer steps
  of its own module on its device.
- The machine now: every pass that ran (the feature store keeps its throughput) and every trial says how
  much slower or faster than timed the machine is (`drift`: the median ratio of the latest RECENT parts of
  its kind, since each size's timing has an error of its own that one pass cannot tell from the machine's
  speed; a trial is its own, as few run); later estimates are scaled by it. A stall during a timing moves
  a median of five batches not at all; a load that lasts is seen by the passes that run under it, and
  undone by the ones after it.
- What a part that ran is charged against the plan: what it took, at the machine's speed now (`at_now`: its
  seconds times the drift now over the drift while it ran). A minute of another program's load costs the
  plan nothing once the machine is quiet again; a load that stays is charged in full.
"""

from __future__ import annotations

import numpy as np

DRIFT_RANGE = (0.25, 4.0)  # how far one pass may move the estimates
RECENT = 3  # the passes whose median ratio is the frozen drift


class Costs:
    """Seconds per image of each part the search may pay for, as measured; `drift` scales them to now."""

    def __init__(self, ctx, sizes: list[int] | None = None):
        self.ctx, self.sizes = ctx, sorted(set(sizes or []))  # the grid timed together at the first look
        self.frozen_s: dict[int, float] = {}  # size -> seconds per image of the frozen pass, as timed
        self.engine: dict[int, str] = {}
        self.training_s: dict[str, float] = {}  # a candidate's label -> seconds per training image, as timed
        self.drift = {"frozen": 1.0, "training": 1.0}  # observed / timed of the latest parts of each kind
        self.frozen_ratios: list[float] = []  # observed / timed of every frozen pass, in order
        self.seen = 0  # feature-store passes already read
        self.history: list[dict] = []

    def frozen(self, size: int) -> float:
        """Seconds per image of the frozen pass at `size` over every image, now."""
        self.observe_passes()
        if size not in self.frozen_s:
            norm = (self.ctx.normalizer.mean, self.ctx.normalizer.std)
            sizes = sorted({size} | set(self.sizes) - set(self.frozen_s))
            for timed, (seconds, engine) in self.ctx.features.time_passes(sizes, norm,
                                                                          images=len(self.ctx.dataset)).items():
                self.frozen_s[timed], self.engine[timed] = seconds, engine
        return self.frozen_s[size] * self.drift["frozen"]

    def training(self, label: str, ctx, strategy) -> float:
        """Seconds per training image of `strategy` (the candidate `label`) in the fit context `ctx`, now."""
        if label not in self.training_s:
            from transferlab.fit import training_seconds

            self.training_s[label] = training_seconds(ctx, strategy)
        return self.training_s[label] * self.drift["training"]

    def observe(self, kind: str, what: str, timed_per_image: float, seconds: float, images: int) -> None:
        """A part of `kind` (frozen, training) that ran (`images` in `seconds`) against its timing: the drift
        of that kind from then (a trial's time holds its set-up, warm-up and predictions too, so the first one
        also corrects for those)."""
        if images <= 0 or timed_per_image <= 0:
            return
        ratio = float(np.clip(seconds / images / timed_per_image, *DRIFT_RANGE))
        if kind == "frozen":
            self.frozen_ratios.append(ratio)
        self.drift[kind] = float(np.median(self.frozen_ratios[-RECENT:])) if kind == "frozen" else ratio
        self.history.append({"kind": kind, "what": what, "images": int(images), "seconds": round(seconds, 2),
                             "timed_ms_per_image": round(1000 * timed_per_image, 3), "drift": round(ratio, 3)})

    def at_now(self, kind: str, seconds: float, drift_then: float) -> float:
        """`seconds` a part of `kind` took while the drift was `drift_then`, at the machine's speed now."""
        return seconds * self.drift[kind] / max(drift_then, 1e-9)

    def observe_passes(self) -> None:
        """The feature store's passes since the last look, at the sizes that were timed."""
        passes = self.ctx.features.passes
        for run in passes[self.seen:]:
            if run["view"] is None and run["size"] in self.frozen_s and run["images"] >= 64:
                self.observe("frozen", f"features @ {run['size']} px ({run['engine']})", self.frozen_s[run["size"]],
                             run["seconds"], run["images"])
        self.seen = len(passes)

    def record(self) -> dict:
        """What was timed, on what, and how the runs corrected it (the decision's `costs`)."""
        return {"frozen_ms_per_image": {str(s): {"ms": round(1000 * v, 3), "engine": self.engine[s]}
                                        for s, v in sorted(self.frozen_s.items())},
                "training_ms_per_image": {k: round(1000 * v, 3) for k, v in self.training_s.items()},
                "timed": "median of 5 batches of 8 images after a warm-up batch, on the engine of the pass; training: "
                         "median of 4 optimizer steps after a warm-up step",
                "drift": {k: round(v, 3) for k, v in self.drift.items()}, "corrections": self.history}
