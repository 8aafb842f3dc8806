"""The team stack for real, no mocks: PostgreSQL, moto's S3 server, an MLflow server and a
Prefect server + worker on 127.0.0.1, brought up by `tinygpt stack up` in a throwaway project.

A run of the `retrain/on-demand` deployment, triggered through the Prefect API, is executed by
the stack's worker; its model lands in the PostgreSQL-backed registry with its lineage and the
champion alias, its artifacts and DVC objects in the S3 bucket. `stack down` leaves nothing
running. The tests run in order: the last one takes the stack down.
"""

from __future__ import annotations

import os
import time

import httpx
import psutil
import pytest
import yaml

from stack.envfile import VARIABLES, read_env
from stack.processes import alive, port_open
from stack.services import BUCKET, POOL, S3_CREDENTIALS, SERVICES
from tests.stack.conftest import BIN, StackUp, ok, run, tinygpt

# A small model on a 40 kB corpus (tests/pipeline/conftest.py TINY), as run parameters.
OVERRIDES = [
    "train.max_steps=20", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
    "model.block_size=32", "tokenizer.vocab_size=300", "train.eval_interval=10",
    "train.eval_iters=2", "train.batch_size=8", "train.log_interval=10", "train.warmup_steps=5",
    "train.dtype=float32", "validate.max_chars=5000", "data.val_fraction=0.1",
    "data.tokens_per_shard=4096", "data.source=corpus.txt", "data.sha256=null",
    "sample.max_new_tokens=8",
]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def test_status_lists_every_service_up_and_the_env_file_holds_the_variables(stack: StackUp):
    for name in ("postgres", "s3", "mlflow", "prefect", "worker"):
        assert f"starting {name} ... up in" in stack.output
    status = tinygpt("stack", "status", cwd=stack.root)
    lines = ok(status).splitlines()
    for name in SERVICES:
        assert any(line.split()[:2] == [name, "up"] for line in lines), status.stdout
    assert all(alive(record) for record in stack.state["services"].values())

    ports = stack.ports
    assert stack.env == {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
        "PREFECT_API_URL": f"http://127.0.0.1:{ports['prefect']}/api",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
        **S3_CREDENTIALS,
        "PGHOST": "127.0.0.1", "PGPORT": str(ports["postgres"]), "PGUSER": "postgres",
    }
    exports = ok(tinygpt("stack", "env", cwd=stack.root)).splitlines()
    assert [line.split("=")[0] for line in exports] == [f"export {k}" for k in VARIABLES]
    assert httpx.get(f"{stack.env['MLFLOW_TRACKING_URI']}/health").status_code == 200
    assert httpx.get(f"{stack.env['PREFECT_API_URL']}/health").status_code == 200

    # The S3 remote is DVC's default while the stack is up, in git-ignored files only.
    remotes = ok(run(str(BIN / "dvc"), "remote", "list", cwd=stack.root))
    assert f"s3://{BUCKET}/dvc" in remotes
    assert ok(run(str(BIN / "dvc"), "remote", "default", cwd=stack.root)).strip() == "stack"
    assert ok(run("git", "status", "--porcelain", cwd=stack.root)) == ""


def start_run(api: str, overrides: list[str]) -> str:
    """A run of retrain/on-demand through the Prefect API (what the page's upload does)."""
    deployment = httpx.get(f"{api}/deployments/name/retrain/on-demand", timeout=10).json()
    created = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run",
                         json={"parameters": {"overrides": overrides}}, timeout=10)
    return created.json()["id"]


def wait_for_run(api: str, run_id: str, timeout: float, until: set[str] = TERMINAL) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flow_run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
        if flow_run["state"]["type"] in until:
            return flow_run
        time.sleep(1)
    pytest.fail(f"flow run {run_id} did not reach {until} in {timeout:.0f} s")


