"""evaluate: score the best checkpoint on held-out data, by the kind's measure.

Text: val loss, perplexity and bits per byte over the held-out split, or, when it holds more
than `evaluate.max_tokens` tokens, over a fixed sample of it: evenly spaced runs of its
records, the same text whichever model scores it (promotion re-scores the champion on it).
Prompt ->
completion pairs: completion-only loss, exact match on the test split (per task too) and, for
code, the share of answers that parse as Python (parsed, never executed).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from gpt.checkpoint import load_model
from gpt.config import Params
from gpt.evaluate import evaluate_tokens
from gpt.files import read_json, write_json
from gpt.tokenizer import load_tokenizer
from tasks.chunks import plan, text_digest
from tasks.common import BEST, EVAL_METRICS, MANIFEST
from tasks.encode import encode_documents, scored_pairs
from tasks.kinds import kind_of, validated_path
from tasks.tracking import log_metrics

SAMPLE_RUNS = 64  # a big split's sample: this many runs of consecutive records, evenly spaced


def evaluation_documents(params: Params) -> list[tuple[str, int, bool]]:
    """The text a text model is scored on, as document parts (text, bytes, separated): the
    whole held-out split, or a sample of about evaluate.max_tokens of its tokens (at the
    run's tokens per byte) in SAMPLE_RUNS runs of records starting at evenly spaced bytes."""
    val = read_json(params.path("tokens") / MANIFEST)["val"]
    chunks = [c for c in plan(validated_path(params), params.data.val_fraction)
              if c.split == "val"]
    budget = params.evaluate.max_tokens * val["bytes"] / max(val["tokens"], 1)
    if budget >= val["bytes"]:
        return [doc for chunk in chunks for doc in chunk.documents()]
    run_bytes = budget / SAMPLE_RUNS
    runs: dict[int, tuple[list[str], int]] = {}
    at = 0
    for chunk in chunks:
        table = chunk.read(["text", "n_bytes"])
        for text, size in zip(table["text"].to_pylist(), table["n_bytes"].to_pylist(),
                              strict=True):
            run = int(at * SAMPLE_RUNS // val["bytes"])
            if at < run * val["bytes"] / SAMPLE_RUNS + run_bytes:
                pieces, n_bytes = runs.setdefault(run, ([], 0))
                pieces.append(text)
                runs[run] = (pieces, n_bytes + size)
            at += size
    return [("".join(pieces), n_bytes, i > 0)
            for i, (pieces, n_bytes) in enumerate(runs.values())]


def score_text(model, tokenizer, documents: list[tuple[str, int, bool]]) -> dict[str, float]:
    """A model's held-out metrics on document parts, encoded with its own tokenizer."""
    ids = encode_documents(tokenizer, documents)
    return evaluate_tokens(model, ids, sum(n for _, n, _ in documents))


def evaluate_text(params: Params) -> dict[str, Any]:
    best = params.path("model") / BEST
    documents = evaluation_documents(params)
    metrics: dict[str, Any] = {k: round(v, 6) for k, v in score_text(
        load_model(best), load_tokenizer(best), documents).items()}
    metrics["val_text_digest"] = text_digest(iter(documents))
    return metrics


def evaluate_sft(params: Params) -> dict[str, Any]:
    import torch

    from gpt.sft import PAD, eval_batches, is_code, same_code
    from gpt.train import estimate_loss
    from tasks.train import read_examples

    best = params.path("model") / BEST
    model, tokenizer = load_model(best).eval(), load_tokenizer(best)
    scored = scored_pairs(params.path("tokens"))
    frame = pd.read_parquet(scored)
    batches = eval_batches(read_examples(scored), 32, tokenizer.special_tokens[PAD])
    loss = estimate_loss(model, batches, torch.device("cpu"), torch.float32)
    answers = answer_pairs(params, model, tokenizer, frame)
    share = _share(len(frame))
    metrics: dict[str, Any] = {"completion_loss": round(loss, 6), "split": scored.stem,
                               "exact_match": share(sum(answers.hits)),
                               "records": len(frame), "max_new_tokens": answers.max_new_tokens}
    if params.sft.fallback:
        metrics["fallback_share"] = share(sum(answers.fell_back))
    by_task = pd.DataFrame({"task": frame["task"], "hit": answers.hits}
                           ).groupby("task")["hit"].mean()
    metrics["accuracy_by_task"] = {k: round(float(v), 4) for k, v in by_task.items()}
    if (frame["task"] == "python").any():
        metrics["code_valid"] = share(sum(map(is_code, answers.predictions)))
        metrics["code_match"] = share(sum(map(same_code, answers.predictions,
                                              frame["completion"])))
    metrics["examples"] = [{"prompt": p, "expected": a, "got": g} for p, a, g in
                           list(zip(frame["prompt"], frame["completion"], answers.predictions,
                                    strict=True))[:5]]
    return metrics


def _share(total: int):
    return lambda count: round(count / max(total, 1), 6)


def answer_limit(params: Params, tokenizer) -> int:
    """sft.max_new_tokens, or one more token than the longest answer in the whole set."""
    from gpt.sft import answer_budget

    if params.sft.max_new_tokens is not None:
        return params.sft.max_new_tokens
    completions = pd.read_parquet(validated_path(params), columns=["completion"])
    return answer_budget(tokenizer, completions["completion"])


def answer_pairs(params: Params, model, tokenizer, frame: pd.DataFrame):
    """Greedy answers to the frame's prompts (gpt.sft.Answers), with the write-up's fallback
    to the train split's answers when sft.fallback is on."""
    from gpt.sft import Fallback, answer_all

    fallback = None
    if params.sft.fallback:
        train = pd.read_parquet(params.path("tokens") / "train.parquet",
                                columns=["prompt", "completion"])
        fallback = Fallback(train["prompt"].tolist(), train["completion"].tolist())
    return answer_all(model, tokenizer, frame["prompt"], frame["completion"],
                      answer_limit(params, tokenizer), fallback)


def evaluate(params: Params, run_id: str | None = None) -> dict[str, Any]:
    """Score the best checkpoint; write metrics/eval.json and log the numbers to the run."""
    metrics = kind_of(params).step("evaluate")(params)
    write_json(params.path("metrics") / EVAL_METRICS, metrics)
    log_metrics(params, run_id, metrics)
    return metrics
