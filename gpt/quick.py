"""The quick path: one text file in, a trained checkpoint folder out, no pipeline.

out_dir/
    tokenizer/        the tokenizer trained on the training split
    best/, latest/    checkpoints (each also holds the tokenizer files)
    metrics.json      held-out loss, perplexity, bits per byte, steps, wall time, tokens/s
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt.checkpoint import load_model
from gpt.config import Params
from gpt.data import read_text, split_text, token_dtype
from gpt.evaluate import evaluate_tokens
from gpt.generate import generate_text
from gpt.model import GPT
from gpt.tokenizer import train_tokenizer
from gpt.train import Callback, windows_trainer

log = logging.getLogger("tinygpt.quick")


def train_from_text(input_path: str | Path, out_dir: str | Path, params: Params,
                    callback: Callback | None = None) -> dict[str, Any]:
    """Train tokenizer and model on a text file; return the metrics written to metrics.json.
    The trainer's events (each eval, each logged step) also go to callback.

    params was checked when it was built, so nonsense parameters fail before any work."""
    started = time.perf_counter()
    out = Path(out_dir)
    cfg, kind = params.train, params.tokenizer.kind
    train_text, val_text = split_text(read_text(input_path), params.data.val_fraction)

    t0 = time.perf_counter()
    tokenizer = train_tokenizer(kind, train_text, params.tokenizer.vocab_size,
                                min_frequency=params.tokenizer.min_frequency,
                                drop_whitespace=params.tokenizer.drop_whitespace)
    tokenizer.save(out / "tokenizer")
    log.info("trained %s tokenizer (vocab %d) in %.1fs", kind, tokenizer.vocab_size,
             time.perf_counter() - t0)
    dtype = token_dtype(tokenizer.vocab_size)
    train_ids = np.array(tokenizer.encode(train_text), dtype=dtype)
    val_ids = np.array(tokenizer.encode(val_text), dtype=dtype)
    log.info("encoded %d train and %d val tokens", len(train_ids), len(val_ids))

    torch.manual_seed(cfg.seed)  # the initial weights too come from the seed
    model = GPT(params.model_config(tokenizer.vocab_size))
    trainer = windows_trainer(model, train_ids, val_ids, cfg, out, stride=params.window_stride,
                              input_noise=params.data.input_noise,
                              assets_dir=out / "tokenizer", callback=callback)
    result = trainer.fit()

    best = load_model(result.best_dir, trainer.device)
    metrics = evaluate_tokens(best, val_ids, len(val_text.encode("utf-8")),
                              cfg.batch_size, trainer.dtype)
    prompt = params.sample.prompt
    metrics.update(steps=result.steps, temperature=result.temperature,
                   train_seconds=result.seconds,
                   tokens_per_s=result.tokens_per_s, wall_seconds=time.perf_counter() - started,
                   sample=generate_text(best, tokenizer, prompt, params.sample.sampling()))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
