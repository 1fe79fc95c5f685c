"""`--tracker mlflow`: runs, folds and evaluations logged to a real MLflow store (SQLite, MLflow's
default) and read back through MLflow's client API, equal to what the run folder says."""

from __future__ import annotations

import json
import sys

import pytest

from transferlab.config import load_config

TINY = ["model.name=test_efficientnet", "model.pretrained=false", "preprocess.size=32", "train.batch_size=8",
        "train.workers=0", "data.decode_workers=1", "train.early_stopping=null", "train.epochs=2",
        "strategy.name=fine-tune", "strategy.fine_tune.head_warmup_epochs=2", "augment.preset=none"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def tracked(store: str, *extra: str):
    return load_config(overrides=[*TINY, "tracking.tracker=mlflow", f"tracking.uri={store}",
                                  "tracking.experiment=pets", *extra])


def test_a_train_run_is_logged_with_params_curves_metrics_and_artifacts(color_folder, tmp_path, store):
    from mlflow import MlflowClient

    from transferlab.evaluate import evaluate_run
    from transferlab.run import run_training

    run = run_training(str(color_folder), tracked(store), out=tmp_path / "run", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    state = json.loads((run / "state.json").read_text())
    client = MlflowClient(store)
    logged = client.get_run(state["tracking"]["run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == run.name
    assert client.get_experiment(logged.info.experiment_id).name == "pets"
    params = logged.data.params
    assert params["strategy.name"] == "fine-tune" and params["model.size"] == "32"
    assert params["preprocess.size"] == "24"  # the 24 px images are stored at their own size
    assert params["model.name"] == "test_efficientnet" and params["tracking.tracker"] == "mlflow"
    for name in ("accuracy", "f1_macro", "log_loss"):  # the final metrics, equal to metrics.json
        assert logged.data.metrics[f"test_{name}"] == pytest.approx(metrics["test"][name])
        assert logged.data.metrics[f"val_{name}"] == pytest.approx(metrics["val"][name])
    for stage in ("warmup", "main"):  # each stage's curves under its own prefix, one point per epoch
        history = client.get_metric_history(logged.info.run_id, f"{stage}-val_loss")
        assert len(history) == 2, stage
        score = metrics["strategy"]["stages"][stage]["score"]
        assert logged.data.metrics[f"stage/{stage}/score"] == pytest.approx(score)
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"report.html", "metrics.json", "config.yaml", "split.csv", "plots", "model"} <= artifacts
    assert {a.path for a in client.list_artifacts(logged.info.run_id, "model")} == {"model/model.json",
                                                                                  "model/weights.safetensors",
                                                                                  "model/familiar.json",
                                                                                  "model/familiar.npy"}

    evaluation = evaluate_run(run, str(color_folder), progress=False)
    scored = json.loads((evaluation / "metrics.json").read_text())["test"]
    children = client.search_runs([logged.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{logged.info.run_id}'")
    assert len(children) == 1 and children[0].data.tags["transferlab.kind"] == "evaluation"
    assert children[0].data.metrics["test_accuracy"] == pytest.approx(scored["accuracy"])


def test_auto_logs_its_decision(color_folder, tmp_path, store):
    from mlflow import MlflowClient

    from transferlab.run import run_training

    config = tracked(store, "strategy.name=auto", "strategy.auto.candidates=[linear-probe]", "train.epochs=null")
    run = run_training(str(color_folder), config, out=tmp_path / "auto", progress=False)
    decision = json.loads((run / "metrics.json").read_text())["strategy"]["decision"]
    run_id = json.loads((run / "state.json").read_text())["tracking"]["run_id"]
    logged = MlflowClient(store).get_run(run_id)
    assert logged.data.params["auto.chosen"] == "; ".join(decision["chosen"])
    assert logged.data.params["strategy.name"] == "ensemble"  # the concrete config, not "auto"
    probe = next(c for c in decision["candidates"] if c["strategy"] == "linear-probe")
    key = f"search/linear-probe_C{probe['settings']['strategy.linear_probe.C']:g}_{probe['size']}px/accuracy"
    assert logged.data.metrics[key] == pytest.approx(probe["accuracy"])
    assert "auto_decision.json" in {a.path for a in MlflowClient(store).list_artifacts(run_id)}


@pytest.mark.slow  # a 3-fold cv into MLflow, ~10 s alone: make test-slow (CI runs it)
def test_cv_logs_a_parent_with_a_child_per_fold(color_folder, tmp_path, store):
    from mlflow import MlflowClient

    from transferlab.run import run_cv

    run = run_cv(str(color_folder), tracked(store, "cv.folds=2", "strategy.name=feature-extraction"),
                 out=tmp_path / "cv", progress=False)
    record = json.loads((run / "cv_metrics.json").read_text())
    parent_id = json.loads((run / "state.json").read_text())["tracking"]["run_id"]
    client = MlflowClient(store)
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(c.info.run_name for c in children) == ["fold1", "fold2"]
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    assert parent.data.params["transferlab.strategy"] == "feature-extraction"  # was "None": read a key never written
    by_name = {f["name"]: f for f in record["folds"]}
    for child in children:
        assert child.data.metrics["test_accuracy"] == pytest.approx(by_name[child.info.run_name]["metrics"]["accuracy"])
    accuracy = record["aggregate"]["accuracy"]
    assert parent.data.metrics["cv_accuracy_mean"] == pytest.approx(accuracy["mean"])
    assert parent.data.metrics["cv_accuracy_std"] == pytest.approx(accuracy["std"])
    assert [parent.data.metrics["cv_accuracy_ci_low"], parent.data.metrics["cv_accuracy_ci_high"]] == \
        pytest.approx(accuracy["ci95"])
    assert "cv_metrics.json" in {a.path for a in client.list_artifacts(parent_id)}


def test_missing_mlflow_or_a_bad_store_is_one_line_before_any_run_folder(color_folder, tmp_path, monkeypatch,
                                                                          capsys):
    from transferlab.cli import main

    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an environment without the extra looks like
    assert main(["train", str(color_folder), "--tracker", "mlflow", "--out", str(tmp_path / "a")]) == 2
    assert "pip install 'transferlab[mlflow]'" in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "mlflow")
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    assert main(["train", str(color_folder), "--tracker", "mlflow", "--tracker-uri", f"sqlite:///{blocked}/x.db",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "cannot be used" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.timeout(90)  # MLflow's own retries took 258 s against a silent server and 115 s on a read-only store
def test_a_silent_server_or_an_unwritable_store_is_one_line_in_seconds(color_folder, tmp_path, monkeypatch, capsys):
    import socket

    from transferlab.cli import main

    for variable in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(variable, raising=False)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    port = silent.getsockname()[1]
    for uri in (f"http://127.0.0.1:{port}", "sqlite:////proc/transferlab.db"):  # /proc: no file can be made there
        assert main(["train", str(color_folder), "--tracker", "mlflow", "--tracker-uri", uri,
                     "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert "cannot be used" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "run").exists()
    silent.close()
