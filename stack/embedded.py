"""The embedded Prefect server of one command, when no Prefect server is configured.

Prefect's own temporary server starts in the command's process group, so a terminal's Ctrl-C
(SIGINT to the whole foreground group) kills the server the run still has to report to, and
kill -9 of the command leaves it running. This one starts in a session of its own: Ctrl-C
reaches the run only. It is stopped on every way out: by the command when it ends; by the
kernel when the command dies, kill -9 included (PR_SET_PDEATHSIG sends it SIGTERM); and,
should one outlive its command anyway, by the next command, which reaps every server whose
command is gone (`tinygpt status` lists them). Each server has a record in
`.tinygpt/prefect-servers/<command pid>.json`.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from gpt.files import write_json
from stack.processes import HOST, alive, free_port, record_of, stop, wait_until

log = logging.getLogger("tinygpt.prefect")
RECORDS = Path(".tinygpt") / "prefect-servers"
STARTUP_SECONDS = 60.0  # a cold start on 2 busy cores has taken about 15 s
_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """In the child before it runs: its own session, SIGINT at its default, and SIGTERM when
    the parent dies (at once, if the parent died already)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _command() -> list[str]:
    """Prefect's API alone (no UI), the way Prefect runs its temporary server."""
    import prefect

    return [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parents[1]),
            "--factory", "prefect.server.api.server:create_app", "--host", HOST, "--port",
            "{port}", "--log-level", "error", "--lifespan", "on"]


def _environment() -> dict[str, str]:
    from prefect.settings import get_current_settings

    return {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
            "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1"}


def _record_path(owner: int) -> Path:
    return RECORDS / f"{owner}.json"


def records() -> list[dict[str, Any]]:
    found = []
    for path in sorted(RECORDS.glob("*.json")) if RECORDS.is_dir() else []:
        with suppress(OSError, ValueError):
            found.append({**json.loads(path.read_text(encoding="utf-8")), "file": str(path)})
    return found


def strays() -> list[dict[str, Any]]:
    """Embedded servers still running whose command is gone."""
    return [r for r in records() if alive(r) and not alive(r["owner"])]


def stray_lines() -> list[str]:
    """`tinygpt status`'s words for each stray server."""
    return [f"a stray embedded Prefect server: pid {r['pid']} on {r['url']}, left by pid "
            f"{r['owner']['pid']} (gone); the next retrain stops it" for r in strays()]


def reap() -> list[str]:
    """Stop every stray server and drop the records of finished ones; what was stopped."""
    stopped = []
    for record in records():
        if alive(record["owner"]):
            continue
        if alive(record):
            stop(record, timeout=10.0)
            stopped.append(f"pid {record['pid']} ({record['url']})")
            log.warning("stopped an embedded Prefect server left by pid %s, which is gone: %s",
                        record["owner"]["pid"], record["url"])
        Path(record["file"]).unlink(missing_ok=True)
    return stopped


def start() -> dict[str, Any]:
    """Start a server on a free port of 127.0.0.1 and wait until it answers; its record."""
    import subprocess

    import httpx

    port, me = free_port(set()), os.getpid()
    RECORDS.mkdir(parents=True, exist_ok=True)
    log_file = RECORDS / f"{me}.log"
    with open(log_file, "ab") as out:
        process = subprocess.Popen([part.format(port=port) for part in _command()],
                                   env=_environment(), stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=lambda: _die_with(me))
    url = f"http://{HOST}:{port}/api"
    record = {**record_of(process.pid, log=log_file), "url": url, "owner": record_of(me)}
    write_json(_record_path(me), record)  # whole or not at all: others read it any time
    record["process"] = process
    log.info("starting the embedded Prefect server on %s", url)
    try:
        wait_until("the embedded Prefect server",
                   lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200,
                   record, STARTUP_SECONDS)
    except BaseException:
        shutdown(record)
        raise
    return record


def _send_pending() -> None:
    """Send the run's queued logs and events while the server still listens (Prefect would
    send them at exit, to a server gone by then), waiting at most a few seconds."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with suppress(Exception):
            worker.drain_all(timeout=5)


def shutdown(record: dict[str, Any]) -> None:
    """Stop a server this process started (its pending logs sent first) and drop its record."""
    if record["process"].poll() is None:
        _send_pending()
    stop({k: v for k, v in record.items() if k != "process"}, timeout=10.0)
    with suppress(Exception):
        record["process"].wait(timeout=1)  # reaped: no zombie left for the command's life
    _record_path(record["owner"]["pid"]).unlink(missing_ok=True)
    Path(record["log"]).unlink(missing_ok=True)


@contextmanager
def prefect_api() -> Iterator[dict[str, Any] | None]:
    """A Prefect API for the duration: the configured server (PREFECT_API_URL) as it is, or
    an embedded one started here, its record yielded (url, pid, process)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    reap()
    if PREFECT_API_URL.value():
        yield None
        return
    record = start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: record["url"]}):
            os.environ["PREFECT_API_URL"] = record["url"]  # for the processes it starts
            try:
                yield record
            finally:
                os.environ.pop("PREFECT_API_URL", None)
    finally:
        shutdown(record)
