"""`--strategy auto`: a measured choice, within a time budget, on validation evidence.

1. The prior: the classic 2x2 rule (data set size x domain similarity) on measured quantities,
   the TRAINING part's images per class and the backbone's transferability on it (LogME on the
   pooled features; normalised LEEP when the ImageNet head is at hand). It orders the candidates
   and is recorded ("the rule says ...").
2. The evidence: candidates are scored on the validation split (never the test split). Cheap
   ones (the linear probe, the head on cached features) at every input size the budget allows;
   expensive ones (fine-tuning the last blocks, all of it, gradual unfreezing) by successive
   halving at the best sizes: a short run each, the best third continue, a candidate that cannot
   catch up is dropped.
3. The choice is noise-aware: among the candidates whose paired difference from the best, on the
   same validation images, is within `strategy.auto.noise` standard errors, the cheapest wins.

`choose(job)` returns a strategy object with the concrete settings (config.yaml records them, so
a rerun repeats the final training without the search) and the record of the whole decision.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field

import numpy as np

from transferlab.config import Config, budget_seconds, merge
from transferlab.errors import ConfigError

SIZES = (96, 128, 160, 224)  # input sizes the search tries up to the backbone's own, unless --size
RUNGS = (1, 3)  # epochs of the expensive candidates' runs at each round of successive halving
MIN_FINAL_EPOCHS = 3  # an expensive candidate is tried only if its rung and this many final epochs fit the budget

# (small, similar) -> (strategy, what it means, config overrides)
QUADRANTS: dict[tuple[bool, bool], tuple[str, str, dict]] = {
    (True, True): ("feature-extraction", "feature extraction, head only", {}),
    (True, False): ("fine-tune", "feature extraction, then the last blocks (late group) train with the head",
                    {"strategy.fine_tune.train_groups": ["late", "head"],
                     "strategy.lr_mult": {"early": 0.0, "middle": 0.0, "late": 0.3, "head": 1.0}}),
    (False, True): ("fine-tune", "fine-tune everything at a low learning rate (backbone 1-10% of the head's)",
                    {"strategy.lr_mult": {"early": 0.01, "middle": 0.03, "late": 0.1, "head": 1.0}}),
    (False, False): ("fine-tune", "fine-tune everything at a higher learning rate (backbone 10-100% of the head's)",
                     {"strategy.lr_mult": {"early": 0.1, "middle": 0.3, "late": 1.0, "head": 1.0}}),
}
# the candidate each quadrant's rule stands for
PRIOR_CANDIDATE = {(True, True): "feature-extraction", (True, False): "fine-tune-late", (False, True): "fine-tune",
                   (False, False): "fine-tune"}
CHEAP = ("linear-probe", "feature-extraction")


@dataclass
class Decision:
    """What the rule chose, the measured quantities it chose from, and the config changes it makes."""

    images: int
    per_class: float
    score: float
    method: str
    threshold: float
    small: bool
    similar: bool
    strategy: str
    overrides: dict = field(default_factory=dict)
    leep: float | None = None
    logme: float | None = None

    @property
    def quadrant(self) -> str:
        return f"{'small' if self.small else 'large'} + {'similar' if self.similar else 'different'}"

    @property
    def decision(self) -> str:
        return QUADRANTS[(self.small, self.similar)][1]

    @property
    def reason(self) -> str:
        label = {"logme": "LogME", "leep": "normalised LEEP"}[self.method]
        return (f"{self.images:,} training images ({self.per_class:,.0f} per class) -> "
                f"{'small' if self.small else 'large'}; {label} {self.score:.2f} "
                f"({'>=' if self.similar else '<'} {self.threshold:g}) -> "
                f"{'similar' if self.similar else 'different'} domain: {self.decision}")

    def record(self) -> dict:
        return {"images": self.images, "per_class": self.per_class, "score": round(self.score, 6),
                "method": self.method, "threshold": self.threshold, "similar": self.similar, "small": self.small,
                "quadrant": self.quadrant, "decision": self.decision, "strategy": self.strategy,
                "settings": self.overrides, "logme": self.logme, "leep": self.leep, "reason": self.reason,
                "candidate": PRIOR_CANDIDATE[(self.small, self.similar)]}


def decide(config: Config, train_labels: np.ndarray, *, logme_score: float | None,
           leep_score: float | None = None) -> Decision:
    """The 2x2 rule on the TRAINING part's size and the backbone's measured transferability."""
    auto = config.strategy.auto
    counts = np.bincount(train_labels)
    counts = counts[counts > 0]
    per_class = float(np.median(counts)) if len(counts) else 0.0
    small = per_class < auto.small_per_class
    if auto.score == "leep":
        if leep_score is None:
            raise ConfigError("strategy.auto.score=leep needs the backbone's ImageNet classifier (the bundled "
                              "tf_efficientnet_lite0 has one); use strategy.auto.score=logme")
        score = 1.0 - leep_score / math.log(1.0 / max(2, len(counts)))
        threshold = auto.similar_leep
    else:
        score, threshold = float(logme_score), auto.similar_logme
    similar = score >= threshold
    strategy, _, overrides = QUADRANTS[(small, similar)]
    return Decision(images=int(len(train_labels)), per_class=per_class, score=float(score), method=auto.score,
                    threshold=threshold, small=small, similar=similar, strategy=strategy, overrides=dict(overrides),
                    leep=leep_score, logme=logme_score)


def measure(job) -> tuple[np.ndarray, np.ndarray, float, float | None]:
    """(features, labels, LogME, LEEP or None) of the job's training part (seeded subsample of
    at most strategy.auto.max_images)."""
    import torch

    from transferlab.models.backbone import imagenet_head
    from transferlab.transferability import leep, logme

    features = job.features()
    train = features.features["train"][: features.plain_rows].numpy()
    labels = features.labels["train"][: features.plain_rows]
    limit = job.config.strategy.auto.max_images
    if len(labels) > limit:
        keep = np.sort(np.random.default_rng(job.config.seed).choice(len(labels), limit, replace=False))
        train, labels = train[keep], labels[keep]
    head = imagenet_head(job.config.model)
    source = None
    if head is not None:
        with torch.no_grad():
            source = leep(head(torch.from_numpy(train)).softmax(dim=1).numpy(), labels)
    return train, labels, logme(train, labels), source


def nested(overrides: dict) -> dict:
    """{"a.b.c": v, ...} -> {a: {b: {c: v}}, ...}."""
    out: dict = {}
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def candidate_settings(name: str, decision: Decision) -> tuple[str, dict]:
    """(strategy, config overrides) of a search candidate; `fine-tune` takes the rule's rates for
    the domain it measured."""
    if name == "fine-tune-late":
        return "fine-tune", dict(QUADRANTS[(True, False)][2])
    if name == "fine-tune":
        return "fine-tune", dict(QUADRANTS[(False, decision.similar)][2])
    return name, {}


@dataclass
class Candidate:
    """One candidate as scored: on which validation images it was right, what it cost."""

    name: str
    size: int
    epochs: int | None = None  # of its (last) search run; None: the strategy's own
    status: str = "scored"
    accuracy: float | None = None
    se: float | None = None  # binomial standard error of the accuracy
    seconds: float = 0.0  # its search run
    final_seconds: float = 0.0  # estimated: training it in full
    correct: np.ndarray | None = None
    paired: tuple[float, float] | None = None  # (difference from the best, its standard error), same images

    @property
    def label(self) -> str:
        return f"{self.name} @ {self.size} px"

    def record(self) -> dict:
        out = {k: getattr(self, k) for k in ("name", "size", "epochs", "status", "accuracy", "se")}
        out.update(seconds=round(self.seconds, 1), final_seconds=round(self.final_seconds, 1))
        if self.paired is not None:
            out.update(behind_best=round(self.paired[0], 4), behind_best_se=round(self.paired[1], 4))
        return out


def paired_difference(best: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(accuracy of `best` minus `other`, its standard error) on the same images: only the images
    on which they disagree carry information (the McNemar view)."""
    n = len(best)
    b_only, o_only = int(np.sum(best & ~other)), int(np.sum(~best & other))
    diff = (b_only - o_only) / n
    return diff, math.sqrt(max(b_only + o_only - (b_only - o_only) ** 2 / n, 0.0)) / n


