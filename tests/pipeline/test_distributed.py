"""train.nproc > 1: the flow's train step runs under torchrun (DDP on gloo) and the run
registers like any other, with rank 0 alone reporting. train.nnodes > 1: the train step on
several hosts (here two launches on 127.0.0.1) trains one model, kept by node 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from flows.retrain import retrain
from gpt.config import load_params
from registry import client
from tests.scratch import ROOT
from tests.serve.conftest import free_port

STEPS = 10


@pytest.fixture(scope="module")
def two_process_run(project) -> dict:
    return retrain(overrides=["train.nproc=2"])


def test_a_two_process_run_trains_registers_and_reports_once(two_process_run, project):
    summary = two_process_run
    assert summary["version"] == "1" and summary["promoted"]
    train = json.loads((project / "metrics" / "train.json").read_text())
    assert train["nproc"] == 2 and train["steps"] == 30
    mlflow_client = client(load_params())
    history = mlflow_client.get_metric_history(summary["run_id"], "val_loss_estimate")
    assert [m.step for m in history] == [10, 20, 30]  # rank 0 only: no duplicates
    assert mlflow_client.get_run(summary["run_id"]).data.params["train.nproc"] == "2"
    assert not (project / "data" / ".model.staging").exists()
    assert {p.name for p in (project / "data" / "model" / "best").iterdir()} >= {
        "model.safetensors", "config.json"}


def train_step(*overrides: str) -> subprocess.Popen:
    """`python -m tasks train` (what each host runs) in this project, for STEPS steps."""
    # No dropout (each rank draws its own masks) and float32 (bf16 rounds the two ways of
    # summing apart): what is left to differ is the distribution itself.
    settings = [f"train.max_steps={STEPS}", f"train.eval_interval={STEPS}", "model.dropout=0.0",
                "train.dtype=float32", *overrides]
    return subprocess.Popen([sys.executable, "-m", "tasks", "train",
                             *[arg for s in settings for arg in ("--set", s)]],
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def latest_weights(project) -> dict:
    return load_file(str(project / "data" / "model" / "latest" / "model.safetensors"))


def test_two_nodes_train_what_one_process_trains_with_two_micro_batches(two_process_run,
                                                                        project):
    endpoint = f"train.rdzv_endpoint=127.0.0.1:{free_port()}"
    nodes = [train_step("train.nnodes=2", f"train.node_rank={rank}", endpoint)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "on node 1 of 2" in outputs[1] and '"node_rank": 1' in outputs[1]
    assert not list((project / "data").glob(".model.node*"))  # node 1 left nothing here
    trained = json.loads((project / "metrics" / "train.json").read_text())
    assert trained["nproc"] == 2 and trained["steps"] == STEPS  # one rank on each node
    two_nodes = latest_weights(project)
    single = train_step("train.grad_accum=2")
    assert single.wait(300) == 0, single.stdout.read()[-2000:]
    assert json.loads((project / "metrics" / "train.json").read_text())["nproc"] == 1
    one = latest_weights(project)  # the single run's, written over the two nodes' model
    worst = max((two_nodes[k] - one[k]).abs().max().item() for k in one)
    print(f"\n2 nodes vs 1 process with grad_accum=2: max abs weight difference {worst:.2e}")
    assert worst <= 1e-5, worst
