"""Starting, finding and stopping the stack's processes, and waiting for their ports.

Every service starts in a session of its own (its own process group) with SIGINT reset to the
default: a process started from a background job inherits SIGINT *ignored*, and a Prefect
worker then never stops on SIGTERM. A record (pid, process group, start time) identifies a
process for good, so a pid reused by another program is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

HOST = "127.0.0.1"


class StackError(RuntimeError):
    """A service did not start or stop; the message says which and where its log is."""


# -- ports ----------------------------------------------------------------------------------------


def port_open(port: int, timeout: float = 0.5, host: str = HOST) -> bool:
    """Whether something accepts connections on host:port (127.0.0.1 for 0.0.0.0, which
    means every address)."""
    try:
        with socket.create_connection((HOST if host == "0.0.0.0" else host, port),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def port_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:port now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return not port_open(port, timeout=0.2)


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port


def pick_ports(wanted: Mapping[str, int]) -> dict[str, int]:
    """Each service's wanted port when it is free, another free port otherwise."""
    ports: dict[str, int] = {}
    for name, port in wanted.items():
        taken = set(ports.values())
        ports[name] = port if port not in taken and port_free(port) else free_port(taken)
    return ports


# -- processes ------------------------------------------------------------------------------------


def default_sigint() -> None:
    """In the child before it runs: SIGINT stops it, even where the parent ignored SIGINT
    (a shell's background job), since the child would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(argv: list[str], env: Mapping[str, str], log: Path, cwd: Path) -> dict[str, Any]:
    """Start argv in a new session, output appended to log; its record."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=default_sigint)
    return record_of(process.pid, log=log)


def record_of(pid: int, **extra: Any) -> dict[str, Any]:
    process = psutil.Process(pid)
    return {"pid": pid, "pgid": os.getpgid(pid), "create_time": process.create_time(),
            **{k: str(v) if isinstance(v, Path) else v for k, v in extra.items()}}


def _process(record: Mapping[str, Any] | None) -> psutil.Process | None:
    """The recorded process if it still runs (the same one: same start time, not a zombie)."""
    if not record:
        return None
    try:
        process = psutil.Process(int(record["pid"]))
        if abs(process.create_time() - float(record["create_time"])) > 0.5:
            return None
        return None if process.status() == psutil.STATUS_ZOMBIE else process
    except (psutil.Error, KeyError, ValueError):
        return None


def alive(record: Mapping[str, Any] | None) -> bool:
    return _process(record) is not None


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
        except psutil.Error:
            continue
    return left


def group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid:
                members.append(process)
        except (OSError, psutil.Error):
            continue
    return members


def tree(record: Mapping[str, Any]) -> list[psutil.Process]:
    """The recorded process, its process group and all their descendants (a Prefect flow run
    may sit in a session of its own under the worker)."""
    found: dict[int, psutil.Process] = {}
    root = _process(record)
    roots = ([root] if root else []) + group_members(int(record["pgid"]))
    for process in roots:
        found[process.pid] = process
        try:
            for child in process.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def _outside_group(processes: list[psutil.Process], pgid: int) -> list[psutil.Process]:
    outside = []
    for process in processes:
        try:
            if os.getpgid(process.pid) != pgid:
                outside.append(process)
        except (OSError, psutil.Error):
            continue
    return outside


def _signal_all(processes: list[psutil.Process], pgid: int, sig: signal.Signals) -> None:
    """sig to the process group, and once to each process outside it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for process in _outside_group(processes, pgid):
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    left = running(processes)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = running(left)
    return left


def stop(record: Mapping[str, Any], timeout: float = 20.0,
         children_timeout: float = 30.0) -> list[psutil.Process]:
    """Stop a service and everything it started; returns what still runs (nothing, normally).

    Descendants in sessions of their own (a Prefect worker's flow runs) get SIGTERM first and
    up to children_timeout to finish: a retraining run stops at its next safe point and
    records itself cancelled. Then SIGTERM to the process group, and after timeout SIGKILL to
    whatever is left."""
    processes = tree(record)
    if not processes:
        return []
    pgid = int(record["pgid"])
    outside = _outside_group(processes, pgid)
    if outside:
        for process in outside:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGTERM)
        wait_gone(outside, children_timeout)
    _signal_all(running(processes), pgid, signal.SIGTERM)
    left = wait_gone(processes, timeout)
    if left:
        _signal_all(left, pgid, signal.SIGKILL)
        left = wait_gone(left, 5.0)
    return left


# -- waiting --------------------------------------------------------------------------------------


def log_tail(log: Path | str, lines: int = 15) -> str:
    try:
        text = Path(log).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def wait_until(name: str, ready: Callable[[], bool], record: Mapping[str, Any] | None,
               timeout: float) -> None:
    """Poll ready() until true; fail at once if the process died, or after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except Exception:  # not ready yet: connection refused, 503, ...
            pass
        log = record.get("log") if record else None
        if record is not None and not alive(record):
            raise StackError(f"{name} exited while starting; the end of {log}:\n"
                             f"{log_tail(log) if log else ''}")
        if time.monotonic() > deadline:
            raise StackError(f"{name} did not come up in {timeout:.0f} s; the end of {log}:\n"
                             f"{log_tail(log) if log else ''}")
        time.sleep(0.25)
