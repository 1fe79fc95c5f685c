"""Automatic strategy choice: LogME and LEEP against hand-worked values, the 2x2 decision table,
the record in metrics.json, and `transferlab rank`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from transferlab.cli import main
from transferlab.config import load_config
from transferlab.run import run_training
from transferlab.rank import parse_models, rank_models
from transferlab.rundir import RUN_DIR_ENV
from transferlab.search import resolvable_gain
from transferlab.search.ensemble import select
from transferlab.search.rule import decide
from transferlab.strategies.linear_probe import C_GRID, logistic_path
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
@pytest.mark.parametrize("per_class,score,expected", [
    (50, 1.2, (True, True)), (50, 0.3, (True, False)), (500, 1.2, (False, True)), (500, 0.3, (False, False)),
    (200, 0.8, (False, True)),  # thresholds are inclusive: 200 per class is not small, 0.8 is similar
])
def test_decision_table_covers_each_quadrant(per_class, score, expected):
    labels = np.repeat(np.arange(4), per_class)
    prior = decide(load_config().strategy.auto, labels, logme_score=score)
    assert (prior.small, prior.similar) == expected
    assert prior.candidate == {(True, True): "linear-probe", (True, False): "fine-tune-late",
                               (False, True): "fine-tune-low", (False, False): "fine-tune"}[expected]
    assert prior.fine_tuning_worth_trying == (expected != (True, True))
    assert prior.per_class == per_class and prior.images == 4 * per_class
    assert f"{4 * per_class:,} training images" in prior.reason and "LogME" in prior.reason
    assert ("small" if expected[0] else "large") in prior.reason
    assert ("similar" if expected[1] else "different") in prior.reason


def test_decision_thresholds_are_configurable_and_leep_is_normalised():
    config = load_config(overrides=["strategy.auto.small_per_class=10", "strategy.auto.similar_logme=2.0"])
    prior = decide(config.strategy.auto, np.repeat(np.arange(2), 50), logme_score=1.5)
    assert not prior.small and not prior.similar
    auto = load_config(overrides=["strategy.auto.score=leep"]).strategy.auto
    # 4 classes: chance log-likelihood log(1/4); LEEP -0.2 is 1 - 0.2 / log(4) = 0.856 of the way to 0
    prior = decide(auto, np.repeat(np.arange(4), 30), logme_score=0.1, leep_score=-0.2)
    assert prior.score == pytest.approx(1 - 0.2 / math.log(4)) and prior.similar
    from transferlab.errors import ConfigError

    with pytest.raises(ConfigError, match="ImageNet classifier"):
        decide(auto, np.repeat(np.arange(4), 30), logme_score=0.1)


@pytest.fixture
def muddled_folder(tmp_path):
    """Three colour classes of 12 images whose colours overlap, two of each class mislabelled: no
    candidate can get every image right."""
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


def test_auto_scores_every_candidate_out_of_fold_and_records_the_ensemble(muddled_folder, tmp_path):
    """Every cheap candidate is scored on out-of-fold predictions of ALL training + validation
    images (not a 6-image validation split); the ensemble's members, weights and the selection
    score (marked optimistic) are recorded; config.yaml holds the concrete ensemble, so a rerun
    from it repeats the final fit, without the search, to the same predictions."""
    config = load_config(overrides=["strategy.auto.sizes=[32, 48]", "train.workers=0", "data.decode_workers=1",
                                    "train.report=false", "train.early_stopping=null"])
    run = run_training(str(muddled_folder), config, out=tmp_path / "auto", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    decision = metrics["strategy"]["decision"]
    prior = decision["prior"]
    assert metrics["strategy"]["requested"] == "auto" and prior["method"] == "logme"
    assert prior["images"] == 24 and prior["per_class"] == 8.0 and prior["leep"] is not None  # training part only
    probes = [c for c in decision["candidates"] if c["strategy"] == "linear-probe"]
    assert {(c["size"], c["settings"]["strategy.linear_probe.C"]) for c in probes} == {
        (s, c) for s in (32, 48) for c in C_GRID}
    assert all(c["rows"] == "train+val" and 0 <= c["accuracy"] <= 1 and c["se"] > 0 for c in probes)
    assert decision["evidence"]["images"] == 30  # 24 train + 6 val, out of fold
    assert sum(m["weight"] for m in decision["members"]) == pytest.approx(1.0)
    assert "optimistic" in decision["ensemble"]["note"]
    assert all(c["status"].startswith("skipped") for c in decision["candidates"] if c["strategy"] != "linear-probe")
    saved = load_config(run / "config.yaml")
    assert saved.strategy.name == "ensemble" and saved.preprocess.size == 24  # the 24 px images at their own size
    assert [(m.size, m.weight) for m in saved.strategy.ensemble.members] == [
        (m["size"], m["weight"]) for m in decision["members"]]
    again = run_training(str(muddled_folder), saved, out=tmp_path / "again", progress=False)
    assert (again / "predictions.csv").read_text() == (run / "predictions.csv").read_text()
    assert "decision" not in json.loads((again / "metrics.json").read_text())["strategy"] or \
        json.loads((again / "metrics.json").read_text())["strategy"]["decision"] is None


def test_ensemble_selection_by_hand():
    """Caruana's greedy selection with replacement: two complementary candidates average to a lower
    log loss than either; a useless one is never added."""
    labels = np.array([0, 1])
    a = np.array([[0.9, 0.1], [0.6, 0.4]])  # right on the first image, wrong on the second
    b = np.array([[0.4, 0.6], [0.1, 0.9]])  # the other way round
    noise = np.array([[0.5, 0.5], [0.5, 0.5]])
    weights, history = select([a, b, noise], labels)
    assert weights.tolist() == [0.5, 0.5, 0.0]
    assert history[0] == pytest.approx(-(np.log(0.9) + np.log(0.4)) / 2)  # a alone (a and b tie; first wins)
    assert history[-1] == pytest.approx(-np.log(0.65))  # the average: 0.65 on both images
    only, _ = select([a], labels)
    assert only.tolist() == [1.0]


def test_the_torch_probe_solves_scikit_learns_objective():
    """The probe's L-BFGS minimises scikit-learn's objective (C x summed cross-entropy + half the
    squared weights, intercept free): the same coefficients as LogisticRegression, on real-shaped
    data, including class weights."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=(120, 16))).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > np.median(x[:, 0] + x[:, 1])).astype(int) + (x[:, 2] > 1.2)
    for balanced in (False, True):
        (w, b), = logistic_path(x, y, 3, [0.3], balanced=balanced)
        ref = LogisticRegression(C=0.3, max_iter=10000, tol=1e-10, class_weight="balanced" if balanced else None
                                 ).fit(x.astype(np.float64), y)
        probs = torch.softmax(torch.from_numpy(x) @ w.T + b, dim=1).numpy()
        np.testing.assert_allclose(probs, ref.predict_proba(x), atol=2e-3)


