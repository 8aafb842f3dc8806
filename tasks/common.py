"""Helpers every pipeline step shares: parameters, paths, digests, JSON files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_PATHS = {
    "raw": "data/raw", "validated": "data/validated", "tokenizer": "data/tokenizer",
    "tokens": "data/tokens", "model": "data/model", "metrics": "metrics", "reports": "reports",
}


def retry_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry I/O hiccups, never bad input (a ValueError)."""
    try:
        state.result()
    except ValueError:
        return False
    except Exception:
        return True
    return True


def path_of(params: dict[str, Any], name: str) -> Path:
    """A project path from params['paths'], relative to the working directory."""
    return Path((params.get("paths") or {}).get(name, DEFAULT_PATHS[name]))


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(params.get(name) or {})


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(folder: str | Path) -> str:
    """One digest over every file's relative name and content, in sorted order."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def sha256_json(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def write_json(path: str | Path, payload: Any) -> Path:
    """Write JSON atomically (temp file, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def documents(frame: Any) -> list[tuple[str, int]]:
    """(text, n_bytes) per document: consecutive records of the same source, joined.

    A text file's paragraphs join back into the file; each JSONL record has a source of its
    own, so it stays a document by itself.
    """
    docs: list[tuple[str, int]] = []
    last_source = None
    for text, source, n_bytes in zip(frame["text"], frame["source"], frame["n_bytes"],
                                     strict=True):
        if source == last_source:
            prev_text, prev_bytes = docs[-1]
            docs[-1] = (prev_text + text, prev_bytes + int(n_bytes))
        else:
            docs.append((text, int(n_bytes)))
        last_source = source
    return docs


def split_records(frame: Any, val_fraction: float) -> tuple[Any, Any]:
    """Deterministic split by record order: the last val_fraction of bytes is held out."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction!r}")
    if len(frame) < 2:
        raise ValueError(f"need at least 2 records to hold some out for validation, got "
                         f"{len(frame)}")
    cumulative = frame["n_bytes"].cumsum()
    cut = int((cumulative <= cumulative.iloc[-1] * (1 - val_fraction)).sum())
    cut = min(max(cut, 1), len(frame) - 1)
    return frame.iloc[:cut], frame.iloc[cut:]


def pick(params: dict[str, Any], dotted_keys: list[str]) -> dict[str, Any]:
    """The values of 'section' or 'section.key' entries of params."""
    picked = {}
    for key in dotted_keys:
        node: Any = params
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        picked[key] = node
    return picked


def step_cache_key(step: str, params: dict[str, Any], param_keys: list[str],
                   files: list[Path]) -> str:
    """What a cached step's output depends on: its inputs' and code's digests, the parameters
    it reads, and the project folder it writes into (the same keys as its DVC stage)."""
    return sha256_json({
        "step": step, "project": str(Path.cwd().resolve()),
        "params": pick(params, param_keys),
        "files": {str(f): sha256_file(f) if Path(f).is_file() else sha256_tree(f)
                  for f in files},
    })
