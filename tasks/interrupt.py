"""What stops a run: Ctrl-C, SIGTERM, or a server the run depends on going away.

While a run holds `stop_on_signals()`, the first SIGINT or SIGTERM requests a stop. Where the
run is inside an `abortable()` section (a step whose outputs are written whole or put back
after a failure: ingest, validate, tokenize, encode, evaluate, version), the signal stops it
there and then; elsewhere it only raises a flag, which the flow checks before each step and the
trainer after each optimizer step (then writes latest/, so a rerun resumes). Registering and
promoting are never cut in the middle: the flag stops the run right after them. A second
signal ends the process at once, wherever the run is.

A watcher thread that finds a server gone requests a stop the same way (`request_stop`), with
a reason that names the server.

The signal handler takes no lock: Python runs it in the main thread between two bytecodes,
perhaps inside a logging handler's critical section (Prefect's log shipper holds plain locks),
so logging from it could wait on the main thread itself, forever. It answers the terminal with
one write to the stderr descriptor instead, and the stop is marked in a list, whose `append`
is atomic.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

log = logging.getLogger("tinygpt.interrupt")
_reasons: list[str] = []  # a stop was requested when non-empty; the first reason wins
_abortable: list[bool] = []  # non-empty inside an abortable() section


class RunInterrupted(RuntimeError):
    """The run was asked to stop (SIGINT, SIGTERM, a lost server) and stopped."""


def stop_requested() -> bool:
    return bool(_reasons)


def stop_reason() -> str:
    """What stopped the run, as the end of "run stopped by ...": 'SIGINT', 'SIGTERM', or
    'the loss of the Prefect server http://...: connection refused'."""
    return _reasons[0] if _reasons else "request"


def check_stop() -> None:
    """Raise RunInterrupted if a stop was requested."""
    if _reasons:
        raise RunInterrupted(f"run stopped by {stop_reason()}")


def request_stop(reason: str) -> None:
    """Ask the run to stop at its next safe point (from any thread); the first reason wins."""
    if not _reasons:
        _reasons.append(reason)
        log.warning("stopping the run: %s", reason)


@contextmanager
def abortable() -> Iterator[None]:
    """A stretch of the run that a signal may stop at once (its outputs are written whole,
    and a failed run puts back what was there)."""
    _abortable.append(True)
    try:
        check_stop()
        yield
    finally:
        _abortable.clear()


def _tell_terminal(text: str) -> None:
    """One line to stderr, straight to its descriptor: no lock, no logging handler."""
    with suppress(OSError):  # no stderr to answer on: the stop goes ahead all the same
        os.write(2, f"tinygpt: {text}\n".encode())


def _exit_at_once(name: str, signum: int) -> None:
    """The second signal: exit now, as kill -9 would (a raised KeyboardInterrupt can land in
    a garbage collector's callback, where Python ignores it). Everything a run writes
    survives that: the kernel frees the run lock, the embedded Prefect server follows its
    parent, and the next run closes this one and resumes its training."""
    _tell_terminal(f"{name} again: stopped at once; the next run (or `tinygpt gc --apply`) "
                   f"closes this one, and training resumes from its last checkpoint")
    os._exit(128 + signum)


def _request_stop(signum: int, _frame: object) -> None:
    name = signal.Signals(signum).name
    if _reasons:
        _exit_at_once(name, signum)
    _reasons.append(name)
    if _abortable:
        _abortable.clear()  # the step's own clean-up runs uninterrupted
        _tell_terminal(f"{name}: stopping now (send it again to exit at once)")
        raise RunInterrupted(f"run stopped by {name}")
    _tell_terminal(f"{name}: stopping at the next safe point (send it again to stop now)")


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
        _reasons.clear()
        _abortable.clear()
