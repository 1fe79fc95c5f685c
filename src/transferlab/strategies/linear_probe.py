"""Linear probe: scikit-learn's logistic regression on the cached pooled features, its
regularisation C chosen by stratified cross-validation on the training features only; the fitted
coefficients become the classifier's head (so predict, explain and export use it like any head).

The simplest honest baseline of transfer learning, and often the best on small data: no epochs,
no learning rate, seconds once the features exist.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from transferlab.strategies import register
from transferlab.strategies.base import Stage, Strategy

C_GRID = np.logspace(-3, 2, 6)  # inverse regularisation strengths tried by the inner cross-validation


@register
class LinearProbe(Strategy):
    """Scikit-learn LogisticRegression on cached pooled features, C chosen by inner cross-validation of
    the training features; its weights become the head."""

    name = "linear-probe"
    refits_on_val = True  # C comes from inner cross-validation of the training features

    def epochs_default(self, config) -> int:
        return 1  # no epochs: the fit is one convex solve

    def label(self) -> str:
        return self.name + (" (refit on train + val)" if self.config.strategy.linear_probe.refit_on_val else "")

    def stages(self) -> list[Stage]:
        return [Stage("probe", "probe", 0, find_lr=False)]

    def trainable(self, epoch: int) -> list[str]:
        return ["head"]

    def run(self, stage: Stage, job):
        features = job.features()
        x = features.features["train"].double().numpy()
        y = features.labels["train"]
        head, details = fit_probe(x, y, len(job.dataset.classes), seed=self.config.seed,
                                  balanced=job.imbalance in ("weights", "sampler"))
        details["images"] = int(len(y))
        return job.head_result(stage, head, groups={"head": {"trains_from_epoch": 1, **details}})


def fit_probe(x: np.ndarray, y: np.ndarray, num_classes: int, *, seed: int = 0,
              balanced: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Head weights {1.weight, 1.bias} of a logistic regression on the pooled features as they
    are, C by inner stratified K-fold (K = min(5, smallest class)) on log loss, and what was chosen.

    The features are not standardised: on the calibration sets of bench_auto.py (digits, gratings,
    textures, at 128 and 224 px) the L2 penalty on the raw pooled features scored as well or
    better in every case (0.9 to 2.6 points on the four that differed), since standardising
    blows up the many near-silent channels to the scale of the informative ones."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    present = np.bincount(y, minlength=num_classes)
    folds = int(min(5, present[present > 0].min()))
    weight = "balanced" if balanced else None
    # one BLAS thread: on these small matrices a threaded BLAS beside torch's own thread pool made the
    # fit 9x slower (fashion-mnist, 420 x 1280 features: 23.5 s -> 2.6 s, identical coefficients)
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore")  # convergence chatter on tiny folds
        if folds >= 2:
            model = LogisticRegressionCV(Cs=C_GRID, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                         scoring="neg_log_loss", max_iter=3000, class_weight=weight).fit(x, y)
            chosen = float(np.atleast_1d(model.C_)[0])
        else:
            chosen = 1.0
            model = LogisticRegression(C=chosen, max_iter=3000, class_weight=weight).fit(x, y)
    coef = np.zeros((num_classes, x.shape[1]))
    intercept = np.zeros(num_classes)
    if len(model.classes_) == 2:  # sklearn's binary form: one logit for the second class
        coef[model.classes_[1]], intercept[model.classes_[1]] = model.coef_[0], model.intercept_[0]
    else:
        coef[model.classes_], intercept[model.classes_] = model.coef_, model.intercept_
        missing = np.setdiff1d(np.arange(num_classes), model.classes_)
        intercept[missing] = -1e4  # a class absent from training is never predicted
    head = {"1.weight": torch.tensor(coef, dtype=torch.float32), "1.bias": torch.tensor(intercept, dtype=torch.float32)}
    return head, {"C": chosen, "inner_folds": folds, "class_weight": weight or "none"}
