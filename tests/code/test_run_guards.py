"""What a run does with errors that cannot go away by waiting, and the embedded Prefect server
each run starts: in a session of its own, stopped on the way out, and reaped when stray."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Failed

from stack import embedded
from stack.processes import alive, record_of
from tasks.common import retry_transient
from tasks.interrupt import RunInterrupted
from tasks.version import VersioningError

PERMANENT = [OSError(errno.ENOSPC, "No space left on device"),
             OSError(errno.EROFS, "Read-only file system"),
             VersioningError("dvc push failed: ERROR: [Errno 28] No space left on device"),
             RunInterrupted("run stopped by SIGINT"), ValueError("bad input")]
TRANSIENT = [ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
             TimeoutError("timed out"), RuntimeError("HTTP 503")]


@pytest.mark.parametrize("error", PERMANENT, ids=lambda e: type(e).__name__ + str(e)[:12])
def test_a_permanent_error_is_not_retried(error):
    assert retry_transient(None, None, Failed(data=error)) is False


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_a_transient_error_is_retried(error):
    assert retry_transient(None, None, Failed(data=error)) is True


@pytest.mark.slow  # starts a Prefect server
def test_the_embedded_server_runs_in_its_own_session_and_stops_with_the_command(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with embedded.prefect_api() as server:
            assert PREFECT_API_URL.value() == server["url"]
            assert httpx.get(f"{server['url']}/health", timeout=5).status_code == 200
            assert os.getsid(server["pid"]) == server["pid"] != os.getsid(0)  # no Ctrl-C
            assert embedded.strays() == []
        assert not alive(server)
        assert list(embedded.RECORDS.glob("*.json")) == []


def test_a_server_whose_command_is_gone_is_listed_then_reaped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    owner = subprocess.Popen([sys.executable, "-c", "pass"])
    owner_record = record_of(owner.pid)
    owner.wait()
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              start_new_session=True)
    try:
        record = {**record_of(server.pid), "url": "http://127.0.0.1:9/api",
                  "owner": owner_record, "log": str(tmp_path / "log")}
        embedded.RECORDS.mkdir(parents=True)
        (embedded.RECORDS / f"{owner.pid}.json").write_text(json.dumps(record))
        assert [s["pid"] for s in embedded.strays()] == [server.pid]
        assert f"pid {server.pid} on http://127.0.0.1:9/api" in embedded.stray_lines()[0]
        assert embedded.reap() == [f"pid {server.pid} (http://127.0.0.1:9/api)"]
        assert server.wait(timeout=10) is not None
        assert embedded.strays() == [] and not list(Path(embedded.RECORDS).glob("*.json"))
    finally:
        if server.poll() is None:
            server.kill()
