"""The fine-tuning flow: prompt/completion records -> validate (GE) -> tokenizer -> encode ->
train (loss on answers only) -> evaluate (exact match) -> register -> promote.

It reads the same params.yaml: the `sft` section picks the data set, the base model
(`sft.init`, e.g. models:/tinygpt@champion, or none to train from scratch) and the registered
name; `sft.model` and `sft.train` override `model` and `train` for this kind of run. Outputs go
under data/sft/ so the pretraining outputs stay as they are.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context

from gpt.config import load_params, model_config, sampling_params, tokenizer_params, train_config
from gpt.sft import record_length
from tasks.common import section
from tasks.encode import encode_sft_task
from tasks.evaluate import evaluate_sft_task
from tasks.ingest import ingest_sft_task
from tasks.promote import promote_task
from tasks.register import register_sft_task
from tasks.tokenize import tokenize_sft_task
from tasks.tracking import client, connect, load_registered, registry_settings
from tasks.train import train_sft_task
from tasks.validate import validate_sft_task

SFT_PATHS = {name: f"data/sft/{name}" for name in ("raw", "validated", "tokenizer", "tokens",
                                                   "model")}
SFT_PATHS.update(metrics="metrics/sft", reports="reports/sft")


def sft_params(params: dict[str, Any]) -> dict[str, Any]:
    """params with sft.model / sft.train / sft.tokenizer applied and data/sft/ paths."""
    merged = copy.deepcopy(params)
    sft = section(params, "sft")
    for name in ("model", "train", "tokenizer"):
        merged[name] = {**(merged.get(name) or {}), **(sft.get(name) or {})}
    merged["paths"] = {**(merged.get("paths") or {}), **SFT_PATHS}
    return merged


def length_limits(params: dict[str, Any]) -> tuple[Callable[[str, str], int], int]:
    """(a record's length in tokens with control tokens, the context size), before any
    tokenizer is trained: exact with a base model's tokenizer or a char tokenizer, an upper
    bound (UTF-8 bytes) for a BPE still to be trained."""
    init = section(params, "sft").get("init")
    if init:
        model, tokenizer, _ = load_registered(params, init)
        return (lambda p, c: record_length(tokenizer, p, c)), model.config.block_size
    block = model_config(params, 256).block_size
    if tokenizer_params(params)[0] == "char":
        return (lambda p, c: len(p) + len(c) + 3), block
    return (lambda p, c: len(p.encode()) + len(c.encode()) + 3), block


@flow(name="finetune", log_prints=True)
def finetune(overrides: list[str] | None = None, params_file: str | None = None,
             force_promote: bool = False) -> dict[str, Any]:
    logger = get_run_logger()
    params = sft_params(load_params(params_file, overrides or []))
    model_config(params, tokenizer_params(params)[1])
    train_config(params)
    sampling_params(params)
    registry_settings(params)
    experiment_id = connect(params)
    mlflow_client = client(params)
    flow_run = get_run_context().flow_run
    run = mlflow_client.create_run(experiment_id, run_name=f"sft-{flow_run.name}", tags={
        "prefect.flow_run_id": str(flow_run.id), "kind": "sft"})
    run_id = run.info.run_id
    try:
        ingested = ingest_sft_task(params)
        logger.info("fine-tuning set: %d records (%s)", ingested["rows"], ingested["dataset"])
        validate_sft_task(params, *length_limits(params))
        tokenize_sft_task(params)
        encode_sft_task(params)
        trained = train_sft_task(params, run_id)
        metrics = evaluate_sft_task(params, run_id)
        registered = register_sft_task(params, run_id, metrics, trained["base_version"])
        decision = promote_task(params, registered["version"], force_promote, registered["name"])
    except BaseException:
        mlflow_client.set_terminated(run_id, "FAILED")
        raise
    mlflow_client.set_terminated(run_id, "FINISHED")
    summary = {"model": registered["name"], "version": registered["version"],
               "promoted": decision["promoted"], "champion": decision["champion"],
               "promotion": decision["reason"], "metrics": metrics, "run_id": run_id,
               "steps": trained["steps"], "base_version": trained["base_version"],
               "train_seconds": trained["train_seconds"]}
    accuracy = "\n".join(f"| {k} | {v:.3f} |" for k, v in metrics["accuracy_by_task"].items())
    create_markdown_artifact(
        f"# tinygpt fine-tune\n\n`{registered['name']}` version {registered['version']}: "
        f"exact match **{metrics['exact_match']:.3f}** on {metrics['records']} {metrics['split']}"
        f" records; {decision['reason']}\n\n| task | accuracy |\n|---|---|\n{accuracy}\n",
        key="finetune-summary")
    return summary

