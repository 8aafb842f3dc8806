"""DistributedDataParallel under torchrun: 2 CPU processes train the parameters one process
trains with grad_accum=2 over the same batches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from gpt.checkpoint import model_state
from gpt.model import GPT
from tests.model.ddp_probe import STEPS, model_config, train, train_config
from tests.scratch import ROOT


def test_two_ranks_equal_one_process_with_two_micro_batches(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m",
                             "tests.model.ddp_probe", str(tmp_path / "ddp")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    train(str(tmp_path / "single"), grad_accum=2)
    ddp = load_file(str(tmp_path / "ddp" / "latest" / "model.safetensors"))
    single = load_file(str(tmp_path / "single" / "latest" / "model.safetensors"))
    assert ddp.keys() == single.keys()
    worst = max((ddp[k] - single[k]).abs().max().item() for k in ddp)
    print(f"\n2 ranks vs 1 process with grad_accum=2: max abs weight difference {worst:.2e}")
    assert worst <= 1e-5, worst
    torch.manual_seed(train_config(1).seed)
    initial = model_state(GPT(model_config()))
    moved = max((single[k] - initial[k]).abs().max().item() for k in single)
    assert moved > 1e-3  # the runs trained: equal weights are not the untouched init
    state = (tmp_path / "ddp" / "latest" / "trainer_state.json").read_text()
    assert f'"step": {STEPS}' in state
