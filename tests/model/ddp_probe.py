"""Run by test_ddp.py under torchrun: a few training steps of a tiny model, DDP on gloo."""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.distributed as dist

from gpt.config import GPTConfig, TrainConfig
from gpt.model import GPT
from gpt.train import windows_trainer

STEPS = 6


def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 64, size=5000).astype(np.uint16)


def model_config() -> GPTConfig:
    return GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0)


def train_config(grad_accum: int) -> TrainConfig:
    return TrainConfig(max_steps=STEPS, batch_size=4, grad_accum=grad_accum, learning_rate=1e-3,
                       warmup_steps=2, eval_interval=STEPS, eval_iters=1, log_interval=1,
                       device="cpu", dtype="float32")


def train(out_dir: str, grad_accum: int) -> None:
    cfg = train_config(grad_accum)
    torch.manual_seed(cfg.seed)
    data = tokens()
    windows_trainer(GPT(model_config()), data, data, cfg, out_dir).fit()


if __name__ == "__main__":
    dist.init_process_group("gloo")
    try:
        train(sys.argv[1], grad_accum=1)
    finally:
        dist.destroy_process_group()
