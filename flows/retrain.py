"""The retraining flow: ingest -> validate -> tokenize -> encode -> train -> evaluate ->
register -> promote -> version, as one Prefect flow run and one MLflow run.

Any failure before `promote` leaves the registry's aliases, the DVC remote and the previous
model as they were: nothing is promoted or pushed until a model is trained, evaluated and
registered.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context

from gpt.config import load_params, model_config, sampling_params, tokenizer_params, train_config
from tasks.common import path_of, sha256_tree
from tasks.encode import encode_task
from tasks.evaluate import evaluate_task
from tasks.ingest import ingest_task
from tasks.promote import promote_task
from tasks.register import register_task
from tasks.tokenize import tokenize_task
from tasks.tracking import client, connect, registry_settings, tracking_uri
from tasks.train import train_task
from tasks.validate import validate_task, validation_settings
from tasks.version import LOCK_FILE, restore_outputs, version_task


def check_params(params: dict[str, Any]) -> None:
    """Every section is checked before any work, so nonsense parameters cost nothing."""
    model_config(params, tokenizer_params(params)[1])
    train_config(params)
    sampling_params(params)
    validation_settings(params)
    registry_settings(params)


class StepTimer:
    """Runs steps, recording each one's wall time and whether it came from the cache."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.from_cache: list[str] = []

    def __call__(self, name: str, step, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        state = step(*args, return_state=True, **kwargs)
        self.seconds[name] = round(time.perf_counter() - started, 2)
        if state.name == "Cached":
            self.from_cache.append(name)
        return state.result()

    def cached(self, name: str, step, params: dict[str, Any], output: Path) -> Any:
        """A cached step, trusted only if its output folder is still the one it made."""
        result = self(name, step, params)
        if name in self.from_cache and result["digest"] != sha256_tree(output):
            self.from_cache.remove(name)
            result = self(name, step.with_options(refresh_cache=True), params)
        return result


def summary_markdown(summary: dict[str, Any]) -> str:
    metrics = summary["metrics"]
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items() if k != "val_tokens")
    steps = "\n".join(f"| {k} | {v:.1f} s{' (cached)' if k in summary['cached'] else ''} |"
                      for k, v in summary["seconds"].items())
    return (f"# tinygpt retrain\n\n**Model** `{summary['model']}` version "
            f"**{summary['version']}**; champion is now version **{summary['champion']}**.\n\n"
            f"**Promotion:** {summary['promotion']}\n\n| metric | value |\n|---|---|\n{rows}\n\n"
            f"| step | time |\n|---|---|\n{steps}\n\n**Sample**\n\n```\n{summary['sample']}\n```\n")


def _attach_reports(params: dict[str, Any], run_id: str) -> None:
    docs = path_of(params, "reports") / "data_docs"
    if docs.is_dir():
        client(params).log_artifacts(run_id, str(docs), "data_docs")


@flow(name="retrain", log_prints=True)
def retrain(overrides: list[str] | None = None, params_file: str | None = None,
            source: str | None = None, force_promote: bool = False) -> dict[str, Any]:
    """Retrain on the configured corpus (or `source`) and register the result."""
    logger = get_run_logger()
    params = load_params(params_file, overrides or [])
    check_params(params)
    experiment_id = connect(params)
    flow_run = get_run_context().flow_run
    mlflow_client = client(params)
    run = mlflow_client.create_run(experiment_id, run_name=flow_run.name, tags={
        "prefect.flow_run_id": str(flow_run.id), "overrides": " ".join(overrides or [])})
    run_id = run.info.run_id
    step = StepTimer()
    try:
        ingested = step("ingest", ingest_task, params, source)
        logger.info("ingested %d records (%d bytes) from %s", ingested["rows"],
                    ingested["bytes"], ingested["source"])
        try:
            step("validate", validate_task, params)
        finally:
            _attach_reports(params, run_id)
        tokenized = step.cached("tokenize", tokenize_task, params, path_of(params, "tokenizer"))
        step.cached("encode", encode_task, params, path_of(params, "tokens"))
        trained = step("train", train_task, params, run_id)
        metrics = step("evaluate", evaluate_task, params, run_id)
        registered = step("register", register_task, params, run_id, metrics)
        versioned = step("version", version_task, params)
        mlflow_client.set_model_version_tag(registered["name"], registered["version"],
                                            "dvc_lock_digest", versioned["dvc_lock_digest"])
        mlflow_client.log_artifact(run_id, LOCK_FILE)
        decision = step("promote", promote_task, params, registered["version"], force_promote)
    except BaseException:
        logger.warning("run failed; %s", restore_outputs())
        mlflow_client.set_terminated(run_id, "FAILED")
        raise
    mlflow_client.log_metric(run_id, "tokenizer_seconds", step.seconds["tokenize"])
    mlflow_client.set_terminated(run_id, "FINISHED")
    summary = {
        "model": registered["name"], "version": registered["version"],
        "champion": decision["champion"], "promoted": decision["promoted"],
        "promotion": decision["reason"], "metrics": metrics, "run_id": run_id,
        "tokenizer_vocab": tokenized["vocab_size"], "steps": trained["steps"],
        "sample": trained["sample"], "seconds": step.seconds, "cached": step.from_cache,
        "dvc_lock_digest": versioned["dvc_lock_digest"], "tracking_uri": tracking_uri(params),
        "project": str(Path.cwd()),
    }
    create_markdown_artifact(summary_markdown(summary), key="retrain-summary",
                             description="metrics, model version, promotion decision, sample")
    return summary
