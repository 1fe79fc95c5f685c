"""The search's evidence: which images (a stratified subsample of a large set), in which folds, and how
small a gain they can tell from noise."""

from __future__ import annotations

import math

import numpy as np


def subsample(indices: np.ndarray, labels: np.ndarray, limit: int, seed: int) -> tuple[np.ndarray, bool]:
    """At most `limit` of `indices`, stratified by class and seeded (the search's evidence on a large set)."""
    if len(indices) <= limit:
        return indices, False
    if labels.ndim == 2:  # multi-label: iterative stratification
        from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

        kept, _ = next(MultilabelStratifiedShuffleSplit(n_splits=1, train_size=limit, random_state=seed).split(
            np.zeros(len(indices)), labels[indices]))
        return np.sort(indices[kept]), True
    from sklearn.model_selection import train_test_split

    kept, _ = train_test_split(indices, train_size=limit, stratify=labels[indices], random_state=seed)
    return np.sort(kept), True


def evidence_folds(labels: np.ndarray, groups: np.ndarray, seed: int, k: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K-fold (grouped: copies never straddle) over the evidence images, K = min(k, smallest class);
    multi-label: iterative stratification over the groups."""
    from sklearn.model_selection import StratifiedGroupKFold

    if labels.ndim == 2:
        from transferlab.data.splits import multilabel_folds

        return [(train, test) for _, _, train, test in multilabel_folds(labels, groups, folds=k, repeats=1,
                                                                         seed=seed)]

    counts = np.bincount(labels)
    k = int(max(2, min(k, counts[counts > 0].min())))
    return list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels, groups))


def resolvable_gain(spread: float, images: int) -> float:
    """The smallest gain in a mean per-image score (Task.scores) that `images` held-out images tell from noise: two
    standard errors of a paired difference of two models whose per-image scores vary by `spread` each (for accuracy
    p(1-p): the two disagree on about 2p(1-p) of the images)."""
    return math.inf if images == 0 else 2 * math.sqrt(2 * max(spread, 0.01) / images)
