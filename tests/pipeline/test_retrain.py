"""The retraining flow end to end on real Prefect, MLflow (SQLite), DVC and Great Expectations.

The runs build on each other, as they would for a team: a first run makes the champion, a
worse second run must not replace it, bad inputs must change nothing, and DVC must bring the
files of any run back.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.retrain import retrain
from gpt.config import load_params
from gpt.files import sha256_tree
from registry import client
from tasks.kinds import KINDS
from tasks.reproduce import reproduce
from tests.data.test_validate import bad_sources
from tests.pipeline.conftest import BIN, dvc, dvc_changes

OUTPUTS = ("data/raw", "data/validated", "data/tokenizer", "data/tokens", "data/model")
STAGES = KINDS["text"].stages


def registry() -> MlflowClient:
    return client(load_params())


def output_digests() -> dict[str, str]:
    return {folder: sha256_tree(folder) for folder in OUTPUTS}


def remote_files(project: Path) -> list[str]:
    remote = project.parent / f"{project.name}-remote"
    return sorted(str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def first_run(project):
    return retrain()


@pytest.fixture(scope="module")
def second_run(first_run):
    """Unchanged data, far fewer steps: a worse model."""
    return retrain(overrides=["train.max_steps=2", "train.eval_interval=2"])


def test_first_run_registers_a_tagged_version_and_makes_it_champion(first_run):
    mlflow_client = registry()
    assert first_run["version"] == "1" and first_run["promoted"]
    assert str(mlflow_client.get_model_version_by_alias("tinygpt", "champion").version) == "1"
    tags = mlflow_client.get_model_version("tinygpt", "1").tags
    for key in ("git_commit", "dvc_lock_digest", "data_digest", "val_bits_per_byte",
                "tokenizer_digest", "promotion_decision"):
        assert tags.get(key), key
    assert len(tags["git_commit"]) >= 40
    assert float(tags["val_bits_per_byte"]) == pytest.approx(
        first_run["metrics"]["val_bits_per_byte"], abs=1e-5)


def test_first_run_logs_metrics_params_and_artifacts_to_one_mlflow_run(first_run):
    mlflow_client = registry()
    run = mlflow_client.get_run(first_run["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "30"
    history = mlflow_client.get_metric_history(first_run["run_id"], "val_loss_estimate")
    assert [m.step for m in history] == [10, 20, 30]
    perplexity = mlflow_client.get_metric_history(first_run["run_id"], "val_perplexity_estimate")
    assert [round(m.value, 3) for m in perplexity] == [round(math.exp(m.value), 3)
                                                        for m in history]  # at every eval
    artifacts = {a.path for a in mlflow_client.list_artifacts(first_run["run_id"])}
    assert {"loss_curve.png", "samples.txt", "dvc.lock", "data_docs",
            "validation.html"} <= artifacts
    docs = {a.path for a in mlflow_client.list_artifacts(first_run["run_id"], "data_docs")}
    assert "data_docs/index.html" in docs


def test_the_flow_run_publishes_a_markdown_summary(first_run):
    from prefect.artifacts import Artifact

    artifact = Artifact.get("retrain-text-summary")
    assert artifact is not None and artifact.type == "markdown"
    assert f"version **{first_run['version']}**" in artifact.data
    assert "val_bits_per_byte" in artifact.data and "no champion yet" in artifact.data


def test_steps_and_training_progress_reach_the_flow_run_logs(first_run):
    """What the terminal shows, the Prefect UI's run page shows too (PREFECT_LOGGING_EXTRA_
    LOGGERS=tinygpt, as `tinygpt` and the Makefile set it)."""
    import asyncio
    import time
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    flow_run_id = registry().get_run(first_run["run_id"]).data.tags["prefect.flow_run_id"]
    only_this_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(flow_run_id)]))

    async def messages() -> list[str]:
        async with get_client() as prefect:
            return [entry.message for entry in await prefect.read_logs(log_filter=only_this_run)]

    deadline = time.monotonic() + 20
    while True:  # logs reach the API in batches
        found = asyncio.run(messages())
        if any(re.match(r"step \d+/30 \| loss .* left$", m) for m in found) or (
                time.monotonic() > deadline):
            break
        time.sleep(1)
    assert any(re.match(r"step \d+/30 \| loss .* left$", m) for m in found), found[:20]
    assert "step train" in found and "step register" in found


def test_the_service_reports_a_run_by_its_newest_progress_line(first_run, tmp_path):
    """What the page's upload shows while its run goes on: GET /runs/{id} of a real run."""
    from fastapi.testclient import TestClient

    from serve.app import Settings, create_app

    flow_run_id = registry().get_run(first_run["run_id"]).data.tags["prefect.flow_run_id"]
    app = create_app(Settings(upload_dir=tmp_path / "uploads"))
    answer = TestClient(app).get(f"/runs/{flow_run_id}").json()
    assert answer["state"] == "Completed" and answer["final"]
    assert answer["progress"].startswith("step ")  # the last one logged: promote
    assert answer["outcome"]["version"] == first_run["version"]
    assert answer["outcome"]["reason"] == "no champion yet"


