"""The one place that knows MLflow's model side: where the store is, model URIs and aliases,
logging a checkpoint as the tinygpt pyfunc, and loading a registered version back.

tasks/ (register, promote, fine-tuning from a registered base) and serve/ both go through
here; nothing here imports tasks/ or serve/. MLflow is imported inside the functions: it takes
seconds to import, and the CLI should not pay for it when a command does not need it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpt.config import Params, SamplingParams

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
CHECKPOINT_ARTIFACT = "checkpoint"
FALLBACK_ARTIFACT = "fallback"  # a fine-tuned model's answers to fall back on (gpt.sft.Fallback)
# Sampling params the pyfunc accepts (its signature), with SamplingParams' defaults in the
# concrete types a signature needs: top_p 1.0 keeps every token, seed -1 = unseeded.
_SAMPLING = SamplingParams()
PARAM_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": _SAMPLING.max_new_tokens, "temperature": _SAMPLING.temperature,
    "top_k": _SAMPLING.top_k, "top_p": _SAMPLING.top_p or 1.0,
    "repetition_penalty": _SAMPLING.repetition_penalty, "seed": -1,
}
# Every registered version carries these; one without them is half-made (a crashed run of an
# older tinygpt) and promotion, reproduce and gc treat it so.
LINEAGE_TAGS = ("kind", "git_commit", "run_id", "dvc_lock_digest", "data_digest",
                "tokenizer_digest")
_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[\w-]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")

# MLflow's set_tracking_uri writes MLFLOW_TRACKING_URI into the environment itself, so the
# user's choice is read once, before this process sets it.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


# -- where the store is ---------------------------------------------------------------------------


def tracking_uri(params: Params) -> str:
    """The store's URI; a relative SQLite path is made absolute (MLflow caches by URI)."""
    return _absolute(USER_TRACKING_URI or params.registry.tracking_uri)


def embedded_uri(params: Params) -> str:
    """params.yaml's store (the embedded one by default), whatever MLFLOW_TRACKING_URI says."""
    return _absolute(params.registry.tracking_uri)


def store_name(params: Params) -> str:
    uri = tracking_uri(params)
    return (f"the MLflow server {uri}" if uri.startswith("http")
            else f"the embedded store {uri}")


