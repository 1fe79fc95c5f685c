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
from transferlab.metrics import log_loss
from transferlab.search.ensemble import select
from transferlab.search.rule import Prior, decide, measure

FINAL_SHARE = 0.1  # of the budget kept for the final fit and the evaluation
PRIOR_SHARE = 0.15  # of the time left that the rule's measurement may take


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

    grid: dict = field(default_factory=dict)  # the overrides of its point of the strategy's search grid

    @property
    def point(self) -> str:
        """Its point of the search grid, each key by its last part: `C=0.1`."""
        return " ".join(f"{key.rsplit('.', 1)[-1]}={value:g}" for key, value in self.grid.items())

    @property
    def label(self) -> str:
        """`linear-probe C=0.1 @ 224 px`: the variant, its grid point, the size."""
        return f"{self.variant}{' ' + self.point if self.point else ''} @ {self.size} px"

    def score(self, labels: np.ndarray) -> None:
        correct = self.probs.argmax(axis=1) == labels
        self.accuracy, self.loss = float(correct.mean()), log_loss(self.probs, labels)
        self.se = math.sqrt(self.accuracy * (1 - self.accuracy) / len(labels))

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
    """The candidates tried for one fit context, within its deadline."""

    def __init__(self, ctx):
        self.ctx, self.auto = ctx, ctx.config.strategy.auto
        self.started = time.monotonic()
        self.tried: list[Candidate] = []
        self.forward: dict[int, float] = {}  # seconds of one image's backbone pass, by size
        self.committed = 0.0  # seconds the final fit will need for the features of the searched sizes
        pool = np.concatenate([ctx.indices["train"], ctx.indices["val"]])
        self.pool, self.cut = subsample(pool, ctx.dataset.labels, self.auto.max_images, ctx.config.seed)
        self.labels = ctx.dataset.labels[self.pool]
        self.norm = (ctx.normalizer.mean, ctx.normalizer.std)

    def left(self) -> float:
        """Seconds the search may still spend: the deadline's, less the final fit's share and the
        feature passes over the images outside the evidence that the sizes already searched will need."""
        left = self.ctx.seconds_left()
        return math.inf if left is None else left - FINAL_SHARE * (self.ctx.deadline - self.started) - self.committed

    def say(self, message: str) -> None:
        if self.ctx.progress:
            info(f"auto search: {message}")

    def features(self, size: int, rows: np.ndarray):
        self.forward.setdefault(size, self.ctx.features.seconds_per_image(size))
        return self.ctx.features.get(rows, size=size, normalize=self.norm)

    def prior(self) -> Prior:
        """The rule's measurement, on as many training images (up to strategy.auto.max_images) as
        PRIOR_SHARE of the time left affords at the measured cost of one image's pass."""
        train, labels = self.ctx.indices["train"], self.ctx.dataset.labels
        affordable = PRIOR_SHARE * self.left() / self.ctx.features.seconds_per_image(self.ctx.size)
        limit = int(min(self.auto.max_images, max(affordable, 20 * len(self.ctx.dataset.classes))))
        sample, _ = subsample(train, labels, limit, self.ctx.config.seed)
        features = self.features(self.ctx.size, sample).numpy()
        logme_score, leep_score = measure(features, self.ctx.dataset.labels[sample], self.ctx.config)
        return decide(self.auto, self.ctx.dataset.labels[train], logme_score=logme_score, leep_score=leep_score,
                      sampled=len(sample))

    def cheap(self, sizes: list[int], strategies: dict[str, type]) -> None:
        """Every point of the search grid of each strategy that scores out of fold (the probe's Cs), at
        every size the budget allows, out of fold (largest size first)."""
        folds = evidence_folds(self.labels, self.ctx.dataset.groups[self.pool], self.ctx.config.seed)
        balanced = self.ctx.config.train.imbalance in ("weights", "sampler")
        for size in sorted(sizes, reverse=True):
            per_image = self.ctx.features.seconds_per_image(size)
            cost = per_image * len(self.ctx.dataset)  # features of every image: the evidence now, the final fit later
            if cost > self.left() / 2:
                if size != min(sizes) or any(c.accuracy is not None for c in self.tried):
                    self.tried += [Candidate(name, name, size, {}, status="skipped: its features would take half "
                                             f"of the {max(0, self.left()):.0f} s left") for name in strategies]
                    continue
                # better a run a little over its budget than no model at all
                self.say(f"{size} px: its features for every image take about {cost:.0f} s, more than half of the "
                         f"{max(0, self.left()):.0f} s left; searched anyway, as the smallest size")
            self.committed += per_image * (len(self.ctx.dataset) - len(self.pool))
            started = time.monotonic()
            x = self.features(size, self.pool)
            for name, cls in strategies.items():
                grid = cls.out_of_fold(x, self.labels, len(self.ctx.dataset.classes), folds, balanced=balanced,
                                       deadline=self.ctx.deadline)
                for overrides, oof in grid:
                    candidate = Candidate(name, name, size, dict(overrides), grid=dict(overrides),
                                          seconds=(time.monotonic() - started) / len(grid))
                    if np.isnan(oof).any():
                        candidate.status = "skipped: the deadline cut its out-of-fold fits"
                    else:
                        candidate.probs = oof
                        candidate.score(self.labels)
                    self.tried.append(candidate)
                best = max((c for c in self.tried if c.size == size and c.strategy == name and c.accuracy is not None),
                           key=lambda c: (c.accuracy, -c.loss), default=None)
                if best:
                    self.say(f"{name} @ {size} px: best out-of-fold accuracy {best.accuracy:.3f} ± {best.se:.3f}"
                             f"{f' ({best.point})' if best.point else ''} on {len(self.pool):,} images, "
                             f"{time.monotonic() - started:.0f} s")

    def expensive(self, prior: Prior) -> None:
        """Registry variants that train the backbone, when the prior, the budget and the validation
        split allow; each trial is kept as a possible member."""
        from transferlab.strategies import get_strategy, load_all, variants

        val = self.ctx.indices["val"]
        classes = load_all()
        names = [n for n, (s, _) in variants(prior.similar).items() if n in self.auto.candidates
                 and not classes[s].cheap]
        if not names:
            return
        resolvable = resolvable_gain(self.best_cheap_accuracy(), len(val))
        fallback = any(c.accuracy is not None for c in self.tried)  # the gates apply when a cheap candidate stands
        why = ("no validation split" if len(val) == 0 else None if not fallback else
               "the rule says fine-tuning does not pay on a small set of a similar domain"
               if not prior.fine_tuning_worth_trying else
               f"{len(val)} validation images cannot tell a gain below {resolvable:.1%} from noise (two "
               f"standard errors of a paired difference; strategy.auto.resolvable={self.auto.resolvable:g})"
               if resolvable > self.auto.resolvable else None)
        size = min(self.best_size(), max(self.forward))
        for name in sorted(names, key=lambda n: n != prior.candidate):
            strategy, overrides = variants(prior.similar)[name]
            candidate = Candidate(strategy, name, size, dict(overrides), rows="val")
            trial = get_strategy(strategy, merge(self.ctx.config, unflatten(overrides | {"model.size": size}),
                                                 origin=f"auto ({name})"))
            per_epoch = trial.train_seconds(len(self.ctx.indices["train"]), self.forward[size]) / max(
                1, trial.config.train.epochs)
            epochs = min(trial.config.train.epochs, int(self.left() // max(per_epoch, 1e-9)))
            if why or epochs < 1:
                candidate.status = f"skipped: {why or f'about {per_epoch:.0f} s an epoch, {self.left():.0f} s left'}"
                self.tried.append(candidate)
                self.say(f"{candidate.label}: {candidate.status}")
                continue
            candidate.overrides["train.epochs"] = epochs
            self.trial(candidate, trial, val)

    def trial(self, candidate: Candidate, trial, val: np.ndarray) -> None:
        """Fit an expensive candidate on the training part, in the folder its ensemble member uses."""
        from transferlab.fit import fit
        from transferlab.rundir import STATE_FILE, RunDir, RunState
        from transferlab.strategies import get_strategy
        from transferlab.strategies.ensemble import member_folder

        started = time.monotonic()
        config = merge(trial.config, unflatten(candidate.overrides), origin=f"auto ({candidate.variant})")
        folder = self.ctx.directory / "members" / member_folder(candidate.strategy, candidate.size,
                                                                candidate.overrides)
        # the trial stops where the search's time does: the final fit's share and the features it needs stay free
        deadline = None if self.ctx.deadline is None else time.monotonic() + max(0.0, self.left())
        # a search run again on resume reads back the stages this folder's state says are finished
        result = fit(self.ctx.replace(directory=folder, deadline=deadline), get_strategy(candidate.strategy, config),
                     RunDir(folder, RunState.load_or(folder / STATE_FILE, kind="member")))
        candidate.probs, candidate.seconds = result.probabilities(result.ctx, "val"), time.monotonic() - started
        candidate.score(self.ctx.dataset.labels[val])
        self.tried.append(candidate)
        self.say(f"{candidate.label} ({candidate.overrides['train.epochs']} epochs): validation accuracy "
                 f"{candidate.accuracy:.3f} ± {candidate.se:.3f} in {candidate.seconds:.0f} s")

    def best_cheap_accuracy(self) -> float:
        return max((c.accuracy for c in self.tried if c.accuracy is not None), default=0.5)

    def best_size(self) -> int:
        scored = [c for c in self.tried if c.accuracy is not None]
        return max(scored, key=lambda c: (c.accuracy, -c.size)).size if scored else max(self.forward)

    def selection(self) -> tuple[list[tuple[Candidate, float]], dict]:
        """Ensemble selection over the scored candidates, on the images every one of them predicted."""
        scored = [c for c in self.tried if c.probs is not None]
        if not scored:
            from transferlab.errors import ConfigError

            raise ConfigError("auto could not score any candidate within train.budget: raise the budget, or "
                              "choose a strategy with --strategy")
        on_val = any(c.rows == "val" for c in scored)
        rows = np.isin(self.pool, self.ctx.indices["val"]) if on_val else np.ones(len(self.pool), bool)
        labels = self.ctx.dataset.labels[self.ctx.indices["val"]] if on_val else self.labels
        where = {p: k for k, p in enumerate(self.pool)}
        order = [where[i] for i in self.ctx.indices["val"]] if on_val else None
        library = [c.probs if c.rows == "val" or not on_val else c.probs[order] for c in scored]
        weights, history = select(library, labels)
        chosen = [(c, float(w)) for c, w in zip(scored, weights) if w > 0]
        mixed = sum(w * p for w, p in zip(weights, library))
        return chosen, {"images": int(rows.sum()), "on": "validation split" if on_val else "out of fold",
                        "accuracy": float((mixed.argmax(axis=1) == labels).mean()), "log_loss": history[-1],
                        "rounds": len(history)}


def subsample(indices: np.ndarray, labels: np.ndarray, limit: int, seed: int) -> tuple[np.ndarray, bool]:
    """At most `limit` of `indices`, stratified by class and seeded (the search's evidence on a large set)."""
    if len(indices) <= limit:
        return indices, False
    from sklearn.model_selection import train_test_split

    kept, _ = train_test_split(indices, train_size=limit, stratify=labels[indices], random_state=seed)
    return np.sort(kept), True


def evidence_folds(labels: np.ndarray, groups: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K-fold (grouped: copies never straddle) over the evidence images, K = min(5, smallest class)."""
    from sklearn.model_selection import StratifiedGroupKFold

    counts = np.bincount(labels)
    k = int(max(2, min(5, counts[counts > 0].min())))
    return list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels, groups))


def resolvable_gain(accuracy: float, images: int) -> float:
    """The smallest accuracy gain over `accuracy` that `images` held-out images tell from noise:
    two standard errors of a paired difference (the two models disagree on about 2p(1-p) of them)."""
    return math.inf if images == 0 else 2 * math.sqrt(2 * max(accuracy * (1 - accuracy), 0.01) / images)


def choose(ctx) -> Choice:
    """The concrete strategy for this fit context, and the record of how it was chosen."""
    search = Search(ctx)
    prior = search.prior()
    budget = "no limit" if ctx.deadline is None else f"{(ctx.deadline - search.started) / 60:.1f} min"
    search.say(f"the rule says {prior.candidate} ({prior.reason}); scoring candidates on {len(search.pool):,} "
               f"images{' (a stratified subsample)' if search.cut else ''} within {budget} (--budget to change)")
    from transferlab.strategies import load_all

    registry = load_all()
    sizes = sorted(ctx.config.strategy.auto.sizes or [ctx.size])
    scorable = {name: cls for name, cls in registry.items() if name in ctx.config.strategy.auto.candidates
                and cls.scores_out_of_fold()}
    if scorable:
        search.cheap(sizes, scorable)
    search.expensive(prior)
    chosen, ensemble = search.selection()
    refit = ctx.config.strategy.auto.refit
    members = [{"strategy": c.strategy, "size": c.size, "weight": round(w, 4),
                "settings": c.overrides | (registry[c.strategy].refit if refit else {})} for c, w in chosen]
    best = max((c for c in search.tried if c.accuracy is not None), key=lambda c: (c.accuracy, -c.loss))
    evidence = (f"ensemble selection on the {ensemble['on']} predictions of {ensemble['images']:,} images chose "
                + ", ".join(f"{c.label} ({w:.2f})" for c, w in chosen)
                + f"; the best single candidate was {best.label} ({best.accuracy:.3f} ± {best.se:.3f})")
    search.say(evidence)
    reason = f"the rule says {prior.candidate} ({prior.reason}); {evidence}"
    record = {"prior": prior.record(), "candidates": [c.record() for c in search.tried], "members": members,
              "ensemble": ensemble | {"note": "selection score: the ensemble was chosen on these images, so it is "
                                              "optimistic; the test split estimates it"},
              "evidence": {"images": len(search.pool), "subsampled": search.cut, "folds": "stratified, grouped"},
              "best_single": best.record(), "chosen": [c.label for c, _ in chosen], "reason": reason,
              "budget": {"seconds": None if ctx.deadline is None else round(ctx.deadline - search.started, 1),
                         "search_seconds": round(time.monotonic() - search.started, 1)},
              "inference_ms": {str(s): round(1000 * f, 2) for s, f in search.forward.items()}}
    return Choice("ensemble", {"strategy.ensemble.members": members}, record)
