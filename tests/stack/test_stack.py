"""The team stack for real, no mocks: PostgreSQL, moto's S3 server, an MLflow server and a
Prefect server + worker on 127.0.0.1, brought up by `tinygpt stack up` in a throwaway project.

The stack's worker runs the `retrain/on-demand` deployment (triggered through the Prefect API)
and the `retrain/nightly` one (fired by Prefect's scheduler) one after the other; the model
lands in the PostgreSQL-backed registry with its lineage and the champion alias, artifacts and
DVC objects in the S3 bucket, from which a second clone reproduces it. The service serves the
stack's champion, and the page's upload starts a run the worker completes. The tests run in
order and share the stack with test_stack_faults.py.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from gpt.files import sha256_file, sha256_tree
from stack.envfile import ENV_FILE, VARIABLES
from stack.processes import alive
from stack.remote import VARIABLE as DVC_REMOTE_VARIABLE
from stack.services import BUCKET, POOL, S3_CREDENTIALS, SERVICES
from tasks.kinds import KINDS
from tests.scratch import ROOT
from tests.serve.conftest import until
from tests.stack.conftest import (
    BIN,
    OVERRIDES,
    StackUp,
    clean_env,
    deployment,
    flow_run,
    ok,
    run,
    start_run,
    tinygpt,
    wait_for_run,
)


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
        DVC_REMOTE_VARIABLE: f"s3://{BUCKET}/dvc",
    }
    exports = ok(tinygpt("stack", "env", cwd=stack.root)).splitlines()
    assert [line.split("=")[0] for line in exports] == [f"export {k}"
                                                         for k in (*VARIABLES, "PATH")]
    # After eval, the venv's tools are the ones a shell finds (README's commands use them).
    shell = f'eval "$({sys.executable} {ROOT / "cli.py"} stack env)"; command -v prefect dvc'
    found = ok(run("bash", "-c", shell, cwd=stack.root, env={"PATH": "/usr/bin:/bin"})).split()
    assert found == [str(BIN / "prefect"), str(BIN / "dvc")], found
    assert httpx.get(f"{stack.env['MLFLOW_TRACKING_URI']}/health").status_code == 200
    report = ok(tinygpt("status", cwd=stack.root))  # the registry it reads, named
    assert f"registry:  reading the MLflow server {stack.env['MLFLOW_TRACKING_URI']}" in report
    off = run(sys.executable, str(ROOT / "cli.py"), "status", cwd=stack.root,
              env={"TINYGPT_STACK": "off"})
    assert "registry:  reading the embedded store sqlite:///" in off.stdout, off.stdout
    assert "a team stack was used here (.stack/) and is not read" in off.stdout
    assert httpx.get(f"{stack.env['PREFECT_API_URL']}/health").status_code == 200

    # The S3 remote is DVC's default while the stack is up, in git-ignored files only.
    remotes = ok(run(str(BIN / "dvc"), "remote", "list", cwd=stack.root))
    assert f"s3://{BUCKET}/dvc" in remotes
    assert ok(run(str(BIN / "dvc"), "remote", "default", cwd=stack.root)).strip() == "stack"
    assert ok(run("git", "status", "--porcelain", cwd=stack.root)) == ""


def add_interval_schedule(api: str, deployment_id: str, seconds: int, first_in: float,
                          parameters: dict) -> str:
    """A schedule beside the deployment's own (nightly's cron stays), with run parameters."""
    anchor = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=first_in)
    created = httpx.post(f"{api}/deployments/{deployment_id}/schedules", timeout=10, json=[{
        "schedule": {"interval": seconds, "anchor_date": anchor.isoformat()}, "active": True,
        "max_scheduled_runs": 1, "parameters": parameters}])
    created.raise_for_status()
    # An updated deployment is scheduled within seconds (Prefect's recent-deployments loop),
    # not at the scheduler's next minute.
    httpx.patch(f"{api}/deployments/{deployment_id}", json={"paused": False},
                timeout=10).raise_for_status()
    return created.json()[0]["id"]


def scheduler_run(api: str, deployment_id: str, timeout: float) -> dict:
    """The first run the scheduler made for the deployment (it plans an hour ahead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = httpx.post(f"{api}/flow_runs/filter", timeout=10, json={
            "deployments": {"id": {"any_": [deployment_id]}},
            "sort": "EXPECTED_START_TIME_ASC"}).json()
        if made := [r for r in runs if r["auto_scheduled"] and r["parameters"]]:
            return made[0]
        time.sleep(1)
    raise AssertionError(f"the scheduler made no run of {deployment_id} in {timeout:.0f} s")


def test_scheduled_and_on_demand_runs_complete_on_the_worker_into_postgres_and_s3(
        stack: StackUp):
    import psycopg2

    from registry import LINEAGE_TAGS, registered_by

    api = stack.api
    began = time.perf_counter()
    nightly = deployment(api, "retrain/nightly")
    schedule = add_interval_schedule(api, nightly["id"], seconds=60, first_in=15,
                                     parameters={"overrides": OVERRIDES})
    on_demand = start_run(api, OVERRIDES)
    scheduled = scheduler_run(api, nightly["id"], timeout=90)["id"]
    # Once its first run has started, the schedule goes, and with it the later runs it
    # planned: it fires once.
    wait_for_run(api, scheduled, timeout=300, until={"RUNNING", "COMPLETED", "FAILED",
                                                     "CRASHED"})
    httpx.delete(f"{api}/deployments/{nightly['id']}/schedules/{schedule}",
                 timeout=10).raise_for_status()
    runs = {"on-demand": wait_for_run(api, on_demand, timeout=300),
            "scheduled": wait_for_run(api, scheduled, timeout=300)}
    print(f"\non-demand + scheduled runs on the worker: {time.perf_counter() - began:.1f} s")
    worker_log = (stack.root / ".stack" / "logs" / "worker.log").read_text()
    worker = stack.state["services"]["worker"]["name"]
    assert "Downloading artifacts" not in worker_log and "View run" not in worker_log
    for kind, found in runs.items():
        assert found["state"]["name"] == "Completed", f"{kind}: {worker_log[-4000:]}"
        assert found["work_pool_name"] == POOL
        # The stack's worker ran it (not this process, not another worker).
        assert f"Worker '{worker}' submitting flow run '{found['id']}'" in worker_log
    assert runs["scheduled"]["auto_scheduled"] and not runs["on-demand"]["auto_scheduled"]
    assert runs["scheduled"]["deployment_id"] == nightly["id"]
    # One worker takes one run at a time (a run uses every core): the second waited.
    first, second = sorted(runs.values(), key=lambda r: r["start_time"])
    assert second["start_time"] >= first["end_time"]
    # Each worked in a clone of the deployed commit, removed after its success: none of the
    # runs' outputs are in the checkout, and no workspace is left.
    assert not (stack.root / "data" / "model").exists()
    workspaces = stack.root / ".tinygpt" / "workspaces"
    # Prefect runs the on_completion hook that removes it just after marking the run Completed.
    until(lambda: workspaces.is_dir() and not any(workspaces.iterdir()))

    # The registry: each run registered a version with its lineage, in PostgreSQL; the
    # champion is one of them (an identical second run is no better, so not promoted).
    client = stack.mlflow()
    uri = stack.env["MLFLOW_TRACKING_URI"]
    outcomes = {kind: registered_by("tinygpt", found["id"], uri=uri)
                for kind, found in runs.items()}
    assert all(o["version"] for o in outcomes.values()), outcomes
    champion = client.get_model_version_by_alias("tinygpt", "champion")
    assert champion.version in {o["version"] for o in outcomes.values()}
    assert all(champion.tags.get(tag) for tag in LINEAGE_TAGS), champion.tags
    mlflow_run = client.get_run(champion.tags["run_id"])
    assert mlflow_run.data.tags["prefect.flow_run_id"] in {on_demand, scheduled}
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

    # S3: the runs' DVC outputs under dvc/ (each its dvc.lock names), the model under mlflow/.
    stored = s3_keys(stack, "dvc/")
    for outcome in outcomes.values():
        assert missing_dvc_objects(stack, outcome["version"], stored) == []
    assert not (stack.root.parent / "local-remote").exists()  # the stack's remote, not this
    assert any(key.endswith("model.safetensors") for key in s3_keys(stack, "mlflow/"))


def s3_keys(stack: StackUp, prefix: str) -> set[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack.env["AWS_ENDPOINT_URL"],
                      aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                      region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def missing_dvc_objects(stack: StackUp, version: str, stored: set[str]) -> list[str]:
    """The outputs the version's dvc.lock (kept in its MLflow run) names that the bucket
    lacks: data, tokenizer, tokens and model."""
    import mlflow

    run_id = stack.mlflow().get_model_version("tinygpt", version).run_id
    lock = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="dvc.lock", tracking_uri=stack.env["MLFLOW_TRACKING_URI"])
    ).read_text())
    outs = [out for stage in lock["stages"].values() for out in stage.get("outs", [])
            if out["path"].startswith("data/")]  # metrics/ are in git, not the cache
    assert len(outs) >= 4, lock
    return [out["path"] for out in outs
            if f"dvc/files/md5/{out['md5'][:2]}/{out['md5'][2:]}" not in stored]


