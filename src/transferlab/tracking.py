"""Experiment tracking besides the run's own folder (`--tracker`): tensorboard (default), csv (the
folder only) or mlflow (one MLflow run per `train`, a parent with a child per fold for `cv`; README
"Experiment tracking" says what each holds). The MLflow store and run id are kept in the run's
state, so a resumed run logs into the same MLflow run."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import re
from pathlib import Path

from transferlab.errors import ConfigError
from transferlab.metrics import scalar_metrics

DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACTS = ("report.html", "metrics.json", "cv_metrics.json", "config.yaml", "split.csv", "dataset.json",
             "curves.json", "plots", "model")
PARAM_LENGTH = 500  # the longest param value every MLflow store accepts
PROBE_SECONDS = 5  # how long an MLflow server may take to answer before a run starts


def require_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("--tracker mlflow needs MLflow: pip install 'transferlab[mlflow]'") from None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def store_error(uri: str, exc: Exception) -> ConfigError:
    return ConfigError(f"MLflow tracking store {uri} cannot be used ({str(exc).splitlines()[0][:160]}): "
                       "check --tracker-uri / MLFLOW_TRACKING_URI")


def check_tracking(config) -> None:
    """Before a run directory exists: MLflow importable and its store reachable."""
    if config.tracking.tracker != "mlflow":
        return
    require_mlflow()
    from mlflow import MlflowClient

    uri = resolve_uri(config.tracking.uri)
    # an unreachable server or a read-only store must be one line in seconds, not after minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(PROBE_SECONDS))
    try:
        probe_store(uri)
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:
        raise store_error(uri, exc) from None


def probe_store(uri: str) -> None:
    """A server that answers within PROBE_SECONDS, or a local store whose folder is writable."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_SECONDS).close()
        except urllib.error.HTTPError:
            pass  # it answered: a server behind a path or a proxy may not have /health
        except OSError as exc:
            raise ConnectionError(f"no answer within {PROBE_SECONDS} s: {getattr(exc, 'reason', exc)}") from None
        return
    if uri.startswith("sqlite:///"):  # MLflow's own engine retries a bad database for minutes
        import sqlite3

        with contextlib.closing(sqlite3.connect(uri.removeprefix("sqlite:///"), timeout=PROBE_SECONDS)) as db:
            db.execute("BEGIN IMMEDIATE")  # fails at once on a read-only file, folder or mount
            db.rollback()


def resolve_uri(uri: str | None) -> str:
    """The tracking URI, absolute where it names a local path (a resumed run may start elsewhere)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri:  # a folder: MLflow's file store
        return Path(uri).resolve().as_uri()
    return uri


def metric_key(name: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, _ - . / and space)."""
    return re.sub(r"[^\w\-./ ]", "_", name)


class Tracker:
    """The tracker of one run (or fold, or evaluation): Lightning loggers for its stages, and the
    params, metrics and artifacts it logs itself. Without MLflow every call but `loggers` is a no-op."""

    def __init__(self, kind: str, uri: str | None = None, run_id: str | None = None):
        self.kind, self.uri, self.run_id = kind, uri, run_id

    @classmethod
    def open(cls, config, state, *, name: str, parent: Tracker | None = None, tags: dict | None = None) -> Tracker:
        """The tracker a run's `state` (a RunState) names, or a new one (an MLflow run created and its
        id put in `state.tracking`, which the caller saves)."""
        kind = config.tracking.tracker
        if kind != "mlflow":
            return cls(kind)
        require_mlflow()
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        saved = state.tracking
        if saved:
            return cls(kind, saved["uri"], saved["run_id"])
        from mlflow import MlflowClient

        uri = parent.uri if parent else resolve_uri(config.tracking.uri)
        client = MlflowClient(uri)
        try:
            experiment = client.get_experiment_by_name(config.tracking.experiment)
            experiment_id = (experiment.experiment_id if experiment else
                             client.create_experiment(config.tracking.experiment))
            all_tags = {"transferlab.kind": "run", **(tags or {})}
            if parent is not None:
                all_tags["mlflow.parentRunId"] = parent.run_id
            run = client.create_run(experiment_id, run_name=name, tags=all_tags)
        except Exception as exc:  # an unreachable server, a read-only store, a bad URI
            raise store_error(uri, exc) from None
        state.tracking = {"uri": uri, "run_id": run.info.run_id}
        return cls(kind, uri, run.info.run_id)

    def describe(self) -> str | None:
        """Where to look, for the console."""
        if not self.active:
            return None
        return (f"tracked in MLflow run {self.run_id[:12]} at {self.uri} (browse: mlflow ui --backend-store-uri "
                f"{self.uri})")

    @property
    def active(self) -> bool:
        return self.kind == "mlflow" and self.run_id is not None

    @functools.cached_property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.uri)

    def loggers(self, logs: Path, stage: str, version: str) -> list:
        """Lightning loggers of one stage, besides its CSV log."""
        if self.kind == "tensorboard":
            try:
                from lightning.pytorch.loggers import TensorBoardLogger

                return [TensorBoardLogger(logs, name=stage, version=version, default_hp_metric=False)]
            except ModuleNotFoundError:
                return []
        if self.active:
            from lightning.pytorch.loggers import MLFlowLogger

            return [MLFlowLogger(tracking_uri=self.uri, run_id=self.run_id, prefix=stage)]
        return []

    def params(self, values: dict, prefix: str = "") -> None:
        """Params (immutable in MLflow: a key already logged is left as it is)."""
        if not self.active:
            return
        from mlflow.entities import Param

        client = self.client
        known = client.get_run(self.run_id).data.params
        fresh = [Param(metric_key(f"{prefix}{k}")[:250], str(v)[:PARAM_LENGTH]) for k, v in values.items()
                 if metric_key(f"{prefix}{k}")[:250] not in known]
        for start in range(0, len(fresh), 100):
            client.log_batch(self.run_id, params=fresh[start:start + 100])

    def metrics(self, values: dict[str, float], prefix: str = "") -> None:
        if not self.active or not values:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(metric_key(f"{prefix}{k}"), float(v), now, 0) for k, v in values.items()
                   if v is not None and math.isfinite(float(v))]
        for start in range(0, len(entries), 500):
            self.client.log_batch(self.run_id, metrics=entries[start:start + 500])

    def artifacts(self, folder: Path, names: tuple[str, ...] = ARTIFACTS) -> None:
        if not self.active:
            return
        client = self.client
        for name in names:
            path = folder / name
            if path.is_dir():
                client.log_artifacts(self.run_id, str(path), artifact_path=name)
            elif path.is_file():
                client.log_artifact(self.run_id, str(path))

    def log_config(self, config) -> None:
        """The concrete config as params."""
        from transferlab.rundir import flatten

        self.params(flatten(dataclasses.asdict(config)))

    def text(self, content: dict, name: str) -> None:
        if self.active:
            self.client.log_text(self.run_id, json.dumps(content, indent=2, default=str), name)

    def finish(self, status: str = "FINISHED") -> None:
        if self.active:
            self.client.set_terminated(self.run_id, status)


