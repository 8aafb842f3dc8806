"""The retraining flow, one for every kind of data: ingest -> validate -> drift -> tokenize ->
encode -> train -> evaluate -> version -> register -> promote, as one Prefect flow run and one
MLflow run.

`data.kind` picks the kind (text: continue a corpus; sft: answer prompts); the steps are the
same functions either way.

A run holds the project's run lock from start to end, so runs never mix their outputs. Any
failure leaves the registry's aliases and the previous model as they were: dvc.lock, metrics/
and the kind's outputs are put back as they were before the run, a version is registered only
once its outputs are pushed (all its tags in one call), and `champion` moves last, after the
candidate was checked and after the servers were seen to answer. Ctrl-C or SIGTERM stops
the run (inside a step that writes its outputs whole, after an optimizer step in training,
after register or promote): the MLflow run ends KILLED, the flow run Cancelled, and training
can resume. A server that stops answering while the run goes stops it the same way, and the
run fails naming it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context
from prefect.states import Cancelled

from gpt.config import Params, load_params, recipe_overrides
from gpt.files import sha256_tree
from gpt.train import TrainingInterrupted
from registry import (
    WHERE_DOWN,
    RegistryUnavailable,
    check_reachable,
    client,
    connect,
    tracking_uri,
)
from tasks import encode, tokenize
from tasks.common import retry_transient
from tasks.drift import drift, record_profile
from tasks.evaluate import evaluate
from tasks.gc import HOST_TAG, PID_TAG, close_stale_runs
from tasks.ingest import ingest
from tasks.interrupt import (
    RunInterrupted,
    abortable,
    check_stop,
    request_stop,
    stop_on_signals,
    stop_reason,
)
from tasks.lock import run_lock
from tasks.promote import promote
from tasks.register import register
from tasks.train import train
from tasks.validate import STATIC_REPORT, validate
from tasks.version import METRICS_ARTIFACT, restore_outputs, snapshot, version
from tasks.workspace import completion_hooks

log = logging.getLogger("tinygpt.flow")
# Our progress lines (steps, BPE, encoding, training) are INFO: keep them wherever the flow runs
# (a worker's flow-run process configures logging as Prefect does, with the root at WARNING).
logging.getLogger("tinygpt").setLevel(logging.INFO)


# The steps as Prefect tasks. tasks/ holds plain functions that know nothing of Prefect (so
# data workers and DVC stages import them without it); what Prefect adds is said here:
# transient failures of a store are retried, and tokenize and encode are cached on their
# inputs (a re-run with unchanged data and parameters skips them; results stored as JSON).
RETRIED = {"retries": 2, "retry_delay_seconds": 5, "retry_condition_fn": retry_transient}
CACHED = {"persist_result": True, "result_serializer": "json"}
ingest_task = task(ingest, name="ingest", **RETRIED)
validate_task = task(validate, name="validate")
drift_task = task(drift, name="drift")
tokenize_task = task(tokenize.tokenize, name="tokenize", cache_key_fn=tokenize.cache_key,
                     **CACHED)
encode_task = task(encode.encode, name="encode", cache_key_fn=encode.cache_key, **CACHED)
train_task = task(train, name="train")
evaluate_task = task(evaluate, name="evaluate")
version_task = task(version, name="version", **RETRIED)
register_task = task(register, name="register", **RETRIED)
promote_task = task(promote, name="promote", **RETRIED)


# Steps a Ctrl-C may stop at once: each writes its outputs whole, and a stopped run puts back
# what was there. Training stops itself after an optimizer step (and resumes from there);
# register and promote are never cut in the middle.
ABORTABLE = frozenset({"ingest", "validate", "drift", "tokenize", "encode", "evaluate",
                       "version"})


class StepTimer:
    """Runs steps, recording each one's wall time and whether it came from the cache."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.from_cache: list[str] = []

    def __call__(self, name: str, step, *args: Any, **kwargs: Any) -> Any:
        check_stop()  # a Ctrl-C between steps stops here, before the next one writes
        log.info("step %s", name)
        started = time.perf_counter()
        with abortable() if name in ABORTABLE else nullcontext():
            state = step(*args, return_state=True, **kwargs)
        self.seconds[name] = round(time.perf_counter() - started, 2)
        if state.name == "Cached":
            self.from_cache.append(name)
        return state.result()

    def cached(self, name: str, step, params: Params, output: Path) -> Any:
        """A cached step, trusted only if its output folder is still the one it made."""
        result = self(name, step, params)
        if name in self.from_cache and result["digest"] != sha256_tree(output):
            self.from_cache.remove(name)
            result = self(name, step.with_options(refresh_cache=True), params)
        return result


