"""train.nproc > 1: the flow's train step runs under torchrun (DDP on gloo) and the run
registers like any other, with rank 0 alone reporting."""

from __future__ import annotations

import json

from flows.retrain import retrain
from gpt.config import load_params
from registry import client


def test_a_two_process_run_trains_registers_and_reports_once(project):
    summary = retrain(overrides=["train.nproc=2"])
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