def test_a_second_clone_with_only_the_env_file_reproduces_the_champion_from_s3(
        stack: StackUp):
    """Another folder (a colleague's machine): git clone, the env file, `tinygpt reproduce`.
    Data, tokenizer and weights come from the bucket and equal what the registry holds."""
    import mlflow

    clone = stack.root.parent / "second-clone"
    ok(run("git", "clone", "-q", str(stack.root), str(clone), cwd=stack.root.parent))
    (clone / ENV_FILE).parent.mkdir()
    shutil.copy(stack.root / ENV_FILE, clone / ENV_FILE)
    version = stack.champion()
    began = time.perf_counter()
    reproduced = tinygpt("reproduce", "--version", version, cwd=clone)
    print(f"\nreproduce in a second clone: {time.perf_counter() - began:.1f} s\n"
          f"{reproduced.stdout}")
    ok(reproduced)
    assert "Downloading artifacts" not in reproduced.stdout + reproduced.stderr
    config = (clone / ".dvc" / "config.local").read_text()
    assert f"s3://{BUCKET}/dvc" in config  # written from the env file

    registered = mlflow.artifacts.download_artifacts(
        artifact_uri=stack.mlflow().get_model_version_download_uri("tinygpt", version),
        dst_path=str(clone.parent / "registered"), tracking_uri=stack.env["MLFLOW_TRACKING_URI"])
    checkpoint = next(path for path in Path(registered).rglob("model.safetensors")).parent
    files = sorted(p for p in checkpoint.iterdir() if p.is_file())
    for name in ("model.safetensors", "config.json", "vocab.json", "merges.txt"):
        assert checkpoint / name in files, files
    hashes = {}
    for registered_file in files:  # weights, config and tokenizer, as registered
        restored = clone / "data" / "model" / "best" / registered_file.name
        hashes[registered_file.name] = sha256_file(restored)
        assert hashes[registered_file.name] == sha256_file(registered_file), registered_file.name
    for name in ("vocab.json", "merges.txt"):  # the tokenizer step's own output
        assert sha256_file(clone / "data" / "tokenizer" / name) == sha256_file(checkpoint / name)
    tags = stack.mlflow().get_model_version("tinygpt", version).tags
    validated = clone / "data" / "validated" / KINDS["text"].validated_file
    assert sha256_file(validated) == tags["data_digest"]  # the data, as the run that made it
    assert sha256_tree(clone / "data" / "tokenizer") == tags["tokenizer_digest"]
    manifest = json.loads((clone / "data" / "tokens" / "manifest.json").read_text())
    assert manifest["data_digest"] == tags["data_digest"]
    print("\n".join(f"  {name}  {digest}" for name, digest in hashes.items()))