def test_registered_pyfunc_loads_from_the_champion_alias_and_generates(first_run):
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model("models:/tinygpt@champion")
    out = model.predict(pd.DataFrame({"prompt": ["ROMEO:"]}),
                        params={"max_new_tokens": 8, "seed": 1})
    assert list(out.columns) == ["completion"] and isinstance(out["completion"][0], str)
    run_sampling = load_params().sample.sampling().tunable()
    assert model.unwrap_python_model().sampling == run_sampling  # what the service starts from
    model_dir = Path(mlflow.artifacts.download_artifacts("models:/tinygpt@champion"))
    stored = {p.name for p in model_dir.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "vocab.json", "merges.txt"} <= stored
    assert not any(name.endswith((".pkl", ".pickle")) for name in stored)


def test_worse_rerun_registers_but_keeps_the_champion_and_skips_cached_steps(second_run):
    mlflow_client = registry()
    assert second_run["version"] == "2" and not second_run["promoted"]
    assert str(mlflow_client.get_model_version_by_alias("tinygpt", "champion").version) == "1"
    assert str(mlflow_client.get_model_version_by_alias("tinygpt", "candidate").version) == "2"
    tags = mlflow_client.get_model_version("tinygpt", "2").tags
    assert tags["promotion_decision"].startswith("not promoted")
    assert tags["previous_champion"] == "1"
    assert {"tokenize", "encode"} <= set(second_run["cached"])


def test_dvc_is_clean_after_a_run_and_pull_restores_identical_files(second_run, project):
    # Outputs committed; the lock records the run's train.* overrides, so only `train`
    # differs from params.yaml (`dvc repro` would retrain with params.yaml's values).
    assert dvc_changes(*STAGES, cwd=project) == {"outs": set(), "deps": set(),
                                                  "params": {"train"}}
    # A bare `dvc status` names no stage of the kind never run here (fine-tuning's are the
    # sft/ subproject), and metrics and plots load whole.
    assert set(json.loads(dvc("status", "--json", cwd=project) or "{}")) <= {"train"}
    for command in (["metrics", "show"], ["plots", "show", "--json"]):
        done = subprocess.run([str(BIN / "dvc"), *command], cwd=project, capture_output=True,
                              text=True)
        assert done.returncode == 0 and "failed" not in done.stdout + done.stderr, done.stderr
    before = output_digests()
    for folder in OUTPUTS:
        shutil.rmtree(folder)
    shutil.rmtree(".dvc/cache")
    dvc("pull", "-q", *STAGES, cwd=project)
    assert output_digests() == before


def test_status_names_the_champion_and_the_version_the_workspace_holds(second_run, capsys):
    from cli import main

    assert main(["status"]) == 0
    out = capsys.readouterr().out
    champion = registry().get_model_version("tinygpt", "1").tags["val_bits_per_byte"]
    assert f"champion:  tinygpt version 1: val bits per byte {champion}, registered " in out
    assert "workspace: data/ and the model are version 2's (not the champion)" in out
    assert re.search(r"^dvc: .*(match dvc.lock|differ from dvc.lock)", out, re.MULTILINE)
    runs = out.split("last runs:")[1].split("services:")[0]
    assert runs.count("FINISHED") >= 2
    assert "services:  MLflow: embedded store sqlite:///" in out
    assert "registry:  reading the embedded store sqlite:///" in out


