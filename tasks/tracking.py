"""The run side of MLflow: one run per pipeline run, and what the steps log into it.

The store, model URIs and registered models are the registry's (`registry`); this module
only writes params, metrics and artifacts into a run the flow created.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpt.config import Params
from registry import RegistryUnavailable, client, tracking_uri


def metric_logger(params: Params, run_id: str | None):
    """A trainer callback that logs each event's numbers to the run at the event's step."""
    if run_id is None:
        return None
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    mlflow_client = client(params)

    def log(event: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        prefix = "" if event["kind"] == "train" else "eval_"
        metrics = [Metric(f"{prefix}{k}", float(v), now, event["step"])
                   for k, v in event.items() if k not in ("kind", "step")]
        try:
            mlflow_client.log_batch(run_id, metrics=metrics)
        except MlflowException as err:  # after MLflow's own retries: the server is gone
            reason = ("connection refused" if "Connection refused" in str(err)
                      else str(err).splitlines()[0][:160])
            raise RegistryUnavailable(
                f"lost the MLflow server {tracking_uri(params)} at step {event['step']} "
                f"({reason}); the run stops, nothing is registered") from err

    return log


def log_params(params: Params, run_id: str, flat: dict[str, Any]) -> None:
    from mlflow.entities import Param

    client(params).log_batch(run_id, params=[Param(k, str(v)[:6000])
                                             for k, v in sorted(flat.items())])


def log_metrics(params: Params, run_id: str | None, metrics: dict[str, Any]) -> None:
    """Log the numeric entries of metrics (others, like per-task tables, stay in the files)."""
    if run_id is None:
        return
    mlflow_client = client(params)
    for key, value in metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            mlflow_client.log_metric(run_id, key, value)


def run_artifacts(params: Params, run_id: str, files: Iterable[Path],
                  folder: str | None = None) -> None:
    mlflow_client = client(params)
    for path in files:
        mlflow_client.log_artifact(run_id, str(path), folder)