def test_resolvable_gain_by_hand():
    # accuracy p = 0.8 on 400 images: per-image scores vary by p(1-p) = 0.16; 2 * sqrt(2 * 0.16 / 400) = 0.0566
    assert resolvable_gain(0.16, 400) == pytest.approx(2 * math.sqrt(0.32 / 400))
    assert resolvable_gain(0.16, 0) == math.inf


def test_a_multilabel_candidate_is_scored_per_image_so_its_evidence_can_tell_a_gain():
    """Subset accuracy (all labels right) near 0.4 varies by 0.24 per image, and 600 images could not tell a 5-point
    gain from noise: multi-label sets never tried a training candidate. The F1 of each image's label set varies less."""
    from transferlab.search import Candidate
    from transferlab.tasks import MultiLabel

    task = MultiLabel(fixed=0.5)
    truth = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]])
    probs = np.array([[0.9, 0.1, 0.1, 0.1], [0.9, 0.2, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.9]])
    # image by image: exact, {a} of {a, b} (F1 2/3), empty and empty (1), {a, b, d} of {a, b, c} (F1 2/3)
    np.testing.assert_allclose(task.scores(probs, truth), [1, 2 / 3, 1, 2 / 3])
    assert task.correct(probs, truth).tolist() == [True, False, True, False]

    rng = np.random.default_rng(0)
    truth = (rng.random((600, 6)) < 0.35).astype(int)
    noisy = np.clip(truth * 0.8 + rng.normal(0.1, 0.35, truth.shape), 0.01, 0.99)
    candidate = Candidate("linear-probe", "linear-probe", 32, {})
    candidate.probs = noisy
    candidate.score(truth, task)
    subset = task.correct(noisy, truth).mean()
    assert 0.2 < subset < 0.6 and resolvable_gain(subset * (1 - subset), 600) > 0.05
    assert candidate.accuracy > subset and resolvable_gain(candidate.spread, 600) < 0.05


