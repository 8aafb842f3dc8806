"""`tinygpt stack up` in a throwaway copy of the project (git + DVC), for the whole module, and
`tinygpt stack down` after it whatever happened."""

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

import pytest

from stack.envfile import OPT_OUT, VARIABLES, read_env
from stack.processes import alive, stop
from tests.conftest import ROOT, copy_code

BIN = Path(sys.executable).parent
PROJECT_FILES = ("dvc.yaml", "prefect.yaml", "params.yaml", ".gitignore")


def clean_env() -> dict[str, str]:
    """This process's environment without a stack's variables (a developer's shell may hold
    them): the commands below find the stack through the project's env file alone."""
    gone = {*VARIABLES, OPT_OUT, "TINYGPT_PROJECT_DIR", "MLFLOW_TRACKING_URI"}
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
    ok(run(str(BIN / "dvc"), "remote", "add", "-d", "local", str(parent / "local-remote"),
           cwd=root))
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


@pytest.fixture(scope="module")
def stack(shakespeare: str) -> Iterator[StackUp]:
    # PostgreSQL runs as the `postgres` user, which must reach the project: pytest's own
    # temporary folders are private to root, so this one is made searchable.
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
