"""Files written whole or not at all, and digests of files and folders.

Every writer in the project goes through `atomic_file` or `atomic_directory`: the content is
written under a temporary sibling name, flushed to disk, then renamed into place, so a crash
mid-write leaves the previous version intact and a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces target in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        _fsync(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_directory(target: str | Path, fill: Callable[[Path], None]) -> Path:
    """Create target by filling a temporary sibling folder and renaming it into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync(file)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace_directory(tmp, target)


def replace_directory(source: str | Path, target: str | Path) -> Path:
    """Move a finished folder onto target: the old target is renamed aside, never deleted
    before the new one is in place."""
    source, target = Path(source), Path(target)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    source.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def write_json(path: str | Path, payload: Any) -> Path:
    """Write JSON atomically (sorted keys, indented: diffs and digests stay stable)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


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