def summary_markdown(summary: dict[str, Any]) -> str:
    metrics = summary["metrics"]
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items()
                     if isinstance(v, float) and k != "val_tokens")
    tasks = "\n".join(f"| {k} | {v:.3f} |" for k, v in metrics.get("accuracy_by_task", {}).items())
    steps = "\n".join(f"| {k} | {v:.1f} s{' (cached)' if k in summary['cached'] else ''} |"
                      for k, v in summary["seconds"].items())
    sample = f"**Sample**\n\n```\n{summary['sample']}\n```\n" if summary["sample"] else ""
    drifts = "\n".join(f"| {k} | {v:.4f} |" for k, v in summary["drift"].items())
    return (f"# tinygpt retrain ({summary['kind']})\n\n**Model** `{summary['model']}` version "
            f"**{summary['version']}**; champion is now version **{summary['champion']}**.\n\n"
            f"**Promotion:** {summary['promotion']}\n\n| metric | value |\n|---|---|\n{rows}\n\n"
            + (f"| task | accuracy |\n|---|---|\n{tasks}\n\n" if tasks else "")
            + (f"| data drift from the champion's | value |\n|---|---|\n{drifts}\n\n"
               if drifts else "")
            + f"| step | time |\n|---|---|\n{steps}\n\n{sample}")


def _attach_reports(params: Params, mlflow_client, run_id: str) -> None:
    docs = params.path("reports") / "data_docs"
    if docs.is_dir():
        mlflow_client.log_artifacts(run_id, str(docs), "data_docs")
    page = params.path("reports") / STATIC_REPORT
    if page.is_file():
        mlflow_client.log_artifact(run_id, str(page))


class PrefectUnavailable(RuntimeError):
    """The configured Prefect server does not answer, or answers without its database."""