def test_a_deployment_run_is_executed_by_the_worker_into_postgres_and_s3(stack: StackUp):
    import boto3
    import psycopg2
    from mlflow import MlflowClient

    from registry import LINEAGE_TAGS

    api = stack.env["PREFECT_API_URL"]
    began = time.perf_counter()
    created = {"id": start_run(api, OVERRIDES)}
    flow_run = wait_for_run(api, created["id"], timeout=300)
    print(f"\nworker-run deployment: {flow_run['state']['name']} in "
          f"{time.perf_counter() - began:.1f} s")
    worker_log = (stack.root / ".stack" / "logs" / "worker.log").read_text()
    assert flow_run["state"]["name"] == "Completed", worker_log[-4000:]
    # The stack's worker ran it (not this process, not another worker).
    assert flow_run["work_pool_name"] == POOL
    worker = stack.state["services"]["worker"]["name"]
    assert f"Worker '{worker}' submitting flow run '{created['id']}'" in worker_log

    # The registry: the champion is this run's model, with its lineage, in PostgreSQL.
    uri = stack.env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("tinygpt", "champion")
    assert all(champion.tags.get(tag) for tag in LINEAGE_TAGS), champion.tags
    mlflow_run = client.get_run(champion.tags["run_id"])
    assert mlflow_run.data.tags["prefect.flow_run_id"] == created["id"]
    assert mlflow_run.data.params["model.n_layer"] == "1"
    assert mlflow_run.data.params["train.max_steps"] == "20"
    connection = psycopg2.connect(host="127.0.0.1", port=stack.ports["postgres"],
                                  user="postgres", dbname="mlflow")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT alias, version FROM registered_model_aliases "
                           "WHERE name = 'tinygpt'")
            assert ("champion", int(champion.version)) in cursor.fetchall()
    finally:
        connection.close()

    # S3: the run's DVC outputs under dvc/ (each one dvc.lock names), the model under mlflow/.
    s3 = boto3.client("s3", endpoint_url=stack.env["AWS_ENDPOINT_URL"],
                      aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                      region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])

    def keys(prefix: str) -> set[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    stored = keys("dvc/")
    lock = yaml.safe_load((stack.root / "dvc.lock").read_text())
    folders = [out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])
               if out["md5"].endswith(".dir")]  # data, tokenizer, tokens, model
    assert folders and all(f"dvc/files/md5/{md5[:2]}/{md5[2:]}" in stored for md5 in folders)
    in_sync = ok(run(str(BIN / "dvc"), "status", "--cloud", *lock["stages"], cwd=stack.root,
                     env=stack.env))
    assert "in sync" in in_sync, in_sync
    assert not (stack.root.parent / "local-remote").exists()  # the stack's remote, not this
    assert any(key.endswith("model.safetensors") for key in keys("mlflow/"))


def test_the_service_serves_the_stack_champion_and_swaps_mid_stream(stack: StackUp):
    """`tinygpt serve` against the MLflow server (artifacts through it, from S3): it serves the
    champion, and a newly promoted version replaces it without failing a stream in flight."""
    import json

    from mlflow import MlflowClient

    from tests.serve.conftest import start_service, wait_for

    uri = stack.env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("tinygpt", "champion")
    proc, url = start_service(uri, stack.root)
    try:
        wait_for(f"{url}/health", timeout=120)
        assert httpx.get(f"{url}/health").json()["version"] == str(champion.version)
        body = {"prompt": "ROMEO:", "max_new_tokens": 1000, "temperature": 0.8, "seed": 1}
        with httpx.stream("POST", f"{url}/generate/stream", json=body, timeout=120) as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("event: piece"))
            newer = client.create_model_version(  # a promotion: same model, same lineage
                "tinygpt", champion.source, run_id=champion.run_id, tags=champion.tags,
                model_id=champion.source.removeprefix("models:/"))
            client.set_registered_model_alias("tinygpt", "champion", newer.version)
            rest = list(lines)
        done = json.loads(rest[rest.index("event: done") + 1].removeprefix("data: "))
        assert done["version"] == str(champion.version)  # finished on the version it began on
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/health").json()["version"] != str(newer.version):
            assert time.monotonic() < deadline, "the service never swapped to the new champion"
            time.sleep(0.5)
    finally:
        proc.stop()


def test_down_leaves_no_process_behind(stack: StackUp):
    # A long run in progress on the worker: `down` stops it too (it gets SIGTERM first).
    api = stack.env["PREFECT_API_URL"]
    long_run = start_run(api, [*OVERRIDES, "train.max_steps=100000"])
    wait_for_run(api, long_run, timeout=120, until={"RUNNING", *TERMINAL})
    time.sleep(3)
    ok(tinygpt("stack", "down", cwd=stack.root))
    for name, record in stack.state["services"].items():
        assert not alive(record), f"{name} (pid {record['pid']}) still runs"
    for name, port in stack.ports.items():
        assert not port_open(port), f"{name}'s port {port} still answers"
    inside = []
    for process in psutil.process_iter():
        try:
            if process.cwd().startswith(str(stack.root)):
                inside.append(f"{process.pid} {' '.join(process.cmdline())}")
        except psutil.Error:
            continue
    assert not inside, inside  # flow runs, servers, PostgreSQL: none works in the project now

    # Back to embedded: no env file, DVC's default remote is the project's own again.
    assert read_env(stack.root) == {}
    assert ok(run(str(BIN / "dvc"), "remote", "default", cwd=stack.root)).strip() == "local"
    status = tinygpt("stack", "status", cwd=stack.root)
    assert status.returncode == 1
    assert [line.split()[:2] for line in status.stdout.splitlines()[1:]] == [
        [name, "down"] for name in SERVICES]


def test_the_env_file_fills_in_only_what_is_not_set(tmp_path, monkeypatch):
    """No servers needed: what `tinygpt` does with .stack/stack.env before a command."""
    from stack.envfile import OPT_OUT, apply_env, write_env

    for key in VARIABLES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv(OPT_OUT, raising=False)
    assert apply_env(tmp_path) == {}  # no stack: nothing changes
    (tmp_path / ".stack").mkdir()
    write_env({"MLFLOW_TRACKING_URI": "http://127.0.0.1:1", "PGPORT": "2"}, tmp_path)
    monkeypatch.setenv("PGPORT", "5432")
    assert apply_env(tmp_path) == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}
    assert os.environ["PGPORT"] == "5432"  # already set: it wins
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv(OPT_OUT, "off")
    assert apply_env(tmp_path) == {}
