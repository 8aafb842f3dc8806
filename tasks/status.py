"""`tinygpt status`: where this checkout stands, in a few lines.

The registry it reads (the embedded store or a server) and what the other one holds; the
champion (version, score, when, from which data); which registered version the workspace's
dvc.lock is (or that it is none); `dvc status` in one line; the last runs; and whether the
servers the checkout is pointed at answer. Nothing here changes anything.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from gpt.config import Params
from gpt.files import sha256_file
from registry import (
    alias_version,
    client,
    embedded_uri,
    sqlite_registry,
    store_name,
    tracking_uri,
    ui_base,
    ui_links,
)
from tasks.kinds import DEFAULT_KIND, kind_tagged
from tasks.version import LOCK_FILE, VersioningError, dvc


def when(millis: int | None) -> str:
    if not millis:
        return "?"
    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def champion_line(params: Params, found) -> str:
    """found: the champion's ModelVersion, or None."""
    alias = params.registry.champion_alias
    if found is None:
        return f"{params.model_name} has no {alias} yet: `make run` trains and promotes one"
    tags = found.tags
    kind = kind_tagged(tags.get("kind", DEFAULT_KIND))
    return (f"{params.model_name} version {found.version}: {kind.metric_label} "
            f"{tags.get(kind.metric, '?')}, registered "
            f"{when(found.creation_timestamp)}, data {tags.get('data_digest', '?')[:12]}")


def registry_lines(params: Params, stack_dir: Path) -> list[str]:
    """The store this report reads, and what the other one holds: the embedded store while a
    server is read, or a team stack that is down while the embedded store is."""
    lines = [f"reading {store_name(params)}"]
    if tracking_uri(params).startswith("http"):
        found = sqlite_registry(embedded_uri(params), params.model_name)
        if found and found[0]:
            lines.append(f"the embedded store {embedded_uri(params)} also holds "
                         f"{len(found[0])} version(s) of {params.model_name} (the latest "
                         f"{max(found[0])}): `TINYGPT_STACK=off tinygpt status` reads it")
    elif stack_dir.is_dir():
        lines.append(f"a team stack was used here ({stack_dir}/) and is not read (it is down, "
                     f"or TINYGPT_STACK=off): `tinygpt stack up` reads its registry")
    return lines


def workspace_line(params: Params, mlflow_client, champion, stack_dir: Path) -> str:
    """Which registered version the workspace's dvc.lock is, found by its digest tag (in the
    store read, else in the other one where it can be read)."""
    if not Path(LOCK_FILE).is_file():
        return "no dvc.lock: no run has finished in this checkout"
    digest = sha256_file(LOCK_FILE)
    versions = mlflow_client.search_model_versions(f"name = '{params.model_name}'")
    matching = [v for v in versions if v.tags.get("dvc_lock_digest") == digest]
    if not matching:
        return "dvc.lock matches no version in this store; " + elsewhere(params, digest,
                                                                         stack_dir)
    version = max(matching, key=lambda v: int(v.version))
    role = ("the champion" if champion and champion.version == version.version
            else "not the champion")
    return f"data/ and the model are version {version.version}'s ({role})"


def elsewhere(params: Params, digest: str, stack_dir: Path) -> str:
    """Where a dvc.lock the store read does not know may be registered instead."""
    if tracking_uri(params).startswith("http"):
        versions, _ = sqlite_registry(embedded_uri(params), params.model_name) or ({}, {})
        embedded = [v for v, tags in versions.items() if tags.get("dvc_lock_digest") == digest]
        if embedded:
            return f"it is version {max(embedded)} of the embedded store"
    elif stack_dir.is_dir():
        return "it may be registered in the team stack's registry (`tinygpt stack up`)"
    return "a run that did not register"


def links_lines(params: Params, mlflow_client, champion) -> list[str]:
    """Links to the runs table, the champion's version and its run in MLflow's UI."""
    experiment = mlflow_client.get_experiment_by_name(params.registry.experiment)
    if experiment is None:
        return ["no experiment yet"]
    links = ui_links(ui_base(tracking_uri(params)), experiment.experiment_id,
                     champion.run_id if champion else None, params.model_name,
                     champion.version if champion else None)
    lines = [f"{what:<8}{url}" for what, url in links.items()]
    if not tracking_uri(params).startswith("http"):
        lines[0] += "  (once `tinygpt ui mlflow` runs)"
    return lines


def dvc_line() -> str:
    """`dvc status` in one line: up to date, or which stages differ from dvc.lock."""
    try:
        report = dvc("status")
    except VersioningError as err:
        return str(err)[:200]
    stages = [line.rstrip(":") for line in report.splitlines()
              if line.endswith(":") and not line[:1].isspace()]
    if not stages:
        return "data, model and metrics match dvc.lock"
    return (f"{len(stages)} stage(s) differ from dvc.lock ({', '.join(stages[:8])}): "
            f"`dvc status` says how")


def runs_lines(params: Params, mlflow_client, count: int = 5) -> list[str]:
    experiment = mlflow_client.get_experiment_by_name(params.registry.experiment)
    if experiment is None:
        return ["no runs yet"]
    runs = mlflow_client.search_runs([experiment.experiment_id], max_results=count,
                                     order_by=["attributes.start_time DESC"])
    return [f"{when(run.info.start_time)}  {run.info.status:<9} {run.info.run_name}"
            for run in runs] or ["no runs yet"]


def answers(url: str) -> str:
    import httpx

    try:
        reply = httpx.get(url, timeout=3)
    except httpx.HTTPError as err:
        return f"DOWN ({type(err).__name__})"
    return "up" if reply.status_code < 500 else f"DOWN (HTTP {reply.status_code})"


def services_lines(params: Params, pool: str) -> list[str]:
    uri = tracking_uri(params)
    mlflow = (f"MLflow server {uri}: {answers(uri.rstrip('/') + '/health')}"
              if uri.startswith("http") else f"MLflow: embedded store {uri}")
    api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not api:
        return [mlflow, "Prefect: embedded (a temporary server per run; `tinygpt ui prefect` "
                        "shows past runs)"]
    return [mlflow, f"Prefect server {api}: {answers(api + '/health')}",
            f"workers of pool {pool}: {workers(api, pool)}"]


def workers(api: str, pool: str) -> str:
    import httpx

    try:
        found = httpx.post(f"{api}/work_pools/{pool}/workers/filter", json={}, timeout=3)
        found.raise_for_status()
    except httpx.HTTPError as err:
        return f"unknown ({type(err).__name__})"
    online = [w["name"] for w in found.json() if w.get("status") == "ONLINE"]
    return f"{len(online)} online" + (f" ({', '.join(online)})" if online else
                                      ": `tinygpt stack up` starts one")


def status_report(params: Params, pool: str, stack_dir: Path) -> dict[str, list[str]]:
    """Every section of the report, as lines; pool is the work pool the deployments use,
    stack_dir the folder a team stack keeps its state in."""
    mlflow_client = client(params)
    champion = alias_version(mlflow_client, params.model_name, params.registry.champion_alias)
    return {"registry": registry_lines(params, stack_dir),
            "champion": [champion_line(params, champion)],
            "open": links_lines(params, mlflow_client, champion),
            "workspace": [workspace_line(params, mlflow_client, champion, stack_dir)],
            "dvc": [dvc_line()],
            "last runs": runs_lines(params, mlflow_client),
            "services": services_lines(params, pool)}