@pytest.mark.slow  # two auto runs against a 20 s budget: ~18 s alone, and timing-sensitive on a loaded machine
def test_a_tight_budget_or_a_small_validation_split_skips_fine_tuning_and_says_why(color_folder, tmp_path):
    config = load_config(overrides=["preprocess.size=32", "train.workers=0", "data.decode_workers=1",
                                    "train.report=false", "train.budget=20s", "strategy.auto.resolvable=1"])
    run = run_training(str(color_folder), config, out=tmp_path / "auto", progress=False)
    decision = json.loads((run / "metrics.json").read_text())["strategy"]["decision"]
    assert decision["budget"]["seconds"] <= 20
    expensive = [c for c in decision["candidates"] if c["strategy"] != "linear-probe"]
    assert expensive and all(c["status"].startswith("skipped") or c["rows"] == "val" for c in expensive)
    small = load_config(overrides=["preprocess.size=32", "train.workers=0", "data.decode_workers=1",
                                   "train.report=false"])
    decision = json.loads((run_training(str(color_folder), small, out=tmp_path / "small", progress=False)
                           / "metrics.json").read_text())["strategy"]["decision"]
    assert all("can tell a gain below" in c["status"] or "does not pay" in c["status"]
               for c in decision["candidates"] if c["strategy"] != "linear-probe")


@pytest.mark.slow  # an auto run against a 15 s budget
def test_the_budget_bounds_the_whole_run_what_came_before_and_what_comes_after_the_fit(color_folder, tmp_path,
                                                                                       capsys):
    """--budget is the run's wall time: the search's share is what is left after decoding, splitting and the
    near-duplicate pass, less what the audit and the report will take (the search had the whole budget from
    the end of decoding, and a multi-label run ended at 619 s of its 600)."""
    import re

    config = load_config(overrides=["preprocess.size=32", "train.workers=0", "data.decode_workers=1",
                                    "train.report=false", "train.budget=15s", "audit.enabled=true"])
    run = run_training(str(color_folder), config, out=tmp_path / "auto", progress=True)
    said = re.search(r"budget 0\.2 min: (\d+) s spent before the fit \(decoding, splitting, near-duplicates\), about "
                     r"(\d+) s kept for what comes after it", capsys.readouterr().err)
    assert said, "the budget's division is printed at the start"
    metrics = json.loads((run / "metrics.json").read_text())
    seconds, planned = metrics["seconds"], metrics["strategy"]["decision"]["budget"]["seconds"]
    assert {"before_fit", "search", "fit", "evaluate", "audit", "report"} <= set(seconds), seconds
    assert seconds["budget"] == 15 and seconds["kept_after"] >= 1, seconds
    kept = int(said.group(2))
    assert kept >= 1 and planned <= 15 - seconds["before_fit"] - kept + 0.5, (planned, seconds, kept)


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
    assert config.data.subset == 60 and config.model.size == 224 and config.augment.preset == "light"
    assert config.preprocess.size == (28 if "fashion" in config.data.source else 8)  # stored at the images' own size
    assert metrics["data"]["source"] in ("builtin:fashion-mnist", "builtin:digits")
    assert metrics["test"]["accuracy"] > 0.6 and (run / "report.html").is_file()


