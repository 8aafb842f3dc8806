"""Fixtures shared by every test: the default corpus and small trained artifacts."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import ENVIRONMENT  # cheap: it imports none of the tools

# Prefect, Great Expectations, DVC and MLflow as `tinygpt` runs them (set before any of them
# is imported), with private state for the test session.
os.environ.update(ENVIRONMENT)
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="tinygpt-prefect-")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_REGISTRY_URI", None)
os.environ["TINYGPT_STACK"] = "off"  # a stack up in this checkout must not reach the tests

from gpt.model import GPT, GPTConfig
from gpt.tokenizer import BPETokenizer

ROOT = Path(__file__).resolve().parents[1]
CODE_FOLDERS = ("gpt", "registry", "tasks", "flows", "serve", "stack", "recipes")
# The fine-tuning DVC project's own files (its outputs stay behind).
SFT_PROJECT = ("sft/dvc.yaml", "sft/.dvcignore", "sft/.dvc/config", "sft/.dvc/.gitignore")


def copy_code(root: Path) -> None:
    """The project's code into a scratch project, where dvc.yaml's stages (and a worker's
    clone of it, which runs `python cli.py pull`) find it."""
    for folder in CODE_FOLDERS:
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("cli.py", *SFT_PROJECT):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)


def corpus_path() -> Path:
    """Tiny Shakespeare from the local mirror folder (TINYGPT_DATA_MIRROR or ../shared/data)."""
    mirror = os.environ.get("TINYGPT_DATA_MIRROR") or str(ROOT.parent / "shared" / "data")
    return Path(mirror) / "tinyshakespeare.txt"


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
