"""A throwaway copy of the project (git + DVC with a local remote) and the Prefect harness."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.scratch import ROOT, copy_code

BIN = Path(sys.executable).parent
TINY = {
    "tokenizer": {"kind": "bpe", "vocab_size": 300},
    "model": {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32},
    "train": {"max_steps": 30, "batch_size": 8, "eval_interval": 10, "eval_iters": 2,
              "log_interval": 10, "warmup_steps": 5, "dtype": "float32"},
    "sample": {"max_new_tokens": 16},
    "validate": {"max_chars": 5000},
    "data": {"val_fraction": 0.1, "tokens_per_shard": 4096},
}


def sh(*args: str, cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result.stdout


def dvc(*args: str, cwd: Path) -> str:
    return sh(str(BIN / "dvc"), *args, cwd=cwd)


def dvc_changes(*stages: str, cwd: Path) -> dict[str, set[str]]:
    """What `dvc status` finds changed: output and file paths ('outs', 'deps') and params.yaml
    keys ('params'). After a run, outs and deps are empty and params names exactly what the
    run's --set overrides changed (dvc.lock records the values the run used)."""
    found: dict[str, set[str]] = {"outs": set(), "deps": set(), "params": set()}
    for entries in json.loads(dvc("status", "--json", *stages, cwd=cwd) or "{}").values():
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            found["outs"] |= set(entry.get("changed outs", {}))
            for path, change in entry.get("changed deps", {}).items():
                if isinstance(change, dict):
                    found["params"] |= set(change)  # {key: "modified", ...}
                else:
                    found["deps"].add(path)
    return found


def make_project(root: Path, corpus_text: str) -> Path:
    """Copy the code, dvc.yaml and a tiny params.yaml; git init, dvc init, local remote."""
    copy_code(root)
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", root / ".gitignore")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (root / "corpus.txt").write_text(corpus_text, encoding="utf-8")
    params["data"].update({"source": "corpus.txt", "sha256": None})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=root)
    dvc("init", "-q", cwd=root)
    for project in (root, root / "sft"):  # pretraining's DVC project, and fine-tuning's
        dvc("remote", "add", "-d", "--force", "local", str(root.parent / f"{root.name}-remote"),
            cwd=project)
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init",
       cwd=root)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory, shakespeare, prefect_harness) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("tinygpt") / "project"
    folder.mkdir()
    root = make_project(folder, shakespeare[:40_000])
    previous = Path.cwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(previous)