def test_probe_members_are_refit_on_train_and_val(color_folder, tmp_path):
    """A probe's C needs no validation split, so once the search has chosen it its final fit uses the
    validation images too; the run then claims no validation metrics (they would not be held out),
    and the test split stays untouched."""
    config = load_config(overrides=["preprocess.size=32", "train.workers=0", "data.decode_workers=1",
                                    "train.report=false", "strategy.auto.candidates=[linear-probe]"])
    run = run_training(str(color_folder), config, out=tmp_path / "auto", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["splits"] == {"train": 18, "val": 6, "test": 6}
    probe = next(v for k, v in metrics["strategy"]["stages"].items() if k.endswith("/probe"))
    assert probe["groups"]["head"]["images"] == 24  # train + val
    assert "val" not in metrics and metrics["test"]["n"] == 6
    held = load_config(overrides=["preprocess.size=32", "train.workers=0", "data.decode_workers=1",
                                  "train.report=false", "strategy.auto.candidates=[linear-probe]",
                                  "strategy.auto.refit=false"])
    kept = json.loads((run_training(str(color_folder), held, out=tmp_path / "held", progress=False)
                       / "metrics.json").read_text())
    assert "val" in kept and kept["val"]["n"] == 6


def test_a_search_run_again_on_resume_reads_back_what_its_trial_finished(color_folder, tmp_path, monkeypatch):
    """A run interrupted before its search settled runs the search again on resume; a trial then reads the stages
    its member folder's state.json says are finished back (as that member's final fit does), never fits them again."""
    from transferlab.data import holdout_split, load_dataset
    from transferlab.features import FeatureStore
    from transferlab.fit import FitContext
    from transferlab.search import Candidate, Search
    from transferlab.strategies import get_strategy
    from transferlab.strategies.linear_probe import LinearProbe

    config = load_config(overrides=["preprocess.size=32", "model.name=test_efficientnet", "model.pretrained=false",
                                    "data.decode_workers=1"])
    dataset = load_dataset(str(color_folder), config, progress=False)
    parts = holdout_split(dataset.labels, dataset.groups, val_fraction=0.2, test_fraction=0.2, seed=0)
    indices = {part: np.flatnonzero(parts == part) for part in ("train", "val", "test")}
    ctx = FitContext(dataset, indices, config, tmp_path / "run", FeatureStore(dataset, config, progress=False),
                     progress=False)
    fitted = []
    monkeypatch.setattr(LinearProbe, "run", lambda self, stage, fitting, run=LinearProbe.run:
                        fitted.append(stage.name) or run(self, stage, fitting))
    search, probe = Search(ctx), get_strategy("linear-probe", config)
    for _ in range(2):  # the second time: the search again after a resume, in the same member folder
        search.trial(Candidate("linear-probe", "linear-probe", 32, {"train.epochs": 1}, rows="val"), probe,
                     indices["val"])
    assert fitted == ["probe"]
    assert search.tried[0].probs.tolist() == search.tried[1].probs.tolist()


STALLED_CALL = 3  # the second timed batch (the first call is the warm-up)


def test_a_stall_while_timing_does_not_change_the_plan(color_folder, tmp_path, monkeypatch):
    """The plan rested on one timed batch: a stall during it (another process, a page fault storm) read 290 ms
    an image where 5 ms is usual and cut every size but the smallest. Each size is now timed as the median of
    five batches on the engine of its pass: a second-long stall in one of them moves no estimate of the plan."""
    import time as clock

    from transferlab.data import holdout_split, load_dataset
    from transferlab.features import FeatureStore
    from transferlab.fit import FitContext
    from transferlab.search import Search

    config = load_config(overrides=["preprocess.size=64", "model.name=test_efficientnet", "model.pretrained=false",
                                    "data.decode_workers=1", "strategy.auto.sizes=[32, 48, 64]"])
    dataset = load_dataset(str(color_folder), config, progress=False)
    parts = holdout_split(dataset.labels, dataset.groups, val_fraction=0.2, test_fraction=0.2, seed=0)
    indices = {part: np.flatnonzero(parts == part) for part in ("train", "val", "test")}

    def estimates(stall: bool) -> dict[int, float]:
        store = FeatureStore(dataset, config, progress=False)
        ctx = FitContext(dataset, indices, config, tmp_path / "run", store, progress=False)
        engine_for = store.engine_for

        def stalled(*args):
            engine, calls = engine_for(*args), []

            def run(pixels):
                calls.append(1)
                if stall and len(calls) == STALLED_CALL:  # a timed batch
                    clock.sleep(1.0)
                return engine(pixels)

            run.name = engine.name
            return run

        monkeypatch.setattr(store, "engine_for", stalled)
        search = Search(ctx)
        return {size: search.costs.frozen(size) for size in (32, 48, 64)}

    calm, stalled_run = estimates(False), estimates(True)
    for size in calm:
        # one batch of 8 images took a second longer: the old single timing read 125 ms more per image
        assert stalled_run[size] < 3 * calm[size] + 0.005, (size, calm, stalled_run)


def test_the_search_tries_sizes_near_small_images_and_records_its_plan_and_costs(tmp_path):
    """Images stored smaller than the backbone's input get sizes near their own in the grid (28 px: 32-96);
    every size the search scored was timed on the engine of its pass, and the plan says what each part cost."""
    from conftest import colour_images

    data = colour_images(tmp_path / "data", per_class=12, classes=("red", "green", "blue"))  # 20 px images
    config = load_config(overrides=["model.name=test_efficientnet", "model.pretrained=false", "train.workers=0",
                                    "data.decode_workers=1", "train.report=false",
                                    "strategy.auto.candidates=[linear-probe]"])
    run = run_training(str(data), config, out=tmp_path / "run", progress=False)
    decision = json.loads((run / "metrics.json").read_text())["strategy"]["decision"]
    sizes = {c["size"] for c in decision["candidates"] if c["status"] == "scored"}
    assert {32, 48} <= sizes and {96, 128, 160} <= sizes, sizes  # near 20 px, and the standard grid
    timed = decision["costs"]["frozen_ms_per_image"]
    assert set(map(int, timed)) >= sizes and all(t["ms"] > 0 and t["engine"] == "torch" for t in timed.values())
    parts = [p["part"] for p in decision["plan"]]
    assert parts[0].startswith("the rule's LogME") and all(f"cheap candidates @ {s} px" in parts for s in sizes)
    assert all(p["spent_s"] is not None for p in decision["plan"] if p["status"] == "done")
    assert any(c["settings"].get("model.taps") for c in decision["candidates"])  # multi-stage features tried


def test_training_candidates_are_cross_fitted_where_the_validation_split_cannot_tell(color_folder, tmp_path):
    """On a set whose 6 validation images cannot resolve a gain but whose 24 evidence images can (at the
    configured resolution), a fine-tune is trained on two thirds of the evidence three times, each predicting
    the third it did not see: out-of-fold predictions of the same images the probes are scored on."""
    config = load_config(overrides=["model.name=test_efficientnet", "model.pretrained=false", "train.workers=0",
                                    "data.decode_workers=1", "train.report=false", "train.budget=none",
                                    "strategy.auto.sizes=[32]", "strategy.auto.resolvable=0.1",
                                    "strategy.auto.candidates=[linear-probe, fine-tune]", "strategy.fine_tune.epochs=2",
                                    "strategy.fine_tune.head_warmup_epochs=1", "train.batch_size=8"])
    run = run_training(str(color_folder), config, out=tmp_path / "run", progress=False)
    decision = json.loads((run / "metrics.json").read_text())["strategy"]["decision"]
    trial = next(c for c in decision["candidates"] if c["variant"] == "fine-tune")
    assert trial["status"] == "scored" and trial["rows"] == "train+val", trial
    assert trial["settings"]["train.refit_on_val"] is True and trial["settings"]["train.epochs"] == 2
    folder = next((run / "members").glob("fine-tune-32px-*"))
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("fold")) == ["fold1", "fold2", "fold3"]
    assert any("cross-fitted" in p["part"] for p in decision["plan"])