class Search:
    """The candidates tried on one job, within the deadline of its budget."""

    def __init__(self, job, decision: Decision):
        self.job, self.decision = job, decision
        self.auto = job.config.strategy.auto
        self.started = time.monotonic()
        self.val = job.dataset.labels[job.indices["val"]]
        self.jobs: dict[int, object] = {}  # size -> job on the images at that size
        self.tried: list[Candidate] = []
        self.per_image: dict[str, float] = {}  # measured seconds per image: "features" and "train" at `base`
        self.base = job.dataset.spec.size
        self.stopped = False  # a candidate got every validation image right (recorded once)

    def left(self) -> float:
        left = self.job.seconds_left()
        return math.inf if left is None else left

    def cost(self, kind: str, size: int, images: int) -> float:
        """Seconds to pass `images` through the backbone at `size` (kind: features or train),
        from what was measured (scaled by the pixel count), else a guess of 20 ms."""
        known = self.per_image.get(kind, 3 * self.per_image["features"] if "features" in self.per_image else 0.02)
        return known * images * (size / self.base) ** 2

    def job_at(self, size: int):
        if size not in self.jobs:
            self.jobs[size] = self.job.at_size(size, self.job.directory / "search")
            if size == self.base:
                self.jobs[size]._features = self.job.features()  # measured for the rule already
        return self.jobs[size]

    def final_epochs(self, name: str, size: int) -> int:
        from transferlab.strategies import get_strategy

        strategy, overrides = candidate_settings(name, self.decision)
        return get_strategy(strategy, merge(self.job_at(size).config, nested(overrides), origin="auto")
                            ).config.train.epochs

    def score(self, name: str, size: int, epochs: int | None = None) -> Candidate:
        """Fit candidate `name` at `size` (the strategy's own epochs, or `epochs`) in the search
        folder and score it on the validation split."""
        from transferlab.fit import FitJob, fit

        strategy, overrides = candidate_settings(name, self.decision)
        job = self.job_at(size)
        settings = nested(overrides) | {"train": {"report": False} | ({"epochs": epochs} if epochs else {})}
        config = merge(job.config, settings, origin=f"auto search ({name})")
        folder = job.directory / (f"{name}-{size}px" + (f"-{epochs}ep" if epochs else ""))
        started = time.monotonic()
        trial = FitJob(job.dataset, job.indices, config, folder, progress=False, deadline=self.job.deadline)
        trial.initial_backbone, trial._features = job.initial_backbone, job.features() if name in CHEAP else None
        result = fit(trial, state={}, requested=strategy)
        probs = result.probabilities("val")
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the record keeps what matters
        correct = probs.argmax(axis=1) == self.val
        accuracy = float(correct.mean())
        candidate = Candidate(name, size, epochs, accuracy=accuracy, correct=correct,
                              se=math.sqrt(accuracy * (1 - accuracy) / len(correct)),
                              seconds=time.monotonic() - started)
        images = [r for r in result.stages.values() if r.kind == "classifier"]
        if name in CHEAP or not images:
            candidate.final_seconds = candidate.seconds
        else:  # training it in full: its head stages as here, its image stage for all its epochs
            per_epoch = sum(r.seconds for r in images) / max(1, sum(r.epochs_run for r in images))
            candidate.final_seconds = (candidate.seconds - sum(r.seconds for r in images)
                                       + per_epoch * self.final_epochs(name, size))
            self.per_image["train"] = per_epoch / len(job.indices["train"]) * (self.base / size) ** 2
        self.tried.append(candidate)
        if self.job.progress:
            from transferlab.console import info

            runs = "" if not epochs else f" ({epochs} epoch{'s' if epochs > 1 else ''})"
            info(f"auto search: {candidate.label}{runs}: validation accuracy {accuracy:.3f} ± {candidate.se:.3f} "
                 f"in {candidate.seconds:.0f} s")
        return candidate

    def skip(self, candidate: Candidate, why: str) -> None:
        candidate.status = f"skipped: {why}"
        self.tried.append(candidate)
        if self.job.progress:
            from transferlab.console import info

            info(f"auto search: {candidate.label}: skipped ({why})")

    def features_at(self, size: int) -> bool:
        """Features of every image at `size`, if the budget allows them."""
        images = len(self.job.dataset)
        if self.cost("features", size, images) > self.left() / 2:
            self.skip(Candidate("every cheap candidate", size), f"its features would take half of the "
                                                                f"{max(0, self.left()):.0f} s left")
            return False
        started = time.monotonic()
        self.job_at(size).features()
        self.per_image.setdefault("features", (time.monotonic() - started) / images * (self.base / size) ** 2)
        return True

    def run(self) -> Candidate:
        names = list(self.auto.candidates)
        prior = self.decision.record()["candidate"]
        sizes = sorted(self.auto.sizes or [self.base])
        if "linear-probe" in names:  # always one score: the probe at the size the rule measured (seconds)
            self.score("linear-probe", self.base)
        for size in sizes:  # cheap candidates at every size the budget allows, smallest first
            if self.perfect():
                break
            if (size == self.base or self.features_at(size)) and self.left() > 0:
                for name in (n for n in CHEAP if n in names and (n, size) != ("linear-probe", self.base)):
                    self.score(name, size)
        cheap = [c for c in self.tried if c.accuracy is not None]
        expensive = sorted((n for n in names if n not in CHEAP), key=lambda n: n != prior)  # the rule's first
        if expensive and not self.perfect():
            best_sizes = sorted({c.size for c in cheap}, key=lambda s: (-max(c.accuracy for c in cheap if c.size == s),
                                                                         s))[:2] or sizes[:1]
            self.halve([(n, s) for s in best_sizes for n in expensive], floor=max((c.accuracy for c in cheap),
                                                                                 default=0.0))
        return self.choose()

    def perfect(self) -> bool:
        """A candidate got every validation image right: no other can be shown better, and among
        equals the cheaper wins, so the search stops (and says so)."""
        if not self.stopped and any(c.accuracy == 1.0 for c in self.tried):
            self.stopped = True
            self.skip(Candidate("the remaining candidates", self.base),
                      "a candidate already scored every validation image right")
        return self.stopped

    def halve(self, pool: list[tuple[str, int]], floor: float) -> None:
        """Successive halving: every affordable candidate runs RUNGS[0] epochs; the best third of
        those that can still catch up with the best cheap candidate runs RUNGS[1], and so on."""
        train = len(self.job.indices["train"])
        for rung, epochs in enumerate(RUNGS):
            scored = []
            for name, size in pool:
                per_epoch = self.cost("train", size, train)
                final = min(self.final_epochs(name, size), MIN_FINAL_EPOCHS)  # the final run is cut to the budget
                if per_epoch * (epochs + final) > self.left():
                    self.skip(Candidate(name, size, epochs), f"about {per_epoch:.0f} s an epoch, "
                                                             f"{max(0, self.left()):.0f} s left")
                    continue
                earlier = [c for c in self.tried if (c.name, c.size) == (name, size) and c.accuracy is not None]
                scored.append(self.score(name, size, epochs))
                for c in earlier:
                    c.status = f"superseded by its {epochs}-epoch run"
            if rung + 1 == len(RUNGS):
                return
            alive = sorted((c for c in scored if c.accuracy + 2 * c.se >= floor), key=lambda c: -c.accuracy)
            keep = alive[: max(1, len(alive) // 3)]
            for c in scored:
                if c not in keep:
                    c.status = (f"stopped after {epochs} epochs: " + ("cannot catch up" if c not in alive
                                                                       else "not in the best third"))
            pool = [(c.name, c.size) for c in keep]

    def choose(self) -> Candidate:
        final = [c for c in self.tried if c.accuracy is not None and not c.status.startswith("superseded")]
        if not final:
            raise ConfigError("auto could not score any candidate within train.budget: raise the budget, or choose "
                              "a strategy with --strategy")
        best = max(final, key=lambda c: (c.accuracy, -c.final_seconds))
        for c in final:
            c.paired = paired_difference(best.correct, c.correct)
        within = [c for c in final if c.paired[0] <= self.auto.noise * c.paired[1]]
        return min(within, key=lambda c: (c.final_seconds, c.size))


def final_strategy(job, candidate: Candidate, decision: Decision, search: Search):
    """The chosen candidate as a strategy on the job (switched to the chosen size), with the
    epochs the budget leaves for it."""
    from transferlab.strategies import get_strategy

    name, overrides = candidate_settings(candidate.name, decision)
    settings = nested(overrides) | {"preprocess": {"size": candidate.size}}
    if name == "linear-probe" and job.config.strategy.auto.refit:  # its C needs no validation split
        settings["strategy"] = settings.get("strategy", {}) | {"linear_probe": {"refit_on_val": True}}
    config = merge(job.config, settings, origin=f"auto ({candidate.label})")
    strategy = get_strategy(name, config)
    if candidate.name not in CHEAP and math.isfinite(search.left()):
        per_epoch = candidate.final_seconds / strategy.config.train.epochs
        affordable = int(search.left() // max(per_epoch, 1e-9))
        if 1 <= affordable < strategy.config.train.epochs:
            strategy = get_strategy(name, merge(config, {"train": {"epochs": affordable}}, origin="auto budget"))
    if candidate.size != job.dataset.spec.size:
        sized = search.job_at(candidate.size)
        job.config = strategy.config
        job.use(sized.dataset)
        job._features = sized._features
    return strategy


def choose(job):
    """The strategy for this job's training part, and the record of how it was chosen."""
    from transferlab.console import info
    from transferlab.strategies import get_strategy

    _, labels, logme_score, leep_score = measure(job)
    decision = decide(job.config, labels, logme_score=logme_score, leep_score=leep_score)
    record = {"prior": decision.record(), "reason": decision.reason}
    if len(job.indices["val"]) == 0 or len(job.config.strategy.auto.candidates) == 0:
        record.update(chosen=decision.record()["candidate"], evidence=None,
                      reason=decision.reason + " (no validation split to test it on: the rule decides)")
        return get_strategy(decision.strategy, merge(job.config, nested(decision.overrides), origin="auto")), record
    search = Search(job, decision)
    if job.progress:
        budget = budget_seconds(job.config)
        info(f"auto: the rule says {record['prior']['candidate']} ({decision.reason}); testing candidates on "
             f"{len(search.val):,} validation images within a budget of "
             f"{'no limit' if budget is None else f'{budget / 60:g} min'} (--budget to change)")
    winner = search.run()
    strategy = final_strategy(job, winner, decision, search)
    agreed = winner.name == record["prior"]["candidate"]
    record.update(
        chosen=winner.name, size=winner.size, agreed_with_rule=agreed,
        candidates=[c.record() for c in search.tried],
        budget={"seconds": budget_seconds(job.config), "search_seconds": round(time.monotonic() - search.started, 1),
                "final_epochs": strategy.config.train.epochs},
        validation_images=len(search.val),
        reason=(f"the rule says {record['prior']['candidate']} ({decision.reason}); on {len(search.val)} validation "
                f"images {winner.label} scored {winner.accuracy:.3f} ± {winner.se:.3f}, the cheapest within "
                f"{job.config.strategy.auto.noise:g} standard error(s) of the best"
                + ("" if agreed else ": the evidence overrules the rule")
                + (f"; refit on train + val ({len(job.indices['train']) + len(search.val):,} images)"
                   if strategy.config.strategy.linear_probe.refit_on_val else "")))
    record["refit_on_val"] = strategy.config.strategy.linear_probe.refit_on_val
    if job.progress:
        info(f"auto: {record['reason']}")
    return strategy, record
