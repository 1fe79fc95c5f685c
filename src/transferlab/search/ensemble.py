"""Ensemble selection (Caruana, Niculescu-Mizil, Crew, Ksikes: "Ensemble selection from libraries
of models", ICML 2004): from the candidates' out-of-fold probabilities, start with the best single
one and repeatedly add, with replacement, the one whose addition most lowers the log loss of the
average; the weights are how often each was added. A candidate that never helps gets weight 0; one
candidate alone is the special case."""

from __future__ import annotations

import numpy as np

from transferlab.metrics import log_loss


def select(library: list[np.ndarray], labels: np.ndarray, *, rounds: int = 50, loss=log_loss
           ) -> tuple[np.ndarray, list[float]]:
    """Weights (summing to 1) over `library` (each (N, K) probabilities of the same images) and the
    `loss` (the task's log loss) after each round; selection stops when no addition lowers it."""
    counts = np.zeros(len(library))
    losses = [loss(p, labels) for p in library]
    best = int(np.argmin(losses))
    counts[best], total, history = 1, library[best].copy(), [losses[best]]
    for _ in range(rounds - 1):
        n = counts.sum()
        trial = [loss((total + p) / (n + 1), labels) for p in library]
        pick = int(np.argmin(trial))
        if trial[pick] >= history[-1] - 1e-9:
            break
        counts[pick] += 1
        total += library[pick]
        history.append(trial[pick])
    return counts / counts.sum(), history
