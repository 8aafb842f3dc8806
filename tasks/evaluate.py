"""evaluate: val loss, perplexity and bits per byte of the best checkpoint, held-out split."""

from __future__ import annotations

from typing import Any

from prefect import task

from gpt.checkpoint import load_model
from gpt.data import load_tokens
from gpt.evaluate import evaluate_tokens
from tasks.common import path_of, read_json, write_json
from tasks.encode import MANIFEST
from tasks.tracking import client


def evaluate(params: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    tokens_dir = path_of(params, "tokens")
    manifest = read_json(tokens_dir / MANIFEST)
    model = load_model(path_of(params, "model") / "best")
    metrics = evaluate_tokens(model, load_tokens(tokens_dir, "val"), manifest["val"]["bytes"])
    metrics = {k: round(v, 6) for k, v in metrics.items()}
    write_json(path_of(params, "metrics") / "eval.json", metrics)
    if run_id is not None:
        mlflow_client = client(params)
        for key, value in metrics.items():
            mlflow_client.log_metric(run_id, key, value)
    return metrics


evaluate_task = task(evaluate, name="evaluate")
