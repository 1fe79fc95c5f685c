"""Automatic strategy choice: LogME and LEEP against hand-worked values, the 2x2 decision table,
the record in metrics.json, and `transferlab rank`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from transferlab.cli import main
from transferlab.config import load_config
from transferlab.pipeline import run_training
from transferlab.rank import parse_models, rank_models
from transferlab.run import RUN_DIR_ENV
from transferlab.strategies.auto import decide
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


# what each quadrant of the rule must do, written out (not read from the table under test)
EXPECTED = {
    (True, True): ("feature-extraction", {}),
    (True, False): ("fine-tune", {"strategy.fine_tune.train_groups": ["late", "head"],
                                  "strategy.lr_mult": {"early": 0.0, "middle": 0.0, "late": 0.3, "head": 1.0}}),
    (False, True): ("fine-tune", {"strategy.lr_mult": {"early": 0.01, "middle": 0.03, "late": 0.1, "head": 1.0}}),
    (False, False): ("fine-tune", {"strategy.lr_mult": {"early": 0.1, "middle": 0.3, "late": 1.0, "head": 1.0}}),
}


@pytest.mark.parametrize("per_class,score,expected", [
    (50, 1.2, (True, True)), (50, 0.3, (True, False)), (500, 1.2, (False, True)), (500, 0.3, (False, False)),
    (200, 0.8, (False, True)),  # thresholds are inclusive: 200 per class is not small, 0.8 is similar
])
def test_decision_table_covers_each_quadrant(per_class, score, expected):
    config = load_config()
    labels = np.repeat(np.arange(4), per_class)
    decision = decide(config, labels, logme_score=score)
    assert (decision.small, decision.similar) == expected
    assert (decision.strategy, decision.overrides) == EXPECTED[expected]
    assert decision.per_class == per_class and decision.images == 4 * per_class
    assert f"{4 * per_class:,} training images" in decision.reason and "LogME" in decision.reason
    assert ("small" if expected[0] else "large") in decision.reason
    assert ("similar" if expected[1] else "different") in decision.reason


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


@pytest.fixture
def muddled_folder(tmp_path):
    """Three colour classes of 12 images whose colours overlap, two of each class mislabelled: no
    candidate can get every validation image right."""
    from PIL import Image

    rng = np.random.default_rng(1)
    names = ("red", "green", "blue")
    for k, name in enumerate(names):
        for i in range(12):
            img = rng.integers(40, 140, (24, 24, 3), dtype=np.uint8)
            img[..., k] += 40
            label = names[(k + 1) % 3] if i < 2 else name
            path = tmp_path / "muddled" / label / f"{name}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
    return tmp_path / "muddled"


def test_auto_searches_on_validation_and_records_every_candidate(muddled_folder, tmp_path):
    config = load_config(overrides=["preprocess.size=32", "train.workers=0", "data.decode_workers=1",
                                    "train.report=false", "train.early_stopping=null"])
    run = run_training(str(muddled_folder), config, out=tmp_path / "auto", progress=False)
    strategy = json.loads((run / "metrics.json").read_text())["strategy"]
    decision = strategy["decision"]
    prior = decision["prior"]
    for key in ("images", "per_class", "score", "method", "similar", "decision", "reason", "candidate"):
        assert key in prior, key
    assert strategy["requested"] == "auto" and prior["method"] == "logme"
    assert prior["images"] == 24 and prior["per_class"] == 8.0  # the training split only
    assert prior["leep"] is not None  # the bundled backbone has its ImageNet head
    assert decision["validation_images"] == 6 and decision["budget"]["seconds"] == 600
    assert all(c["accuracy"] is None or c["accuracy"] < 1 for c in decision["candidates"])
    scored = [c for c in decision["candidates"] if c["accuracy"] is not None]
    assert {c["name"] for c in scored} >= {"linear-probe", "feature-extraction"}
    assert {c["size"] for c in decision["candidates"]} == {32}  # --size given: no size search
    for c in scored:  # every score with its uncertainty and its cost
        assert 0 <= c["accuracy"] <= 1 and c["se"] >= 0 and c["seconds"] >= 0
    winner = next(c for c in scored if (c["name"], c["size"]) == (decision["chosen"], decision["size"])
                  and not c["status"].startswith("superseded"))
    best = max(c["accuracy"] for c in scored if not c["status"].startswith("superseded"))
    assert winner["accuracy"] >= best - 1.0 * max(winner["behind_best_se"], 1e-12) - 1e-9
    assert decision["agreed_with_rule"] == (decision["chosen"] == prior["candidate"])
    saved = load_config(run / "config.yaml")  # the concrete choice: a rerun repeats the final training
    assert saved.strategy.name == strategy["name"] and saved.train.epochs is not None
    assert saved.preprocess.size == decision["size"]


def test_the_noise_aware_choice_prefers_the_cheaper_within_a_standard_error():
    from transferlab.strategies.auto import Candidate, Search, paired_difference

    # paired difference by hand: best right on 8 of 10, other on 7; they disagree on 3 images (2 vs 1)
    best = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    other = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0], dtype=bool)
    diff, se = paired_difference(best, other)
    assert diff == pytest.approx(0.1) and se == pytest.approx(math.sqrt(3 - 1 / 10) / 10)
    search = Search.__new__(Search)
    search.auto = load_config().strategy.auto
    expensive = Candidate("fine-tune", 224, accuracy=0.8, correct=best, final_seconds=300)
    cheap = Candidate("linear-probe", 224, accuracy=0.7, correct=other, final_seconds=10)
    search.tried = [expensive, cheap]
    assert search.choose() is cheap  # 0.1 behind, within one standard error (0.17) of the best
    clear = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)  # 7 behind on 10 images: beyond noise
    search.tried = [expensive, Candidate("linear-probe", 224, accuracy=0.1, correct=clear, final_seconds=10)]
    assert search.choose() is expensive


def test_a_tight_budget_skips_expensive_candidates_and_says_so(color_folder, tmp_path):
    config = load_config(overrides=["preprocess.size=32", "train.workers=0", "data.decode_workers=1",
                                    "train.report=false", "train.budget=2s"])
    run = run_training(str(color_folder), config, out=tmp_path / "auto", progress=False)
    decision = json.loads((run / "metrics.json").read_text())["strategy"]["decision"]
    statuses = {c["name"]: c["status"] for c in decision["candidates"]}
    assert statuses["linear-probe"] == "scored"  # always one measured candidate
    assert decision["budget"]["seconds"] == 2
    assert all(statuses[n].startswith("skipped") for n in ("fine-tune-late", "fine-tune", "gradual") if n in statuses)


def test_rank_orders_backbones_by_the_logme_of_their_own_features(color_folder, tmp_path, capsys):
    """The ranking equals LogME recomputed here from each backbone's pooled features, taken by
    running the timm model directly on the decoded images (not through transferlab's feature path)."""
    import timm
    import torch

    from transferlab.data import load_dataset
    from transferlab.preprocess import backbone_defaults

    config = load_config(overrides=["preprocess.size=32", "data.decode_workers=1", "model.pretrained=false"])
    names = ["test_efficientnet", "test_vit", "test_convnext"]
    result = rank_models(str(color_folder), parse_models(",".join(names)), config, progress=False)
    dataset = load_dataset(str(color_folder), config, progress=False)
    pixels = torch.from_numpy(dataset.images.take(np.arange(len(dataset)))).permute(0, 3, 1, 2).float() / 255
    expected = {}
    for name in names:
        torch.manual_seed(config.seed)
        extra = {"img_size": 32} if "vit" in name else {}
        model = timm.create_model(name, pretrained=False, num_classes=0, **extra).eval()
        defaults = backbone_defaults(name)
        mean, std = (torch.tensor(defaults[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
        with torch.no_grad():
            features = model((pixels - mean) / std).numpy()
        expected[name] = logme(features, dataset.labels)
    assert [r["model"] for r in result["ranking"]] == sorted(names, key=lambda n: -expected[n])
    for entry in result["ranking"]:
        assert entry["logme"] == pytest.approx(expected[entry["model"]], abs=1e-3)
    assert [r["rank"] for r in result["ranking"]] == [1, 2, 3]
    out = tmp_path / "rank.json"
    assert main(["rank", str(color_folder), "--models", "tf_efficientnet_lite0,no_such_model", "--size", "32",
                 "--out", str(out), "--quiet", "--set", "data.decode_workers=1"]) == 0
    saved = json.loads(out.read_text())
    assert saved["ranking"][0]["model"] == "tf_efficientnet_lite0" and saved["ranking"][0]["leep"] is not None
    assert saved["unavailable"][0]["model"] == "no_such_model"
    assert main(["rank", str(color_folder), "--models", "no_such_model", "--quiet"]) == 2
    assert main(["rank", str(tmp_path / "missing"), "--models", "tf_efficientnet_lite0", "--quiet"]) == 2


@pytest.mark.slow
def test_the_demo_runs_the_default_auto_strategy_end_to_end(tmp_path, monkeypatch):
    """The demo is the first thing a newcomer sees: the real command, on its real data (Fashion-
    MNIST, or digits when it is not installed), must show the measured decision and finish with a
    report. Slow (about two minutes): `make test-slow`."""
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    run = tmp_path / "demo"
    metrics = json.loads((run / "metrics.json").read_text())
    config = load_config(run / "config.yaml")
    assert metrics["strategy"]["requested"] == "auto" and metrics["strategy"]["decision"]["reason"]
    assert config.data.subset == 60 and config.preprocess.size == 128 and config.augment.preset == "light"
    assert metrics["data"]["source"] in ("builtin:fashion-mnist", "builtin:digits")
    assert metrics["test"]["accuracy"] > 0.6 and (run / "report.html").is_file()


def test_a_winning_linear_probe_is_refit_on_train_and_val(color_folder, tmp_path):
    """The probe picks C by inner cross-validation, so once auto has chosen it on validation
    evidence its final fit uses the validation images too; the run then claims no validation
    metrics (they would not be held out), and the test split stays untouched."""
    config = load_config(overrides=["preprocess.size=32", "train.workers=0", "data.decode_workers=1",
                                    "train.report=false", "strategy.auto.candidates=[linear-probe]"])
    run = run_training(str(color_folder), config, out=tmp_path / "auto", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    decision = metrics["strategy"]["decision"]
    assert decision["chosen"] == "linear-probe" and decision["refit_on_val"] is True
    assert "refit on train + val (24 images)" in decision["reason"]
    assert metrics["data"]["splits"] == {"train": 24, "val": 0, "test": 6}
    assert metrics["strategy"]["stages"]["probe"]["groups"]["head"]["images"] == 24
    assert "val" not in metrics and metrics["test"]["n"] == 6
    assert load_config(run / "config.yaml").strategy.linear_probe.refit_on_val  # a rerun repeats the refit
    held = load_config(overrides=["preprocess.size=32", "train.workers=0", "data.decode_workers=1",
                                  "train.report=false", "strategy.auto.candidates=[linear-probe]",
                                  "strategy.auto.refit=false"])
    kept = json.loads((run_training(str(color_folder), held, out=tmp_path / "held", progress=False)
                       / "metrics.json").read_text())
    assert kept["data"]["splits"]["val"] == 6 and "val" in kept


def test_refit_on_val_is_refused_for_a_strategy_that_chooses_on_validation(color_folder, tmp_path):
    from transferlab.errors import ConfigError

    config = load_config(overrides=["preprocess.size=32", "train.workers=0", "data.decode_workers=1",
                                    "train.report=false", "strategy.name=feature-extraction",
                                    "strategy.linear_probe.refit_on_val=true"])
    with pytest.raises(ConfigError, match="linear-probe only"):
        run_training(str(color_folder), config, out=tmp_path / "fe", progress=False)


def test_the_search_stops_once_a_candidate_gets_every_validation_image_right(color_folder, tmp_path):
    """No candidate can be shown better than a perfect one, and among equals the cheaper wins: the
    search ends there (the colour task is separable by the probe at the first size)."""
    config = load_config(overrides=["preprocess.size=32", "train.workers=0", "data.decode_workers=1",
                                    "train.report=false"])
    run = run_training(str(color_folder), config, out=tmp_path / "auto", progress=False)
    decision = json.loads((run / "metrics.json").read_text())["strategy"]["decision"]
    scored = [c for c in decision["candidates"] if c["accuracy"] is not None]
    assert [(c["name"], c["accuracy"]) for c in scored] == [("linear-probe", 1.0)]
    assert decision["candidates"][-1]["status"] == "skipped: a candidate already scored every validation image right"
    assert decision["chosen"] == "linear-probe"
