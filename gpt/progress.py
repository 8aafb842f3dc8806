"""Progress for loops that run longer than a few seconds: how far, how fast, how long is left.

Two forms of the same figures:
- log lines, at most every few seconds: they read the same in a terminal, in CI logs and in
  the Prefect run's logs;
- on a terminal, a bar redrawn in place on stderr. While it is shown, a log line printed to
  that terminal erases it first, and the next update draws it again below the line.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections import deque
from typing import TextIO

BAR_WIDTH = 24
RATE_WINDOW = 30.0  # seconds: the rate, and the time left, come from this recent stretch
MIN_COLUMNS = 40  # narrower terminals would wrap the line, which erasing cannot undo
REDRAW_SECONDS = 0.1
_ERASE_LINE = "\r\x1b[2K"


def duration(seconds: float) -> str:
    """'3m05s'."""
    minutes, secs = divmod(round(max(seconds, 0.0)), 60)
    return f"{minutes}m{secs:02d}s"


def terminal() -> TextIO | None:
    """stderr when it is a terminal and this is the main thread, else None: no bar in pipes,
    files and CI logs, nor from a server's worker threads, which would share one line."""
    if threading.current_thread() is not threading.main_thread() or not sys.stderr.isatty():
        return None
    return sys.stderr


def columns(stream: TextIO) -> int:
    """The width of the terminal stream shows on ($COLUMNS or 80 when it cannot say)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or shutil.get_terminal_size().columns
    except (AttributeError, OSError, ValueError):
        return shutil.get_terminal_size().columns


class Bar(logging.Filter):
    """`with Bar(...) as bar:` around the loop, `bar.show(done)` inside it; it draws only on a
    terminal, and only where `draw` (rank 0 of a distributed run). `start` is the count done
    before (a resumed run). It filters the console handlers of `log` (and of its parents) so
    that their lines erase it first."""

    def __init__(self, log: logging.Logger, label: str, total: int, unit: str, start: int = 0,
                 stream: TextIO | None = None, draw: bool = True) -> None:
        super().__init__()
        self.stream = (stream or terminal()) if draw else None
        self.label, self.total, self.unit, self.start = label, total, unit, start
        self.started = time.perf_counter()
        self.marks: deque[tuple[float, int]] = deque([(self.started, start)])
        self.drawn_at = -float("inf")
        self.shown = False
        self.handlers = [h for h in _handlers(log)
                         if self.stream is not None and _is_terminal(getattr(h, "stream", None))]

    def __enter__(self) -> Bar:
        for handler in self.handlers:
            handler.addFilter(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handler in self.handlers:
            handler.removeFilter(self)
        if self.shown:
            self.stream.write("\n")  # the last drawing stays on screen
            self.stream.flush()

    def filter(self, record: logging.LogRecord) -> bool:
        """A log line is about to reach the terminal: erase the bar; the next show draws it."""
        if self.shown:
            self.stream.write(_ERASE_LINE)
            self.stream.flush()
            self.shown = False
        self.drawn_at = -float("inf")
        return True

    def show(self, done: int, detail: str = "", seconds_left: float | None = None) -> None:
        """Redraw with `done` of total (at most every REDRAW_SECONDS, and at the end)."""
        now = time.perf_counter()
        if self.stream is None or (now - self.drawn_at < REDRAW_SECONDS and done < self.total):
            return
        width = columns(self.stream) - 1
        if width < MIN_COLUMNS:
            return
        self.drawn_at = now
        rate, at_this_rate = self.rate(done, now)
        if seconds_left is None:
            seconds_left = at_this_rate
        left = duration(seconds_left) if seconds_left is not None else "?"
        share = min(done / max(self.total, 1), 1.0)
        filled = round(BAR_WIDTH * share)
        line = (f"{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {100 * share:3.0f}% "
                f"{done}/{self.total} {self.unit} | {format_rate(rate, self.unit)} | {left} left"
                f"{detail}")  # the detail last: a narrow terminal cuts it, not the time left
        self.stream.write(_ERASE_LINE + line[:width])
        self.stream.flush()
        self.shown = True


    def rate(self, done: int, now: float) -> tuple[float, float | None]:
        """Units per second over the last RATE_WINDOW seconds (a step that slows down or
        speeds up shows it, which an average since the start would hide), and the seconds
        left at that rate (None before the first unit)."""
        self.marks.append((now, done))
        while len(self.marks) > 2 and now - self.marks[1][0] >= RATE_WINDOW:
            self.marks.popleft()
        then, done_then = self.marks[0]
        rate = (done - done_then) / max(now - then, 1e-9)
        return rate, (self.total - done) / rate if rate > 0 else None


def format_rate(rate: float, unit: str) -> str:
    """"12 steps/s", "3.4 steps/s", or below one a second "2.5 s/step" (never "0 steps/s")."""
    if 0 < rate < 1:
        return f"{1 / rate:,.1f} s/{unit.removesuffix('s') if unit != 'MB' else unit}"
    return f"{rate:,.1f} {unit}/s" if rate < 10 else f"{rate:,.0f} {unit}/s"


def _handlers(log: logging.Logger) -> list[logging.Handler]:
    """The handlers a record of `log` reaches."""
    found: list[logging.Handler] = []
    node: logging.Logger | None = log
    while node is not None:
        found.extend(node.handlers)
        node = node.parent if node.propagate else None
    return found


def _is_terminal(stream: object) -> bool:
    """Whether a handler's stream is a terminal; a closed one (a test's captured output that
    a leftover handler still holds) is not."""
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


class Progress:
    """`with Progress(...) as progress:` around the loop, `progress.update(done)` inside it:
    a log line when `every` seconds have passed since the last, and the bar on a terminal."""

    def __init__(self, log: logging.Logger, label: str, total: int, unit: str,
                 every: float = 5.0, stream: TextIO | None = None) -> None:
        self.log, self.label, self.total, self.unit, self.every = log, label, total, unit, every
        self.bar = Bar(log, label, total, unit, stream=stream)
        self.last = self.bar.started

    def __enter__(self) -> Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.__exit__(*exc_info)

    def update(self, done: int) -> None:
        self.bar.show(done)
        now = time.perf_counter()
        if now - self.last < self.every or done <= 0:
            return
        self.last = now
        rate, seconds_left = self.bar.rate(done, now)
        self.log.info("%s: %d/%d %s (%.0f%%) | %s | %s left", self.label, done,
                      self.total, self.unit, 100 * done / max(self.total, 1),
                      format_rate(rate, self.unit), duration(seconds_left or 0.0))
