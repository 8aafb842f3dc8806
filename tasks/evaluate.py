"""evaluate: score the best checkpoint on held-out data, by the kind's measure.

Text: val loss, perplexity and bits per byte over the whole held-out split. Prompt ->
completion pairs: completion-only loss, exact match on the test split (per task too) and, for
code, the share of answers that parse as Python (parsed, never executed).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task

from gpt.checkpoint import load_model
from gpt.config import Params
from gpt.data import load_tokens
from gpt.evaluate import evaluate_tokens
from gpt.files import read_json, write_json
from tasks.common import BEST, EVAL_METRICS, MANIFEST
from tasks.tracking import log_metrics


def evaluate_corpus(params: Params) -> dict[str, Any]:
    tokens_dir = params.path("tokens")
    manifest = read_json(tokens_dir / MANIFEST)
    model = load_model(params.path("model") / BEST)
    metrics = evaluate_tokens(model, load_tokens(tokens_dir, "val"), manifest["val"]["bytes"])
    return {k: round(v, 6) for k, v in metrics.items()}


def evaluate_pairs(params: Params) -> dict[str, Any]:
    import torch

    from gpt.sft import PAD, answer_all, eval_batches, parses_as_python
    from gpt.tokenizer import load_tokenizer
    from gpt.train import estimate_loss
    from tasks.train import read_examples

    best = params.path("model") / BEST
    model, tokenizer = load_model(best).eval(), load_tokenizer(best)
    tokens_dir = params.path("tokens")
    split = "test" if len(pd.read_parquet(tokens_dir / "test.parquet")) else "val"
    frame = pd.read_parquet(tokens_dir / f"{split}.parquet")
    batches = eval_batches(read_examples(tokens_dir / f"{split}.parquet"), 32,
                           tokenizer.special_tokens[PAD])
    loss = estimate_loss(model, batches, torch.device("cpu"), torch.float32)
    predictions, hits = answer_all(model, tokenizer, frame["prompt"], frame["completion"],
                                   params.sft.max_new_tokens)
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
    return metrics


SCORERS = {"text": evaluate_corpus, "sft": evaluate_pairs}


def evaluate(params: Params, run_id: str | None = None) -> dict[str, Any]:
    """Score the best checkpoint; write metrics/eval.json and log the numbers to the run."""
    metrics = SCORERS[params.kind](params)
    write_json(params.path("metrics") / EVAL_METRICS, metrics)
    log_metrics(params, run_id, metrics)
    return metrics


evaluate_task = task(evaluate, name="evaluate")
