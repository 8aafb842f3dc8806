"""MLflow: where the tracking store lives, and small helpers to log into one run.

The default store is embedded: SQLite at mlflow/mlflow.db and artifacts under
mlflow/artifacts. MLFLOW_TRACKING_URI (for example an `mlflow server`) overrides it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tasks.common import section

DEFAULT_REGISTRY = {
    "tracking_uri": "sqlite:///mlflow/mlflow.db", "artifact_root": "mlflow/artifacts",
    "experiment": "tinygpt", "model_name": "tinygpt", "champion_alias": "champion",
    "candidate_alias": "candidate",
}


def registry_settings(params: dict[str, Any]) -> dict[str, str]:
    settings = {**DEFAULT_REGISTRY, **section(params, "registry")}
    unknown = sorted(set(settings) - set(DEFAULT_REGISTRY))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join('registry.' + k for k in unknown)}")
    return settings


# MLflow's set_tracking_uri writes MLFLOW_TRACKING_URI into the environment itself, so the
# user's choice is read once, before this process sets it.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(params: dict[str, Any]) -> str:
    """The store's URI; a relative SQLite path is made absolute (MLflow caches by URI)."""
    uri = USER_TRACKING_URI or registry_settings(params)["tracking_uri"]
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        database = Path(uri.removeprefix("sqlite:///")).resolve()
        database.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{database}"
    return uri


def connect(params: dict[str, Any]) -> str:
    """Point mlflow at the configured store and experiment; return the experiment id."""
    import mlflow

    settings = registry_settings(params)
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # or MLflow may keep a registry it resolved before
    experiment = mlflow.get_experiment_by_name(settings["experiment"])
    if experiment is not None:
        return experiment.experiment_id
    root = Path(settings["artifact_root"]).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(settings["experiment"], artifact_location=root.as_uri())


def client(params: dict[str, Any]):
    from mlflow import MlflowClient

    connect(params)
    return MlflowClient()


def metric_logger(params: dict[str, Any], run_id: str | None):
    """A trainer callback that logs each event's numbers to the run at the event's step."""
    if run_id is None:
        return None
    from mlflow.entities import Metric

    mlflow_client = client(params)

    def log(event: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        prefix = "" if event["kind"] == "train" else "eval_"
        metrics = [Metric(f"{prefix}{k}", float(v), now, event["step"])
                   for k, v in event.items() if k not in ("kind", "step")]
        mlflow_client.log_batch(run_id, metrics=metrics)

    return log


def load_registered(params: dict[str, Any], model_uri: str):
    """(model, tokenizer, version) of a registered model, through its pyfunc."""
    import mlflow

    from serve.registry import parse_model_uri

    connect(params)
    name, alias, version = parse_model_uri(model_uri)
    if version is None:
        version = str(client(params).get_model_version_by_alias(name, alias).version)
    wrapper = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
    return wrapper.model, wrapper.tokenizer, version
