"""The label space as one object: a multi-label set (either CSV form) goes through every strategy and command
that takes a run, its thresholds are chosen for each label's F1 and used everywhere, its splits keep labels
spread and groups whole; nothing outside tasks.py applies a softmax, a sigmoid or an argmax to a model's output."""

from __future__ import annotations

import ast
import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import MULTI, SCRIPT, TINY, TINY_FLAGS, multilabel_set, post_image

from transferlab.config import load_config
from transferlab.data import load_dataset
from transferlab.run import run_training
from transferlab.strategies import strategy_names
from transferlab.tasks import MultiLabel

SRC = Path(__file__).parents[1] / "src" / "transferlab"


def test_thresholds_maximise_each_labels_f1_by_hand():
    # label 0: positives at 0.9, 0.6, 0.35; negatives at 0.4, 0.2 -> cut 0.35 catches all three positives with one
    # false alarm (F1 6/7 = 0.857), 0.6 catches two and none (F1 0.8), 0.9 one (F1 0.5): 0.35 wins
    probs = np.array([[0.9, 0.1], [0.6, 0.7], [0.35, 0.2], [0.4, 0.8], [0.2, 0.3]])
    targets = np.array([[1, 0], [1, 1], [1, 0], [0, 1], [0, 0]])
    task = MultiLabel()
    cuts = task.choose_thresholds(probs, targets)
    # label 1: positives at 0.7, 0.8, negatives 0.1, 0.2, 0.3 -> any cut in (0.3, 0.7] separates them; F1 1 at 0.7
    assert cuts[0] == pytest.approx(0.35) and cuts[1] == pytest.approx(0.7)
    assert task.decide(probs).tolist() == [[1, 0], [1, 1], [1, 0], [1, 1], [0, 0]]
    fixed = MultiLabel(fixed=0.5)
    assert fixed.decide(probs).tolist() == [[1, 0], [1, 1], [0, 0], [0, 1], [0, 0]]