def test_a_validation_trial_joins_probes_scored_on_a_subsample_of_a_large_set(color_folder, tmp_path):
    """On a set larger than strategy.auto.max_images the probes are scored out of fold on a subsample of
    train + val, while a training candidate is scored on the whole validation split: the ensemble is selected
    on the validation images both predicted (it raised a KeyError at 60,000 Fashion-MNIST images)."""
    config = load_config(overrides=["model.name=test_efficientnet", "model.pretrained=false", "train.workers=0",
                                    "data.decode_workers=1", "train.report=false", "train.budget=none",
                                    "strategy.auto.sizes=[32]", "strategy.auto.resolvable=1",
                                    "strategy.auto.max_images=16", "data.val_fraction=0.3",
                                    "strategy.auto.candidates=[linear-probe, fine-tune]", "strategy.fine_tune.epochs=1",
                                    "strategy.fine_tune.head_warmup_epochs=0", "train.batch_size=8"])
    run = run_training(str(color_folder), config, out=tmp_path / "run", progress=False)
    decision = json.loads((run / "metrics.json").read_text())["strategy"]["decision"]
    assert decision["evidence"]["subsampled"]
    trial = next(c for c in decision["candidates"] if c["variant"] == "fine-tune")
    assert trial["rows"] == "val" and trial["status"] == "scored", trial
    val = sum(1 for row in (run / "split.csv").read_text().splitlines()[1:] if row.endswith(",val"))
    assert decision["ensemble"]["on"] == "validation split" and 0 < decision["ensemble"]["images"] < val


