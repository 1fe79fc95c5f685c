"""Automatic strategy choice: LogME and LEEP against hand-worked values, the 2x2 decision table,
the record in metrics.json, and `transferlab rank`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from transferlab.cli import main
from transferlab.config import load_config
from transferlab.pipeline import run_training
from transferlab.rank import parse_models, rank_models
from transferlab.run import RUN_DIR_ENV
from transferlab.strategies import QUADRANTS, decide
from transferlab.transferability import leep, logme, logme_single


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


def test_leep_by_hand():
    # two samples, two source classes, two target labels
    theta = np.array([[0.8, 0.2], [0.3, 0.7]])
    y = np.array([0, 1])
    # P(y, z) = theta / n per row; P(z) = [0.55, 0.45]; P(y=0|z) = [0.4/0.55, 0.1/0.45]
    p_y_given_z = np.array([[0.4 / 0.55, 0.1 / 0.45], [0.15 / 0.55, 0.35 / 0.45]])
    expected = (math.log(0.8 * p_y_given_z[0, 0] + 0.2 * p_y_given_z[0, 1])
                + math.log(0.3 * p_y_given_z[1, 0] + 0.7 * p_y_given_z[1, 1])) / 2
    assert leep(theta, y) == pytest.approx(expected, abs=1e-12)
    # a source that predicts the target perfectly (one source class per label) reaches the maximum, 0
    assert leep(np.eye(3)[[0, 1, 2, 0]], np.array([5, 6, 7, 5])) == pytest.approx(0.0)
    # an uninformative source gives the log of the label frequencies
    uniform = np.full((4, 3), 1 / 3)
    assert leep(uniform, np.array([0, 0, 0, 1])) == pytest.approx(
        (3 * math.log(0.75) + math.log(0.25)) / 4, abs=1e-12)


def test_logme_by_hand_on_one_feature():
    # n = 3, D = 1: F = [2, -1, 1]^T, y = [1, 0, 1]. F^T F = 6, F^T y = 3. The fixed point of
    # gamma = 6 beta / (alpha + 6 beta), m = 3 beta / (alpha + 6 beta), alpha = gamma / m^2,
    # beta = (3 - gamma) / |F m - y|^2 is alpha = 24/5, beta = 4: then m = 5/12, gamma = 5/6,
    # F m - y = [-1/6, -5/12, -7/12], |F m - y|^2 = 13/24, and indeed (3 - 5/6) / (13/24) = 4.
    features = np.array([[2.0], [-1.0], [1.0]])
    target = np.array([1.0, 0.0, 1.0])
    evidence, alpha, beta = logme_single(features, target)
    assert alpha == pytest.approx(24 / 5, rel=1e-5) and beta == pytest.approx(4.0, rel=1e-5)
    # the evidence is log N(y; 0, I/beta + F F^T/alpha) per sample
    covariance = np.eye(3) / 4.0 + features @ features.T / (24 / 5)
    by_hand = -0.5 * (target @ np.linalg.solve(covariance, target) + math.log(np.linalg.det(covariance))
                      + 3 * math.log(2 * math.pi)) / 3
    assert evidence == pytest.approx(by_hand, abs=1e-9)
    # LogME of labels is the mean over one-vs-all targets
    labels = np.array([0, 1, 0])
    both = (logme_single(features, (labels == 0).astype(float))[0]
            + logme_single(features, (labels == 1).astype(float))[0]) / 2
    assert logme(features, labels) == pytest.approx(both, abs=1e-12)


@pytest.mark.parametrize("n,d", [(12, 3), (6, 10), (40, 5)])
def test_logme_is_the_maximised_gaussian_evidence(n, d):
    rng = np.random.default_rng(n)
    features = rng.normal(size=(n, d))
    target = (rng.random(n) < 0.5).astype(float)
    evidence, alpha, beta = logme_single(features, target)

    def negative(log_params):
        a, b = np.exp(log_params)
        cov = np.eye(n) / b + features @ features.T / a
        return -multivariate_normal(np.zeros(n), cov).logpdf(target) / n

    assert evidence == pytest.approx(-negative(np.log([alpha, beta])), abs=1e-9)
    best = minimize(negative, [0.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12,
                                                                          "maxiter": 4000})
    assert evidence == pytest.approx(-best.fun, abs=1e-6)


def test_logme_ranks_informative_features_above_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    informative = np.eye(3)[labels] * 3 + rng.normal(size=(120, 3))
    noise = rng.normal(size=(120, 3))
    assert logme(np.hstack([informative, rng.normal(size=(120, 5))]), labels) > logme(
        np.hstack([noise, rng.normal(size=(120, 5))]), labels)


@pytest.mark.parametrize("per_class,score,expected", [
    (50, 1.2, (True, True)), (50, 0.3, (True, False)), (500, 1.2, (False, True)), (500, 0.3, (False, False)),
    (200, 0.8, (False, True)),  # thresholds are inclusive: 200 per class is not small, 0.8 is similar
])
def test_decision_table_covers_each_quadrant(per_class, score, expected):
    config = load_config()
    labels = np.repeat(np.arange(4), per_class)
    decision = decide(config, labels, logme_score=score)
    assert (decision.small, decision.similar) == expected
    strategy, meaning, overrides = QUADRANTS[expected]
    assert decision.strategy == strategy and decision.decision == meaning and decision.overrides == overrides
    assert decision.per_class == per_class and decision.images == 4 * per_class
    assert f"{4 * per_class:,} training images" in decision.reason and "LogME" in decision.reason
    if expected == (True, True):
        assert decision.strategy == "feature-extraction"
    if expected == (True, False):
        assert overrides["strategy.train_groups"] == ["late", "head"]
    if not expected[0]:
        backbone = overrides["strategy.lr_mult"]
        assert backbone["early"] < backbone["head"]
    low = QUADRANTS[(False, True)][2]["strategy.lr_mult"]
    high = QUADRANTS[(False, False)][2]["strategy.lr_mult"]
    assert all(low[g] < high[g] for g in ("early", "middle", "late"))


def test_decision_thresholds_are_configurable_and_leep_is_normalised():
    config = load_config(overrides=["strategy.auto.small_per_class=10", "strategy.auto.similar_logme=2.0"])
    decision = decide(config, np.repeat(np.arange(2), 50), logme_score=1.5)
    assert not decision.small and not decision.similar
    leep_config = load_config(overrides=["strategy.auto.score=leep"])
    # 4 classes: chance log-likelihood log(1/4); LEEP -0.2 is 1 - 0.2 / log(4) = 0.856 of the way to 0
    decision = decide(leep_config, np.repeat(np.arange(4), 30), logme_score=0.1, leep_score=-0.2)
    assert decision.score == pytest.approx(1 - 0.2 / math.log(4)) and decision.similar
    from transferlab.errors import ConfigError

    with pytest.raises(ConfigError, match="ImageNet classifier"):
        decide(leep_config, np.repeat(np.arange(4), 30), logme_score=0.1)


def test_auto_records_its_choice_in_metrics_json(color_folder, tmp_path):
    config = load_config(overrides=["preprocess.size=32", "train.workers=0", "data.decode_workers=1",
                                    "train.report=false", "train.epochs=2", "train.early_stopping=null"])
    run = run_training(str(color_folder), config, out=tmp_path / "auto", progress=False)
    strategy = json.loads((run / "metrics.json").read_text())["strategy"]
    for key in ("images", "per_class", "score", "method", "similar", "decision", "reason"):
        assert key in strategy, key
    assert strategy["requested"] == "auto" and strategy["method"] == "logme"
    assert strategy["images"] == 18 and strategy["per_class"] == 6.0  # the training split only
    assert strategy["leep"] is not None  # the bundled backbone has its ImageNet head
    expected = QUADRANTS[(True, strategy["similar"])][0]
    assert strategy["name"] == expected
    saved = load_config(run / "config.yaml")
    assert saved.strategy.name == expected  # config.yaml holds the concrete choice: a rerun repeats it


def test_rank_is_stable_under_a_fixed_seed(color_folder, tmp_path, capsys):
    config = load_config(overrides=["preprocess.size=32", "data.decode_workers=1", "model.pretrained=false"])
    models = parse_models("test_efficientnet,test_vit,test_convnext")
    first = rank_models(str(color_folder), models, config, progress=False)
    second = rank_models(str(color_folder), models, config, progress=False)
    assert [r["model"] for r in first["ranking"]] == [r["model"] for r in second["ranking"]]
    assert [r["logme"] for r in first["ranking"]] == [r["logme"] for r in second["ranking"]]
    scores = [r["logme"] for r in first["ranking"]]
    assert scores == sorted(scores, reverse=True) and [r["rank"] for r in first["ranking"]] == [1, 2, 3]
    out = tmp_path / "rank.json"
    assert main(["rank", str(color_folder), "--models", "tf_efficientnet_lite0,no_such_model", "--size", "32",
                 "--out", str(out), "--quiet", "--set", "data.decode_workers=1"]) == 0
    saved = json.loads(out.read_text())
    assert saved["ranking"][0]["model"] == "tf_efficientnet_lite0" and saved["ranking"][0]["leep"] is not None
    assert saved["unavailable"][0]["model"] == "no_such_model"
    assert main(["rank", str(color_folder), "--models", "no_such_model", "--quiet"]) == 2


def test_demo_runs_the_default_auto_strategy_on_a_subset(monkeypatch, tmp_path):
    """The demo is the first thing a newcomer sees: it must show the measured decision (auto), on
    a stratified subset at a CPU-friendly size, and pass its output directory through."""
    from transferlab import pipeline

    seen = {}

    def fake_run_training(data, config, out=None, progress=True):
        seen.update(data=data, config=config, out=out)
        return Path(out)

    monkeypatch.setattr(pipeline, "run_training", fake_run_training)
    assert pipeline.run_demo(out=tmp_path / "demo", progress=False) == tmp_path / "demo"
    config = seen["config"]
    assert seen["data"] in ("builtin:fashion-mnist", "builtin:digits")
    assert config.strategy.name == "auto"
    assert config.data.subset == 60 and config.preprocess.size == 128
    assert config.augment.preset == "light"
