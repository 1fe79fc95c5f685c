"""Linear probe: scikit-learn's L2 logistic regression objective (multinomial; one-vs-rest for a multi-label task,
one binary regression per label) on the cached pooled features, solved
by full-batch L-BFGS in torch, warm-started along C and stopping at a deadline; the coefficients become the head.
Not scikit-learn's lbfgs: on 42,000 x 1,280 features it ran for over 13 minutes and could not be interrupted.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from transferlab.strategies import register
from transferlab.strategies.base import Stage, Strategy
from transferlab.tasks import SINGLE, Task

C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 6))  # inverse regularisation strengths the CV chooses from


@register
class LinearProbe(Strategy):
    """Logistic regression on cached pooled features, C chosen by inner cross-validation of the training
    features; its weights become the head."""

    name = "linear-probe"
    cheap = True
    refit = {"strategy.linear_probe.refit_on_val": True}  # its C needs no validation split

    @classmethod
    def out_of_fold(cls, features, labels, num_classes: int, folds, *, balanced: bool,
                    deadline: float | None, task: Task = SINGLE) -> list[tuple[dict, np.ndarray]]:
        """The probe at every C of C_GRID, each image predicted by the probe fitted on the other folds."""
        probs = out_of_fold(features, labels, num_classes, folds, C_GRID, balanced=balanced, deadline=deadline,
                            task=task)
        return [({"strategy.linear_probe.C": c}, oof) for c, oof in zip(C_GRID, probs)]

    def epochs_default(self, config) -> int:
        return 1  # no epochs: the fit is one convex solve

    def label(self) -> str:
        c = self.settings.C
        return self.name + (f" (C={c:g})" if c is not None else "") + (
            " (refit on train + val)" if self.settings.refit_on_val else "")

    def stages(self) -> list[Stage]:
        return [Stage("probe", "probe", 0, find_lr=False)]

    def trainable(self, epoch: int) -> list[str]:
        return ["head"]

    def run(self, stage: Stage, fitting):
        features, y = fitting.ctx.train_features()
        head, details = fit_probe(features, y, len(fitting.ctx.dataset.classes), seed=self.config.seed,
                                  balanced=fitting.imbalance in ("weights", "sampler"), C=self.settings.C,
                                  deadline=fitting.ctx.deadline, task=fitting.ctx.dataset.task)
        details["images"] = int(len(y))
        return fitting.head_result(stage, head, groups={"head": {"trains_from_epoch": 1, **details}})


def logistic_path(x: torch.Tensor, y: np.ndarray, num_classes: int, cs=C_GRID, *, balanced: bool = False,
                  deadline: float | None = None, max_iter: int = 200, task: Task = SINGLE
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weights (K, D), bias (K,)) of the L2 logistic regression of the task (multinomial; one-vs-rest) at each C
    of `cs` (ascending), each solve warm-started from the previous; stops early at `deadline` (the
    remaining Cs are left out of the list)."""
    x, target = torch.as_tensor(x, dtype=torch.float32), task.tensor(y)
    weight = task.class_weights(np.asarray(y), num_classes) if balanced else None
    w = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    present = torch.as_tensor(task.present(y, num_classes))
    out = []
    for c in sorted(cs):
        if deadline is not None and out and time.monotonic() > deadline:
            break
        solver = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-5,
                                   tolerance_change=1e-9, line_search_fn="strong_wolfe")

        def objective():
            solver.zero_grad()
            loss = task.loss(x @ w.T + b, target, weight=weight, reduction="sum") * c + 0.5 * (w * w).sum()
            loss.backward()
            return loss

        solver.step(objective)
        bias = b.detach().clone()
        bias[~present] = -1e4  # a class absent from training is never predicted
        out.append((w.detach().clone(), bias))
    return out


def predict_path(x: torch.Tensor, path: list[tuple[torch.Tensor, torch.Tensor]], task: Task = SINGLE) -> np.ndarray:
    """Probabilities (len(path), N, K) of each fitted C."""
    x = torch.as_tensor(x, dtype=torch.float32)
    with torch.no_grad():
        return np.stack([task.probabilities(x @ w.T + b).numpy() for w, b in path])


def out_of_fold(x: torch.Tensor, y: np.ndarray, num_classes: int, folds, cs=C_GRID, *, balanced: bool = False,
                deadline: float | None = None, task: Task = SINGLE) -> np.ndarray:
    """Out-of-fold probabilities (len(cs), N, K) of the probe at each C: each image predicted by the
    probe fitted on the other folds. NaN rows where a deadline cut a fold's path short."""
    out = np.full((len(cs), len(y), num_classes), np.nan)
    for train, held in folds:
        path = logistic_path(x[train], y[train], num_classes, cs, balanced=balanced, deadline=deadline, task=task)
        out[: len(path), held] = predict_path(x[held], path, task)
    return out


def fit_probe(x: torch.Tensor, y: np.ndarray, num_classes: int, *, seed: int = 0, balanced: bool = False,
              C: float | None = None, deadline: float | None = None, task: Task = SINGLE
              ) -> tuple[dict[str, torch.Tensor], dict]:
    """Head weights {1.weight, 1.bias} of the probe at `C`, or at the C of C_GRID whose out-of-fold log loss is
    lowest (stratified K = min(5, smallest class)). Not standardised: the raw features scored as well or 0.9 to 2.6
    points better on bench_auto.py's calibration sets (standardising inflates the many near-silent channels)."""
    from transferlab.data.splits import stratified_folds

    y = np.asarray(y)
    present = np.asarray(y).sum(axis=0) if y.ndim == 2 else np.bincount(y, minlength=num_classes)
    folds = int(min(5, present[present > 0].min() if y.ndim == 1 else len(y) // 2))
    details: dict = {"class_weight": "balanced" if balanced else "none", "fit": task.probe_fit}
    if C is None and folds >= 2:
        split = [(train, held) for _, _, train, held in stratified_folds(y, folds=folds, seed=seed)]
        probs = out_of_fold(x, y, num_classes, split, balanced=balanced, deadline=deadline, task=task)
        losses = [task.log_loss(p, y) if np.isfinite(p).all() else np.nan for p in probs]
        C = C_GRID[int(np.nanargmin(losses))]
        details.update(inner_folds=folds, log_loss_by_C={f"{c:g}": round(float(v), 4) for c, v in zip(C_GRID, losses)
                                                          if np.isfinite(v)})
    C = 1.0 if C is None else C
    (w, b), = logistic_path(x, y, num_classes, [C], balanced=balanced, task=task)
    return {"1.weight": w, "1.bias": b}, details | {"C": C}
