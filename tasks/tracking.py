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

# What an eval during training measures is an estimate (train.eval_iters batches); the names
# say so, apart from the full evaluation's val_loss, val_bits_per_byte (what promotion compares).
ESTIMATES = {"val_loss": "val_loss_estimate", "val_perplexity": "val_perplexity_estimate",
             "best_val_loss": "best_val_loss_estimate"}


def metric_names(event: dict[str, Any]) -> dict[str, str]:
    """The MLflow name of each number of a trainer event: a train event's as they are, an
    eval's estimates as estimates (its train_loss is the train events' curve already)."""
    if event["kind"] == "eval":
        return {key: name for key, name in ESTIMATES.items() if key in event}
    return {key: key for key in event if key not in ("kind", "step")}


def metric_logger(params: Params, run_id: str | None):
    """A trainer callback that logs each event's numbers to the run at the event's step, as it
    happens (the MLflow UI draws the curves during the run)."""
    if run_id is None:
        return None
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    mlflow_client = client(params)

    def log(event: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(name, float(event[key]), now, event["step"])
                   for key, name in metric_names(event).items()]
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
