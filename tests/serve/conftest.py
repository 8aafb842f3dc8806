"""A real MLflow registry (SQLite) holding small models, and `tinygpt serve` as a process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import torch

from gpt.checkpoint import WEIGHTS_FILE, save_model
from gpt.config import GPT2_BLOCK
from gpt.model import GPT, GPTConfig
from gpt.sft import CONTROL_TOKENS, Fallback
from gpt.tokenizer import BPETokenizer, Tokenizer
from registry import CHECKPOINT_ARTIFACT, FALLBACK_ARTIFACT, PYFUNC_FILE, signature

BIN = Path(sys.executable).parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Registry:
    uri: str
    root: Path
    tokenizer: BPETokenizer

    def register(self, seed: int, alias: str | None = "champion", name: str = "tinygpt",
                 fine_tuned: bool = False, loadable: bool = True,
                 tokenizer: Tokenizer | None = None, nan_weights: bool = False,
                 sampling: dict | None = None, fallback: Fallback | None = None) -> str:
        """Register a small random-weight model; point alias at it. Returns the version.

        fine_tuned: its tokenizer has the control tokens, and it always answers
        <|endoftext|> at once (so completion mode has a known result).
        loadable=False: the registered checkpoint loses its weights file before the alias
        moves, so loading the version fails.
        nan_weights: its position embedding is NaN (what a diverged run registers): it loads,
        and check_model refuses it.
        sampling: the tunable sampling settings its run chose, as the pipeline registers them.
        fallback: the training answers it carries, as a fine-tune with sft.fallback registers.
        """
        import mlflow
        import pandas as pd

        tokenizer = tokenizer or self.tokenizer
        if fine_tuned:
            tokenizer = tokenizer.with_special_tokens(CONTROL_TOKENS)
        torch.manual_seed(seed)
        model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2,
                              n_head=2, n_embd=32, **GPT2_BLOCK))
        if fine_tuned:
            with torch.no_grad():  # constant final features, aligned with <|endoftext|> only
                model.transformer.ln_f.weight.zero_()
                model.transformer.ln_f.bias.fill_(1.0)
                model.lm_head.weight[tokenizer.special_tokens["<|endoftext|>"]] = 5.0
        if nan_weights:
            with torch.no_grad():
                model.transformer.wpe.weight.fill_(float("nan"))
        tok_dir = self.root / f"tok-{name}-{seed}"
        tokenizer.save(tok_dir)
        ckpt = save_model(model, self.root / f"ckpt-{name}-{seed}", assets_dir=tok_dir)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        if mlflow.get_experiment_by_name("serving-tests") is None:
            mlflow.create_experiment("serving-tests",
                                     artifact_location=(self.root / "artifacts").as_uri())
        mlflow.set_experiment("serving-tests")
        artifacts = {CHECKPOINT_ARTIFACT: str(ckpt)}
        if fallback is not None:
            fallback.save(self.root / f"fallback-{name}-{seed}.json")
            artifacts[FALLBACK_ARTIFACT] = str(self.root / f"fallback-{name}-{seed}.json")
        config = {"mode": "completion"} if fine_tuned else {}
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(PYFUNC_FILE), artifacts=artifacts,
                signature=signature(), input_example=pd.DataFrame({"prompt": ["hi"]}),
                registered_model_name=name,
                model_config={**config, "sampling": sampling} if sampling else config or None)
        version = str(info.registered_model_version)
        if not loadable:
            stored = mlflow.MlflowClient().get_model_version_download_uri(name, version)
            weights = list(Path(stored.removeprefix("file://")).rglob(WEIGHTS_FILE))
            assert weights, f"no {WEIGHTS_FILE} under {stored}"
            for file in weights:
                file.unlink()
        if alias:
            mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
        return version


@pytest.fixture(scope="session")
def registry(tmp_path_factory, shakespeare) -> Registry:
    root = tmp_path_factory.mktemp("registry")
    reg = Registry(f"sqlite:///{root / 'mlflow.db'}", root,
                   BPETokenizer.train(shakespeare[:30_000], 400))
    reg.register(seed=0)
    return reg


def altered_checkpoint(source: Path, dest: Path,
                       change: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A copy of checkpoint folder source at dest, its weights passed through change first."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, dest)
    weights = load_file(str(dest / WEIGHTS_FILE))
    change(weights)
    save_file(weights, str(dest / WEIGHTS_FILE), metadata={"format": "pt"})
    return dest


def until(probe: Callable[[], T], timeout: float = 60.0, every: float = 0.2) -> T:
    """probe's first truthy answer, asked every `every` s for up to `timeout` s: a test waits on
    a condition, never on a fixed time that a loaded machine may not keep."""
    deadline = time.monotonic() + timeout
    while not (answer := probe()):
        assert time.monotonic() < deadline, f"no answer from {probe} in {timeout}s"
        time.sleep(every)
    return answer


def sse_events(response: httpx.Response) -> Iterator[tuple[str | None, dict]]:
    """(event, data) of a streamed response's server-sent events, as they arrive."""
    event = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield event, json.loads(line.removeprefix("data: "))


def wait_for(url: str, status: int = 200, timeout: float = 180.0) -> httpx.Response:
    """The first answer of `status` from url. A service starting beside the suite's other
    work on 2 cores once took over 90 s, so the default wait is long: it costs only a failure."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=5)
            if last.status_code == status:
                return last
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer {status} in {timeout}s (last: {last})")


class Process:
    """A child process we started, stopped by its own PID."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = open(log, "w")  # noqa: SIM115 - open for the life of the process
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def start_service(tracking_uri: str, cwd: Path, *extra: str,
                  env: Mapping[str, str | None] | None = None) -> tuple[Process, str]:
    """`tinygpt serve` on a free port; env adds to our environment (None removes a name)."""
    port = free_port()
    merged = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, **(env or {})}
    proc = Process([str(BIN / "tinygpt"), "serve", "--port", str(port), "--poll-seconds", "0.5",
                    *extra], {k: v for k, v in merged.items() if v is not None}, cwd,
                   cwd / f"serve-{port}.log")
    return proc, f"http://127.0.0.1:{port}"


def embedded_service(tmp_path: Path, corpus: str) -> tuple[Path, str, Process, str]:
    """A fresh project (git, DVC, nothing registered) served by `tinygpt serve` alone, no
    Prefect API: (its root, its MLflow store, the service, its URL), once it answers 503."""
    from tests.pipeline.conftest import make_project

    (tmp_path / "project").mkdir()
    root = make_project(tmp_path / "project", corpus)
    store = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    proc, url = start_service(store, root, env={"PREFECT_API_URL": None})
    try:
        wait_for(f"{url}/health", status=503)  # nothing registered yet
    except BaseException:
        proc.stop()
        raise
    return root, store, proc, url


@pytest.fixture(scope="module")
def service(registry, tmp_path_factory) -> Iterator[str]:
    cwd = tmp_path_factory.mktemp("service")
    proc, url = start_service(registry.uri, cwd, "--max-concurrency", "1", "--max-queue", "1")
    try:
        wait_for(f"{url}/health")
        yield url
    finally:
        proc.stop()
