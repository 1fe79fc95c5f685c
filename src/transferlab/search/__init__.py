"""`--strategy auto`: the 2x2 rule as a prior, out-of-fold evidence for the cheap candidates, trials of the
expensive ones where the prior, the budget and the validation split allow, and ensemble selection over them;
`choose(ctx)` returns the concrete strategy as a `Choice`, with the record of the decision (docs/architecture.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from transferlab.config import merge, unflatten
from transferlab.console import info
from transferlab.search.ensemble import select
from transferlab.search.evidence import evidence_folds, resolvable_gain, subsample
from transferlab.search.rule import Prior, decide, measure
from transferlab.tasks import SINGLE, Task

FINAL_SHARE = 0.05  # of the budget kept for the final fit and the evaluation (beyond what they are known to need)
PRIOR_SHARE = 0.05  # of the time left that the rule's measurement may take (at 60,000: about 4,500 images, not 10,000)
# points of accuracy the plan expects from each part, by the rule's quadrant (small, similar): the cheap
# candidates at more input sizes, and training candidates; the time is divided in proportion
CHEAP_GAIN = 1.0
TRAINING_GAIN = {(True, True): 0.0, (True, False): 1.0, (False, True): 1.0, (False, False): 3.0}
MIN_EPOCHS = 3  # a training candidate given fewer than this is not worth its time
LEFTOVER = 0.2  # of the search's time: unspent, the sizes skipped for time get another chance
LARGE_EVIDENCE = 5000  # evidence images from which the probe's out-of-fold grid is cut to 3 folds and one taps


@dataclass
class Candidate:
    """One candidate as scored: on which images, how well, at what cost."""

    strategy: str
    variant: str
    size: int
    overrides: dict  # dotted config overrides that make it
    probs: np.ndarray | None = None  # predictions of the evidence rows (out of fold, or of the validation split)
    rows: str = "train+val"  # which images `probs` covers
    seconds: float = 0.0
    status: str = "scored"
    accuracy: float | None = None
    se: float | None = None
    loss: float | None = None
    spread: float | None = None  # the variance of its per-image scores (Task.scores)

    grid: dict = field(default_factory=dict)  # the overrides of its point of the strategy's search grid

    @property
    def point(self) -> str:
        """Its point of the search grid, each key by its last part: `C=0.1`."""
        return " ".join(f"{key.rsplit('.', 1)[-1]}={value:g}" for key, value in self.grid.items())

    @property
    def label(self) -> str:
        """`linear-probe C=0.1 @ 224 px`: the variant, its grid point, the size."""
        return f"{self.variant}{' ' + self.point if self.point else ''} @ {self.size} px"

    def score(self, labels: np.ndarray, task: Task = SINGLE) -> None:
        scores = task.scores(self.probs, labels)
        self.accuracy, self.loss = float(scores.mean()), task.log_loss(self.probs, labels)
        self.spread = float(scores.var())  # p(1-p) for accuracy
        self.se = math.sqrt(self.spread / len(labels))

    def record(self) -> dict:
        return {"label": self.label, "strategy": self.strategy, "variant": self.variant, "size": self.size,
                "settings": self.overrides, "rows": self.rows, "status": self.status, "accuracy": self.accuracy,
                "se": self.se, "log_loss": self.loss, "seconds": round(self.seconds, 2)}


@dataclass
class Choice:
    """What the search decided: a strategy and the config overrides that make it concrete."""

    strategy: str
    overrides: dict
    record: dict = field(default_factory=dict)


class Search:
    """The candidates tried for one fit context, within its deadline, by a plan made from measured costs."""

    def __init__(self, ctx):
        from transferlab.search.costs import Costs

        self.ctx, self.auto = ctx, ctx.config.strategy.auto
        self.started = time.monotonic()
        self.tried: list[Candidate] = []
        self.costs = Costs(ctx, sizes=list(self.auto.sizes or []) + [ctx.size])
        self.plan: list[dict] = []  # each part: what, why, its estimate and what it cost
        self.committed = 0.0  # seconds the final fit will need beyond the search (features, refits)
        self.skipped: list[int] = []  # cheap sizes skipped for time
        # the parts that ran, as (seconds, the drift of their kind while they ran): charged at the speed now
        self.prior_part: tuple[float, float] | None = None
        self.cheap_parts: list[tuple[float, float]] = []
        self.trial_parts: list[tuple[float, float]] = []
        self.refits = 0.0  # seconds the chosen trials' refits will take in the final fit (estimated)
        self.opening = math.inf  # the time left when the plan was made (after the rule's measurement)
        pool = np.concatenate([ctx.indices["train"], ctx.indices["val"]])
        self.pool, self.cut = subsample(pool, ctx.dataset.labels, self.auto.max_images, ctx.config.seed)
        self.labels = ctx.dataset.labels[self.pool]
        self.norm = (ctx.normalizer.mean, ctx.normalizer.std)

    @property
    def total(self) -> float:
        """Seconds the search and the final fit may take together (inf: no budget)."""
        return math.inf if self.ctx.deadline is None else self.ctx.deadline - self.started

    def left(self) -> float:
        """Seconds the search may still spend: the deadline's, less the final fit's share and what the
        final fit will need for the parts already chosen (features of every image, refits)."""
        left = self.ctx.seconds_left()
        return math.inf if left is None else left - FINAL_SHARE * self.total - self.committed

    def spent(self) -> float:
        return time.monotonic() - self.started

    def plan_time(self) -> float:
        """Seconds the plan divides between the cheap part and the trials: the time left after the rule's
        measurement, with what other programs took of the CPUs before the fit (run.py measures it: decoding and
        near-duplicates have no cost model) and what the measurement took beyond its cost at the machine's speed
        now given back: a load that passed changes the plan not at all, and the clock trims the trials' epochs."""
        if self.prior_part is None:
            return self.opening
        seconds, drift = self.prior_part
        taken = float((self.ctx.seconds or {}).get("taken_by_others") or 0.0)
        return self.opening + taken + seconds - self.costs.at_now("frozen", seconds, drift)

    def charged(self, kind: str, parts: list[tuple[float, float]]) -> float:
        """What the `parts` of `kind` that ran (seconds, drift while they ran) are charged: their seconds at the
        speed now."""
        return sum(self.costs.at_now(kind, seconds, drift) for seconds, drift in parts)

    def say(self, message: str) -> None:
        if self.ctx.progress:
            info(f"auto search: {message}")

    def note(self, what: str, estimate: float, started: float | None = None, status: str = "done") -> None:
        """A part of the plan: its estimate and, when it ran, what it cost."""
        self.plan.append({"part": what, "estimate_s": None if not math.isfinite(estimate) else round(estimate, 1),
                          "spent_s": None if started is None else round(time.monotonic() - started, 1),
                          "status": status})

    def prior(self) -> Prior:
        """The rule's measurement, on as many training images (up to strategy.auto.max_images) as
        PRIOR_SHARE of the time left affords at the measured cost of one image's pass."""
        train, labels = self.ctx.indices["train"], self.ctx.dataset.labels
        per_image = self.costs.frozen(self.ctx.size)
        limit = int(min(self.auto.max_images, max(PRIOR_SHARE * self.left() / per_image,
                                                  20 * len(self.ctx.dataset.classes))))
        sample, _ = subsample(train, labels, limit, self.ctx.config.seed)
        started = time.monotonic()
        features = self.ctx.features.get(sample, size=self.ctx.size, normalize=self.norm).numpy()
        self.costs.observe_passes()
        logme_score, leep_score = measure(features, self.ctx.dataset.labels[sample], self.ctx.config)
        self.prior_part = (time.monotonic() - started, self.costs.drift["frozen"])
        self.note(f"the rule's LogME on {len(sample):,} images @ {self.ctx.size} px", per_image * len(sample),
                  started)
        return decide(self.auto, self.ctx.dataset.labels[train], logme_score=logme_score, leep_score=leep_score,
                      sampled=len(sample))

    def size_cost(self, size: int) -> float:
        """Seconds a cheap size costs: its features of the evidence now (of every image later, when the
        evidence is a subsample) and its out-of-fold fits, as the sizes before it took (at the speed now)."""
        fits = [self.costs.at_now("frozen", entry["fits_s"], entry["drift"]) for entry in self.plan if "fits_s" in entry]
        images = len(self.pool) + (len(self.ctx.dataset) if self.cut else 0)
        return self.costs.frozen(size) * images + (float(np.mean(fits)) if fits else 0.0)

    def cheap(self, sizes: list[int], strategies: dict[str, type], share) -> None:
        """Every point of the search grid of each strategy that scores out of fold (the probe's Cs, with
        and without multi-stage features), at each size the seconds `share()` affords, largest first; the sizes
        skipped for time are kept in `self.skipped` for another chance. When none fits, the smallest is
        searched anyway: better a run a little over its budget than no model."""
        self.skipped, since = [], len(self.cheap_parts)
        for size in sorted(sizes, reverse=True):
            estimate = self.size_cost(size)
            # the share is spent in what the sizes scored cost at the machine's speed now, not by the clock: a load
            # while they were scored does not change which are (the features of every image must still fit in
            # half of the time left)
            if estimate > share() - self.charged("frozen", self.cheap_parts[since:]) or estimate > self.left() / 2:
                self.skipped.append(size)
                self.note(f"cheap candidates @ {size} px", estimate, status="skipped for time")
                continue
            self.score_size(size, strategies, estimate)
        if not any(c.accuracy is not None for c in self.tried) and self.skipped:
            smallest = min(self.skipped)
            self.skipped.remove(smallest)
            self.plan = [p for p in self.plan if p["part"] != f"cheap candidates @ {smallest} px"]
            estimate = self.size_cost(smallest)
            self.say(f"{smallest} px: about {estimate:.0f} s, more than the plan gives; searched anyway, the "
                     "smallest size")
            self.score_size(smallest, strategies, estimate)
        for size in self.skipped:
            estimate = self.size_cost(size)
            self.tried += [Candidate(name, name, size, {}, status=f"skipped: about {estimate:.0f} s (measured "
                                     f"{1000 * self.costs.frozen(size):.2f} ms an image on "
                                     f"{self.costs.engine.get(size, 'torch')}), more than the plan gives")
                           for name in strategies]

    def score_size(self, size: int, strategies: dict[str, type], estimate: float) -> None:
        """The out-of-fold grid of every cheap strategy at `size`, on the evidence images."""
        started = time.monotonic()
        if self.cut:  # the final fit's pass over every image, if a member of this size is chosen
            self.committed += self.costs.frozen(size) * len(self.ctx.dataset)
        taps_grid = sorted({t for t in self.auto.taps if t <= self.ctx.features.stages()} | {0})
        if len(self.pool) >= LARGE_EVIDENCE:  # the richest features only: each fit of a large evidence costs
            taps_grid = taps_grid[-1:]
        x = self.ctx.features.get(self.pool, size=size, normalize=self.norm, taps=max(taps_grid))
        features_s = time.monotonic() - started
        self.costs.observe_passes()
        drift = self.costs.drift["frozen"]  # the machine's speed while this size was scored
        folds = evidence_folds(self.labels, self.ctx.dataset.groups[self.pool], self.ctx.config.seed,
                               k=3 if len(self.pool) >= LARGE_EVIDENCE else 5)
        balanced = self.ctx.config.train.imbalance in ("weights", "sampler")
        for name, cls in strategies.items():
            for taps in taps_grid:
                begun = time.monotonic()
                grid = cls.out_of_fold(x[:, -self.ctx.features.width(taps):], self.labels,
                                       len(self.ctx.dataset.classes), folds, balanced=balanced,
                                       deadline=self.ctx.deadline, task=self.ctx.dataset.task)
                for overrides, oof in grid:
                    point = ({"model.taps": taps} if taps else {}) | overrides
                    candidate = Candidate(name, name, size, point, grid=point,
                                          seconds=(time.monotonic() - begun) / len(grid))
                    if np.isnan(oof).any():
                        candidate.status = "skipped: the deadline cut its out-of-fold fits"
                    else:
                        candidate.probs = oof
                        candidate.score(self.labels, self.ctx.dataset.task)
                    self.tried.append(candidate)
            best = max((c for c in self.tried if c.size == size and c.strategy == name and c.accuracy is not None),
                       key=lambda c: (c.accuracy, -c.loss), default=None)
            if best:
                self.say(f"{name} @ {size} px: best out-of-fold {self.ctx.dataset.task.score_name} {best.accuracy:.3f} ± {best.se:.3f}"
                         f"{f' ({best.point})' if best.point else ''} on {len(self.pool):,} images, "
                         f"{time.monotonic() - started:.0f} s")
        self.note(f"cheap candidates @ {size} px", estimate, started)
        self.plan[-1] |= {"fits_s": round(time.monotonic() - started - features_s, 2), "drift": round(drift, 3)}
        self.cheap_parts.append((time.monotonic() - started, drift))

    def training_candidates(self, prior: Prior) -> list[tuple[str, str, dict]]:
        """(variant, strategy, overrides) of the registry's candidates that train, as the rule offers them."""
        from transferlab.strategies import load_all, variants

        classes = load_all()
        offered = variants(prior.similar, prior.small)
        names = [n for n, (s, _) in offered.items() if n in self.auto.candidates and not classes[s].cheap]
        return [(n, *offered[n]) for n in sorted(names, key=lambda n: n != prior.candidate)]

    def expensive(self, prior: Prior, share: float) -> None:
        """The candidates that train (the backbone, or a network from scratch), cheapest first, each at the
        largest size where its epochs fit `share` (measured on its own training steps), on evidence that can tell
        (trials.py). The plan is made from the measured costs and the share alone, and made again after each
        trial from what that trial showed of the machine's speed (the drift): a slow minute while the steps
        were timed costs the plan nothing once a trial runs at the speed the machine has; the clock only trims
        it below (run_next)."""
        val, spread = self.ctx.indices["val"], self.best_cheap_spread()
        rival = any(c.accuracy is not None for c in self.tried)  # no cheap score: a trial is the only model
        cross = rival and resolvable_gain(spread, len(val)) > self.auto.resolvable  # val cannot tell
        offered = self.training_candidates(prior)
        if cross and resolvable_gain(spread, len(self.pool)) > self.auto.resolvable:
            score = self.ctx.dataset.task.score_name
            why = (f"neither the {len(val)} validation images nor the {len(self.pool)} evidence images (cross-fitted) "
                   f"can tell a gain below {resolvable_gain(spread, len(self.pool)):.1%} ({score}) from noise (two standard "
                   f"errors of a paired difference; strategy.auto.resolvable={self.auto.resolvable:g})")
            for name, strategy, overrides in offered:
                self.tried.append(Candidate(strategy, name, self.train_sizes()[-1], dict(overrides),
                                            status=f"skipped: {why}"))
            self.say(f"training candidates skipped: {why}")
            return
        if not prior.fine_tuning_worth_trying:
            for name, strategy, overrides in offered:
                size = self.ctx.dataset.spec.size if overrides.get("model.pretrained") is False else self.train_sizes()[-1]
                self.tried.append(Candidate(strategy, name, size, dict(overrides), status="skipped: the rule says "
                                            "training does not pay on a small set of a similar domain"))
            return
        # images trained in one epoch of the trial (all folds), and of its member's refit on the evidence
        images, refit = self.epoch_images(cross), len(self.pool) if cross else 0
        remaining = list(offered)
        while remaining:
            options = [self.option(name, strategy, overrides, images, refit, cross, share)
                       for name, strategy, overrides in remaining]
            room = share - self.refits - self.charged("training", self.trial_parts)
            planned, short = self.allot(options, room)
            if not planned:
                for option, epochs in short:
                    self.skip_for_time(option[2], epochs, option[0] + option[1], room, option[3].config.train.epochs)
                return
            done = self.run_next(planned, cross)
            remaining = [c for c in remaining if c[0] not in done]

    def option(self, name: str, strategy: str, overrides: dict, images: int, refit: int, cross: bool,
               share: float) -> tuple:
        """(seconds an epoch of its trial, of its refit, the candidate, its strategy) of the training candidate
        `name` at the largest size whose epochs fit `share` at the measured costs now (the smallest when none
        does)."""
        from transferlab.search.trials import PREDICTING
        from transferlab.strategies import get_strategy

        scratch = overrides.get("model.pretrained") is False
        for size in sorted([self.ctx.dataset.spec.size] if scratch else self.train_sizes(), reverse=True):
            candidate = Candidate(strategy, name, size, dict(overrides), rows="train+val" if cross else "val")
            trial = get_strategy(strategy, merge(self.ctx.config, unflatten(overrides | {"model.size": size}),
                                                 origin=f"auto ({name})"))
            per_image = self.costs.training(candidate.label, self.ctx.replace(config=trial.config), trial)
            option = (per_image * images * PREDICTING, per_image * refit, candidate, trial)
            if (option[0] + option[1]) * trial.config.train.epochs <= share:
                break  # the largest size whose epochs fit
        return option

    @staticmethod
    def allot(options: list, room: float) -> tuple[list, list]:
        """The options that run, cheapest first, each given the epochs `room` has left for it (up to its own), and
        those that would get fewer than MIN_EPOCHS, each with the epochs it would get."""
        planned, short = [], []
        for option in sorted(options, key=lambda o: (o[0] + o[1]) * o[3].config.train.epochs):
            per_epoch, refit_epoch, _, trial = option
            wanted = trial.config.train.epochs
            epochs = wanted if math.isinf(room) else min(wanted, int(max(0.0, room) // max(per_epoch + refit_epoch,
                                                                                            1e-9)))
            if epochs < min(MIN_EPOCHS, wanted):
                short.append((option, epochs))
                continue
            planned.append((option, epochs))
            room -= (per_epoch + refit_epoch) * epochs
        return planned, short

    def skip_for_time(self, candidate: Candidate, epochs: int, per_epoch: float, room: float, wanted: int) -> None:
        """Record a training candidate left out for time, with the epochs that would have fit in `room`."""
        candidate.status = (f"skipped: {epochs} epoch(s) fit ({per_epoch:.0f} s an epoch, measured; "
                            f"{max(0.0, room):.0f} s of the plan left)")
        self.tried.append(candidate)
        self.note(candidate.label, per_epoch * wanted, status="skipped for time")
        self.say(f"{candidate.label}: {candidate.status}")

    @staticmethod
    def trimmed(queue: list, left: float) -> list[int]:
        """Each queued (option, epochs)'s epochs when `left` seconds are shared in proportion to planned cost."""
        later = sum((o[0] + o[1]) * e for o, e in queue)
        if math.isinf(left) or left >= later:
            return [e for _, e in queue]
        return [min(e, int(max(0.0, left) * e / max(later, 1e-9))) for _, e in queue]

    def run_next(self, planned: list, cross: bool) -> set[str]:
        """Run the first of the planned trials; the variants it ran or dropped. Where the clock has less time left
        than the plan (a loaded machine, a cost under-measured), the planned trials give up epochs in proportion to
        their planned cost; when that would leave one with fewer than MIN_EPOCHS, the last planned is skipped for
        time instead, and its time goes to those before it rather than unspent. A load that passes trims epochs,
        and changes which candidates run only where their minimum no longer fits."""
        from transferlab.search.trials import PREDICTING, run_trial

        def least(option) -> int:
            return min(MIN_EPOCHS, option[3].config.train.epochs)

        queue, done = list(planned), set()
        left = self.left()
        shares = self.trimmed(queue, left)
        while len(queue) > 1 and any(t < least(o) for t, (o, _) in zip(shares, queue)):
            (per_epoch, refit_epoch, dropped, trial), _ = queue.pop()
            self.skip_for_time(dropped, shares[-1], per_epoch + refit_epoch, left, trial.config.train.epochs)
            done.add(dropped.variant)
            shares = self.trimmed(queue, left)
        (option, _), epochs = queue[0], shares[0]
        per_epoch, refit_epoch, candidate, trial = option
        done.add(candidate.variant)
        if epochs < least(option):
            self.skip_for_time(candidate, epochs, per_epoch + refit_epoch, left, trial.config.train.epochs)
            return done
        candidate.overrides["train.epochs"] = epochs
        if cross:
            candidate.overrides["train.refit_on_val"] = True  # its member: the same epochs on train + val
            self.committed += refit_epoch * epochs
            self.refits += refit_epoch * epochs  # the plan's too: the final fit pays it
        begun = time.monotonic()
        run_trial(self, candidate, trial, cross)
        seconds = time.monotonic() - begun
        # what the machine showed: the trial against its measured cost (its set-up and predictions included)
        self.costs.observe("training", f"{candidate.label} ({epochs} epochs)",
                           self.costs.training_s[candidate.label] * PREDICTING, seconds, self.epoch_images(cross) * epochs)
        self.trial_parts.append((seconds, self.costs.drift["training"]))
        self.note(f"{candidate.label} ({epochs} epochs, {'cross-fitted' if cross else 'on the validation split'})",
                  per_epoch * epochs, begun)
        return done

    def epoch_images(self, cross: bool) -> int:
        """Images trained in one epoch of a trial: every fold's (K - 1 folds each), or the training part's."""
        from transferlab.search.trials import CROSS_FOLDS

        return len(self.pool) * (CROSS_FOLDS - 1) if cross else len(self.ctx.indices["train"])

    def trial(self, candidate: Candidate, trial, val: np.ndarray) -> None:
        """Fit an expensive candidate on the training part and score it on the validation split `val`."""
        from transferlab.search.trials import run_trial

        run_trial(self, candidate, trial, cross=False)

    def train_sizes(self) -> list[int]:
        """Where a pretrained backbone is fine-tuned: the sizes of the grid from 64 px (below, its last stages
        see a pixel or two), or the grid's largest when all are smaller."""
        sizes = sorted(self.auto.sizes or [self.ctx.size])
        return [s for s in sizes if s >= 64] or sizes[-1:]

    def best_cheap_spread(self) -> float:
        """The variance of the per-image scores of the best cheap candidate (0.25 before any is scored)."""
        best = max((c for c in self.tried if c.accuracy is not None), key=lambda c: c.accuracy, default=None)
        return 0.25 if best is None else best.spread

    def selection(self) -> tuple[list[tuple[Candidate, float]], dict]:
        """Ensemble selection over the scored candidates, on the images every one of them predicted."""
        scored = [c for c in self.tried if c.probs is not None]
        if not scored:
            from transferlab.errors import ConfigError

            raise ConfigError("auto could not score any candidate within train.budget: raise the budget, or "
                              "choose a strategy with --strategy")
        on_val = any(c.rows == "val" for c in scored)
        val = self.ctx.indices["val"]
        # on a validation trial: the validation images the evidence holds too (a subsample of a large set's
        # train + val holds only some), the only ones every candidate predicted
        shared = np.isin(val, self.pool) if on_val else None
        if on_val and not shared.any():  # no validation image in the evidence: the validation trials alone
            scored, shared = [c for c in scored if c.rows == "val"], np.ones(len(val), bool)
        rows = val[shared] if on_val else self.pool
        labels = self.ctx.dataset.labels[rows]
        where = {p: k for k, p in enumerate(self.pool)}
        order = [where[i] for i in rows] if on_val else None
        library = [c.probs[shared] if c.rows == "val" else c.probs[order] if on_val else c.probs for c in scored]
        weights, history = select(library, labels, loss=self.ctx.dataset.task.log_loss)
        chosen = [(c, float(w)) for c, w in zip(scored, weights) if w > 0]
        mixed = sum(w * p for w, p in zip(weights, library))
        self.mixed = (mixed, labels)  # the ensemble's predictions of the images it was chosen on
        self.mixed_rows = rows
        return chosen, {"images": int(len(rows)), "on": "validation split" if on_val else "out of fold",
                        "accuracy": float(self.ctx.dataset.task.scores(mixed, labels).mean()),
                        "log_loss": history[-1],
                        "rounds": len(history)}


