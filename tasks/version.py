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
from tasks.kinds import Kind, kind_of

LOCK_FILE = "dvc.lock"  # the pretraining project's; the fine-tuning one's is sft/dvc.lock
# Tracked by git and rewritten by every run: a version's commit tag ignores them, and each
# version keeps its own dvc.lock in its MLflow run.
RUN_OWNED = (LOCK_FILE, "metrics", "sft/dvc.lock")
SNAPSHOT_DIR = Path(".tinygpt") / "snapshot"  # what a failed run puts back
METRICS_ARTIFACT = "metrics"  # a run's metrics files, kept with its dvc.lock for reproduce


class VersioningError(RuntimeError):
    """A DVC command failed."""


def dvc_executable() -> str:
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def dvc(*args: str, project: str = ".") -> str:
    """Run a dvc command in a DVC project (this one, or the fine-tuning one in sft/); its own
    error lines in the exception when it fails."""
    result = subprocess.run([dvc_executable(), *args], capture_output=True, text=True,
                            cwd=project)
    if result.returncode != 0:
        output = " ".join((result.stderr + result.stdout).split())
        if not output:  # --quiet hides the reason: ask once more, verbosely
            shown = [a for a in args if a != "--quiet"]
            again = subprocess.run([dvc_executable(), *shown], capture_output=True, text=True,
                                   cwd=project)
            output = " ".join((again.stderr + again.stdout).split()) or "no output"
        raise VersioningError(f"dvc {' '.join(args)} failed: {output}")
    return result.stdout


def locked_stages(kind: Kind) -> list[str]:
    """The kind's stages its project's dvc.lock has an entry for: commands that restore
    outputs (checkout, pull) name those, as a stage never run has no entry."""
    import yaml

    if not kind.dvc_lock.is_file():
        return []
    locked = yaml.safe_load(kind.dvc_lock.read_text(encoding="utf-8")) or {}
    return [stage for stage in kind.stages if stage in (locked.get("stages") or {})]


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
    """Keep the kind's dvc.lock, its metrics folder and its step folders as they are before a
    run writes anything."""
    lock = kind_of(params).dvc_lock

    def fill(folder: Path) -> None:
        if lock.is_file():
            shutil.copy2(lock, folder / LOCK_FILE)
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
        with atomic_file(kind_of(params).dvc_lock) as tmp:
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
    kind = kind_of(params)
    if not (Path(kind.dvc_project) / ".dvc").is_dir():
        raise VersioningError(f"not a DVC project (no .dvc folder in {kind.dvc_project}); "
                              f"run `dvc init`" + (" --subdir there" if kind.dvc_project != "."
                                                   else ""))
    dvc("commit", "--force", "--quiet", *kind.stages, project=kind.dvc_project)
    record_run_params(kind, overrides or [], params_file)
    dvc("push", "--quiet", *kind.stages, project=kind.dvc_project)
    return {"dvc_lock": str(kind.dvc_lock), "dvc_lock_digest": sha256_file(kind.dvc_lock)}


def record_run_params(kind: Kind, overrides: list[str], params_file: str | None = None) -> None:
    """`dvc commit` writes params.yaml's values into dvc.lock; write the values the run used
    (params.yaml with its --set overrides) instead. `dvc status` then says `modified` when
    params.yaml would not produce what the workspace holds, and `dvc repro` rebuilds it."""
    import yaml

    from gpt.config import apply_overrides, read_params_file

    if not overrides:
        return
    used = apply_overrides(read_params_file(params_file), overrides)
    lock = yaml.safe_load(kind.dvc_lock.read_text(encoding="utf-8"))
    for stage in kind.stages:
        for values in lock["stages"].get(stage, {}).get("params", {}).values():
            for key in values:
                node: Any = used
                for part in key.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                values[key] = node
    with atomic_file(kind.dvc_lock) as tmp:
        tmp.write_text(yaml.safe_dump(lock, sort_keys=False), encoding="utf-8")
