"""workspace: each deployment's flow run works in a fresh clone of the deployment's commit.

prefect.yaml's pull steps make `$TINYGPT_WORKSPACES/<flow run id>/`, clone the commit into
`project/` there and run `tinygpt pull` in it (the stack's DVC remote, then what the commit's
dvc.lock records). Runs never share a folder, so a pool runs as many at once as its
concurrency allows, on as many hosts as have a worker. The flow removes its workspace after a
success; a failed or crashed run's stays for a look, and `tinygpt gc` lists and removes it.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from tasks.kinds import KINDS
from tasks.lock import LOCK_FILE, held
from tasks.version import dvc, locked_stages

VARIABLE = "TINYGPT_WORKSPACES"  # set by `tinygpt worker` (and the stack's worker)
DEFAULT_ROOT = Path(".tinygpt") / "workspaces"  # where the worker starts
PROJECT = "project"  # the clone, inside a run's workspace
ACTIVE_STATES = {"SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "PAUSED"}


def workspaces_root() -> Path:
    return Path(os.environ.get(VARIABLE) or DEFAULT_ROOT).resolve()


def current_workspace() -> Path | None:
    """The workspace this process works in (a run's folder under the workspaces root), or
    None in an ordinary checkout."""
    if not os.environ.get(VARIABLE):
        return None
    root, here = workspaces_root(), Path.cwd().resolve()
    if here == root or not here.is_relative_to(root):
        return None
    return root / here.relative_to(root).parts[0]


def remove_after_success(_flow: Any, flow_run: Any, _state: Any) -> None:
    """Prefect's on_completion hook: a completed run's workspace goes (a failed one stays)."""
    folder = current_workspace()
    if folder is not None and folder.name == str(flow_run.id):
        os.chdir(folder.parent)
        shutil.rmtree(folder)


def completion_hooks() -> list[Any]:
    """The flow's on_completion hooks: under a worker (TINYGPT_WORKSPACES set), the removal of
    a completed run's workspace; elsewhere none (a run in a checkout keeps its outputs)."""
    return [remove_after_success] if os.environ.get(VARIABLE) else []


def pull() -> list[str]:
    """What this checkout's dvc.lock files record (pretraining's, and sft/'s), from the
    default DVC remote (the stack's when one is up); outputs the remote does not hold are
    left out. The stages pulled."""
    pulled = []
    for kind in KINDS.values():
        if stages := locked_stages(kind):
            dvc("pull", "--allow-missing", "--quiet", *stages, project=kind.dvc_project)
            pulled += stages
    return pulled


def _flow_run_state(flow_run_id: str) -> str | None:
    """The flow run's state type on the Prefect API of PREFECT_API_URL; None without one."""
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        return None
    import httpx

    try:
        found = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10)
    except httpx.HTTPError:
        return None
    return found.json()["state"]["type"] if found.status_code == 200 else None


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def kept_workspaces(apply: bool) -> list[str]:
    """The workspaces failed runs left behind on this host, one line each; with apply, those
    no live run holds are removed."""
    root, lines = workspaces_root(), []
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for folder in folders:
        state = _flow_run_state(folder.name)
        age = (time.time() - folder.stat().st_mtime) / 3600
        line = (f"workspace {folder} (flow run {folder.name}, {state or 'state unknown'}, "
                f"{_size_mb(folder):,.0f} MB, {age:.1f} h old)")
        if held(folder / PROJECT / LOCK_FILE) or state in ACTIVE_STATES:
            line += "; kept: its run is still going"
        elif apply:
            shutil.rmtree(folder)
            line += "; removed"
        lines.append(line)
    return lines
