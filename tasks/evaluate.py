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




def evaluate_sft(params: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    """Completion-only loss, exact match (accuracy) on the test split, and, for code, the
    share of completions that parse as Python (parsed, never executed)."""
    import pandas as pd
    import torch

    from gpt.sft import PAD, answer_all, eval_batches, parses_as_python
    from gpt.tokenizer import load_tokenizer
    from gpt.train import estimate_loss
    from tasks.common import section
    from tasks.train import read_examples

    best = path_of(params, "model") / "best"
    model, tokenizer = load_model(best).eval(), load_tokenizer(best)
    tokens_dir = path_of(params, "tokens")
    split = "test" if len(pd.read_parquet(tokens_dir / "test.parquet")) else "val"
    frame = pd.read_parquet(tokens_dir / f"{split}.parquet")
    batches = eval_batches(read_examples(tokens_dir / f"{split}.parquet"), 32,
                           tokenizer.special_tokens[PAD])
    loss = estimate_loss(model, batches, torch.device("cpu"), torch.float32)
    max_new = int(section(params, "sft").get("max_new_tokens", 64))
    predictions, hits = answer_all(model, tokenizer, frame["prompt"], frame["completion"],
                                   max_new)
    metrics: dict[str, Any] = {"completion_loss": round(loss, 6), "split": split,
                               "exact_match": round(sum(hits) / len(hits), 6),
                               "records": len(hits)}
    by_task = pd.DataFrame({"task": frame["task"], "hit": hits}).groupby("task")["hit"].mean()
    metrics["accuracy_by_task"] = {k: round(float(v), 4) for k, v in by_task.items()}
    if (frame["task"] == "python").any():
        metrics["parses_as_python"] = round(
            sum(map(parses_as_python, predictions)) / len(predictions), 6)
    metrics["examples"] = [{"prompt": p, "expected": a, "got": g} for p, a, g in
                           list(zip(frame["prompt"], frame["completion"], predictions,
                                    strict=True))[:5]]
    write_json(path_of(params, "metrics") / "sft_eval.json", metrics)
    if run_id is not None:
        mlflow_client = client(params)
        for key in ("completion_loss", "exact_match", "parses_as_python"):
            if key in metrics:
                mlflow_client.log_metric(run_id, key, metrics[key])
    return metrics


evaluate_task = task(evaluate, name="evaluate")
evaluate_sft_task = task(evaluate_sft, name="evaluate-sft")