def _absolute(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        database = Path(uri.removeprefix("sqlite:///")).resolve()
        database.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{database}"
    return uri


def use_store(params: Params) -> str:
    """Point mlflow at the configured store without contacting it; return its URI."""
    import mlflow

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # or MLflow may keep a registry it resolved before
    return uri


# What a one-line "server down" error ends with, here and for the Prefect server.
WHERE_DOWN = "`tinygpt stack status` shows what is down"


class RegistryUnavailable(RuntimeError):
    """The MLflow server does not answer, or answers without its database."""


def check_reachable(params: Params, timeout: float = 10.0) -> None:
    """Raise RegistryUnavailable, in one line and at once, when the store is a server that
    cannot serve a run (MLflow's own client retries for minutes first). A local store is
    always there."""
    uri = tracking_uri(params)
    if not uri.startswith(("http://", "https://")):
        return
    import httpx

    try:
        answer = httpx.get(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name",
                           params={"experiment_name": params.registry.experiment},
                           timeout=timeout)
    except httpx.HTTPError as err:
        raise RegistryUnavailable(f"the MLflow server {uri} does not answer "
                                  f"({type(err).__name__}: {err}); {WHERE_DOWN}") from None
    if answer.status_code == 200 or (answer.status_code == 404
                                     and "RESOURCE_DOES_NOT_EXIST" in answer.text):
        return
    try:
        detail = str(answer.json().get("message", ""))
    except ValueError:
        detail = answer.text
    detail = (detail.strip().splitlines() or [""])[0][:200]
    where = ("cannot use its database" if answer.status_code >= 500
             else "refuses the request")
    raise RegistryUnavailable(f"the MLflow server {uri} {where} (HTTP {answer.status_code}: "
                              f"{detail}); {WHERE_DOWN}")


def ensure_experiment(params: Params, name: str) -> str:
    """Point mlflow at the store and make sure the experiment exists; return its id. On a
    local store its artifacts go under registry.artifact_root; a server keeps its own."""
    import mlflow

    uri = use_store(params)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not uri.startswith(("http://", "https://")):
        root = Path(params.registry.artifact_root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        location = root.as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def connect(params: Params) -> str:
    """Point mlflow at the store and make sure the pipeline's experiment exists; its id."""
    return ensure_experiment(params, params.registry.experiment)


def client(params: Params):
    """An MlflowClient on the configured store."""
    from mlflow import MlflowClient

    connect(params)
    return MlflowClient()


# -- names, versions, aliases ---------------------------------------------------------------------


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of models:/NAME@ALIAS or models:/NAME/VERSION."""
    if match := _ALIAS_URI.match(uri):
        return match["name"], match["alias"], None
    if match := _VERSION_URI.match(uri):
        return match["name"], None, match["version"]
    raise ValueError(f"model URI must look like models:/NAME@ALIAS or models:/NAME/VERSION, "
                     f"got {uri!r}")


def alias_version(mlflow_client, name: str, alias: str):
    """The model version an alias points at, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def model_version(mlflow_client, name: str, ref: str):
    """The ModelVersion a reference names, a number or an alias (`champion`); a ValueError
    saying what exists when it names none."""
    from mlflow.exceptions import MlflowException

    if not str(ref).isdigit():
        found = alias_version(mlflow_client, name, ref)
        if found is None:
            raise ValueError(f"{name} has no version or alias {ref!r}")
        return found
    try:
        return mlflow_client.get_model_version(name, str(ref))
    except MlflowException:
        versions = mlflow_client.search_model_versions(f"name = '{name}'")
        latest = max((int(v.version) for v in versions), default=0)
        known = f"its latest is version {latest}" if latest else "it has no versions yet"
        raise ValueError(f"{name} has no version {ref}; {known}") from None


def _sqlite_query(uri: str, query: Callable[[Any], Any]) -> Any:
    """query(connection) on a local SQLite store opened read-only, directly (no MLflow import:
    milliseconds). None where uri is not SQLite or not (yet) MLflow's schema; query(None)
    where the store's file is not made yet."""
    import sqlite3

    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    if not database.is_file():
        return query(None)
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            return query(connection)
    except sqlite3.Error:
        return None


def sqlite_registry(uri: str, name: str
                    ) -> tuple[dict[int, dict[str, str]], dict[str, int]] | None:
    """(each version of model `name` with its tags, its aliases' versions) in a local SQLite
    store; None where uri is not one MLflow made; a store not made yet holds nothing."""

    def read(connection) -> tuple[dict[int, dict[str, str]], dict[str, int]]:
        if connection is None:
            return {}, {}
        versions: dict[int, dict[str, str]] = {int(v): {} for (v,) in connection.execute(
            "SELECT version FROM model_versions WHERE name = ?", (name,))}
        for version, key, value in connection.execute(
                "SELECT version, key, value FROM model_version_tags WHERE name = ?", (name,)):
            versions.setdefault(int(version), {})[key] = value
        aliases = {a: int(v) for a, v in connection.execute(
            "SELECT alias, version FROM registered_model_aliases WHERE name = ?", (name,))}
        return versions, aliases

    return _sqlite_query(uri, read)


def sqlite_experiment_id(uri: str, experiment: str) -> str | None:
    """The id of an experiment in a local SQLite store; None if unknown."""

    def read(connection) -> str | None:
        found = connection and connection.execute(
            "SELECT experiment_id FROM experiments WHERE name = ?", (experiment,)).fetchone()
        return str(found[0]) if found else None

    return _sqlite_query(uri, read)


MLFLOW_UI_PORT = 5000  # `tinygpt ui mlflow`'s, for an embedded store


def ui_base(uri: str) -> str:
    """Where MLflow's UI for the store at uri is: the server's address, or `tinygpt ui
    mlflow`'s."""
    return uri.rstrip("/") if uri.startswith("http") else f"http://127.0.0.1:{MLFLOW_UI_PORT}"


def ui_links(ui: str, experiment_id: str, run_id: str | None = None, name: str | None = None,
             version: str | int | None = None) -> dict[str, str]:
    """Direct links into MLflow's UI: the experiment's runs table (MLflow 3 opens an
    experiment on its GenAI overview otherwise), a run, a model version."""
    links = {"runs": f"{ui}/#/experiments/{experiment_id}/runs"}
    if run_id:
        links["run"] = f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"
    if name and version:
        links["version"] = f"{ui}/#/models/{name}/versions/{version}"
    return links


def check_version_exists(params: Params, ref: str) -> None:
    """Refuse at once a version or alias a local SQLite registry does not hold, with the same
    words as model_version, before the seconds of importing MLflow and torch. Any other store
    (a server) is asked later, by model_version."""
    name = params.model_name
    found = sqlite_registry(tracking_uri(params), name)
    if found is None:
        return
    versions, aliases = found
    if not str(ref).isdigit() and ref not in aliases:
        raise ValueError(f"{name} has no version or alias {ref!r}")
    if str(ref).isdigit() and int(ref) not in versions:
        known = f"its latest is version {max(versions)}" if versions else "it has no versions yet"
        raise ValueError(f"{name} has no version {ref}; {known}")


# -- alias moves, kept in MLflow ------------------------------------------------------------------

# One run per move, in an experiment of its own: on a shared server the history is shared
# too, and it outlives every checkout.
ALIAS_MOVES_EXPERIMENT = "alias-moves"


def move_alias(params: Params, name: str, alias: str, version: str, reason: str,
               by: str | None = None) -> str | None:
    """Point alias at version and record the move (when, from, to, why, by which run);
    the version it pointed at before, or None."""
    import getpass
    import socket

    mlflow_client = client(params)
    before = alias_version(mlflow_client, name, alias)
    previous = str(before.version) if before else None
    run = mlflow_client.create_run(  # opened first: a move never happens unrecorded
        ensure_experiment(params, ALIAS_MOVES_EXPERIMENT),
        run_name=f"{name}@{alias}: v{previous or '-'} -> v{version}",
        tags={"model": name, "alias": alias, "from_version": previous or "none",
              "to_version": str(version), "reason": reason[:4000],
              "by": by or f"manual ({getpass.getuser()}@{socket.gethostname()})"})
    mlflow_client.set_registered_model_alias(name, alias, version)
    mlflow_client.set_terminated(run.info.run_id, "FINISHED")
    return previous


def alias_history(params: Params, name: str, alias: str | None = None) -> list[dict[str, str]]:
    """Every move of name's aliases (or of one alias), oldest first.

    A move's record is opened before the alias moves and closed after; one left open (its
    process killed in between) counts if and only if the move happened: it is its alias's
    newest record and the alias points where it says."""
    import datetime

    mlflow_client = client(params)
    query = f"tags.model = '{name}'" + (f" and tags.alias = '{alias}'" if alias else "")
    runs = mlflow_client.search_runs([ensure_experiment(params, ALIAS_MOVES_EXPERIMENT)],
                                     filter_string=query,
                                     order_by=["attributes.start_time ASC"], max_results=5000)
    runs = [run for run in runs if run.info.status == "FINISHED"
            or _open_move_happened(mlflow_client, run, runs)]
    return [{"when": datetime.datetime.fromtimestamp(run.info.start_time / 1000,
                                                     datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
             **{key: run.data.tags.get(key, "") for key in
                ("model", "alias", "from_version", "to_version", "reason", "by")}}
            for run in runs]


def _open_move_happened(mlflow_client, run, runs: list) -> bool:
    tags = run.data.tags
    newest = [r for r in runs if r.data.tags.get("alias") == tags.get("alias")][-1]
    current = alias_version(mlflow_client, tags.get("model", ""), tags.get("alias", ""))
    return newest is run and current is not None and str(current.version) == tags.get(
        "to_version")


def resolve_version(uri: str) -> tuple[str, str]:
    """(name, version) a model URI names now (an alias is looked up in the registry)."""
    from mlflow import MlflowClient

    name, alias, version = parse_model_uri(uri)
    if version is None:
        version = str(MlflowClient().get_model_version_by_alias(name, alias).version)
    return name, version


# -- loading --------------------------------------------------------------------------------------


def registered_by(name: str, flow_run_id: str, alias: str = "champion",
                  uri: str | None = None) -> dict[str, Any]:
    """What a retraining flow run left in the registry (at uri, or MLflow's default): its
    version of `name` (None if it registered none), whether `alias` points at it, and the
    reason promotion gave (the two runs' figures, where there was a champion to compare)."""
    from mlflow import MlflowClient

    mlflow_client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    runs = mlflow_client.search_runs(
        experiments, filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    versions = [v for run in runs for v in mlflow_client.search_model_versions(
        f"name = '{name}' and run_id = '{run.info.run_id}'")]
    current = alias_version(mlflow_client, name, alias)
    newest = max(versions, key=lambda v: int(v.version), default=None)
    version = newest.version if newest else None
    return {"version": str(version) if version else None, "alias": alias,
            "alias_version": str(current.version) if current else None,
            "promoted": current is not None and version is not None
            and str(current.version) == str(version),
            "reason": newest.tags.get("promotion_reason") if newest else None}


def download_checkpoint(params: Params, name: str, version: str, into: Path) -> Path:
    """Download a version's registered checkpoint folder (weights, config, tokenizer files)
    into `into`; its path."""
    import mlflow

    uri = client(params).get_model_version_download_uri(name, version)
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)))
    return next(path for path in folder.rglob("config.json")
                if path.parent.parent.name == "artifacts").parent


def load_version(name: str, version: str):
    """The tinygpt pyfunc of a registered version, unwrapped: `.model`, `.tokenizer`, `.mode`,
    `.sampling` (its run's tunable sampling settings), `.fallback` (a gpt.sft.Fallback or
    None)."""
    import mlflow

    return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()


def load_registered(params: Params, model_uri: str):
    """(model, tokenizer, version) of the registered model a URI names."""
    use_store(params)
    name, version = resolve_version(model_uri)
    wrapper = load_version(name, version)
    return wrapper.model, wrapper.tokenizer, version


# -- registering ----------------------------------------------------------------------------------


def sampling_from(params: dict[str, Any] | None) -> SamplingParams:
    """SamplingParams from pyfunc params (seed -1 means unseeded)."""
    merged = {**PARAM_DEFAULTS, **(params or {})}
    seed = int(merged["seed"])
    return SamplingParams(max_new_tokens=int(merged["max_new_tokens"]),
                          temperature=float(merged["temperature"]), top_k=int(merged["top_k"]),
                          top_p=float(merged["top_p"]),
                          repetition_penalty=float(merged["repetition_penalty"]),
                          seed=None if seed < 0 else seed)


def signature():
    """A `prompt` string column in, a `completion` string column out, sampling params."""
    import pandas as pd
    from mlflow.models import infer_signature

    return infer_signature(pd.DataFrame({"prompt": ["ROMEO:"]}),
                           pd.DataFrame({"completion": ["..."]}), params=PARAM_DEFAULTS)


def git_commit(run_owned: tuple[str, ...] = ()) -> str:
    """HEAD's commit, with '-dirty' when tracked files other than run_owned (the files every
    run rewrites) have uncommitted changes: '-dirty' then means a person's edit."""
    excluded = [f":(exclude){path}" for path in run_owned]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", *excluded],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def missing_lineage(version) -> list[str]:
    """The lineage tags a model version lacks (empty for a complete one)."""
    return [tag for tag in LINEAGE_TAGS if not version.tags.get(tag)]


def register_checkpoint(params: Params, run_id: str, checkpoint: Path, model_name: str,
                        tags: dict[str, str], example_prompt: str = "ROMEO:",
                        mode: str = "text", artifacts: dict[str, Path] | None = None
                        ) -> dict[str, Any]:
    """Log a checkpoint folder (and any other artifacts the pyfunc reads) as the pyfunc in
    run_id (which stays RUNNING), then create the model version with all its tags in one call,
    so no version ever exists without its lineage."""
    import mlflow
    import pandas as pd

    connect(params)
    # Model.log with the run's id, not inside `with mlflow.start_run(...)`: that would end the
    # run FINISHED here, and a run killed later (in promote) would not be found as stale.
    info = mlflow.models.Model.log(
        artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=run_id,
        python_model=str(PYFUNC_FILE),
        artifacts={CHECKPOINT_ARTIFACT: str(checkpoint),
                   **{name: str(path) for name, path in (artifacts or {}).items()}},
        signature=signature(), input_example=pd.DataFrame({"prompt": [example_prompt]}),
        model_config={"mode": mode, "sampling": params.sample.sampling().tunable()})
    all_tags = {"git_commit": git_commit(), "run_id": run_id, **tags}  # tags may say better
    registered = mlflow.register_model(info.model_uri, model_name, tags=all_tags)
    return {"name": model_name, "version": str(registered.version),
            "model_uri": info.model_uri, "tags": all_tags}


def smoke_test(params: Params, name: str, version: str) -> None:
    """Load a registered version and check it (finite weights, a few greedy tokens that
    decode); raise ValueError if it cannot serve."""
    from gpt.generate import ModelCheckFailed, check_model

    use_store(params)
    try:
        wrapper = load_version(name, version)
        check_model(wrapper.model, wrapper.tokenizer)
    except ModelCheckFailed as err:
        raise ValueError(f"{name} version {version} fails its check: {err}") from None
    except Exception as err:  # any failure to load means: do not serve it
        raise ValueError(f"{name} version {version} does not load ({type(err).__name__}: "
                         f"{err})") from None
