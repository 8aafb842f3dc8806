"""Periodic progress lines for loops that run longer than a few seconds: how far, how fast,
and how long is left, at most every few seconds. They are log lines, so they show the same in
a terminal, in CI logs and in the Prefect run's logs."""

from __future__ import annotations

import logging
import time


def duration(seconds: float) -> str:
    """'3m05s'."""
    minutes, secs = divmod(round(max(seconds, 0.0)), 60)
    return f"{minutes}m{secs:02d}s"


class Progress:
    """`update(done)` inside the loop; a line when `every` seconds have passed since the last."""

    def __init__(self, log: logging.Logger, label: str, total: int, unit: str,
                 every: float = 5.0) -> None:
        self.log, self.label, self.total, self.unit, self.every = log, label, total, unit, every
        self.started = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every or done <= 0:
            return
        self.last = now
        elapsed = now - self.started
        rate = done / elapsed
        self.log.info("%s: %d/%d %s (%.0f%%) | %.0f %s/s | %s left", self.label, done,
                      self.total, self.unit, 100 * done / max(self.total, 1), rate, self.unit,
                      duration((self.total - done) / rate))
