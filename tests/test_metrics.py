"""Metrics equal scikit-learn's own functions; undefined ones are null with a reason; fold aggregation is exact."""

from __future__ import annotations


import numpy as np
import pytest
from sklearn import metrics as skm

from transferlab.evaluate import aggregate, aggregate_folds
from transferlab.metrics import expected_calibration_error
from transferlab.tasks import SINGLE, SingleLabel


def random_case(n: int, k: int, seed: int, absent: tuple[int, ...] = ()):
    rng = np.random.default_rng(seed)
    present = [c for c in range(k) if c not in absent]
    y = rng.choice(present, size=n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]  # better than chance, not perfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


@pytest.mark.parametrize("k", [2, 5])
def test_every_metric_equals_scikit_learn(k):
    y, probs = random_case(300, k, seed=k)
    classes = [f"c{i}" for i in range(k)]
    m = SINGLE.metrics(y, probs, classes)
    pred = probs.argmax(axis=1)
    labels = list(range(k))
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["balanced_accuracy"] == skm.balanced_accuracy_score(y, pred)
    for average in ("macro", "weighted"):
        assert m[f"precision_{average}"] == skm.precision_score(y, pred, average=average, zero_division=0)
        assert m[f"recall_{average}"] == skm.recall_score(y, pred, average=average, zero_division=0)
        assert m[f"f1_{average}"] == skm.f1_score(y, pred, average=average, zero_division=0)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=labels), rel=1e-12)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    np.testing.assert_allclose(m["confusion_matrix_normalized"],
                               skm.confusion_matrix(y, pred, normalize="true"), atol=1e-6)
    per_f1 = skm.f1_score(y, pred, average=None)
    for c in range(k):
        entry = m["per_class"][f"c{c}"]
        assert entry["f1"] == per_f1[c]
        assert entry["roc_auc"] == skm.roc_auc_score(y == c, probs[:, c])
        assert entry["pr_auc"] == skm.average_precision_score(y == c, probs[:, c])
        assert entry["support"] == int((y == c).sum())
    if k == 2:
        assert m["roc_auc"] == skm.roc_auc_score(y, probs[:, 1])
    else:
        assert m["roc_auc_ovr_macro"] == skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
        assert m["roc_auc_ovr_weighted"] == skm.roc_auc_score(y, probs, multi_class="ovr", average="weighted")
        assert m["top3_accuracy"] == skm.top_k_accuracy_score(y, probs, k=3)
    assert set(m["roc_curves"]) == set(classes)
    fpr, tpr, _ = skm.roc_curve(y == 1, probs[:, 1])
    np.testing.assert_allclose(m["roc_curves"]["c1"]["fpr"], fpr, atol=1e-6)
    np.testing.assert_allclose(m["roc_curves"]["c1"]["tpr"], tpr, atol=1e-6)


def test_absent_class_gives_nulls_with_reasons_not_a_crash():
    y, probs = random_case(120, 4, seed=9, absent=(2,))
    m = SINGLE.metrics(y, probs, ["a", "b", "c", "d"])
    pred = probs.argmax(axis=1)
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["f1_macro"] == skm.f1_score(y, pred, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    assert m["roc_auc_ovr_macro"] is None and "c" in m["undefined"]["roc_auc_ovr_macro"]
    assert m["per_class"]["c"]["roc_auc"] is None
    assert m["undefined"]["per_class.c.roc_auc"] == "class absent from the true labels"
    assert m["per_class"]["c"]["recall"] is None
    assert m["per_class"]["a"]["roc_auc"] == skm.roc_auc_score(y == 0, probs[:, 0])
    binary_one_class = SINGLE.metrics(np.zeros(5, int), np.tile([0.7, 0.3], (5, 1)), ["x", "y"])
    assert binary_one_class["roc_auc"] is None and "only one class" in binary_one_class["undefined"]["roc_auc"]


def test_the_monitored_validation_f1_averages_over_every_class_as_the_report_does():
    """A class absent from validation and never predicted still counts (with 0) in val_f1_macro,
    so the checkpoint a stage keeps is chosen by the same number metrics.json reports."""
    y = np.array([0, 0, 1, 1, 1, 0])
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.7, 0.2, 0.1],
                      [0.9, 0.05, 0.05]])
    f1 = SINGLE.metrics(y, probs, ["a", "b", "c"])["f1_macro"]
    assert SINGLE.monitored(y, probs)["val_f1_macro"] == pytest.approx(f1)
    assert f1 == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def test_single_class_prediction():
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.tile([0.8, 0.1, 0.1], (6, 1))
    m = SINGLE.metrics(y, probs, ["a", "b", "c"])
    assert m["precision_macro"] == skm.precision_score(y, np.zeros(6, int), average="macro", zero_division=0)
    assert m["per_class"]["b"]["precision"] is None
    assert m["undefined"]["per_class.b.precision"] == "class never predicted"
    assert "never predicted: b, c" in m["undefined"]["precision_macro"]


def test_expected_calibration_error_by_hand():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    # bins of width 1/15: confidences 0.9, 0.9 (one bin, both right: accuracy 1) and 0.6, 0.6
    # (one bin, the first right, the second wrong: accuracy 1/2)
    expected = 0.5 * abs(1.0 - 0.9) + 0.5 * abs(0.5 - 0.6)
    assert expected_calibration_error(y, probs, SINGLE.decide(probs)) == pytest.approx(expected)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(np.array([0, 1]), perfect, SINGLE.decide(perfect)) == 0.0


