"""Trials of the search's expensive candidates (they train the backbone, or a network from scratch), scored
on evidence that can tell them from the cheap candidates:

- on the validation split, when it is large enough to resolve a gain of strategy.auto.resolvable (at scale:
  9,000 images at 60,000); the trial is the member (its folder keeps the weights it paid for);
- cross-fitted, when it is not (small sets): the candidate trained K times, each time on all but one fold
  of the search's evidence images and predicting that fold, so every evidence image gets an out-of-fold
  prediction, as the probes' do, and the ensemble selection weighs them on the same images; a chosen one is
  refit on train + val for the same epochs (train.refit_on_val).
"""

from __future__ import annotations

import time

import numpy as np

from transferlab.config import merge, unflatten

CROSS_FOLDS = 3  # folds of a cross-fitted trial (each trains on two thirds of the evidence)
PREDICTING = 4 / 3  # a trial's time over its training steps' alone: its predictions, checkpoints and set-up


def trial_folder(ctx, candidate, part: str | None = None):
    """Where a trial (or one fold of it) fits: the folder its ensemble member uses."""
    from transferlab.strategies.ensemble import member_folder

    folder = ctx.directory / "members" / member_folder(candidate.strategy, candidate.size, candidate.overrides)
    return folder if part is None else folder / part


def fit_in(ctx, folder, config, strategy_name: str, indices: dict, deadline: float | None):
    """One fit of `strategy_name` under `config` on `indices`, in `folder` (resumable: its state says which
    stages are done)."""
    from transferlab.fit import fit
    from transferlab.rundir import STATE_FILE, RunDir, RunState
    from transferlab.strategies import get_strategy

    return fit(ctx.replace(directory=folder, deadline=deadline, indices=indices),
               get_strategy(strategy_name, config), RunDir(folder, RunState.load_or(folder / STATE_FILE, kind="member")))


def on_validation(search, candidate, config, deadline: float | None) -> np.ndarray:
    """Fit on the training part, checkpoints picked on the validation split; its predictions of that split."""
    ctx = search.ctx
    result = fit_in(ctx, trial_folder(ctx, candidate), config, candidate.strategy, dict(ctx.indices), deadline)
    return result.probabilities(result.ctx, "val")


def cross_fitted(search, candidate, config, deadline: float | None) -> np.ndarray:
    """The out-of-fold predictions of the evidence images by CROSS_FOLDS fits, each on the other folds (no
    validation split inside: the epochs are fixed, the last weights kept); NaN rows where time ran out."""
    from transferlab.search.evidence import evidence_folds

    ctx, pool = search.ctx, search.pool
    folds = evidence_folds(search.labels, ctx.dataset.groups[pool], ctx.config.seed, k=CROSS_FOLDS)
    out = np.full((len(pool), len(ctx.dataset.classes)), np.nan)
    for k, (train, held) in enumerate(folds):
        if deadline is not None and time.monotonic() > deadline:
            break
        indices = {"train": pool[train], "val": pool[:0], "test": pool[held]}
        result = fit_in(ctx, trial_folder(ctx, candidate, f"fold{k + 1}"), config, candidate.strategy, indices,
                        deadline)
        out[held] = result.probabilities(result.ctx, "test")
    return out


def run_trial(search, candidate, trial, cross: bool) -> None:
    """Fit the expensive `candidate` (its strategy set up as `trial`) on the evidence `cross` says, score it,
    and keep it among the candidates; the trial stops where the search's time does."""
    started = time.monotonic()
    config = merge(trial.config, unflatten(candidate.overrides), origin=f"auto ({candidate.variant})")
    deadline = None if search.ctx.deadline is None else time.monotonic() + max(0.0, search.left())
    if cross:
        candidate.rows, probs = "train+val", cross_fitted(search, candidate, config, deadline)
        labels = search.labels
    else:
        candidate.rows, probs = "val", on_validation(search, candidate, config, deadline)
        labels = search.ctx.dataset.labels[search.ctx.indices["val"]]
    candidate.seconds = time.monotonic() - started
    if np.isnan(probs).any():
        candidate.status = "skipped: the deadline cut its cross-fitted trial"
    else:
        candidate.probs = probs
        candidate.score(labels, search.ctx.dataset.task)
    search.tried.append(candidate)
    evidence = f"out-of-fold ({CROSS_FOLDS} cross-fitted fits)" if cross else "validation"
    search.say(f"{candidate.label} ({config.train.epochs} epochs): "
               + (f"{evidence} {search.ctx.dataset.task.score_name} {candidate.accuracy:.3f} ± {candidate.se:.3f}" if candidate.probs is not None
                  else candidate.status) + f" in {candidate.seconds:.0f} s")
