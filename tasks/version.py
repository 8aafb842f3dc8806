"""version: record the run's data and model in dvc.lock and push them to the DVC remote.

`dvc commit` stores the current outputs of the run kind's stages of dvc.yaml in the cache and
in dvc.lock without re-running anything; `dvc push` copies them to the default remote. After
it, `dvc status` of those stages is clean, and `dvc pull` with this dvc.lock restores exactly
these files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from gpt.config import Params
from gpt.files import atomic_directory, atomic_file, replace_directory, sha256_file
from tasks.common import kind_of

LOCK_FILE = "dvc.lock"
# Tracked by git and rewritten by every run: a version's commit tag ignores them, and each
# version keeps its own dvc.lock in its MLflow run.
RUN_OWNED = (LOCK_FILE, "metrics")
SNAPSHOT_DIR = Path(".tinygpt") / "snapshot"  # what a failed run puts back


class VersioningError(RuntimeError):
    """A DVC command failed."""


def dvc_executable() -> str:
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def dvc(*args: str) -> str:
    """Run a dvc command; its own error lines in the exception when it fails."""
    result = subprocess.run([dvc_executable(), *args], capture_output=True, text=True)
    if result.returncode != 0:
        output = " ".join((result.stderr + result.stdout).split())
        if not output:  # --quiet hides the reason: ask once more, verbosely
            shown = [a for a in args if a != "--quiet"]
            again = subprocess.run([dvc_executable(), *shown], capture_output=True, text=True)
            output = " ".join((again.stderr + again.stdout).split()) or "no output"
        raise VersioningError(f"dvc {' '.join(args)} failed: {output}")
    return result.stdout


def locked_stages(params: Params | None = None) -> list[str]:
    """The stages dvc.lock has an entry for: all of them, or the run kind's.

    dvc.yaml holds every kind's stages, and a kind never run has no entry, so commands that
    restore outputs (checkout, pull) name the stages the lock knows."""
    import yaml

    if not Path(LOCK_FILE).is_file():
        return []
    locked = (yaml.safe_load(Path(LOCK_FILE).read_text(encoding="utf-8")) or {}).get("stages")
    wanted = kind_of(params).stages if params is not None else list(locked or {})
    return [stage for stage in wanted if stage in (locked or {})]


# The step folders a run rewrites, kept by the snapshot (params.paths names).
OUTPUTS = ("raw", "validated", "tokenizer", "tokens", "model")


def _link_or_copy(source: str, target: str) -> None:
    """A hard link (free, whatever the size: every step replaces its folder whole, so no file
    is ever written in place), or a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def snapshot(params: Params) -> Path:
    """Keep dvc.lock, the metrics folder and the kind's step folders as they are before a run
    writes anything."""

    def fill(folder: Path) -> None:
        if Path(LOCK_FILE).is_file():
            shutil.copy2(LOCK_FILE, folder / LOCK_FILE)
        for name in ("metrics", *OUTPUTS):
            if params.path(name).is_dir():
                shutil.copytree(params.path(name), folder / name, copy_function=_link_or_copy)

    return atomic_directory(SNAPSHOT_DIR, fill)


def restore_outputs(params: Params) -> str:
    """After a failed run: dvc.lock, metrics and the kind's step folders as the snapshot kept
    them; a folder the run created where there was none is removed. Nothing is read from the
    DVC cache, so a fresh clone restores as well as a used checkout."""
    if not SNAPSHOT_DIR.is_dir():
        return "nothing to put back (no snapshot was taken)"
    kept = SNAPSHOT_DIR / LOCK_FILE
    if kept.is_file():
        with atomic_file(LOCK_FILE) as tmp:
            shutil.copy2(kept, tmp)
    for name in ("metrics", *OUTPUTS):
        path, kept = params.path(name), SNAPSHOT_DIR / name
        if kept.is_dir():
            copy = path.with_name(f".{path.name}.restore")
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(kept, copy, copy_function=_link_or_copy)
            replace_directory(copy, path)
        elif name != "metrics" and path.is_dir():
            shutil.rmtree(path)
    return "dvc.lock, metrics and data outputs put back as they were before the run"


def version(params: Params, overrides: list[str] | None = None,
            params_file: str | None = None) -> dict[str, Any]:
    """dvc commit + dvc push of the run kind's stages, the lock holding the parameters the
    run used; the digest of the resulting dvc.lock."""
    if not Path(".dvc").is_dir():
        raise VersioningError("not a DVC project (no .dvc folder here); run `dvc init`")
    stages = kind_of(params).stages
    dvc("commit", "--force", "--quiet", *stages)
    record_run_params(stages, overrides or [], params_file)
    dvc("push", "--quiet", *stages)
    return {"dvc_lock": LOCK_FILE, "dvc_lock_digest": sha256_file(LOCK_FILE)}


def record_run_params(stages: list[str], overrides: list[str],
                      params_file: str | None = None) -> None:
    """`dvc commit` writes params.yaml's values into dvc.lock; write the values the run used
    (params.yaml with its --set overrides) instead. `dvc status` then says `modified` when
    params.yaml would not produce what the workspace holds, and `dvc repro` rebuilds it."""
    import yaml

    from gpt.config import apply_overrides, read_params_file

    if not overrides:
        return
    used = apply_overrides(read_params_file(params_file), overrides)
    lock = yaml.safe_load(Path(LOCK_FILE).read_text(encoding="utf-8"))
    for stage in stages:
        for values in lock["stages"].get(stage, {}).get("params", {}).values():
            for key in values:
                node: Any = used
                for part in key.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                values[key] = node
    with atomic_file(LOCK_FILE) as tmp:
        tmp.write_text(yaml.safe_dump(lock, sort_keys=False), encoding="utf-8")