def test_reproduce_brings_back_an_older_version(second_run, project):
    second_model = sha256_tree("data/model")
    reproduce(load_params(), "1")
    first_model = sha256_tree("data/model")
    assert first_model != second_model
    # Data, model and metrics are the version's: nothing differs from its dvc.lock.
    assert dvc_changes(*STAGES, cwd=project) == {"outs": set(), "deps": set(),
                                                  "params": set()}
    mlflow_client = registry()
    tags = mlflow_client.get_model_version("tinygpt", "1").tags
    lock = json.dumps(Path("dvc.lock").read_text())
    assert tags["dvc_lock_digest"] and lock
    reproduce(load_params(), "2")
    assert sha256_tree("data/model") == second_model


@pytest.fixture(scope="module")
def state_before_bad_runs(second_run, project):
    return {"outputs": output_digests(), "remote": remote_files(project),
            "versions": len(registry().search_model_versions("name='tinygpt'")),
            "champion": str(registry().get_model_version_by_alias("tinygpt", "champion").version),
            "dvc": dvc_changes(*STAGES, cwd=project)}


# One bad source for each step a run can fail in: ingest, validate, and train (its data steps
# ran); tests/data checks every way a source is refused, rule by rule, without a flow.
BAD_SOURCES = ["binary.txt", "too-long.jsonl", "tiny.txt"]
BAD_PARAMS = [(["train.learning_rate=-0.1"], "train.learning_rate"),
              (["model.n_embd=30", "model.n_head=4"], "divisible")]


def assert_nothing_changed(state, project):
    assert output_digests() == state["outputs"]
    assert remote_files(project) == state["remote"]
    assert len(registry().search_model_versions("name='tinygpt'")) == state["versions"]
    champion = registry().get_model_version_by_alias("tinygpt", "champion")
    assert str(champion.version) == state["champion"]
    assert dvc_changes(*STAGES, cwd=project) == state["dvc"]


@pytest.mark.parametrize("name", BAD_SOURCES)
def test_bad_input_stops_the_run_and_changes_nothing(name, state_before_bad_runs, project,
                                                     tmp_path):
    path, message = bad_sources(tmp_path)[name]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        retrain(source=path)
    assert_nothing_changed(state_before_bad_runs, project)


@pytest.mark.parametrize(("overrides", "message"), BAD_PARAMS)
def test_nonsense_parameters_stop_the_run_and_change_nothing(overrides, message,
                                                             state_before_bad_runs, project):
    with pytest.raises(ValueError, match=message):
        retrain(overrides=overrides)
    assert_nothing_changed(state_before_bad_runs, project)


def test_the_summary_and_the_ui_link_the_run_the_runs_table_and_the_version(first_run,
                                                                           project, capsys):
    """The links a run prints, and those `tinygpt ui mlflow` prints, lead into a real MLflow
    UI; the version's description links its model card, which that UI serves."""
    import os
    import sys

    import httpx

    from cli import print_summary
    from tests.serve.conftest import Process, free_port, wait_for

    print_summary(first_run)
    printed = capsys.readouterr().out
    experiment, run_id = first_run["experiment_id"], first_run["run_id"]
    for link in (f"/#/experiments/{experiment}/runs", f"/#/experiments/{experiment}/runs/{run_id}",
                 "/#/models/tinygpt/versions/1"):
        assert f"http://127.0.0.1:5000{link}\n" in printed, printed
    card = f"get-artifact?path=model_card.md&run_uuid={run_id}"
    assert f"([model card]({card}))" in registry().get_model_version("tinygpt", "1").description
    port = free_port()
    ui = Process([str(Path(sys.executable).with_name("tinygpt")), "ui", "mlflow", "--port",
                  str(port)], dict(os.environ), project, project / "ui.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/health")
        shown = (project / "ui.log").read_text()
        assert f"run     http://127.0.0.1:{port}/#/experiments/{experiment}/runs/" in shown
        assert f"version http://127.0.0.1:{port}/#/models/tinygpt/versions/1" in shown
        served = httpx.get(f"http://127.0.0.1:{port}/{card}", timeout=30)
        assert served.status_code == 200 and served.text.startswith("# tinygpt version 1")
    finally:
        ui.stop()
