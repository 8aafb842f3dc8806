"""Progress lines: how far, how fast, how long is left; never more often than asked."""

from __future__ import annotations

import logging
import re

from gpt.progress import Progress, duration
from gpt.train import time_left


def test_a_progress_line_says_how_far_how_fast_and_what_is_left(caplog):
    log = logging.getLogger("tinygpt.test")
    with caplog.at_level(logging.INFO, logger="tinygpt.test"):
        Progress(log, "encoding", 200, "documents", every=0.0).update(50)
        quiet = Progress(log, "quiet", 200, "documents", every=3600.0)
        quiet.update(50)
    assert len(caplog.messages) == 1
    assert re.fullmatch(r"encoding: 50/200 documents \(25%\) \| \d+ documents/s \| "
                        r"\d+m\d\ds left", caplog.messages[0]), caplog.messages


def test_time_left_follows_the_rate_and_stops_at_the_budget():
    assert duration(185) == "3m05s"
    assert time_left(elapsed=10.0, steps_done=100, steps_left=900, max_seconds=0) == "1m30s"
    assert time_left(elapsed=10.0, steps_done=100, steps_left=900, max_seconds=40) == "0m30s"
