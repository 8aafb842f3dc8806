"""Held-out metrics: loss, perplexity and bits per byte.

Bits per byte divides the total code length (in bits) by the text's UTF-8 size, so it does not
depend on the tokenizer: a char-level and a BPE model can be compared on it directly.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from gpt.batches import sequential_windows
from gpt.model import GPT
from gpt.progress import Progress
from gpt.train import autocast

log = logging.getLogger("tinygpt.evaluate")


@torch.no_grad()
def evaluate_tokens(model: GPT, tokens: np.ndarray, n_bytes: int, batch_size: int = 16,
                    dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Score every token of `tokens` (the encoding of n_bytes of text) once."""
    if n_bytes <= 0:
        raise ValueError("n_bytes must be positive")
    model.eval()
    device = next(model.parameters()).device
    total_nats, total_tokens = 0.0, 0
    with Progress(log, "evaluating", len(tokens) - 1, "tokens") as progress:
        for x, y in sequential_windows(tokens, model.config.block_size, batch_size):
            x, y = x.to(device), y.to(device)
            with autocast(device, dtype):
                _, loss = model(x, y)
            total_nats += loss.item() * y.numel()
            total_tokens += y.numel()
            progress.update(total_tokens)
    loss = total_nats / total_tokens
    # The first token is context only, so scale the bits to the bytes actually predicted.
    bytes_scored = n_bytes * total_tokens / (total_tokens + 1)
    return {
        "val_loss": loss,
        "val_perplexity": math.exp(loss),
        "val_bits_per_byte": total_nats / math.log(2) / bytes_scored,
        "val_tokens": float(total_tokens),
    }