def test_a_load_while_the_cheap_part_runs_trims_the_trials_epochs_not_which_trials_run(color_folder, tmp_path,
                                                                                       monkeypatch):
    """Under a CPU-bound process the cheap part took longer, and the trials were planned from what the clock had
    left: a 500-per-class Fashion-MNIST run ran fine-tune @ 96 and gradual @ 64 quiet but fine-tune-late @ 128
    loaded. The time is now divided once, in measured estimates, and a loaded clock only trims epochs. Here the
    clock is the test's: the "load" takes half the plan's time while the probes are scored, the trials take
    exactly their measured cost, and the same trials run, with fewer epochs."""
    import time as clock

    from transferlab import fit as fit_module
    from transferlab import search as search_module
    from transferlab.data import holdout_split, load_dataset
    from transferlab.features import FeatureStore
    from transferlab.fit import FitContext
    from transferlab.search import trials
    from transferlab.search.rule import Prior
    from transferlab.search.trials import PREDICTING

    config = load_config(overrides=["preprocess.size=32", "model.name=test_efficientnet", "model.pretrained=false",
                                    "data.decode_workers=1", "strategy.auto.sizes=[32]", "strategy.auto.resolvable=1",
                                    "strategy.auto.candidates=[linear-probe, fine-tune-late, fine-tune]",
                                    "strategy.fine_tune.epochs=8"])
    dataset = load_dataset(str(color_folder), config, progress=False)
    parts = holdout_split(dataset.labels, dataset.groups, val_fraction=0.2, test_fraction=0.2, seed=0)
    indices = {part: np.flatnonzero(parts == part) for part in ("train", "val", "test")}
    now, real = [0.0], clock.monotonic
    monkeypatch.setattr(clock, "monotonic", lambda: real() + now[0])
    budget, per_epoch = 1000.0, 45.0  # two trials of 8 epochs: 720 s of the plan's 900
    monkeypatch.setattr(fit_module, "training_seconds", lambda ctx, strategy: per_epoch / (len(indices["train"]) * PREDICTING))
    monkeypatch.setattr(search_module.Search, "prior", lambda self: Prior(
        images=len(indices["train"]), sampled=len(indices["train"]), per_class=500, score=0.3, method="logme",
        threshold=0.8, small=False, similar=False))

    def trial(search, candidate, strategy, cross):  # takes what it was measured to cost, on the test's clock
        now[0] += candidate.overrides["train.epochs"] * per_epoch
        ran.append((candidate.label, candidate.overrides["train.epochs"]))
        search.tried.append(candidate)

    monkeypatch.setattr(trials, "run_trial", trial)

    def plan(load: float) -> list[tuple[str, int]]:
        score_size = search_module.Search.score_size

        def loaded(self, *args):
            now[0] += load  # another program took this much of the clock while the probes were scored
            return score_size(self, *args)

        monkeypatch.setattr(search_module.Search, "score_size", loaded)
        store = FeatureStore(dataset, config, progress=False)
        ctx = FitContext(dataset, indices, config, tmp_path / f"run{load:g}", store, progress=False)
        ctx = ctx.replace(deadline=clock.monotonic() + budget)
        (tmp_path / f"run{load:g}").mkdir()
        ran.clear()
        search_module.choose(ctx)
        return list(ran)

    ran: list = []
    quiet, under_load = plan(0.0), plan(450.0)
    assert [label for label, _ in quiet] == [label for label, _ in under_load], (quiet, under_load)
    assert len(quiet) == 2 and all(epochs == 8 for _, epochs in quiet), quiet
    assert all(3 <= epochs < 8 for _, epochs in under_load), under_load


