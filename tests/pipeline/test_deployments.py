"""prefect.yaml against a real Prefect server on 127.0.0.1: both deployments register, the
nightly one with its cron schedule, on a process work pool, each run cloning the commit that
was deployed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.scratch import ROOT
from tests.serve.conftest import Process, free_port, wait_for

BIN = Path(sys.executable).parent


def test_prefect_yaml_deploys_nightly_and_on_demand(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect")}
    server = Process([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                      "--port", str(port)], env, tmp_path, tmp_path / "server.log")
    try:
        wait_for(f"{api}/health")

        def prefect(*args: str) -> str:
            result = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=ROOT,
                                    capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, result.stdout + result.stderr
            return result.stdout

        for pool in ("tinygpt", "gpu"):
            prefect("work-pool", "create", pool, "--type", "process")
        prefect("--no-prompt", "deploy", "--all")
        deployments = httpx.post(f"{api}/deployments/filter", json={}).json()
        by_name = {d["name"]: d for d in deployments}
        assert set(by_name) == {"nightly", "on-demand", "gpu"}
        assert {d["name"]: d["work_pool_name"] for d in deployments} == {
            "nightly": "tinygpt", "on-demand": "tinygpt", "gpu": "gpu"}
        gpu = by_name["gpu"]  # training on a GPU host's worker, the device a job variable
        assert gpu["job_variables"] == {"env": {"CUDA_VISIBLE_DEVICES": "0"}}
        assert gpu["parameters"] == {"overrides": ["train.device=cuda"]}
        schedules = by_name["nightly"]["schedules"]
        assert schedules[0]["schedule"]["cron"] == "0 3 * * *" and schedules[0]["active"]
        assert by_name["on-demand"]["schedules"] == []
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        for found in deployments:  # a workspace, a clone of the deployed commit, its data
            steps = [next(iter(step.items())) for step in found["pull_steps"]]
            clone = dict(steps)["prefect.deployments.steps.git_clone"]
            assert clone["commit_sha"] == head
            assert clone["repository"] == str(ROOT)
            assert steps[-1][1]["script"].startswith("python cli.py pull")
    finally:
        server.stop()
