"""Ctrl-C and SIGTERM stop a run at the next safe point instead of killing it mid-write.

While a run holds `stop_on_signals()`, the first SIGINT or SIGTERM only raises a flag: the
flow checks it before each step and the trainer after each optimizer step (then writes
latest/, so a rerun resumes). A second signal interrupts at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("tinygpt.interrupt")
_STOP = threading.Event()
_reason: list[str] = []


class RunInterrupted(RuntimeError):
    """The run was asked to stop (SIGINT, SIGTERM) and stopped at a safe point."""


def stop_requested() -> bool:
    return _STOP.is_set()


def stop_reason() -> str:
    """What asked the run to stop: 'SIGINT', 'SIGTERM' or 'request'."""
    return _reason[-1] if _reason else "request"


def check_stop() -> None:
    """Raise RunInterrupted if a stop was requested."""
    if _STOP.is_set():
        raise RunInterrupted(f"run stopped by {stop_reason()}")


def _request_stop(signum: int, _frame: object) -> None:
    name = signal.Signals(signum).name
    if _STOP.is_set():
        raise KeyboardInterrupt(f"{name} again: stopping now")
    _reason.append(name)
    _STOP.set()
    log.warning("%s: stopping at the next safe point (send it again to stop now)", name)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into a stop request for the duration (main thread only: signal
    handlers can be set nowhere else; elsewhere the caller's handling stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _request_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _STOP.clear()
        _reason.clear()
