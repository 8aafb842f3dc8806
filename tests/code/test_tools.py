"""`tinygpt env` and `tinygpt ui`: the project's tools, started with the project's settings
from a shell that has none of them."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import Process, free_port, wait_for

pytestmark = pytest.mark.slow  # not in `make test-fast`

BIN = Path(sys.executable).parent
BARE = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}  # a fresh shell's


def test_env_exports_what_the_tools_need_in_a_bare_shell(tmp_path):
    script = (f'eval "$({BIN / "tinygpt"} env)"; command -v mlflow; command -v prefect; '
              'echo "$PREFECT_HOME"; echo "$MLFLOW_TRACKING_URI"; echo "$DVC_NO_ANALYTICS"')
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=BARE, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    mlflow, prefect, home, uri, dvc = done.stdout.splitlines()
    assert (mlflow, prefect) == (str(BIN / "mlflow"), str(BIN / "prefect"))
    assert home == str(tmp_path / ".prefect")
    assert uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert dvc == "1"


def test_ui_mlflow_shows_the_project_store_and_stops_on_sigterm(tmp_path):
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    mlflow.MlflowClient(store).create_experiment("seen-in-the-ui")
    port = free_port()
    proc = Process([str(BIN / "tinygpt"), "ui", "mlflow", "--port", str(port)], BARE, tmp_path,
                   tmp_path / "ui.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health")
        found = httpx.get(f"{url}/api/2.0/mlflow/experiments/search",
                          params={"max_results": 10}, timeout=10).json()
        assert "seen-in-the-ui" in [e["name"] for e in found["experiments"]]
    finally:
        proc.stop()
    assert proc.proc.returncode is not None


def test_ui_prefect_serves_the_project_prefect_home(tmp_path):
    port = free_port()
    proc = Process([str(BIN / "tinygpt"), "ui", "prefect", "--port", str(port)], BARE, tmp_path,
                   tmp_path / "ui.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/api/health")
    finally:
        proc.stop()
    assert (tmp_path / ".prefect").is_dir()  # its database, where `tinygpt retrain` writes


def test_ui_on_a_taken_port_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(BIN / "tinygpt"), "ui", "mlflow", "--port", str(port)],
                              cwd=tmp_path, env=BARE, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"tinygpt: error: port {port} is taken on 127.0.0.1: pick "
                                   f"another with --port")


def test_worker_needs_a_prefect_server_and_says_so(tmp_path):
    env = {**BARE, "PREFECT_HOME": str(tmp_path / ".prefect")}
    done = subprocess.run([str(BIN / "tinygpt"), "worker"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("tinygpt: error: a worker needs a Prefect server")


def test_worker_comes_online_and_stops_cleanly_on_sigterm(prefect_harness, tmp_path):
    """What a service manager does: start it, later send SIGTERM; it must go, and go cleanly."""
    import os
    import signal
    import time

    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    env = {**os.environ, "PREFECT_API_URL": api}
    proc = Process([str(BIN / "tinygpt"), "worker", "--pool", "sigterm-test"], env, tmp_path,
                   tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 90
        while True:
            found = httpx.post(f"{api}/work_pools/sigterm-test/workers/filter", json={},
                               timeout=10)
            if found.status_code == 200 and any(w["status"] == "ONLINE" for w in found.json()):
                break
            assert proc.proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "worker.log").read_text()[-2000:]
            time.sleep(1)
        proc.proc.send_signal(signal.SIGTERM)  # to tinygpt alone, as systemd's stop does
        code = proc.proc.wait(timeout=60)
    finally:
        proc.stop()
    log = (tmp_path / "worker.log").read_text()
    assert code == 0, log[-2000:]
    assert "Traceback" not in log, log[-2000:]
