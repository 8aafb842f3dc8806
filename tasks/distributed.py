"""One rank of a distributed train step: `torchrun --standalone --nproc_per_node N -m
tasks.distributed STAGING RUN_ID RESUME`, launched by tasks.train when train.nproc > 1.

Each rank reads the run's params from STAGING, joins the process group (gloo on CPU, nccl on
CUDA), uses its share of the cores, and trains through the same `fit` as a single process;
rank 0 writes the summary back for the parent.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from gpt.config import build_params
from gpt.files import read_json, write_json
from gpt.train import pick_device
from tasks.train import PARAMS_FILE, RESULT_FILE, fit


def main(argv: list[str]) -> None:
    staging, run_id, resume = Path(argv[0]), argv[1] or None, argv[2] == "1"
    params = build_params(read_json(staging / PARAMS_FILE))
    on_cuda = pick_device(params.train.device).type == "cuda"
    dist.init_process_group("nccl" if on_cuda else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    on_this_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // on_this_node))  # torchrun sets 1
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank {rank} %(name)s: %(message)s")
    try:
        result = fit(params, staging, run_id, resume)
        if rank == 0:
            write_json(staging / RESULT_FILE, result)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