def test_the_service_serves_the_stack_champion_and_swaps_mid_stream(stack: StackUp):
    """`tinygpt serve` against the MLflow server (artifacts through it, from S3): it serves the
    champion, and a newly promoted version replaces it without failing a stream in flight."""

    from mlflow import MlflowClient

    from tests.serve.conftest import start_service, wait_for

    uri = stack.env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("tinygpt", "champion")
    proc, url = start_service(uri, stack.root)
    try:
        wait_for(f"{url}/health")
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


def test_the_page_chain_runs_on_the_worker_and_shows_the_new_version(stack: StackUp,
                                                                     shakespeare: str,
                                                                     artifacts_dir):
    """In Chromium: the page's chain (upload, vocabulary, train) starts retrain/on-demand with
    the vocabulary's settings after the deployment's own, and the stack's worker runs it; the
    page shows the step the run is on as it goes, and ends showing Completed, the version it
    registered and the decision with the two bits/byte figures behind it."""
    from playwright.sync_api import expect, sync_playwright

    from registry import registered_by
    from tests.serve.conftest import start_service, wait_for
    from tests.serve.test_page import CHROMIUM, FLAGS, build_vocabulary

    api = stack.api
    champion_before = stack.champion()
    on_demand = deployment(api, "retrain/on-demand")
    small = [o for o in OVERRIDES if not o.startswith("data.")]  # the upload is the data
    httpx.patch(f"{api}/deployments/{on_demand['id']}", json={"parameters": {
        "overrides": small}}, timeout=10).raise_for_status()  # as edited in the Prefect UI
    proc, url = start_service(stack.env["MLFLOW_TRACKING_URI"], stack.root,
                              env={"PREFECT_API_URL": api})
    try:
        wait_for(f"{url}/health")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            build_vocabulary(page, url, shakespeare[40_000:70_000], 300)
            page.click("#train")
            status = page.locator("#corpus-status")
            expect(status).to_contain_text("retraining run", timeout=60_000)
            expect(status).to_contain_text(re.compile(r": (Completed|Failed|Crashed)"),
                                           timeout=300_000)
            assert ": Completed" in status.inner_text(), (
                stack.root / ".stack" / "logs" / "worker.log").read_text()[-6000:]
            expect(status).to_contain_text("tinygpt version", timeout=30_000)
            page.screenshot(path=str(artifacts_dir / "stack-upload.png"), full_page=True)
            shown = status.inner_text()
            statuses = page.evaluate("window.statuses")
            browser.close()
    finally:
        proc.stop()
        httpx.patch(f"{api}/deployments/{on_demand['id']}", json={"parameters": {}},
                    timeout=10).raise_for_status()
    run_id = shown.split("retraining run ")[1].split(":")[0]
    found = flow_run(api, run_id)
    assert found["state"]["name"] == "Completed" and found["work_pool_name"] == POOL
    assert found["parameters"]["source"].startswith(str(stack.root / "uploads"))
    assert found["parameters"]["overrides"] == [*small, "tokenizer.kind=bpe",
                                                "tokenizer.vocab_size=300"]
    outcome = registered_by("tinygpt", run_id, uri=stack.env["MLFLOW_TRACKING_URI"])
    assert f"tinygpt version {outcome['version']}," in shown, shown
    assert ("now champion" in shown) == outcome["promoted"], shown
    progress = [s.split(" \u2014 ")[-1] for s in statuses if "Running \u2014 step " in s]
    assert len(set(progress)) >= 2, statuses  # the line moved on while the run went
    decision = shown.split(" \u2014 served now")[0].strip()  # the page adds it once served
    assert decision.endswith(f": {outcome['reason']}"), shown
    if champion_before:  # the decision compares the two runs' figures
        assert re.search(r"val_bits_per_byte \d\.\d{4} (beats|does not beat) champion "
                         rf"v{champion_before}'s \d\.\d{{4}}", shown), shown


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


