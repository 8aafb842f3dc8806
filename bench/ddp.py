"""Training throughput in 1 process and in N processes under torchrun (DDP), same model, same
global batch, measured through the trainer that `train.nproc` uses.

One node's cores are shared, so N processes on one CPU are not expected to be faster: this
measures what the launch path costs (and, on a multi-GPU machine, what it gains).

    python bench/ddp.py [--steps 30] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import save, table
from gpt.config import GPTConfig, TrainConfig
from gpt.model import GPT
from gpt.train import windows_trainer

# The default model of params.yaml (4 x 256, block 128) on 2048 token ids, global batch 32.
MODEL = GPTConfig(vocab_size=2048, block_size=128, n_layer=4, n_head=4, n_embd=256,
                  dropout=0.0)
GLOBAL_BATCH = 32


def run(steps: int, world_size: int, out: str) -> float:
    """Train `steps` steps; the trainer's tokens/s (all ranks together)."""
    cfg = TrainConfig(max_steps=steps, batch_size=GLOBAL_BATCH // world_size,
                      eval_interval=steps, eval_iters=1, log_interval=steps, device="cpu")
    data = np.random.default_rng(0).integers(0, MODEL.vocab_size, 200_000).astype(np.uint16)
    torch.manual_seed(cfg.seed)
    return windows_trainer(GPT(MODEL), data, data, cfg, out).fit().tokens_per_s


def rank_main(steps: int, out: str) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    try:
        speed = run(steps, dist.get_world_size(), out)
        if dist.get_rank() == 0:
            Path(out, "speed.json").write_text(json.dumps({"tokens_per_s": speed}))
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rank-out", help=argparse.SUPPRESS)  # set when run as one rank
    args = parser.parse_args()
    if args.rank_out:
        rank_main(args.steps, args.rank_out)
        return
    with tempfile.TemporaryDirectory() as scratch:
        single = run(args.steps, 1, f"{scratch}/single")
        torchrun = Path(sys.executable).with_name("torchrun")
        subprocess.run([str(torchrun), "--standalone", f"--nproc_per_node={args.nproc}",
                        __file__, "--steps", str(args.steps), "--rank-out",
                        f"{scratch}/ddp"], check=True)
        ddp = json.loads(Path(scratch, "ddp", "speed.json").read_text())["tokens_per_s"]
    rows = [{"setup": "1 process", "tokens_per_s": single, "vs_1_process": 1.0},
            {"setup": f"{args.nproc} processes (torchrun, DDP gloo)", "tokens_per_s": ddp,
             "vs_1_process": ddp / single}]
    print(table(rows, ["setup", "tokens_per_s", "vs_1_process"]))
    print(f"results: {save('ddp', rows, steps=args.steps, global_batch=GLOBAL_BATCH)}")


if __name__ == "__main__":
    main()
