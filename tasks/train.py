"""train: the gpt/ trainer on the token shards, with every metric logged to MLflow.

Training writes into a staging folder that replaces data/model only when it finishes, so a
failed run leaves the previous model untouched. Also written: metrics/train.json,
metrics/loss.csv (for `dvc plots show`), reports/loss_curve.png and reports/samples.txt.
"""

from __future__ import annotations

import csv
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from prefect import task

from gpt.checkpoint import load_model
from gpt.config import model_config, sampling_params, train_config
from gpt.data import CorpusError, load_tokens
from gpt.generate import generate_text
from gpt.model import GPT
from gpt.tokenizer import load_tokenizer
from gpt.train import windows_trainer
from tasks.common import path_of, read_json, section, write_json
from tasks.encode import MANIFEST
from tasks.tracking import client, metric_logger

log = logging.getLogger("tinygpt.tasks.train")
SAMPLE_PROMPTS = ("", "ROMEO:", "The king")


def check_windows(manifest: dict[str, Any], block_size: int) -> None:
    """Refuse, before training, a corpus too small to fill one window of either split."""
    for split in ("train", "val"):
        if manifest[split]["tokens"] < block_size + 1:
            raise CorpusError(
                f"corpus too small: the {split} split has {manifest[split]['tokens']} tokens, "
                f"fewer than one training window of model.block_size + 1 = {block_size + 1}")


def write_loss_curve(history: list[dict[str, Any]], csv_path: Path, png_path: Path) -> None:
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "train_loss", "val_loss"])
        for event in history:
            writer.writerow([event["step"], f"{event['train_loss']:.5f}",
                             f"{event['val_loss']:.5f}"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [e["step"] for e in history]
    ax.plot(steps, [e["train_loss"] for e in history], marker="o", label="train")
    ax.plot(steps, [e["val_loss"] for e in history], marker="o", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def write_samples(model: GPT, tokenizer, params: dict[str, Any], path: Path) -> str:
    settings = sampling_params(params)
    blocks = []
    for prompt in SAMPLE_PROMPTS:
        text = generate_text(model, tokenizer, prompt, settings)
        blocks.append(f"=== prompt: {prompt!r}\n{prompt}{text}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(blocks), encoding="utf-8")
    return blocks[1] if len(blocks) > 1 else blocks[0]


def train(params: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    tokens_dir = path_of(params, "tokens")
    manifest = read_json(tokens_dir / MANIFEST)
    model_cfg = model_config(params, manifest["vocab_size"])
    cfg = train_config(params)
    check_windows(manifest, model_cfg.block_size)
    train_ids, val_ids = load_tokens(tokens_dir, "train"), load_tokens(tokens_dir, "val")

    model_dir = path_of(params, "model")
    staging = model_dir.with_name(f".{model_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    torch.manual_seed(cfg.seed)  # the initial weights too come from the seed
    trainer = windows_trainer(GPT(model_cfg), train_ids, val_ids, cfg, staging,
                              callback=metric_logger(params, run_id),
                              assets_dir=path_of(params, "tokenizer"))
    result = trainer.fit()
    shutil.rmtree(model_dir, ignore_errors=True)
    staging.rename(model_dir)

    metrics_dir, reports = path_of(params, "metrics"), path_of(params, "reports")
    summary = {"steps": result.steps, "best_val_loss": result.best_val_loss,
               "train_seconds": round(result.seconds, 2),
               "tokens_per_s": round(result.tokens_per_s, 1),
               "stopped_early": result.stopped_early, "parameters": trainer.model.num_params()}
    write_json(metrics_dir / "train.json", summary)
    write_loss_curve(result.history, metrics_dir / "loss.csv", reports / "loss_curve.png")
    best = load_model(model_dir / "best")
    sample = write_samples(best, load_tokenizer(model_dir / "best"), params,
                           reports / "samples.txt")
    if run_id is not None:
        mlflow_client = client(params)
        flat = {f"model.{k}": v for k, v in model_cfg.to_dict().items()}
        flat.update({f"train.{k}": v for k, v in asdict(cfg).items()})
        flat.update({f"tokenizer.{k}": v for k, v in section(params, "tokenizer").items()})
        flat.update({f"data.{k}": v for k, v in section(params, "data").items()})
        mlflow_client.log_batch(run_id, params=_mlflow_params(flat))
        for artifact in (reports / "loss_curve.png", reports / "samples.txt"):
            mlflow_client.log_artifact(run_id, str(artifact))
    return {**summary, "checkpoint": str(model_dir / "best"), "sample": sample}


def _mlflow_params(flat: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in sorted(flat.items())]




def read_examples(path: Path) -> list:
    """(inputs, labels) examples of one split written by encode_sft."""
    import numpy as np
    import pyarrow.parquet as pq

    from gpt.sft import Example

    table = pq.read_table(path, columns=["inputs", "labels"])
    return [Example(np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64))
            for x, y in zip(table["inputs"].to_pylist(), table["labels"].to_pylist(),
                            strict=True)]


def train_sft(params: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    """Fine-tune (or train from scratch) on prompt/completion records; loss on answers only."""
    from gpt.sft import PAD, BucketedBatches, eval_batches
    from gpt.train import Trainer, pick_device
    from tasks.tracking import load_registered

    tokens_dir, tokenizer_dir = path_of(params, "tokens"), path_of(params, "tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    cfg = train_config(params)
    init = section(params, "sft").get("init")
    base_version = None
    if init:
        model, _, base_version = load_registered(params, init)
        model.resize_vocab(tokenizer.vocab_size)
    else:
        torch.manual_seed(cfg.seed)
        model = GPT(model_config(params, tokenizer.vocab_size))
    train_examples = read_examples(tokens_dir / "train.parquet")
    val_examples = read_examples(tokens_dir / "val.parquet")
    longest = max(len(e.inputs) for e in train_examples + val_examples)
    if longest > model.config.block_size:
        raise CorpusError(f"a record needs {longest} tokens; the model's context is "
                          f"{model.config.block_size}")
    pad = tokenizer.special_tokens[PAD]
    batches = BucketedBatches(train_examples, cfg.batch_size, pad, cfg.seed,
                              device=pick_device(cfg.device))
    val = eval_batches(val_examples, cfg.batch_size, pad)
    model_dir = path_of(params, "model")
    staging = model_dir.with_name(f".{model_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    trainer = Trainer(model, batches, lambda: val, cfg, staging,
                      callback=metric_logger(params, run_id), assets_dir=tokenizer_dir)
    result = trainer.fit()
    shutil.rmtree(model_dir, ignore_errors=True)
    staging.rename(model_dir)
    summary = {"steps": result.steps, "best_val_loss": result.best_val_loss,
               "train_seconds": round(result.seconds, 2), "base_version": base_version,
               "tokens_per_s": round(result.tokens_per_s, 1)}
    write_json(path_of(params, "metrics") / "sft_train.json", summary)
    return {**summary, "checkpoint": str(model_dir / "best")}


train_task = task(train, name="train")
train_sft_task = task(train_sft, name="train-sft")