LEASE_HOLDER = """
import logging, sys, time
from tasks.lock import promotion_lease
logging.basicConfig(level=logging.INFO, format="%(message)s")
started = time.monotonic()
with promotion_lease("tinygpt", shared=True):
    print(f"held after {time.monotonic() - started:.2f}", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_the_promotion_lease_is_the_stacks_and_a_dead_holder_releases_it(stack: StackUp):
    """Two processes with the stack's variables (as two hosts have them): the second waits for
    the PostgreSQL advisory lock the first holds, and gets it as soon as the first is killed
    (-9: the server ends its session)."""
    env = {**clean_env(), **stack.env, "PYTHONPATH": str(ROOT)}

    def holder(seconds: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", LEASE_HOLDER, str(seconds)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = holder(60)
    assert first.stdout.readline().startswith("held after")
    second = holder(0)
    try:
        time.sleep(2)
        assert second.poll() is None  # still waiting
        first.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        line = second.stdout.readline()
        assert line.startswith("held after"), line + second.stderr.read()
        print(f"\nthe lease passed {time.monotonic() - killed:.2f} s after its holder's kill -9")
        assert time.monotonic() - killed < 10
        assert float(line.split()[-1]) >= 1  # it waited for the holder (killed 2 s in)
        assert second.wait(30) == 0
        assert "waiting for the promotion lease" in second.stderr.read()
    finally:
        for process in (first, second):
            process.kill()
            process.wait(30)


def metric(stack: StackUp, version: str, key: str = "val_bits_per_byte") -> float:
    run_id = stack.mlflow().get_model_version("tinygpt", version).run_id
    return stack.mlflow().get_run(run_id).data.metrics[key]


def ran(worker_log: str, flow_run_ids: list[str]) -> list[str]:
    """The flow runs a worker ran: both workers may try to submit a run, and the one the
    server turns away logs that it aborted."""
    return [i for i in flow_run_ids if f"submitting flow run '{i}'" in worker_log
            and f"Aborted submission of flow run '{i}'" not in worker_log]


def test_two_workers_run_two_retrains_at_once_and_the_better_becomes_champion(
        stack: StackUp):
    """A second worker with its own home and work folder and no checkout (another host):
    two retrains started together, one trained three times longer, run at once, one on each
    worker, each in its own clone; both register and push their DVC objects, and the champion
    is the better of them by val bits per byte. Then again with the start order reversed."""
    from registry import registered_by

    host = stack.root.parent / "host-b"
    host.mkdir()
    env = {**stack.env, "HOME": str(host), "PREFECT_HOME": str(host / "prefect")}
    log = host / "worker.log"
    launched = datetime.datetime.now(datetime.UTC)
    with open(log, "w") as out:
        worker = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "worker"], cwd=host,
                                  env={**clean_env(), **env}, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    api, uri = stack.api, stack.env["MLFLOW_TRACKING_URI"]
    pool = httpx.get(f"{api}/work_pools/{POOL}", timeout=10).json()
    assert pool["concurrency_limit"] == 2

    def new_worker_online() -> bool:
        assert worker.poll() is None, log.read_text()[-2000:]
        found = httpx.post(f"{api}/work_pools/{POOL}/workers/filter", json={}, timeout=10)
        return any(w["status"] == "ONLINE" and datetime.datetime.fromisoformat(
            w["created"].replace("Z", "+00:00")) >= launched for w in found.json())

    short, long = [*OVERRIDES, "train.max_steps=40"], [*OVERRIDES, "train.max_steps=120"]
    try:
        # Runs start once the new worker polls: a short run must not end before it is up.
        until(new_worker_online, timeout=120, every=1)
        for order in ((short, long), (long, short)):
            began = time.time()
            ids = [start_run(api, overrides) for overrides in order]
            runs = [wait_for_run(api, run_id, timeout=400) for run_id in ids]
            logs = (stack.root / ".stack" / "logs" / "worker.log").read_text() + log.read_text()
            assert all(r["state"]["name"] == "Completed" for r in runs), logs[-6000:]
            versions = [registered_by("tinygpt", run_id, uri=uri)["version"] for run_id in ids]
            champion = stack.champion()
            figures = {v: metric(stack, v) for v in versions}
            print(f"\nstarted {'short, long' if order[0] is short else 'long, short'} at "
                  f"{began:.0f}: " + "; ".join(
                      f"v{v} ({r['parameters']['overrides'][-1]}) {r['start_time'][11:19]} to "
                      f"{r['end_time'][11:19]}, {figures[v]:.4f} bits/byte"
                      for v, r in zip(versions, runs, strict=True))
                  + f"; champion v{champion}")
            first, second = runs
            assert first["start_time"] < second["end_time"] and (
                second["start_time"] < first["end_time"])  # at the same time
            hosts = {"stack": stack.root / ".stack" / "logs" / "worker.log", "b": log}
            took = {name: ran(path.read_text(), ids) for name, path in hosts.items()}
            assert sorted(map(len, took.values())) == [1, 1], took  # one run each
            stored = s3_keys(stack, "dvc/")
            assert all(missing_dvc_objects(stack, v, stored) == [] for v in versions)
            assert figures[versions[order.index(long)]] < figures[versions[order.index(short)]]
            assert metric(stack, champion) <= min(figures.values()) + 1e-9
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    assert not any((host / ".tinygpt" / "workspaces").iterdir())  # removed after success
