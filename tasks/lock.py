"""One run at a time per project, and one promotion at a time per model.

The run lock is an `flock` on `.tinygpt/run.lock`, so the kernel releases it when its process
dies, even by kill -9. The file also says who holds it (PID, host, start time, command), for
the one line a second run stops with; a file left by a dead holder is taken over, and the log
says so. Serving and read-only commands never take it.

The promotion lease serializes the moves of a model's aliases. On the team stack it is a
PostgreSQL advisory lock on the stack's database, which every host of the stack shares and
which the server releases when the holder's connection ends (its process died, its host was
lost); embedded, an `flock` on `.tinygpt/promote-<model>.lock`. A holder waits for it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("tinygpt.lock")
LOCK_FILE = Path(".tinygpt") / "run.lock"
_held: dict[str, Any] = {}  # this process's lock, so nested takers (CLI, then flow) share it


class RunLockedError(RuntimeError):
    """Another live run holds the project."""


def describe(holder: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {started}: "
            f"{holder.get('command')}")


@contextmanager
def run_lock(path: Path = LOCK_FILE) -> Iterator[dict[str, Any]]:
    """Hold the project's run lock; raise RunLockedError at once if a live run has it."""
    if _held.get("path") == path.resolve():
        yield _held["holder"]
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held until the run ends)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(f"another run holds this project ({describe(read(path))}); "
                                 f"wait for it or stop it") from None
        previous = read(path)
        if previous:
            log.warning("took over the run lock left by a run that is gone (%s)",
                        describe(previous))
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(sys.argv)}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder))
        handle.flush()
        _held.update(path=path.resolve(), holder=holder)
        try:
            yield holder
        finally:
            _held.clear()
            handle.seek(0)
            handle.truncate()
            handle.flush()
    finally:
        handle.close()


def held(path: Path = LOCK_FILE) -> bool:
    """Whether a live process holds the run lock at path (another project's, say a worker's
    workspace on this host)."""
    if not path.is_file():
        return False
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def read(path: Path = LOCK_FILE) -> dict[str, Any]:
    """Who holds (or last held) the lock; {} when nobody."""
    try:
        text = path.read_text(encoding="utf-8").strip()
        return json.loads(text) if text else {}
    except (OSError, json.JSONDecodeError):
        return {}


PROMOTE_LOCKS = Path(".tinygpt")
LEASE_WAIT_SECONDS = 600  # a promote that holds the lease longer is stuck: the waiter gives up


class LeaseTimeout(RuntimeError):
    """Another promote held the promotion lease for longer than LEASE_WAIT_SECONDS."""


@contextmanager
def promotion_lease(name: str, shared: bool) -> Iterator[None]:
    """Hold the lease to move model `name`'s aliases, waiting for another holder: `shared`,
    the stack's PostgreSQL advisory lock (PGHOST, PGPORT, PGUSER as the stack's env file sets
    them); else a lock file of this project."""
    key = f"tinygpt promote {name}"
    if shared:
        with _advisory_lock(key):
            yield
    else:
        with _file_lock(key, PROMOTE_LOCKS / f"promote-{name}.lock"):
            yield


def _waiting(key: str) -> None:
    log.info("waiting for the promotion lease (%s): another promote holds it", key)


def _timed_out(key: str) -> LeaseTimeout:
    return LeaseTimeout(f"the promotion lease ({key}) stayed held for {LEASE_WAIT_SECONDS} s; "
                        f"nothing was moved")


@contextmanager
def _advisory_lock(key: str) -> Iterator[None]:
    import psycopg2
    from psycopg2.errors import QueryCanceled

    connection = psycopg2.connect(dbname="postgres", connect_timeout=10)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,))
            if not cursor.fetchone()[0]:
                _waiting(key)
                cursor.execute(f"SET statement_timeout = '{LEASE_WAIT_SECONDS}s'")
                try:
                    cursor.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
                except QueryCanceled:
                    raise _timed_out(key) from None
        yield
    finally:
        connection.close()  # ends the session, and with it the lock


@contextmanager
def _file_lock(key: str, path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        deadline = None
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is None:
                    _waiting(key)
                    deadline = time.monotonic() + LEASE_WAIT_SECONDS
                elif time.monotonic() > deadline:
                    raise _timed_out(key) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
