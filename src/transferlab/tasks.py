"""The label space, in one object every other module asks: one label per image (`SingleLabel`) or any
number of them (`MultiLabel`).

A task owns what depends on that: the output activation (softmax / a sigmoid per label), the loss
(cross-entropy / binary cross-entropy), the decision (argmax / a threshold per label, chosen to
maximise each label's F1 on out-of-fold or validation predictions), the score the search selects
on (log loss / mean binary log loss), how ensemble members combine (a weighted mean of their
probabilities, in both), the metrics, the labels a split stratifies on, and what a prediction
looks like. Nothing else applies a softmax, a sigmoid or an argmax to a model's output.

Targets: a single-label task's are class indices (N,); a multi-label task's are 0/1 rows (N, K).
A third task (regression, ordinal) is one more subclass: its activation, loss, decision,
metrics and stratification key (see docs/architecture.md).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-15


class Task:
    """What depends on the label space. Subclasses fill every method."""

    name = "task"
    probe_fit = ""  # how a linear probe is fitted (read by the probe's record)
    temperature = 1.0  # the calibration's (fit_temperature): the answer is probabilities(logits / temperature)

    def probabilities(self, logits):
        """The model's answer (probabilities) from its logits: a torch tensor or a numpy array, the same back."""
        raise NotImplementedError

    def logits(self, probs: torch.Tensor) -> torch.Tensor:
        """The inverse of `probabilities` (an ensemble's output, so that `probabilities` of it is the mean)."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, *, weight: torch.Tensor | None = None,
             smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
        """The training loss (`reduction` sum: the probe's objective, one term per image and label)."""
        raise NotImplementedError

    def class_weights(self, targets: np.ndarray, k: int) -> torch.Tensor:
        """Weights that balance the classes (train.imbalance=weights): scikit-learn's "balanced" n / (K x count);
        a multi-label task's, each label's negatives / positives (BCE's pos_weight)."""
        raise NotImplementedError

    def present(self, targets: np.ndarray, k: int) -> np.ndarray:
        """Which classes the targets hold at least once (a probe never predicts an absent one)."""
        raise NotImplementedError

    def tensor(self, targets: np.ndarray) -> torch.Tensor:
        """Targets as the loss takes them: class indices (long), or 0/1 rows (float)."""
        raise NotImplementedError

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """The decision: class indices (N,) or 0/1 rows (N, K)."""
        raise NotImplementedError

    def correct(self, probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Per image, whether the decision is right (all labels right, for multi-label): accuracy's rows."""
        raise NotImplementedError

    def scores(self, probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Per image, a score in [0, 1] whose mean ranks the search's candidates and whose spread says how large a
        gain its evidence can tell from noise (search/evidence.py): whether the decision is right (accuracy), or the
        F1 of the decided label set against the true one (1 when both are empty; scikit-learn's samples F1)."""
        raise NotImplementedError

    score_name = "accuracy"  # what the mean of `scores` is called where the search prints it

    def log_loss(self, probs: np.ndarray, targets: np.ndarray) -> float:
        """The score ensemble selection and the search's candidates are compared on (lower is better)."""
        raise NotImplementedError

    def ranked(self, probs: np.ndarray, classes: list[str], k: int) -> list[dict]:
        """One image's answer: classes by probability, the first `k`."""
        order = np.argsort(-np.asarray(probs), kind="stable")[:k]
        return [{"class": classes[i], "probability": float(probs[i])} for i in order]

    def monitored(self, targets: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        """The validation metrics a checkpoint, early stopping and a stage are chosen on (metrics.MONITOR_MODE)."""
        raise NotImplementedError

    def metrics(self, targets: np.ndarray, probs: np.ndarray, classes: list[str], *, curves: bool = True) -> dict:
        """Every metric of these predictions (metrics.json's split entries)."""
        raise NotImplementedError

    def answer(self, probs: np.ndarray, classes: list[str], k: int) -> dict:
        """One image's prediction as predict, serve and the API give it: the top `k` classes; a multi-label
        task's also the labels at or above their thresholds (every label's probability in `top`)."""
        return {"top": [entry | {"probability": round(entry["probability"], 6)}
                        for entry in self.ranked(probs, classes, k)]}

    def intervals(self, targets: np.ndarray, probs: np.ndarray, classes: list[str], *, resamples: int, seed: int,
                  units: np.ndarray | None = None) -> tuple[dict, dict]:
        """95% percentile bootstrap intervals of the scalar metrics and of the per-class ones (cv's out of fold)."""
        raise NotImplementedError

    def split_intervals(self, targets: np.ndarray, probs: np.ndarray, *, resamples: int, seed: int) -> dict:
        """95% percentile bootstrap intervals of a split's headline metrics, every resample at once: each metric
        here is a sum over images (of correct decisions, per-class counts, losses, calibration bins), so a
        resample is its images' counts times those sums (`draws` below). The rank metrics (ROC AUC, average
        precision) get none here: cv's bootstrap gives them."""
        raise NotImplementedError

    def top(self, probs: np.ndarray) -> int:
        """The class one image's answer is most sure of (what a CAM explains by default)."""
        return int(np.argmax(probs))

    def explained(self, probs: np.ndarray) -> list[int]:
        """The classes `explain` draws a map for by default: the predicted one; a multi-label task's every
        predicted label (the most probable when none is)."""
        return [self.top(probs)]

    shown = "Top classes"  # what the app calls its probability bars

    def bars(self, k: int) -> int:
        """How many of `k` classes the app's probability bars show: the top five; a multi-label task's every label."""
        return min(5, k)

    def caption(self, probs: np.ndarray, classes: list[str]) -> str:
        """One image's prediction in words (a figure's title, the app's answer)."""
        k = self.top(probs)
        return f"predicted {classes[k]} ({probs[k]:.2f})"

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        """Per image, how sure the decision is (the error gallery sorts by it)."""
        return np.asarray(probs).max(axis=1)

    def record(self) -> dict:
        """What model.json keeps of the task."""
        return {"name": self.name} | self.calibration()

    def calibration(self) -> dict:
        return {} if self.temperature == 1.0 else {"temperature": round(float(self.temperature), 6)}

    def calibrated(self, logits):
        """The answer a model gives: its probabilities at the calibrated temperature (torch or numpy logits).
        Training's losses and an ensemble's members use `probabilities`, the raw ones."""
        return self.probabilities(logits if self.temperature == 1.0 else logits / self.temperature)

    def calibrate(self, probs: np.ndarray, temperature: float | None = None) -> np.ndarray:
        """Raw probabilities (a model's, or an ensemble's mean) at `temperature` (default: the task's)."""
        t = self.temperature if temperature is None else temperature
        if t == 1.0:
            return np.asarray(probs)
        return self.probabilities(self.logits(torch.as_tensor(np.asarray(probs), dtype=torch.float64)) / t).numpy()

    def reliability(self, targets: np.ndarray, probs: np.ndarray) -> dict:
        """The reliability curve, per equal-width confidence bin (15): mean confidence, how often right, images:
        of the top class; a multi-label task's of every label's probability (how often the label is there)."""
        raise NotImplementedError

    def ece(self, targets: np.ndarray, probs: np.ndarray) -> float:
        """Expected calibration error (Guo et al. 2017): |right - confidence| per bin of `reliability`, weighted."""
        curve = self.reliability(targets, probs)
        total = max(1, sum(curve["count"]))
        return float(sum(n / total * abs(a - c) for c, a, n in zip(curve["confidence"], curve["accuracy"],
                                                                    curve["count"])))

    def fit_temperature(self, probs: np.ndarray, targets: np.ndarray, on: str) -> dict:
        """Choose the temperature that minimises the log loss of these held-out (out-of-fold or validation)
        predictions (Guo et al. 2017, one parameter: it never changes a single-label decision); kept on the task.
        The record says on what, and the ECE before and after."""
        from scipy.optimize import minimize_scalar

        probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets)
        if len(probs) < 20:
            self.temperature = 1.0
            return {"temperature": 1.0, "on": f"none fitted: {len(probs)} held-out predictions are too few"}
        loss = lambda log_t: self.log_loss(self.calibrate(probs, float(np.exp(log_t))), targets)  # noqa: E731
        best = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                               options={"xatol": 1e-4})
        self.temperature = float(np.exp(best.x)) if best.fun < loss(0.0) else 1.0
        return {"temperature": round(self.temperature, 6), "on": f"{on} ({len(probs):,} images)",
                "log_loss_before": round(loss(0.0), 6), "log_loss_after": round(float(min(best.fun, loss(0.0))), 6),
                "ece_before": round(self.ece(targets, probs), 6),
                "ece_after": round(self.ece(targets, self.calibrate(probs)), 6)}

    def output(self) -> str:
        """What an exported model's output means (bundle.json)."""
        raise NotImplementedError

    chooses = False  # whether `settle` chooses anything from held-out predictions

    def settle(self, probs: np.ndarray | None, targets: np.ndarray | None, on: str) -> dict | None:
        """Choose what the decision needs from held-out predictions (`on` says which): a multi-label task's
        thresholds. None: nothing to choose."""
        return None


class SingleLabel(Task):
    """One class per image: softmax, cross-entropy, argmax."""

    name = "single-label"
    probe_fit = "multinomial"

    def probabilities(self, logits):
        if isinstance(logits, torch.Tensor):
            return logits.float().softmax(dim=-1)
        z = np.asarray(logits, dtype=np.float64)
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)

    def logits(self, probs: torch.Tensor) -> torch.Tensor:
        return probs.clamp_min(1e-12).log()

    def output(self):
        return "class probabilities (softmax), in the order of classes"

    def loss(self, logits, targets, *, weight=None, smoothing=0.0, reduction="mean"):
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=smoothing, reduction=reduction)

    def class_weights(self, targets, k):
        counts = np.bincount(np.asarray(targets), minlength=k)  # an absent class counted once (sklearn raises)
        return torch.tensor(len(targets) / (k * np.maximum(counts, 1)), dtype=torch.float32)

    def present(self, targets, k):
        return np.bincount(np.asarray(targets), minlength=k) > 0

    def tensor(self, targets):
        return torch.as_tensor(np.asarray(targets), dtype=torch.long)

    def decide(self, probs):
        return np.asarray(probs).argmax(axis=-1)

    def correct(self, probs, targets):
        return self.decide(probs) == np.asarray(targets)

    def reliability(self, targets, probs):
        from transferlab.metrics import calibration_curve

        return calibration_curve(np.asarray(targets), np.asarray(probs), self.decide(probs))

    def scores(self, probs, targets):
        return self.correct(probs, targets).astype(np.float64)

    def log_loss(self, probs, targets):
        from transferlab.metrics import log_loss

        return log_loss(np.asarray(probs), np.asarray(targets))

    def monitored(self, targets, probs):
        from transferlab.metrics import monitored_values

        return monitored_values(targets, probs, self.decide(probs))

    def metrics(self, targets, probs, classes, *, curves=True):
        from transferlab.metrics import compute_metrics  # the single-label metrics, of this task's decisions

        return compute_metrics(targets, probs, self.decide(probs), classes, curves=curves)

    def intervals(self, targets, probs, classes, *, resamples, seed, units=None):
        from transferlab.metrics import bootstrap_intervals

        return bootstrap_intervals(targets, probs, self.decide(probs), classes, resamples=resamples, seed=seed,
                                   units=units)

    def split_intervals(self, targets, probs, *, resamples, seed):
        from transferlab.metrics import ECE_BINS

        y, p = np.asarray(targets, dtype=np.int64), np.asarray(probs, dtype=np.float64)
        n, k = p.shape
        counts = draws(n, resamples, seed)  # (R, n): how often each image is in each resample
        pred = self.decide(p)
        correct = (pred == y).astype(float)
        out = {"accuracy": counts @ correct / n,
               "log_loss": counts @ -np.log(np.clip(p[np.arange(n), y], 1e-15, 1.0)) / n}
        ranked = np.argsort(-p, axis=1)
        for top in (3, 5):
            if k > top:
                out[f"top{top}_accuracy"] = counts @ (ranked[:, :top] == y[:, None]).any(axis=1).astype(float) / n
        true, said = np.eye(k)[y], np.eye(k)[pred]
        tp, support, predicted = counts @ (true * said), counts @ true, counts @ said  # (R, K)
        recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=support + predicted > 0)
        out |= {"balanced_accuracy": np.nanmean(np.where(support > 0, recall, np.nan), axis=1),
                "precision_macro": precision.mean(axis=1), "recall_macro": recall.mean(axis=1),
                "f1_macro": f1.mean(axis=1)}
        confidence = p.max(axis=1)
        bins = np.eye(ECE_BINS)[np.clip(np.digitize(confidence, np.linspace(0, 1, ECE_BINS + 1)[1:-1], right=True),
                                        0, ECE_BINS - 1)]
        out["ece"] = np.abs(counts @ (bins * (correct - confidence)[:, None])).sum(axis=1) / n
        return {key: percentile(values) for key, values in out.items()}


