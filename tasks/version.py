"""version: record the run's data and model in dvc.lock and push them to the DVC remote.

`dvc commit` stores the current outputs of every stage of dvc.yaml in the cache and in
dvc.lock without re-running anything; `dvc push` copies them to the default remote. After it,
`dvc status` is clean, and `dvc pull` with this dvc.lock restores exactly these files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import task

from tasks.common import retry_transient, sha256_file

LOCK_FILE = "dvc.lock"


class VersioningError(RuntimeError):
    """A DVC command failed."""


def dvc_executable() -> str:
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def dvc(*args: str) -> str:
    result = subprocess.run([dvc_executable(), *args], capture_output=True, text=True)
    if result.returncode != 0:
        output = " ".join((result.stderr + result.stdout).split())
        raise VersioningError(f"dvc {' '.join(args)} failed: {output}")
    return result.stdout


def restore_outputs() -> str:
    """Put every stage output back as the last dvc.lock recorded it (after a failed run)."""
    if not Path(".dvc").is_dir() or not Path(LOCK_FILE).is_file():
        return "nothing to restore: no dvc.lock yet"
    try:
        dvc("checkout", "--force", "--quiet")
    except VersioningError as err:
        return f"could not restore every output: {err}"
    return "data outputs restored from dvc.lock"


def version(params: dict[str, Any]) -> dict[str, Any]:
    """dvc commit + dvc push; returns the digest of the resulting dvc.lock."""
    if not Path(".dvc").is_dir():
        raise VersioningError("not a DVC project (no .dvc folder here); run `dvc init`")
    dvc("commit", "--force", "--quiet")
    dvc("push", "--quiet")
    return {"dvc_lock": LOCK_FILE, "dvc_lock_digest": sha256_file(LOCK_FILE)}


version_task = task(version, name="version", retries=2, retry_delay_seconds=5,
                    retry_condition_fn=retry_transient)