def test_every_metric_reads_the_tasks_decision_not_an_argmax_of_its_own():
    """A single-label task that decides otherwise than by the largest probability (here: class 1 from 0.3 up,
    as a user who fears missing it would) gets its accuracy, confusion matrix, calibration curve, monitored
    values and bootstrap intervals from that decision: the metrics say what the model decides."""

    class Cautious(SingleLabel):
        def decide(self, probs):
            return (np.asarray(probs)[..., 1] >= 0.3).astype(np.int64)

    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.65, 0.35], [0.6, 0.4], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    task, pred = Cautious(), np.array([0, 1, 1, 1, 1, 1])
    assert (task.decide(probs) == pred).all() and (SINGLE.decide(probs) != pred).any()
    m = task.metrics(y, probs, ["no", "yes"])
    assert m["accuracy"] == skm.accuracy_score(y, pred) == 4 / 6  # an argmax would say 5 / 6
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist() == [[1, 2], [0, 3]]
    assert m["f1_macro"] == skm.f1_score(y, pred, average="macro")
    assert task.monitored(y, probs)["val_accuracy"] == 4 / 6
    curve = task.reliability(y, probs)  # its bins' accuracies average to the decision's accuracy
    assert sum(a * n for a, n in zip(curve["accuracy"], curve["count"])) / sum(curve["count"]) == pytest.approx(4 / 6)
    assert curve == m["calibration"]
    intervals, _ = task.intervals(np.tile(y, 50), np.tile(probs, (50, 1)), ["no", "yes"], resamples=400, seed=0)
    low, high = intervals["accuracy"]  # 300 images: about 4/6 +- 0.05, far from the argmax's 5/6
    assert low <= 4 / 6 <= high < 0.75


def test_aggregate_is_exact_on_known_inputs():
    result = aggregate([0.8, 0.9, 1.0])
    assert result["mean"] == pytest.approx(0.9)
    assert result["std"] == pytest.approx(0.1)
    # the t interval over these folds would be [0.652, 1.148]: past the range of an accuracy. The
    # interval comes from the bootstrap of the out-of-fold predictions instead (test below).
    assert result["ci95"] is None
    with_gap = aggregate([0.5, None, 0.7])
    assert with_gap["n"] == 2 and with_gap["undefined_folds"] == 1 and with_gap["mean"] == pytest.approx(0.6)
    assert aggregate([None])["mean"] is None and aggregate([0.4])["std"] is None


def test_aggregate_folds_covers_scalars_and_per_class():
    folds = [SINGLE.metrics(*random_case(60, 3, seed=s), ["a", "b", "c"]) for s in range(4)]
    out = aggregate_folds(folds)
    assert out["metrics"]["accuracy"]["mean"] == pytest.approx(np.mean([f["accuracy"] for f in folds]))
    assert out["metrics"]["accuracy"]["std"] == pytest.approx(np.std([f["accuracy"] for f in folds], ddof=1))
    assert out["per_class"]["b"]["f1"]["values"] == [f["per_class"]["b"]["f1"] for f in folds]


@pytest.mark.parametrize("k", [2, 3, 6])
def test_the_bootstrap_metrics_equal_scikit_learns(k):
    """The fast metrics the bootstrap resamples are the same numbers the task's metrics (scikit-learn) give."""
    from transferlab.metrics import resampled_metrics

    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 200)
    probs = rng.dirichlet(np.ones(k), 200)
    probs[np.arange(200), y] += rng.uniform(0, 1, 200)
    probs /= probs.sum(axis=1, keepdims=True)
    fast, per_class = resampled_metrics(y, probs, SINGLE.decide(probs))
    full = SINGLE.metrics(y, probs, [str(c) for c in range(k)])
    for key, value in fast.items():
        assert value == pytest.approx(full[key], abs=1e-12), key
    for c in range(k):
        for key in ("precision", "recall", "f1", "roc_auc"):
            assert per_class[key][c] == pytest.approx(full["per_class"][str(c)][key], abs=1e-12)


def test_bootstrap_intervals_stay_inside_the_metric_range_and_cover_the_estimate():
    y = np.array([0] * 30 + [1] * 30)
    probs = np.eye(2)[y] * 0.9 + 0.05
    probs[0] = [0.3, 0.7]  # one mistake: accuracy 59/60, near the edge of its range
    intervals, per_class = SINGLE.intervals(y, probs, ["a", "b"], resamples=500, seed=0)
    low, high = intervals["accuracy"]
    assert 0.9 < low <= 59 / 60 <= high <= 1.0
    assert all(0 <= v <= 1 for key in ("f1_macro", "balanced_accuracy", "roc_auc") for v in intervals[key])
    assert all(0 <= v <= 1 for c in per_class.values() for pair in c.values() if pair for v in pair)


def test_a_splits_intervals_match_the_binomial_width_and_cover_the_value():
    """The interval printed beside each metric of a split: for accuracy on 400 images at 0.8 it is about the
    normal approximation's 0.8 ± 1.96 sqrt(0.8 x 0.2 / 400) = [0.761, 0.839]; a perfect split's is [1, 1]."""
    from transferlab.tasks import SINGLE

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    probs = np.full((400, 4), 0.1)
    right = np.arange(400) < 320
    probs[np.arange(400), np.where(right, y, (y + 1) % 4)] = 0.7
    intervals = SINGLE.split_intervals(y, probs, resamples=2000, seed=1)
    low, high = intervals["accuracy"]
    assert low == pytest.approx(0.761, abs=0.01) and high == pytest.approx(0.839, abs=0.01)
    assert intervals["log_loss"][0] < float(-np.log(probs[np.arange(400), y]).mean()) < intervals["log_loss"][1]
    perfect = np.eye(4)[y] * 0.9 + 0.025
    assert SINGLE.split_intervals(y, perfect, resamples=200, seed=0)["accuracy"] == [1.0, 1.0]