def test_when_the_time_left_cannot_give_every_planned_trial_its_minimum_the_last_is_dropped_not_every_one_starved(
        monkeypatch):
    """At 60,000 images the plan held the scratch CNN and a fine-tune; with less time left than planned, sharing it
    in proportion gave the scratch 3 epochs and the fine-tune too few to run, and a sixth of the budget went
    unspent. The last planned trial is now dropped first, and the time goes to the ones before it."""
    from types import SimpleNamespace

    from transferlab.search import Candidate, Search, trials
    from transferlab.search.costs import Costs

    ran = []
    monkeypatch.setattr(trials, "run_trial", lambda search, candidate, trial, cross: ran.append(
        (candidate.label, candidate.overrides["train.epochs"])))
    search = Search.__new__(Search)
    search.tried, search.plan, search.committed, search.trial_parts = [], [], 0.0, []
    search.ctx = SimpleNamespace(progress=False, indices={"train": np.arange(100)})
    search.costs = Costs(search.ctx)
    search.costs.training_s = {"scratch @ 28 px": 0.2, "fine-tune @ 28 px": 1.0}
    search.left = lambda: 200.0  # the plan wanted 390 + 450 s
    search.note = lambda *args, **kwargs: None

    def option(label, per_epoch):
        return (per_epoch, 0.0, Candidate("x", label, 28, {}), SimpleNamespace(config=SimpleNamespace(
            train=SimpleNamespace(epochs=30))))

    search.run_next([(option("scratch", 30.0), 13), (option("fine-tune", 150.0), 3)], cross=False)
    assert ran == [("scratch @ 28 px", 6)], ran  # 200 s of 30 s epochs, not its 390/840 share (3 epochs)
    skipped = [c for c in search.tried if c.variant == "fine-tune"]
    assert skipped and skipped[0].status.startswith("skipped: 0 epoch(s) fit"), skipped


