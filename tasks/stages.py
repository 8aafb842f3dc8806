"""What each pipeline step reads, as its kind declares it (`Kind.inputs`, tasks/kinds/): the
code it runs, the parameters it reads and the earlier outputs it takes.

dvc.yaml and sft/dvc.yaml say the same (tests/code/test_stages.py fails when they differ, and
when a step imports a project module its stage does not name); the Prefect cache keys of the
steps a flow may take from its cache, and the fingerprint that decides whether an interrupted
training run resumes, are made from it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gpt.config import Params
from gpt.files import sha256_file, sha256_json, sha256_tree
from tasks.kinds import Inputs, kind_of

ROOT = Path(__file__).resolve().parents[1]


def inputs(params: Params, step: str) -> Inputs:
    return kind_of(params).inputs[step]


def param_values(params: Params, step: str) -> dict[str, Any]:
    """The values of the parameters a step reads, by their dotted names."""
    values = params.to_dict()
    return {key: dotted(values, key) for key in inputs(params, step).params}


def param_value(params: Params, key: str) -> Any:
    """One parameter's value by its dotted name ("sft.init")."""
    return dotted(params.to_dict(), key)


def dotted(values: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        values = values[part]
    return values


def code_digest(path: Path) -> str:
    """A file's digest, or a folder's over its Python files (never their caches)."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for source in sorted(path.rglob("*.py")):
        digest.update(f"{source.relative_to(path)}:{sha256_file(source)}".encode())
    return digest.hexdigest()


def cache_key(step: str, params: Params, extra: dict[str, Any] | None = None) -> str:
    """What a cached step's output depends on: its code's and inputs' digests, the parameters
    it reads (`extra`: what else decides it, looked up at run time) and the project folder it
    writes into."""
    declared = inputs(params, step)
    data = [params.path(name) for name in declared.data]
    return sha256_json({
        "step": step, "kind": params.kind, "project": str(Path.cwd().resolve()),
        "params": param_values(params, step), "extra": extra or {},
        "paths": asdict(params.paths),
        "code": {path: code_digest(ROOT / path) for path in declared.code},
        "data": {str(p): sha256_file(p) if p.is_file() else sha256_tree(p) for p in data},
    })