def test_multilabel_metrics_by_hand():
    task = MultiLabel(fixed=0.5)
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probs = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.1], [0.7, 0.3, 0.6], [0.2, 0.1, 0.2]])
    # decisions [[1,0,0],[0,1,0],[1,0,1],[0,0,0]]: 3 of 12 cells wrong, 2 of 4 images exactly right
    m = task.metrics(targets, probs, ["a", "b", "c"], curves=False)
    assert m["hamming_loss"] == pytest.approx(3 / 12) and m["subset_accuracy"] == pytest.approx(0.5)
    # micro: tp 3 (a twice, b once), fp 1 (c), fn 2 (b, c) -> 2*3 / (2*3 + 1 + 2)
    assert m["f1_micro"] == pytest.approx(6 / 9)
    # a: positives 0.9, 0.7 above every negative -> AP 1; b: positives 0.8, 0.3 with a negative at 0.2 and 0.1
    # below 0.3 -> AP 1; c: positive 0.4 below the negative 0.6 -> precision 1/2 at its recall -> AP 0.5
    assert m["average_precision_macro"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["per_class"]["c"]["support"] == 1 and m["per_class"]["a"]["threshold"] == 0.5
    # image 2 has b missed and c falsely predicted: the only pair wrong together
    assert m["errors_together"] == [{"labels": ["b", "c"], "images": 1}]
    # the mean binary log loss
    p = np.clip(probs, 1e-15, 1 - 1e-15)
    assert m["log_loss"] == pytest.approx(float(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean()))


@pytest.mark.parametrize("form", ["labels", "columns"])
def test_either_manifest_form_is_a_multilabel_set_and_inspect_shows_its_labels(form, tmp_path, isolated):
    manifest = multilabel_set(tmp_path, form=form)
    dataset = load_dataset(str(manifest), load_config(overrides=["data.decode_workers=1"]), progress=False)
    assert dataset.task.name == "multi-label" and dataset.labels.shape == (48, 3)
    expected = {f"images/{i:03d}.png": [int((i >> c) & 1) for c in range(3)] for i in range(8)}
    order = [MULTI.index(c) for c in dataset.classes]  # the labels form sorts names, the columns form keeps order
    for path, row in zip(dataset.paths, dataset.labels):
        if path in expected:
            assert row.tolist() == [expected[path][k] for k in order], path
    assert (dataset.labels.sum(axis=1) == 0).any()  # an image with no label is a negative, not skipped
    out = subprocess.run([str(SCRIPT), "inspect", str(manifest), "--json"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["task"] == "multi-label" and set(summary["counts"]) == set(MULTI)
    assert summary["counts"]["red"] == int(dataset.labels[:, dataset.classes.index("red")].sum())
    assert summary["labels_per_image"]["images"]["0"] >= 1 and summary["co_occurring"][0]["images"] >= 1


def test_a_single_label_manifest_stays_single_label_and_a_wrong_task_is_one_line(tmp_path, isolated):
    manifest = multilabel_set(tmp_path)
    rows = [r for r in csv.DictReader(open(manifest, encoding="utf-8")) if len(r["labels"].split(";")) == 1
            and r["labels"]]
    one = tmp_path / "one.csv"
    one.write_text("path,labels\n" + "".join(f"{r['path']},{r['labels']}\n" for r in rows), encoding="utf-8")
    dataset = load_dataset(str(one), load_config(overrides=["data.decode_workers=1"]), progress=False)
    assert dataset.task.name == "single-label" and dataset.labels.ndim == 1
    out = subprocess.run([str(SCRIPT), "train", str(manifest), "--task", "single-label", *TINY_FLAGS, "--out",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "labels" in out.stderr, out.stderr


def test_splits_spread_every_label_and_keep_groups_whole():
    from transferlab.data.splits import holdout_split, stratified_folds

    rng = np.random.default_rng(0)
    labels = (rng.random((300, 5)) < [0.5, 0.3, 0.1, 0.05, 0.04]).astype(np.int64)
    groups = np.repeat(np.arange(150), 2)  # pairs of copies
    labels[1::2] = labels[::2]
    parts = holdout_split(labels, groups, val_fraction=0.2, test_fraction=0.2, seed=3)
    for name in ("train", "val", "test"):
        share = labels[parts == name].sum(axis=0) / labels.sum(axis=0)
        expected = {"train": 0.6, "val": 0.2, "test": 0.2}[name]
        assert np.all(np.abs(share - expected) <= 0.12), (name, share)
    assert all(len(set(parts[groups == g])) == 1 for g in range(150))
    folds = stratified_folds(labels, groups, folds=3, repeats=2, seed=1)
    assert len(folds) == 6
    for repeat in range(2):
        tested = np.concatenate([test for r, _, _, test in folds if r == repeat])
        assert sorted(tested.tolist()) == list(range(300))
    for _, _, train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert (labels[test].sum(axis=0) > 0).all()  # even the rarest label is in every fold


# the probe in `make test`; every other strategy (the same path, 5-20 s each) in `make test-slow`
@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "linear-probe" else pytest.mark.slow)
                                  for n in strategy_names()])
def test_every_registered_strategy_trains_a_multilabel_set_through_every_command(name, tmp_path, capsys, isolated):
    """As the single-label test in test_strategies.py: fit, predict, evaluate, explain, export and serve on a tiny
    multi-label set, each answering labels above their thresholds with every label's probability."""
    from test_strategies import QUICK

    from transferlab.cli import main

    manifest = multilabel_set(tmp_path)
    config = load_config(overrides=[*TINY, f"strategy.name={name}", *QUICK.get(name, []), "train.epochs=2"])
    run = run_training(str(manifest), config, out=tmp_path / "run", progress=False)
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["task"]["name"] == "multi-label" and len(meta["task"]["thresholds"]) == 3
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("average_precision_macro", "f1_micro", "f1_macro", "f1_samples", "hamming_loss", "subset_accuracy",
                "roc_auc_macro", "log_loss"):
        assert key in metrics["test"], key
    assert set(metrics["test"]["per_class"]) == set(MULTI)
    image = tmp_path / "images" / "003.png"
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--json", "--engine", "torch"]) == 0
    answer = json.loads(capsys.readouterr().out)[0]
    assert len(answer["top"]) == 3  # every label's probability, whatever --top-k
    cuts = dict(zip(meta["classes"], meta["task"]["thresholds"]))
    assert answer["labels"] == [c for c in meta["classes"] if any(t["class"] == c and t["predicted"]
                                                                  for t in answer["top"])]
    for t in answer["top"]:  # predicted at or above the label's own threshold (the printed values are rounded)
        assert t["threshold"] == pytest.approx(cuts[t["class"]], abs=1e-6)
        if abs(t["probability"] - t["threshold"]) > 1e-5:
            assert t["predicted"] == (t["probability"] >= t["threshold"]), t
    assert main(["evaluate", str(run), str(manifest), "--out", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]
    assert 0 <= evaluated["average_precision_macro"] <= 1 and evaluated["n"] == 48
    predictions = list(csv.DictReader(open(tmp_path / "eval" / "predictions.csv", encoding="utf-8")))
    assert {r["path"]: r["label"] for r in predictions}["images/003.png"].split(";") == sorted(["red", "green"])
    assert main(["explain", str(run), str(image), "--out", str(tmp_path / "explain")]) == 0
    drawn = sorted(p.name for p in (tmp_path / "explain").glob("*.png"))  # a map per predicted label
    clear = all(abs(t["probability"] - t["threshold"]) > 1e-3 for t in answer["top"])  # CAM's pass decides alike
    if clear:
        assert drawn == ([f"003-gradcam-{c}.png" for c in answer["labels"]] if len(answer["labels"]) > 1 else
                         ["003-gradcam.png"]), drawn
    assert drawn and all(name == "003-gradcam.png" or name.removeprefix("003-gradcam-").removesuffix(".png") in MULTI
                         for name in drawn), drawn
    assert main(["explain", str(run), str(image), "--class", "blue", "--out", str(tmp_path / "blue")]) == 0
    assert [p.name for p in (tmp_path / "blue").glob("*.png")] == ["003-gradcam.png"]
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "bundle")]) == 0
    bundle = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert bundle["task"] == meta["task"] and bundle["parity"]["max_abs_diff"] <= 1e-4
    from transferlab.serve import Server

    with Server(run, port=0, engine="onnxruntime") as server:
        status, served = post_image(server.url, "image", image.name, image.read_bytes(), {"top_k": "1"})
        assert status == 200 and served["labels"] == answer["labels"]
        assert np.allclose([t["probability"] for t in served["top"]], [t["probability"] for t in answer["top"]],
                           atol=1e-4)
        if name == "linear-probe" and clear:  # the app answers the labels predicted, and shows every label's bar
            from gradio_client import Client, handle_file

            label, _, decision = Client(server.url, verbose=False).predict(handle_file(str(image)),
                                                                           "(predicted class)", api_name="/predict")
            probability = {t["class"]: t["probability"] for t in answer["top"]}
            assert decision == "predicted " + (", ".join(f"{c} ({probability[c]:.2f})" for c in answer["labels"])
                                               or "no label")
            assert {c["label"] for c in label["confidences"]} == set(MULTI)


