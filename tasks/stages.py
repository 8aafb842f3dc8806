"""What each pipeline step reads, declared once per kind: the code it runs, the parameters it
reads and the earlier outputs it takes.

dvc.yaml and sft/dvc.yaml say the same (tests/code/test_stages.py fails when they differ, and
when a step imports a project module its stage does not name); the Prefect cache keys of the
steps a flow may take from its cache, and the fingerprint that decides whether an interrupted
training run resumes, are made from it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gpt.config import Params
from gpt.files import sha256_file, sha256_json, sha256_tree

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Inputs:
    code: tuple[str, ...]    # project files and folders, from the repository's root
    params: tuple[str, ...]  # params.yaml sections or keys (dotted)
    data: tuple[str, ...]    # `paths` entries: earlier steps' outputs


# What the train step runs, and what scoring a model (evaluate) runs with it.
TRAIN_CODE = ("gpt/batches.py", "gpt/checkpoint.py", "gpt/data.py", "gpt/generate.py",
              "gpt/model.py", "gpt/muon.py", "gpt/tokenizer", "gpt/train.py", "tasks/train.py")
MODEL_CODE = ("gpt/checkpoint.py", "gpt/data.py", "gpt/generate.py", "gpt/model.py",
              "gpt/tokenizer")
SFT_CODE = ("gpt/generate.py", "gpt/model.py", "gpt/sft.py", "gpt/tokenizer")  # gpt.sft's


def code(*paths: str) -> tuple[str, ...]:
    return tuple(sorted(set(paths)))


INPUTS: dict[str, dict[str, Inputs]] = {
    "text": {
        "ingest": Inputs(code("gpt/data.py", "tasks/ingest.py"),
                         ("data.source", "data.sha256", "data.text_field", "data.chunk_mb"), ()),
        "validate": Inputs(code("gpt/data.py", "tasks/chunks.py", "tasks/ingest.py",
                                "tasks/validate.py"), ("validate",), ("raw",)),
        "tokenize": Inputs(code("gpt/tokenizer", "tasks/chunks.py", "tasks/tokenize.py"),
                           ("tokenizer", "data.val_fraction"), ("validated",)),
        "encode": Inputs(code("gpt/data.py", "gpt/tokenizer", "tasks/chunks.py",
                              "tasks/encode.py"),
                         ("data.val_fraction", "data.tokens_per_shard"),
                         ("validated", "tokenizer")),
        "train": Inputs(code(*TRAIN_CODE), ("data.windows", "data.stride", "model", "train"),
                        ("tokens", "tokenizer")),
        "evaluate": Inputs(code(*MODEL_CODE, "gpt/batches.py", "gpt/evaluate.py",
                                "tasks/chunks.py", "tasks/encode.py", "tasks/evaluate.py"),
                           ("evaluate", "data.val_fraction"), ("model", "tokens", "validated")),
    },
    "sft": {
        "ingest": Inputs(code("gpt/sft_data.py", "tasks/ingest.py"),
                         ("sft.dataset", "sft.records", "sft.seed"), ()),
        "validate": Inputs(code(*SFT_CODE, "gpt/sft_data.py", "tasks/ingest.py",
                                "tasks/validate.py"),
                           ("sft.init", "sft.model.block_size", "sft.tokenizer"), ("raw",)),
        "tokenize": Inputs(code(*SFT_CODE, "tasks/tokenize.py"), ("sft.init", "sft.tokenizer"),
                           ("validated",)),
        "encode": Inputs(code(*SFT_CODE, "tasks/encode.py"), (), ("validated", "tokenizer")),
        "train": Inputs(code(*TRAIN_CODE, "gpt/sft.py"),
                        ("sft.init", "sft.model", "sft.train", "model", "train"),
                        ("tokens", "tokenizer")),
        "evaluate": Inputs(code(*TRAIN_CODE, *SFT_CODE, "tasks/evaluate.py"),
                           ("sft.max_new_tokens",), ("model", "tokens")),
    },
}


def inputs(params: Params, step: str) -> Inputs:
    return INPUTS[params.kind][step]


def param_values(params: Params, step: str) -> dict[str, Any]:
    """The values of the parameters a step reads, by their dotted names."""
    values = params.to_dict()
    found = {}
    for key in inputs(params, step).params:
        value: Any = values
        for part in key.split("."):
            value = value[part]
        found[key] = value
    return found


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

