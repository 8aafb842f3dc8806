"""`tinygpt stack up` in a throwaway copy of the project (git + DVC), shared by every test in
this folder (test_stack.py, then test_stack_faults.py, whose last test takes it down), and
`tinygpt stack down` after them whatever happened; helpers to run deployments on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack.envfile import OPT_OUT, VARIABLES, read_env
from stack.processes import alive, stop, tree
from tests.scratch import ROOT, copy_code

BIN = Path(sys.executable).parent
PROJECT_FILES = ("dvc.yaml", "prefect.yaml", "params.yaml", ".gitignore")


def clean_env() -> dict[str, str]:
    """This process's environment without a stack's variables (a developer's shell may hold
    them): the commands below find the stack through the project's env file alone."""
    gone = {*VARIABLES, OPT_OUT, "TINYGPT_WORKSPACES", "MLFLOW_TRACKING_URI",
            # as in a user's shell: tinygpt itself quiets MLflow's bars and links
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
            "DO_NOT_TRACK"}
    return {k: v for k, v in os.environ.items() if k not in gone}


def run(*args: str, cwd: Path, timeout: float = 300,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A command with clean_env(), plus env (say, the stack's variables, as a shell that ran
    `eval "$(tinygpt stack env)"` has them)."""
    return subprocess.run(list(args), cwd=cwd, env={**clean_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def tinygpt(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The `tinygpt` command of this checkout, run in cwd."""
    return run(sys.executable, str(ROOT / "cli.py"), *args, cwd=cwd, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stdout}{result.stderr}"
    return result.stdout


def make_stack_project(parent: Path, corpus_text: str) -> Path:
    """The code, dvc.yaml, prefect.yaml and params.yaml; git init, dvc init, a local remote
    (the stack's S3 remote takes over as the default while it is up)."""
    root = parent / "project"
    root.mkdir()
    copy_code(root)
    for name in PROJECT_FILES:
        shutil.copy(ROOT / name, root / name)
    (root / "corpus.txt").write_text(corpus_text, encoding="utf-8")
    ok(run("git", "init", "-q", cwd=root))
    ok(run(str(BIN / "dvc"), "init", "-q", cwd=root))
    for project in (root, root / "sft"):  # pretraining's DVC project, and fine-tuning's
        ok(run(str(BIN / "dvc"), "remote", "add", "-d", "--force", "local",
               str(parent / "local-remote"), cwd=project))
    ok(run("git", "add", "-A", cwd=root))
    ok(run("git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init",
           cwd=root))
    return root


@dataclass
class StackUp:
    root: Path
    output: str              # what `stack up` printed
    seconds: float           # its wall time
    state: dict[str, Any]    # .stack/pids.json right after up
    env: dict[str, str]      # .stack/stack.env

    @property
    def ports(self) -> dict[str, int]:
        return self.state["ports"]

    @property
    def api(self) -> str:
        return self.env["PREFECT_API_URL"]

    def services(self) -> dict[str, dict[str, Any]]:
        """The services' records now (a restarted service has a new process)."""
        return json.loads((self.root / ".stack" / "pids.json").read_text())["services"]

    def mlflow(self):
        from mlflow import MlflowClient

        uri = self.env["MLFLOW_TRACKING_URI"]
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def champion(self) -> str | None:
        from registry import alias_version

        version = alias_version(self.mlflow(), "tinygpt", "champion")
        return version and version.version

    def versions(self) -> set[str]:
        return {v.version for v in self.mlflow().search_model_versions("name = 'tinygpt'")}


# A small model on a 40 kB corpus (tests/pipeline/conftest.py TINY), as run parameters.
OVERRIDES = [
    "train.max_steps=20", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
    "model.block_size=32", "tokenizer.vocab_size=300", "train.eval_interval=10",
    "train.eval_iters=2", "train.batch_size=8", "train.log_interval=10", "train.warmup_steps=5",
    "train.dtype=float32", "validate.max_chars=5000", "data.val_fraction=0.1",
    "data.tokens_per_shard=4096", "data.source=corpus.txt", "data.sha256=null",
    "sample.max_new_tokens=8",
]
LONG = [*OVERRIDES, "train.max_steps=100000"]  # a run still training when a test stops it
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def sets(overrides: list[str]) -> list[str]:
    """The overrides as `tinygpt retrain` options."""
    return [arg for override in overrides for arg in ("--set", override)]


def deployment(api: str, name: str) -> dict[str, Any]:
    return httpx.get(f"{api}/deployments/name/{name}", timeout=10).json()


def start_run(api: str, overrides: list[str], name: str = "retrain/on-demand") -> str:
    """A run of a deployment through the Prefect API (what the page's upload does)."""
    created = httpx.post(f"{api}/deployments/{deployment(api, name)['id']}/create_flow_run",
                         json={"parameters": {"overrides": overrides}}, timeout=10)
    return created.json()["id"]


def flow_run(api: str, run_id: str) -> dict[str, Any]:
    return httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()


def wait_for_run(api: str, run_id: str, timeout: float, until: set[str] = TERMINAL) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = flow_run(api, run_id)
        if found["state"]["type"] in until:
            return found
        time.sleep(1)
    pytest.fail(f"flow run {run_id} did not reach {until} in {timeout:.0f} s")


def running_on_worker(stack: StackUp, run_id: str, timeout: float = 120) -> list:
    """Once the flow run is RUNNING in a process under the stack's worker: the worker's
    process tree, that process included."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = flow_run(stack.api, run_id)
        pid = found["infrastructure_pid"]
        if found["state"]["type"] == "RUNNING" and pid:
            processes = tree(stack.services()["worker"])
            if any(process.pid == int(pid) for process in processes):
                return processes
        time.sleep(0.5)
    pytest.fail(f"flow run {run_id} was not running under the worker in {timeout:.0f} s")


@pytest.fixture(scope="package")
def stack(shakespeare: str) -> Iterator[StackUp]:
    # PostgreSQL runs as the `postgres` user, which must reach the project: pytest's own
    # temporary folders are private to root, so this one is made searchable.
    # Servers are stopped on purpose here: this process's MLflow client gives up in seconds.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"
    parent = Path(tempfile.mkdtemp(prefix="tinygpt-stack-"))
    parent.chmod(0o755)
    root = make_stack_project(parent, shakespeare[:40_000])
    state: dict[str, Any] = {}
    try:
        began = time.perf_counter()
        up = tinygpt("stack", "up", cwd=root, timeout=400)
        seconds = time.perf_counter() - began
        pids = root / ".stack" / "pids.json"
        if pids.is_file():
            state = json.loads(pids.read_text())
        print(f"\n`tinygpt stack up` in {seconds:.1f} s:\n{up.stdout}{up.stderr}")
        ok(up)
        yield StackUp(root, up.stdout, seconds, state, read_env(root))
    finally:
        tinygpt("stack", "down", cwd=root, timeout=300)
        for record in state.get("services", {}).values():  # last resort: nothing stays
            if alive(record):
                stop(record, timeout=5)
        shutil.rmtree(parent, ignore_errors=True)
        del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
