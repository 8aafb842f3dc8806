"""One run at a time per project: a lock file held for the whole run.

The lock is an `flock` on `.tinygpt/run.lock`, so the kernel releases it when its process dies,
even by kill -9. The file also says who holds it (PID, host, start time, command), for the one
line a second run stops with; a file left by a dead holder is taken over, and the log says so.
Serving and read-only commands never take it.
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


def read(path: Path = LOCK_FILE) -> dict[str, Any]:
    """Who holds (or last held) the lock; {} when nobody."""
    try:
        text = path.read_text(encoding="utf-8").strip()
        return json.loads(text) if text else {}
    except (OSError, json.JSONDecodeError):
        return {}