def plan_under(data, tmp_path, monkeypatch, *, load: bool, budget: float) -> tuple[dict, list]:
    """choose() on the colour set `data`, its passes and training steps costing what the test says, on the test's
    clock: with `load`, another program takes BEFORE seconds before the fit and doubles every cost while the sizes
    and the training steps are timed and while the rule measures; the passes after it and the trials run at the
    machine's own speed. The decision, and the trials run as (label, epochs)."""
    import time as clock

    from transferlab import fit as fit_module
    from transferlab import search as search_module
    from transferlab.data import holdout_split, load_dataset
    from transferlab.features import FeatureStore
    from transferlab.fit import FitContext
    from transferlab.search import trials
    from transferlab.search.trials import PREDICTING

    config = load_config(overrides=["preprocess.size=64", "model.name=test_efficientnet", "model.pretrained=false",
                                    "data.decode_workers=1", "strategy.auto.sizes=[32, 48, 64]",
                                    "strategy.auto.resolvable=1", "strategy.auto.similar_logme=100",
                                    "strategy.auto.candidates=[linear-probe, "
                                    "fine-tune-late, fine-tune]", "strategy.fine_tune.epochs=8"])
    dataset = load_dataset(str(data), config, progress=False)
    parts = holdout_split(dataset.labels, dataset.groups, val_fraction=0.2, test_fraction=0.2, seed=0)
    indices = {part: np.flatnonzero(parts == part) for part in ("train", "val", "test")}
    now, loaded = [0.0], [load]
    real_monotonic, real_counter = clock.monotonic, clock.perf_counter
    monkeypatch.setattr(clock, "monotonic", lambda: real_monotonic() + now[0])
    monkeypatch.setattr(clock, "perf_counter", lambda: real_counter() + now[0])
    frozen = {32: 0.25, 48: 0.5, 64: 1.0}  # seconds an image of a pass, on the quiet machine
    step = 0.5  # seconds a training image of every candidate
    slow = lambda: 2.0 if loaded[0] else 1.0  # noqa: E731

    store = FeatureStore(dataset, config, progress=False)
    engine_for = store.engine_for

    def engine(size, *args):
        compiled = engine_for(size, *args)

        def run(pixels):
            now[0] += frozen[size] * len(pixels) * slow()
            return compiled(pixels)

        run.name = compiled.name
        return run

    monkeypatch.setattr(store, "engine_for", engine)
    monkeypatch.setattr(store, "time_passes", lambda sizes, norm, images: {
        size: (frozen[size] * slow(), "torch") for size in sizes})
    monkeypatch.setattr(fit_module, "training_seconds", lambda ctx, strategy: step * (2.0 if load else 1.0))
    measure = search_module.measure

    def measured(*args):  # the load ends with the rule's pass
        loaded[0] = False
        return measure(*args)

    monkeypatch.setattr(search_module, "measure", measured)
    ran: list = []

    def trial(search, candidate, strategy, cross):  # takes what it costs on the quiet machine
        now[0] += step * search.epoch_images(cross) * PREDICTING * candidate.overrides["train.epochs"]
        ran.append((candidate.label, candidate.overrides["train.epochs"]))
        search.tried.append(candidate)

    monkeypatch.setattr(trials, "run_trial", trial)
    ctx = FitContext(dataset, indices, config, tmp_path / f"run-{load}", store, progress=False,
                     seconds={"taken_by_others": BEFORE if load else 0.0})
    ctx = ctx.replace(deadline=clock.monotonic() + budget)
    now[0] += BEFORE if load else 0.0  # the decoding and the near-duplicates waited this long for the CPUs
    ctx.directory.mkdir()
    return search_module.choose(ctx).record, ran


BEFORE = 60.0  # seconds another program took from the run before the fit (run.py measures it)


def test_a_load_while_the_rule_measures_and_the_costs_are_timed_changes_neither_the_sizes_nor_the_trials(
        tmp_path, monkeypatch):
    """A 500-per-class Fashion-MNIST run, with a CPU-bound process in its first minute, read every timing about
    twice as slow and scored 128-224 px and fine-tune @ 64 where the quiet run scored 96-224 px and fine-tune @ 96:
    the sizes were charged their loaded estimates, and the trials planned from steps timed in a slow spell. Each
    part that ran is now charged at the speed the machine has now, and the trials are planned again after each
    one from the speed it showed: the same sizes and the same trials; the clock the load took trims epochs."""
    from conftest import colour_images

    from transferlab.search import FINAL_SHARE

    data = colour_images(tmp_path / "data", per_class=40, classes=("red", "green", "blue"))
    quiet, quiet_ran = plan_under(data, tmp_path, monkeypatch, load=False, budget=1150.0)
    monkeypatch.undo()
    loaded, loaded_ran = plan_under(data, tmp_path, monkeypatch, load=True, budget=1150.0)

    def scored(record):
        return sorted({c["size"] for c in record["candidates"] if c["strategy"] == "linear-probe"
                       and c["status"] == "scored"})

    # the plan divides the same time: what the load took before the fit and from the rule's pass is given back
    # (but for the final fit's share, FINAL_SHARE of the time the search started with: BEFORE seconds less)
    assert abs(loaded["budget"]["plan_seconds"] - quiet["budget"]["plan_seconds"]) <= FINAL_SHARE * BEFORE + 1, (
        quiet["budget"], loaded["budget"])
    assert scored(quiet) == [32, 48, 64] and scored(loaded) == scored(quiet), (quiet["plan"], loaded["plan"])
    assert [label for label, _ in quiet_ran] == ["fine-tune-late @ 64 px", "fine-tune @ 64 px"], quiet_ran
    assert all(epochs == 8 for _, epochs in quiet_ran), quiet_ran
    assert [label for label, _ in loaded_ran] == [label for label, _ in quiet_ran], (quiet_ran, loaded_ran)
    assert all(3 <= epochs <= 8 for _, epochs in loaded_ran), loaded_ran