@dataclass
class MultiLabel(Task):
    """Any number of labels per image: a sigmoid per label, binary cross-entropy, a threshold per label."""

    thresholds: np.ndarray | None = None  # per label; None: 0.5 until chosen
    fixed: float | None = None  # task.threshold: one threshold for every label, never chosen
    name: str = field(default="multi-label", init=False)
    probe_fit = "one-vs-rest"

    def probabilities(self, logits):
        if isinstance(logits, torch.Tensor):
            return logits.float().sigmoid()
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))

    def logits(self, probs: torch.Tensor) -> torch.Tensor:
        probs = probs.clamp(1e-12, 1 - 1e-7)
        return probs.log() - (1 - probs).log()

    def output(self):
        return ("the probability of each label (a sigmoid each), in the order of classes; a label is predicted at or "
                "above its threshold (thresholds, in the same order)")

    def loss(self, logits, targets, *, weight=None, smoothing=0.0, reduction="mean"):
        targets = targets.float()
        if smoothing:
            targets = targets * (1 - smoothing) + 0.5 * smoothing
        # weight: per label, as pos_weight (a rare label's positives count more)
        return F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=weight, reduction=reduction)

    def class_weights(self, targets, k):
        positives = np.asarray(targets).sum(axis=0)
        return torch.tensor((len(targets) - positives) / np.maximum(positives, 1), dtype=torch.float32)

    def present(self, targets, k):
        return np.asarray(targets).sum(axis=0) > 0

    def tensor(self, targets):
        return torch.as_tensor(np.asarray(targets), dtype=torch.float32)

    def cut(self, k: int) -> np.ndarray:
        if self.fixed is not None:
            return np.full(k, self.fixed)
        return np.full(k, 0.5) if self.thresholds is None else np.asarray(self.thresholds, dtype=float)

    def decide(self, probs):
        probs = np.asarray(probs)
        return (probs >= self.cut(probs.shape[-1])).astype(np.int64)

    def correct(self, probs, targets):
        return (self.decide(probs) == np.asarray(targets)).all(axis=-1)

    score_name = "F1 per image"

    def reliability(self, targets, probs):
        p, y = np.asarray(probs, dtype=np.float64).ravel(), np.asarray(targets, dtype=np.float64).ravel()
        which = np.minimum((p * 15).astype(int), 14)
        counts = np.bincount(which, minlength=15)
        seen = counts > 0
        return {"confidence": (np.bincount(which, p, 15)[seen] / counts[seen]).tolist(),
                "accuracy": (np.bincount(which, y, 15)[seen] / counts[seen]).tolist(),
                "count": counts[seen].astype(int).tolist()}

    def scores(self, probs, targets):
        decided, y = self.decide(probs).astype(bool), np.asarray(targets).astype(bool)
        both, either = (decided & y).sum(axis=-1), decided.sum(axis=-1) + y.sum(axis=-1)
        return np.where(either == 0, 1.0, 2 * both / np.maximum(either, 1))

    def log_loss(self, probs, targets):
        p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
        y = np.asarray(targets, dtype=np.float64)
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())

    def monitored(self, targets, probs):
        from sklearn import metrics as skm

        y, pred = np.asarray(targets, dtype=np.int64), self.decide(probs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            balanced = [skm.balanced_accuracy_score(y[:, k], pred[:, k]) for k in range(y.shape[1])]
            return {"val_loss": self.log_loss(probs, y), "val_accuracy": float(skm.accuracy_score(y, pred)),
                    "val_balanced_accuracy": float(np.mean(balanced)),
                    "val_f1_macro": float(skm.f1_score(y, pred, average="macro", zero_division=0))}

    def metrics(self, targets, probs, classes, *, curves=True):
        out = multilabel_metrics(targets, probs, classes, self)
        if curves:
            out["pr_curves"] = pr_curves(np.asarray(targets), np.asarray(probs), classes)
        return out

    def split_intervals(self, targets, probs, *, resamples, seed):
        y, p = np.asarray(targets, dtype=np.int64), np.asarray(probs, dtype=np.float64)
        n = len(y)
        counts = draws(n, resamples, seed)
        pred = self.decide(p)
        tp, fp, fn = (counts @ ((pred == a) & (y == b)).astype(float) for a, b in ((1, 1), (1, 0), (0, 1)))  # (R, K)
        clipped = np.clip(p, EPS, 1 - EPS)
        out = {"subset_accuracy": counts @ (pred == y).all(axis=1).astype(float) / n,
               "hamming_loss": counts @ (pred != y).mean(axis=1) / n,
               "log_loss": counts @ -(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)).mean(axis=1) / n,
               "f1_macro": np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=2 * tp + fp + fn > 0
                                     ).mean(axis=1),
               "f1_micro": np.divide(2 * tp.sum(1), (2 * tp + fp + fn).sum(1), out=np.zeros(len(tp)),
                                     where=(2 * tp + fp + fn).sum(1) > 0)}
        return {key: percentile(values) for key, values in out.items()}

    def intervals(self, targets, probs, classes, *, resamples, seed, units=None):
        """The images (with all their rows, by `units`) resampled; each resample's metrics by scikit-learn, so at
        most 200 resamples (a multi-label metric costs more than the single-label confusion-matrix ones)."""
        y, p = np.asarray(targets), np.asarray(probs)
        units = np.arange(len(y)) if units is None else np.asarray(units)
        _, inverse = np.unique(units, return_inverse=True)
        members = [np.flatnonzero(inverse == u) for u in range(inverse.max() + 1)]
        rng = np.random.default_rng(seed)
        samples: dict[str, list] = {}
        per_label: dict[str, dict[str, list]] = {c: {} for c in classes}
        for _ in range(min(resamples, 200)):
            rows = np.concatenate([members[u] for u in rng.integers(0, len(members), len(members))])
            scored = multilabel_metrics(y[rows], p[rows], classes, self)
            for key, value in scored.items():
                if isinstance(value, float):
                    samples.setdefault(key, []).append(value)
            for c, entry in scored["per_class"].items():
                for key in ("precision", "recall", "f1", "roc_auc"):
                    per_label[c].setdefault(key, []).append(entry.get(key))

        def interval(values) -> list[float] | None:
            values = np.array([v for v in values if v is not None], dtype=float)
            return [float(v) for v in np.percentile(values, [2.5, 97.5])] if len(values) >= 10 else None

        return ({k: interval(v) for k, v in samples.items()},
                {c: {k: interval(v) for k, v in entries.items()} for c, entries in per_label.items()})

    def ranked(self, probs, classes, k):
        above, cut = self.decide(np.asarray(probs)[None])[0], self.cut(len(classes))
        return [entry | {"predicted": bool(above[i]), "threshold": round(float(cut[i]), 6)}
                for entry in super().ranked(probs, classes, len(classes) if k <= 0 else k)
                for i in [classes.index(entry["class"])]]

    def answer(self, probs, classes, k):
        above = self.decide(np.asarray(probs)[None])[0]
        return {"labels": [c for c, on in zip(classes, above) if on]} | super().answer(probs, classes, len(classes))

    def explained(self, probs):
        above = np.flatnonzero(self.decide(np.asarray(probs)[None])[0])
        return [int(k) for k in above] or [self.top(probs)]

    shown = "Each label's probability (predicted at or above its threshold)"

    def bars(self, k):
        return k

    def caption(self, probs, classes):
        above = np.flatnonzero(self.decide(np.asarray(probs)[None])[0])
        return "predicted " + (", ".join(f"{classes[k]} ({probs[k]:.2f})" for k in above) or "no label")

    def confidence(self, probs):
        """How sure every label's decision is: the least sure label's distance from certainty."""
        p = np.asarray(probs)
        return np.where(self.decide(p) == 1, p, 1 - p).min(axis=1)

    @property
    def chooses(self) -> bool:
        return self.fixed is None

    def settle(self, probs, targets, on):
        if self.fixed is not None:
            return {"thresholds": f"{self.fixed:g} for every label (task.threshold)"}
        if probs is None or not len(probs):
            self.thresholds = None
            return {"thresholds": "0.5 for every label: no held-out predictions to choose them on"}
        self.choose_thresholds(probs, targets)
        return {"thresholds": f"each label's, maximising its F1 on the {on} ({len(probs):,} images)",
                "values": [round(float(t), 6) for t in self.thresholds]}

    def choose_thresholds(self, probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Per label, the threshold that maximises its F1 on these (out-of-fold or validation) predictions;
        0.5 for a label with no positive among them. Kept on the task and returned."""
        from sklearn.metrics import precision_recall_curve

        probs, targets = np.asarray(probs), np.asarray(targets)
        out = np.full(probs.shape[1], 0.5)
        for k in range(probs.shape[1]):
            if targets[:, k].any() and not targets[:, k].all():
                precision, recall, cuts = precision_recall_curve(targets[:, k], probs[:, k])
                f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                               where=precision + recall > 0)[:-1]
                out[k] = float(cuts[int(np.argmax(f1))])
        self.thresholds = out
        return out

    def record(self) -> dict:
        return {"name": self.name, "threshold": self.fixed,
                "thresholds": None if self.thresholds is None else [round(float(t), 6) for t in self.thresholds]
                } | self.calibration()


def draws(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) counts: how often each of n images is drawn in each bootstrap resample (with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float) if n else np.zeros((resamples, 0))


def percentile(values: np.ndarray) -> list[float] | None:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return [float(v) for v in np.percentile(values, [2.5, 97.5])] if len(values) else None


SINGLE = SingleLabel()
NAMES = {"single-label": SingleLabel, "multi-label": MultiLabel}


def task_of(meta: dict | None) -> Task:
    """The task a model.json (or a record) names; one without names the single-label task (older runs)."""
    entry = (meta or {}).get("task") or {"name": "single-label"}
    if entry["name"] == "multi-label":
        thresholds = entry.get("thresholds")
        task: Task = MultiLabel(thresholds=None if thresholds is None else np.asarray(thresholds, dtype=float),
                                fixed=entry.get("threshold"))
    else:
        task = SingleLabel()
    task.temperature = float(entry.get("temperature", 1.0))
    return task


def pr_curves(targets: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Per label with both values: its precision-recall curve (scikit-learn's) and average precision."""
    from sklearn import metrics as skm

    out = {}
    for k, name in enumerate(classes):
        if 0 < targets[:, k].sum() < len(targets):
            precision, recall, _ = skm.precision_recall_curve(targets[:, k], probs[:, k])
            out[name] = {"precision": precision.round(6).tolist(), "recall": recall.round(6).tolist(),
                         "ap": float(skm.average_precision_score(targets[:, k], probs[:, k]))}
    return out


def multilabel_metrics(targets: np.ndarray, probs: np.ndarray, classes: list[str], task: MultiLabel) -> dict:
    """scikit-learn's multi-label metrics of probabilities (N, K) against 0/1 targets (N, K): per label precision,
    recall, F1, average precision, ROC AUC and support; overall mAP, micro / macro / samples F1, Hamming loss,
    subset accuracy, macro ROC AUC and the mean binary log loss. An undefined metric is null with its reason."""
    from sklearn import metrics as skm

    y, p = np.asarray(targets, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    pred = task.decide(p)
    undefined: dict[str, str] = {}
    per_label, aps, aucs = {}, [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, average=None, zero_division=0)
        for k, name in enumerate(classes):
            entry = {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                     "support": int(support[k]), "threshold": float(task.cut(len(classes))[k])}
            if y[:, k].any() and not y[:, k].all():
                entry["average_precision"] = float(skm.average_precision_score(y[:, k], p[:, k]))
                entry["roc_auc"] = float(skm.roc_auc_score(y[:, k], p[:, k]))
                aps.append(entry["average_precision"])
                aucs.append(entry["roc_auc"])
            else:
                entry["average_precision"] = entry["roc_auc"] = None
                undefined[f"per_class.{name}.roc_auc"] = ("label absent from the true labels" if not y[:, k].any()
                                                          else "every image has this label")
            per_label[name] = entry
        out = {"n": int(len(y)),
               "average_precision_macro": float(np.mean(aps)) if aps else None,
               "f1_micro": float(skm.f1_score(y, pred, average="micro", zero_division=0)),
               "f1_macro": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
               "f1_samples": float(skm.f1_score(y, pred, average="samples", zero_division=0)),
               "hamming_loss": float(skm.hamming_loss(y, pred)),
               "subset_accuracy": float(skm.accuracy_score(y, pred)),
               "roc_auc_macro": float(np.mean(aucs)) if aucs else None,
               "log_loss": task.log_loss(p, y)}
    wrong = (pred != y).astype(np.int64)  # which labels each image's decision got wrong (a miss or a false alarm)
    both = wrong.T @ wrong
    out["errors_together"] = sorted(
        ({"labels": [classes[a], classes[b]], "images": int(both[a, b])} for a in range(len(classes))
         for b in range(a + 1, len(classes)) if both[a, b]), key=lambda e: -e["images"])[:10]
    if len(aps) < len(classes):
        undefined["average_precision_macro"] = undefined["roc_auc_macro"] = (
            "averaged over the labels both present and absent in the true labels")
    out["per_class"] = per_label
    out["undefined"] = undefined
    return out
