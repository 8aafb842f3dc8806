"""Fixtures shared by every test: the default corpus and small trained artifacts."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.environment import ENVIRONMENT  # cheap: it imports none of the tools

# Prefect, Great Expectations, DVC and MLflow as `tinygpt` runs them (set before any of them
# is imported), with private state for the test session.
os.environ.update(ENVIRONMENT)
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="tinygpt-prefect-")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_REGISTRY_URI", None)
os.environ["TINYGPT_STACK"] = "off"  # a stack up in this checkout must not reach the tests
# Under `pytest -n N` the N workers share the cores: each test's processes get their share of
# threads, since oversubscribed OpenMP threads spin on cores another worker needs (two
# pipeline modules side by side: 20% less CPU, 15% less time with one thread each).
if (workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

from gpt.model import GPT, GPTConfig
from gpt.tokenizer import BPETokenizer
from tests.scratch import ROOT, corpus_path


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Real Prefect: a temporary API server and database for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    path = corpus_path()
    assert path.is_file(), f"the default corpus is missing at {path} (set TINYGPT_DATA_MIRROR)"
    return path


@pytest.fixture(scope="session")
def shakespeare(shakespeare_path: Path) -> str:
    return shakespeare_path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def bpe_1k(shakespeare: str) -> BPETokenizer:
    return BPETokenizer.train(shakespeare, 1024)


@pytest.fixture
def tiny_model() -> GPT:
    """A two-layer model small enough to run hundreds of forwards in a test."""
    import torch

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32))

@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests keep what a person may want to look at afterwards (screenshots)."""
    path = ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


# Whole folders whose every test starts servers or runs whole flows: `make test-fast` skips them.
SLOW_FOLDERS = ("pipeline", "stack", "serve")
# `make test` runs two pytest-xdist workers. Each module is one unit of work, so its fixtures
# are built once; tests/stack is one unit, since one host holds one team stack (its fixed
# ports). Units are queued longest folder first, so no long one starts last.
LONGEST_FIRST = ("stack", "pipeline", "serve", "data", "model", "code")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def folder(item: pytest.Item) -> str:
        return Path(item.path).relative_to(ROOT / "tests").parts[0]

    for item in items:
        if folder(item) in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: LONGEST_FIRST.index(folder(item)))


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's module-by-module scheduling, with tests/stack's modules as one unit."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "tests/stack" if module.startswith("tests/stack/") else module

    return ModuleUnits(config, log)