def test_one_threshold_for_every_label_is_kept_and_used(tmp_path, isolated):
    manifest = multilabel_set(tmp_path)
    config = load_config(overrides=[*TINY, "strategy.name=linear-probe", "task.threshold=0.5"])
    run = run_training(str(manifest), config, out=tmp_path / "run", progress=False)
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["task"]["threshold"] == 0.5 and meta["task"]["thresholds"] is None
    rows = list(csv.DictReader(open(run / "predictions.csv", encoding="utf-8")))
    assert rows
    for row in rows:
        predicted = row["pred"].split(";") if row["pred"] else []
        assert predicted == [c for c in meta["classes"] if float(row[f"p_{c}"]) >= 0.5], row


# Calls that apply an activation or a decision. Allowed where they do not act on a model's output: the
# single-label task's metric library (metrics.py, called through SingleLabel), an ensemble's weights, a metric's
# best epoch, attention's own softmax, the rounding of weights
ACTIVATIONS = {"softmax", "sigmoid", "argmax", "log_softmax"}
ALLOWED = {"tasks.py", "metrics.py", "interpret/maps.py"}
ALLOWED_CALLS = {("interpret/cam.py", "model.weights.argmax"), ("report/sections.py", "values.argmax"),
                 ("search/__init__.py", "np.argmax")}


def test_nothing_outside_the_task_applies_an_activation_or_a_decision():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ACTIVATIONS:
                call = ast.unparse(node.func)
                if (relative, call) not in ALLOWED_CALLS:
                    found.append(f"{relative}:{node.lineno} {call}")
    assert not found, found