def check_prefect_api(timeout: float = 10.0, api: str | None = None) -> None:
    """With a Prefect server configured, raise PrefectUnavailable in one line unless it is
    ready (its database included): Prefect's client would retry for a minute first."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    api = api or PREFECT_API_URL.value()
    if not api:
        return  # embedded: Prefect starts its own temporary server
    try:
        answer = httpx.get(f"{api.rstrip('/')}/ready", timeout=timeout)
    except httpx.HTTPError as err:
        raise PrefectUnavailable(f"the Prefect server {api} does not answer "
                                 f"({type(err).__name__}: {err}); {WHERE_DOWN}") from None
    if answer.status_code != 200:
        raise PrefectUnavailable(f"the Prefect server {api} is not ready (HTTP "
                                 f"{answer.status_code}: {answer.text.strip()[:200]}); "
                                 f"{WHERE_DOWN}")


def preflight(params: Params) -> None:
    """The servers a run talks to answer, or one line says which does not, before anything
    runs: the Prefect API (when one is set) and the MLflow server (when the store is one)."""
    check_prefect_api()
    check_reachable(params)


class ServerWatch:
    """Checks, every few seconds while a run goes, that the servers it reports to answer
    (the Prefect API, and the MLflow server when the store is one). Two failed checks in a row
    stop the run at its next safe point, naming the server: training alone never talks to
    Prefect, so without this a run whose orchestrator died would go on to promote."""

    def __init__(self, checks: dict[str, Callable[[], None]], interval: float = 3.0) -> None:
        self.checks, self.interval = checks, interval
        self.lost: PrefectUnavailable | RegistryUnavailable | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="server-watch", daemon=True)

    def _watch(self) -> None:
        failures: dict[str, int] = {}
        while not self._done.wait(self.interval):
            for name, check in self.checks.items():
                try:
                    check()
                    failures[name] = 0
                except (PrefectUnavailable, RegistryUnavailable) as err:
                    failures[name] = failures.get(name, 0) + 1
                    if failures[name] >= 2:
                        self.lost = err
                        if isinstance(err, PrefectUnavailable):
                            _quiet_prefect_clients()
                        request_stop(f"the loss of a server: {err}")
                        return

    def raise_if_lost(self) -> None:
        """Raise the loss as the run's error (before Prefect's client retries hide it)."""
        if self.lost is not None:
            raise type(self.lost)(f"{self.lost}; the run stopped, nothing was promoted")

    def __enter__(self) -> ServerWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()


def _quiet_prefect_clients() -> None:
    """With its server gone, Prefect's log and event workers would print a traceback for
    each batch they fail to send; the run's own line says what happened."""
    logging.raiseExceptions = False  # the log worker's "--- Error logging to API ---"
    for name in ("prefect.events.clients", "prefect._internal.concurrency"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def watch_servers(params: Params) -> ServerWatch:
    """A ServerWatch over this run's Prefect API and MLflow server."""
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()  # read here: the watch thread does not see this context
    checks = {"mlflow": lambda: check_reachable(params, timeout=5.0)}
    if api:
        checks["prefect"] = lambda: check_prefect_api(timeout=5.0, api=api)
    return ServerWatch(checks)


# A worker's run works in a fresh clone (tasks/workspace.py): a completed run's clone goes.
@flow(name="retrain", log_prints=True, on_completion=completion_hooks())
def retrain(overrides: list[str] | None = None, params_file: str | None = None,
            source: str | None = None, force_promote: bool = False,
            fresh: bool = False, recipe: str | None = None) -> dict[str, Any]:
    """Retrain on the configured data (or `source`) and register the result.

    Every parameter is checked while params load, so nonsense parameters cost nothing.
    `fresh` starts training over instead of resuming an interrupted run. `recipe` lays
    recipes/RECIPE.yaml over params.yaml, under the overrides.
    """
    overrides = [*(recipe_overrides(recipe) if recipe else []), *(overrides or [])]
    params = load_params(params_file, overrides)
    if params.train.node_rank > 0:
        raise ValueError(f"train.node_rank={params.train.node_rank} lends this host's ranks to "
                         f"node 0's training: run `python -m tasks train` here with the same "
                         f"--set options; `tinygpt retrain` runs on node 0")
    with run_lock(), stop_on_signals():
        return run_steps(params, overrides, source, force_promote, fresh, params_file)


def run_steps(params: Params, overrides: list[str], source: str | None, force_promote: bool,
              fresh: bool, params_file: str | None = None) -> Any:
    """One run's steps, inside the run lock: its summary, or a Cancelled state when it was
    asked to stop."""
    logger = get_run_logger()
    check_reachable(params)  # a worker's run: the CLI's preflight did not run
    experiment_id = connect(params)
    close_stale_runs(params)
    flow_run = get_run_context().flow_run
    mlflow_client = client(params)
    run = mlflow_client.create_run(experiment_id, run_name=flow_run.name, tags={
        "prefect.flow_run_id": str(flow_run.id), "overrides": " ".join(overrides),
        "kind": params.kind, PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()})
    run_id = run.info.run_id
    snapshot(params)
    step = StepTimer()
    try:
        with watch_servers(params) as watch:
            try:
                results = all_steps(params, step, run_id, overrides, source, force_promote,
                                    fresh, params_file, watch)
            except (RunInterrupted, TrainingInterrupted):
                watch.raise_if_lost()  # a lost server is a failure, named as such
                raise
    except (RunInterrupted, TrainingInterrupted) as err:
        stopped = str(err) if isinstance(err, RunInterrupted) else (
            f"run stopped by {stop_reason()}: {err}")
        message = f"{stopped}; {unpromoted(params, run_id, stopped)}"
        logger.warning("%s; %s", message, restore_outputs(params))
        mlflow_client.set_terminated(run_id, "KILLED")
        return Cancelled(message=message)
    except BaseException as err:
        logger.warning("run failed; %s; %s", unpromoted(params, run_id, f"run failed: {err}"),
                       restore_outputs(params))
        try:
            mlflow_client.set_terminated(run_id, "FAILED")
        except Exception as err:  # the server may be what failed: keep the first error
            logger.warning("could not mark MLflow run %s FAILED (%s); the next run closes it",
                           run_id, type(err).__name__)
        raise
    tokenized, drifted, trained, metrics, versioned, registered, decision = results
    summary = {
        "kind": params.kind, "model": registered["name"], "version": registered["version"],
        "champion": decision["champion"], "promoted": decision["promoted"],
        "promotion": decision["reason"], "metrics": metrics, "run_id": run_id,
        "tokenizer_vocab": tokenized["vocab_size"],
        "tokenizer_digest": registered["tags"]["tokenizer_digest"], "steps": trained["steps"],
        "resumed_from_step": trained["resumed_from_step"],
        "train_seconds": trained["train_seconds"], "base_version": trained["base_version"],
        "sample": trained["sample"], "seconds": step.seconds, "cached": step.from_cache,
        "dvc_lock_digest": versioned["dvc_lock_digest"], "drift": drifted["figures"],
        "tracking_uri": tracking_uri(params), "experiment_id": experiment_id,
        "project": str(Path.cwd()),
    }
    finish(params, run_id, summary)
    return summary


def all_steps(params: Params, step: StepTimer, run_id: str, overrides: list[str],
              source: str | None, force_promote: bool, fresh: bool, params_file: str | None,
              watch: ServerWatch) -> tuple:
    """The steps in order; promotion last, once the servers are known to answer."""
    logger, mlflow_client = get_run_logger(), client(params)
    ingested = step("ingest", ingest_task, params, source)
    logger.info("ingested %d %s records (%d bytes) from %s", ingested["rows"], params.kind,
                ingested["bytes"], ingested["source"])
    try:
        step("validate", validate_task, params)
    finally:
        _attach_reports(params, mlflow_client, run_id)
    drifted = step("drift", drift_task, params, run_id)
    tokenized = step.cached("tokenize", tokenize_task, params, params.path("tokenizer"))
    record_profile(params, run_id, drifted)
    step.cached("encode", encode_task, params, params.path("tokens"))
    trained = step("train", train_task, params, run_id, fresh)
    metrics = step("evaluate", evaluate_task, params, run_id)
    versioned = step("version", version_task, params, overrides, params_file)
    mlflow_client.log_artifact(run_id, versioned["dvc_lock"])  # as dvc.lock, either kind
    mlflow_client.log_artifacts(run_id, str(params.path("metrics")), METRICS_ARTIFACT)
    preflight(params)
    registered = step("register", register_task, params, run_id, metrics,
                      versioned["dvc_lock_digest"], trained["base_version"], overrides,
                      trained["sample"])
    check_stop()
    watch.raise_if_lost()
    preflight(params)  # the last check that can fail comes before the alias moves
    decision = step("promote", promote_task, params, registered["version"], force_promote,
                    by=f"run {run_id}")
    return tokenized, drifted, trained, metrics, versioned, registered, decision


def unpromoted(params: Params, run_id: str, why: str) -> str:
    """What a run that ends without promoting leaves in the registry, in words; a version it
    registered is tagged with the reason, so nobody takes it for one that was compared."""
    try:
        mlflow_client = client(params)
        made = mlflow_client.search_model_versions(f"run_id = '{run_id}'")
    except Exception as err:  # the registry may be what failed
        return f"whether it registered a version is unknown ({type(err).__name__})"
    if not made:
        return "nothing was registered or promoted"
    for unpromoted_version in made:
        if "promotion_decision" not in unpromoted_version.tags:
            with suppress(Exception):  # the words below tell the truth either way
                mlflow_client.set_model_version_tag(unpromoted_version.name,
                                                    unpromoted_version.version,
                                                    "promotion_decision",
                                                    f"not promoted: {why}"[:4000])
    names = ", ".join(f"{v.name} version {v.version}" for v in made)
    return f"{names} was registered but not promoted (the champion did not move)"


def finish(params: Params, run_id: str, summary: dict[str, Any]) -> None:
    """Bookkeeping after promotion: a failure here is logged, never turned into a failed run
    (the alias has moved; the run must not then exit non-zero)."""
    logger = get_run_logger()
    try:
        mlflow_client = client(params)
        mlflow_client.log_metric(run_id, "tokenizer_seconds", summary["seconds"]["tokenize"])
        mlflow_client.set_terminated(run_id, "FINISHED")
        create_markdown_artifact(summary_markdown(summary),
                                 key=f"retrain-{params.kind}-summary",
                                 description="metrics, model version, promotion decision, "
                                             "sample")
    except Exception as err:
        logger.warning("run done, but its bookkeeping failed: %s: %s", type(err).__name__, err)
