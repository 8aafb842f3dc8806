"""Where the code and the default corpus are, for tests and benchmarks alike: a scratch
project gets a copy of the code, where its DVC stages (and a worker's clone) find it.

Importing this changes nothing; tests/conftest.py is what sets a test session's environment.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
    """Tiny Shakespeare from the local mirror folder ($TINYGPT_DATA_MIRROR, else
    ../shared/data beside the checkout)."""
    mirror = os.environ.get("TINYGPT_DATA_MIRROR") or str(ROOT.parent / "shared" / "data")
    return Path(mirror) / "tinyshakespeare.txt"