def run_tags(config, run_dir: Path) -> dict[str, str]:
    from transferlab import __version__

    return {"transferlab.data": str(config.data.source), "transferlab.run_dir": str(Path(run_dir).resolve()),
            "transferlab.version": __version__}


def run_summary(tracker: Tracker, config, record: dict, run_dir: Path) -> None:
    """What a finished train run logs: the concrete config, the auto decision, each stage's score
    and time, the final metrics, the artifacts."""
    if not tracker.active:
        return
    tracker.log_config(config)
    strategy = record.get("strategy", {})
    tracker.params({"strategy": strategy.get("label", strategy.get("name")),
                    "selected_stage": (strategy.get("selected") or {}).get("stage")}, prefix="transferlab.")
    decision = strategy.get("decision")
    if decision:
        tracker.params({"chosen": "; ".join(decision.get("chosen") or []),
                        "rule": (decision.get("prior") or {}).get("candidate")}, prefix="auto.")
        for candidate in decision.get("candidates") or []:
            if candidate.get("accuracy") is not None:
                key = "search/" + candidate["label"].replace(" C=", "_C").replace(" @ ", "_").replace(" px", "px")
                tracker.metrics({"accuracy": candidate["accuracy"], "seconds": candidate["seconds"]},
                                prefix=key + "/")
        tracker.text(decision, "auto_decision.json")
    for name, stage in (strategy.get("stages") or {}).items():
        tracker.metrics({k: v for k, v in (("score", stage.get("score")), ("seconds", stage.get("seconds")),
                                           ("epochs_run", stage.get("epochs_run"))) if v is not None},
                        prefix=f"stage/{name}/")
    for split in ("val", "test"):
        if split in record:
            tracker.metrics(scalar_metrics(record[split]), prefix=f"{split}_")
    tracker.artifacts(run_dir)


def cv_summary(tracker: Tracker, config, record: dict, run_dir: Path, strategy: str) -> None:
    """What a finished cv logs on its parent run: the config, its `strategy` (the record's display of
    what the folds trained), mean / std / 95% CI of every metric over the folds, the out-of-fold
    metrics, the artifacts."""
    if not tracker.active:
        return
    tracker.log_config(config)
    tracker.params({"strategy": strategy, "folds": config.cv.folds, "repeats": config.cv.repeats},
                   prefix="transferlab.")
    values: dict[str, float] = {}
    for name, entry in (record.get("aggregate") or {}).items():
        values.update({f"{name}_mean": entry.get("mean"), f"{name}_std": entry.get("std")})
        if entry.get("ci95"):
            values.update({f"{name}_ci_low": entry["ci95"][0], f"{name}_ci_high": entry["ci95"][1]})
    tracker.metrics(values, prefix="cv_")
    tracker.metrics(scalar_metrics(record.get("out_of_fold") or {}), prefix="out_of_fold_")
    tracker.artifacts(run_dir)


def fold_summary(tracker: Tracker, config, record: dict) -> None:
    """What a finished fold logs on its child run: its concrete config, decision and test metrics."""
    if not tracker.active:
        return
    tracker.log_config(config)
    strategy = record.get("strategy") or {}
    tracker.params({"strategy": strategy.get("label")}, prefix="transferlab.")
    if strategy.get("decision"):
        tracker.text(strategy["decision"], "auto_decision.json")
    tracker.metrics(scalar_metrics(record.get("test") or {}), prefix="test_")