def test_a_temperature_is_fitted_by_log_loss_and_shrinks_an_overconfident_models_calibration_error():
    """Logits twice as sharp as the truth: the fitted temperature is near 2, the log loss and ECE fall, and no
    single-label decision changes (a temperature keeps the order of every image's classes)."""
    from transferlab.tasks import SingleLabel

    rng = np.random.default_rng(0)
    honest = rng.normal(0, 1.5, (3000, 4))
    truth = np.array([rng.choice(4, p=np.exp(z) / np.exp(z).sum()) for z in honest])
    sharp = np.exp(2 * honest) / np.exp(2 * honest).sum(axis=1, keepdims=True)
    task = SingleLabel()
    record = task.fit_temperature(sharp, truth, "held-out images")
    assert task.temperature == pytest.approx(2.0, rel=0.1) and record["temperature"] == round(task.temperature, 6)
    assert record["log_loss_after"] < record["log_loss_before"] and record["ece_after"] < record["ece_before"] / 2
    assert (task.calibrate(sharp).argmax(axis=1) == sharp.argmax(axis=1)).all()
    multi = MultiLabel(fixed=0.5)
    labels = (rng.random((2000, 3)) < 1 / (1 + np.exp(-honest[:2000, :3]))).astype(int)
    multi.fit_temperature(1 / (1 + np.exp(-3 * honest[:2000, :3])), labels, "held-out images")
    assert multi.temperature == pytest.approx(3.0, rel=0.15)
    assert SingleLabel().fit_temperature(sharp[:10], truth[:10], "x")["temperature"] == 1.0  # too few to fit on


@pytest.mark.slow  # a run, two engines, a server and an export: ~20 s
def test_the_temperature_is_applied_by_every_path_that_answers(tmp_path, isolated, capsys):
    """The run's temperature (fitted on its validation split, kept in model.json) is in the in-run evaluation,
    predict on each engine, serve, and the exported graph, whose parity is checked with it."""
    from conftest import colour_images

    from transferlab.cli import main
    from transferlab.serve import Server

    data = colour_images(tmp_path / "data", per_class=40, classes=MULTI)
    run = run_training(str(data), load_config(overrides=[*TINY, "strategy.name=linear-probe"]), out=tmp_path / "run",
                       progress=False)
    meta = json.loads((run / "model" / "model.json").read_text())
    calibration = json.loads((run / "metrics.json").read_text())["calibration"]
    assert calibration["on"] == "validation split (24 images)" and calibration["temperature"] != 1.0
    assert meta["task"]["temperature"] == calibration["temperature"]
    rows = [r for r in csv.DictReader(open(run / "predictions.csv", encoding="utf-8")) if r["split"] == "test"][:4]
    files = [str(data / r["path"]) for r in rows]
    expected = np.array([[float(r[f"p_{c}"]) for c in meta["classes"]] for r in rows])

    def predicted(engine: str) -> np.ndarray:
        capsys.readouterr()
        assert main(["predict", str(run), *files, "--json", "--engine", engine, "--top-k", "3"]) == 0
        answers = json.loads(capsys.readouterr().out)
        return np.array([[{t["class"]: t["probability"] for t in a["top"]}[c] for c in meta["classes"]]
                         for a in answers])

    for engine in ("torch", "onnxruntime"):
        np.testing.assert_allclose(predicted(engine), expected, atol=2e-5)
    with Server(run, port=0, engine="torch") as server:
        _, served = post_image(server.url, "image", "x.png", Path(files[0]).read_bytes(), {"top_k": "3"})
    assert {t["class"]: t["probability"] for t in served["top"]} == pytest.approx(dict(zip(meta["classes"],
                                                                                           expected[0])), abs=2e-5)
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "bundle")]) == 0
    bundle = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert bundle["task"]["temperature"] == calibration["temperature"] and bundle["parity"]["max_abs_diff"] <= 1e-4
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "bundle" / "model.onnx"))
    from transferlab.data.decode import decode_file
    from transferlab.predict import load_model

    model = load_model(run)
    pixels = np.stack([decode_file(Path(f), model.spec, model.limits)[0] for f in files]).transpose(0, 3, 1, 2)
    answered = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(pixels)})[0]
    np.testing.assert_allclose(answered, expected, atol=2e-5)
    meta["task"].pop("temperature")  # the raw model answers otherwise: the temperature is applied, not only kept
    (run / "model" / "model.json").write_text(json.dumps(meta))
    assert np.abs(predicted("torch") - expected).max() > 1e-3
