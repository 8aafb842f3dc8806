"""gc: what crashed runs leave behind, listed (and with apply, cleaned up).

- model versions without their lineage tags (a run of an older tinygpt killed between creating
  a version and tagging it); a version an alias points at is reported, never deleted;
- MLflow runs still RUNNING whose process is gone (killed), closed as KILLED, and their
  Prefect flow runs set to Crashed;
- the artifacts of runs that ended FAILED or KILLED without registering a version (their Data
  Docs, reports, a model logged before the failure): the run's record and metrics stay;
- the workspaces a worker's failed runs left on this host (tasks/workspace.py), unless a run
  still holds one.

A new run closes stale runs itself before it starts (it holds the project lock, so no other
run of this project can be alive).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from gpt.config import DATA_KINDS, Params
from registry import client, missing_lineage
from tasks.workspace import kept_workspaces

log = logging.getLogger("tinygpt.gc")
PID_TAG, HOST_TAG = "tinygpt.pid", "tinygpt.host"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_runs(params: Params) -> list:
    """RUNNING MLflow runs of this experiment started on this host by a process now gone."""
    mlflow_client = client(params)
    experiment = mlflow_client.get_experiment_by_name(params.registry.experiment)
    if experiment is None:
        return []
    running = mlflow_client.search_runs([experiment.experiment_id],
                                        filter_string="attributes.status = 'RUNNING'")
    host = socket.gethostname()
    return [run for run in running
            if run.data.tags.get(HOST_TAG) == host and PID_TAG in run.data.tags
            and not process_alive(int(run.data.tags[PID_TAG]))]


def mark_flow_run_crashed(flow_run_id: str, message: str) -> str:
    """Set a Prefect flow run to Crashed; what happened, in words."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as prefect:
            flow_run = prefect.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return f"flow run {flow_run_id} already {flow_run.state.name}"
            prefect.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
    except Exception as err:  # the orchestrator may be another one, or down: say so, go on
        return f"flow run {flow_run_id} not reachable ({type(err).__name__})"
    return f"flow run {flow_run_id} marked Crashed"


def close_stale_runs(params: Params) -> list[str]:
    """Close every stale run: MLflow KILLED, its Prefect flow run Crashed. What was done."""
    done = []
    mlflow_client = client(params)
    for run in stale_runs(params):
        message = f"process {run.data.tags[PID_TAG]} died while the run was going"
        mlflow_client.set_terminated(run.info.run_id, "KILLED")
        line = f"MLflow run {run.info.run_id} ({run.info.run_name}) marked KILLED"
        if flow_run_id := run.data.tags.get("prefect.flow_run_id"):
            line += f"; {mark_flow_run_crashed(flow_run_id, message)}"
        log.warning("closed a stale run: %s", line)
        done.append(line)
    return done


def half_made_versions(params: Params) -> list[tuple[str, Any, list[str]]]:
    """(model name, version, missing tags) of every registered version lacking lineage."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(params)
    found = []
    for name in dict.fromkeys(params.model_name_of(kind) for kind in DATA_KINDS):
        try:
            versions = mlflow_client.search_model_versions(f"name='{name}'")
        except MlflowException:
            continue
        found += [(name, v, missing) for v in versions if (missing := missing_lineage(v))]
    return found


def failed_runs_with_artifacts(params: Params) -> list[tuple[Any, list[str]]]:
    """(run, artifact URIs) of each FAILED or KILLED run of the experiment that registered no
    version and still holds artifacts: its own folder and the models it logged."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    mlflow_client = client(params)
    experiment = mlflow_client.get_experiment_by_name(params.registry.experiment)
    if experiment is None:
        return []
    ended = [run for status in ("FAILED", "KILLED") for run in mlflow_client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.status = '{status}'")]
    found = []
    for run in ended:
        run_id = run.info.run_id
        if mlflow_client.search_model_versions(f"run_id = '{run_id}'"):
            continue  # a registered version's lineage: kept
        models = mlflow_client.search_logged_models(
            [experiment.experiment_id], filter_string=f"source_run_id = '{run_id}'")
        uris = [run.info.artifact_uri, *(m.artifact_location for m in models)]
        held = [uri for uri in uris if get_artifact_repository(uri).list_artifacts()]
        if held:
            found.append((run, held))
    return found


def reclaim(params: Params, run, uris: list[str]) -> None:
    """Delete a failed run's artifacts (and the models it logged); keep its record."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    mlflow_client = client(params)
    for uri in uris:
        get_artifact_repository(uri).delete_artifacts()
    experiment = run.info.experiment_id
    for model in mlflow_client.search_logged_models(
            [experiment], filter_string=f"source_run_id = '{run.info.run_id}'"):
        mlflow_client.delete_logged_model(model.model_id)
    mlflow_client.set_tag(run.info.run_id, "tinygpt.artifacts", "reclaimed by tinygpt gc")


def reclaim_failed_runs(params: Params, apply: bool) -> list[str]:
    lines = []
    for run, uris in failed_runs_with_artifacts(params):
        line = (f"MLflow run {run.info.run_id} ({run.info.run_name}) ended {run.info.status} "
                f"and keeps {len(uris)} artifact folder(s)")
        if apply:
            reclaim(params, run, uris)
            line += "; deleted"
        lines.append(line)
    return lines


def gc(params: Params, apply: bool = False) -> dict[str, list[str]]:
    """List (and with apply, remove or close) half-made versions, stale runs, the artifacts
    of failed runs and the workspaces they left."""
    mlflow_client = client(params)
    versions = []
    for name, version, missing in half_made_versions(params):
        line = f"{name} version {version.version} lacks {', '.join(missing)}"
        if version.aliases:
            line += f"; kept: alias {', '.join(version.aliases)} points at it"
        elif apply:
            mlflow_client.delete_model_version(name, version.version)
            line += "; deleted"
        versions.append(line)
    if apply:
        runs = close_stale_runs(params)
    else:
        runs = [f"MLflow run {run.info.run_id} ({run.info.run_name}) is RUNNING but process "
                f"{run.data.tags[PID_TAG]} is gone" for run in stale_runs(params)]
    return {"versions": versions, "runs": runs,
            "failed runs' artifacts": reclaim_failed_runs(params, apply),
            "workspaces": kept_workspaces(apply)}