HELD_OUT = "held_out.npz"  # the chosen ensemble's held-out predictions (rows, raw probabilities), in the run folder


def sizes_near(side: int, largest: int) -> list[int]:
    """Input sizes near images stored at `side` pixels, below the model's `largest`: about 1, 1.5, 2 and 3
    times their own side, in multiples of 16 from 32 (28 px images: 32, 48, 64, 96). A backbone pass costs
    about (size / 224)^2 of one at 224, so these are where fine-tuning a large set of small images is cheap."""
    near = {max(32, 16 * math.ceil(side * k / 16)) for k in (1, 1.5, 2, 3)}
    return sorted(size for size in near if size < largest)


def rounded(weights: list[float], digits: int = 4) -> list[float]:
    """`weights` rounded to `digits`, still summing to 1 (the largest takes the remainder)."""
    out = [round(w, digits) for w in weights]
    top = int(np.argmax(out))
    out[top] = round(1.0 - sum(out) + out[top], digits)
    return out


def choose(ctx) -> Choice:
    """The concrete strategy for this fit context, and the record of how it was chosen."""
    from transferlab.strategies import load_all

    search = Search(ctx)
    prior = search.prior()
    budget = "no limit" if ctx.deadline is None else f"{search.total / 60:.1f} min"
    search.say(f"the rule says {prior.candidate} ({prior.reason}); scoring candidates on {len(search.pool):,} "
               f"images{' (a stratified subsample)' if search.cut else ''} within {budget} (--budget to change)")
    registry = load_all()
    sizes = sorted(ctx.config.strategy.auto.sizes or [ctx.size])
    scorable = {name: cls for name, cls in registry.items() if name in ctx.config.strategy.auto.candidates
                and cls.scores_out_of_fold()}
    training = TRAINING_GAIN[(prior.small, prior.similar)] if search.training_candidates(prior) else 0.0
    shares = {"cheap": CHEAP_GAIN / (CHEAP_GAIN + training), "training": training / (CHEAP_GAIN + training)}
    # the plan's time, divided once: the training part gets what the cheap part left of it (at least its own
    # share), each part that ran charged at the machine's speed now, so a load that slowed them down and passed
    # changes neither which sizes are scored nor which trials run; one that lasts trims the trials' epochs
    search.opening = search.left()
    if scorable:
        search.cheap(sizes, scorable, lambda: shares["cheap"] * search.plan_time())
    planned = search.plan_time()
    search.expensive(prior, max(planned - search.charged("frozen", search.cheap_parts), shares["training"] * planned))
    if scorable and search.skipped and search.left() > LEFTOVER * min(search.total, 1e12):
        search.say(f"{search.left():.0f} s of the plan unspent: the sizes skipped for time get another chance")
        search.tried = [c for c in search.tried if not (c.strategy in scorable and c.size in search.skipped
                                                        and c.status.startswith("skipped"))]
        search.cheap(search.skipped, scorable, search.left)
    chosen, ensemble = search.selection()
    refit = ctx.config.strategy.auto.refit
    weights = rounded([w for _, w in chosen])
    members = [{"strategy": c.strategy, "size": c.size, "weight": w,
                "settings": c.overrides | (registry[c.strategy].refit if refit else {})} for (c, _), w in
               zip(chosen, weights)]
    best = max((c for c in search.tried if c.accuracy is not None), key=lambda c: (c.accuracy, -c.loss))
    evidence = (f"ensemble selection on the {ensemble['on']} predictions of {ensemble['images']:,} images chose "
                + ", ".join(f"{c.label} ({w:.2f})" for c, w in chosen)
                + f"; the best single candidate was {best.label} ({best.accuracy:.3f} ± {best.se:.3f})")
    search.say(evidence)
    reason = f"the rule says {prior.candidate} ({prior.reason}); {evidence}"
    # the calibration's temperature, then what the decision needs (a multi-label task's thresholds, on the
    # calibrated probabilities), from the same held-out predictions; the final fit chooses again on its
    # validation split when it has one
    on = f"{ensemble['on']} predictions of the chosen ensemble"
    from transferlab.io import atomic_write

    atomic_write(ctx.directory / HELD_OUT, lambda handle: np.savez(handle, rows=search.mixed_rows,
                                                                   probs=search.mixed[0]))  # the audit reads them
    calibration = ctx.dataset.task.fit_temperature(*search.mixed, on)
    settled = ctx.dataset.task.settle(ctx.dataset.task.calibrate(search.mixed[0]), search.mixed[1], on)
    record = {"prior": prior.record(), "candidates": [c.record() for c in search.tried], "members": members,
              "ensemble": ensemble | {"note": "selection score: the ensemble was chosen on these images, so it is "
                                              "optimistic; the test split estimates it"},
              "evidence": {"images": len(search.pool), "subsampled": search.cut, "folds": "stratified, grouped"},
              "best_single": best.record(), "chosen": [c.label for c, _ in chosen], "reason": reason,
              "budget": {"seconds": None if ctx.deadline is None else round(search.total, 1),
                         "search_seconds": round(search.spent(), 1),
                         "shares": {k: round(v, 3) for k, v in shares.items()},
                         "expected_gain": {"cheap": CHEAP_GAIN, "training": training},
                         "committed_to_final_fit_s": round(search.committed, 1),
                         "plan_seconds": round(planned, 1) if math.isfinite(planned) else None,
                         "charged_s": {"cheap": round(search.charged("frozen", search.cheap_parts), 1),
                                       "training": round(search.charged("training", search.trial_parts), 1)}},
              "plan": search.plan, "costs": search.costs.record(), "task": settled,
              "calibration": calibration,
              "inference_ms": {str(s): round(1000 * f, 2) for s, f in search.costs.frozen_s.items()}}
    # the temperature goes in the config (config.yaml), so that rerunning it answers with the same probabilities
    return Choice("ensemble", {"strategy.ensemble.members": members, "task.temperature": calibration["temperature"]},
                  record)
