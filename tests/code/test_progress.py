"""Progress: lines that say how far, how fast and how long is left, never more often than
asked, and on a terminal a bar redrawn in place that log lines do not break."""

from __future__ import annotations

import io
import logging
import os
import pty
import re
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gpt.progress import Bar, Progress, duration, format_rate
from gpt.train import time_left
from tests.scratch import ROOT


def test_a_progress_line_says_how_far_how_fast_and_what_is_left(caplog):
    log = logging.getLogger("tinygpt.test")
    with caplog.at_level(logging.INFO, logger="tinygpt.test"):
        Progress(log, "encoding", 200, "documents", every=0.0).update(50)
        quiet = Progress(log, "quiet", 200, "documents", every=3600.0)
        quiet.update(50)
    assert len(caplog.messages) == 1
    assert re.fullmatch(r"encoding: 50/200 documents \(25%\) \| "
                        r"([\d,.]+ documents/s|[\d,.]+ s/document) \| \d+m\d\ds left",
                        caplog.messages[0]), caplog.messages


def test_a_rate_below_one_a_second_is_shown_as_seconds_per_unit():
    assert format_rate(250.4, "steps") == "250 steps/s"
    assert format_rate(3.42, "steps") == "3.4 steps/s"
    assert format_rate(0.4, "steps") == "2.5 s/step"
    assert format_rate(0.5, "MB") == "2.0 s/MB"
    assert format_rate(0.0, "merges") == "0.0 merges/s"


def test_time_left_follows_the_rate_and_stops_at_the_budget():
    assert duration(185) == "3m05s"
    assert time_left(elapsed=10.0, steps_done=100, steps_left=900, max_seconds=0) == 90
    assert time_left(elapsed=10.0, steps_done=100, steps_left=900, max_seconds=40) == 30


def test_the_bar_shows_the_share_the_count_the_rate_and_the_time_left(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    screen = io.StringIO()
    with Bar(logging.getLogger("tinygpt.test"), "training", 1000, "steps", start=200,
             stream=screen) as bar:
        bar.show(450, " | loss 3.2100", seconds_left=185)
    drawn = screen.getvalue()
    assert drawn.startswith("\r\x1b[2K") and drawn.endswith("\n")
    assert re.fullmatch(r"training \[#{11}\.{13}\]  45% 450/1000 steps \| "
                        r"([\d,.]+ steps/s|[\d,.]+ s/step) \| 3m05s left \| loss 3\.2100",
                        drawn.strip().split("\x1b[2K")[-1])


def test_a_log_line_on_the_terminal_erases_the_bar_and_it_comes_back_below(monkeypatch):
    """A real pseudo-terminal, as a person running `tinygpt retrain` has."""
    monkeypatch.setenv("COLUMNS", "200")  # a pty opened here reports no size
    leader, follower = pty.openpty()
    terminal = os.fdopen(follower, "w")
    log = logging.getLogger("tinygpt.test.bar")
    handler = logging.StreamHandler(terminal)
    log.addHandler(handler)
    monkeypatch.setattr(log, "propagate", False)
    try:
        with Progress(log, "encoding", 4, "documents", every=3600.0, stream=terminal) as bar:
            bar.update(1)
            log.warning("a line between two drawings")
            bar.update(2)
        assert handler.filters == []  # nothing is left behind on the handler
    finally:
        log.removeHandler(handler)
        terminal.close()
    shown = read_until_closed(leader).decode()
    first, rest = shown.split("a line between two drawings", 1)
    assert "encoding [######" in first and first.endswith("\r\x1b[2K")
    assert "encoding [############" in rest and rest.endswith("\r\n")


def test_bpe_training_and_training_draw_bars_on_a_terminal_and_only_there(tmp_path):
    on_terminal = run_with(tmp_path / "terminal", stderr_is_terminal=True)
    assert re.search(r"BPE training \[#*\.*\] +\d+% \d+/\d+ merges", on_terminal)
    assert re.search(r"training \[#{24}\] 100% 6/6 steps \| ([\d,.]+ steps/s|[\d,.]+ s/step) "
                     r"\| 0m00s left \| loss [\d.]+", on_terminal)
    in_a_pipe = run_with(tmp_path / "pipe", stderr_is_terminal=False)
    assert "\x1b[2K" not in in_a_pipe and "[#" not in in_a_pipe
    for shown in (on_terminal, in_a_pipe):  # the log lines come either way
        assert "step 3/6 | loss" in shown


def run_with(out: Path, stderr_is_terminal: bool) -> str:
    """BPE training, encoding-like Progress and a few training steps in a child process whose
    stderr is a pseudo-terminal or a pipe; what it printed there."""
    script = textwrap.dedent("""
        import logging, sys
        import numpy as np
        from gpt.model import GPT, GPTConfig
        from gpt.tokenizer import train_tokenizer
        from gpt.train import TrainConfig, windows_trainer
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        train_tokenizer("bpe", "the quick brown fox jumps over the lazy dog " * 50, 300)
        ids = np.tile(np.arange(40, dtype=np.uint16), 100)
        cfg = TrainConfig(max_steps=6, batch_size=2, eval_interval=6, eval_iters=1,
                          log_interval=3, device="cpu", dtype="float32")
        model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=1, n_embd=16))
        windows_trainer(model, ids, ids[:400], cfg, sys.argv[1]).fit()
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    if not stderr_is_terminal:
        done = subprocess.run([sys.executable, "-c", script, str(out)], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stderr
    leader, follower = pty.openpty()
    child = subprocess.Popen([sys.executable, "-c", script, str(out)], env=env,
                             cwd=ROOT, stderr=follower, stdout=subprocess.DEVNULL)
    os.close(follower)
    shown = read_until_closed(leader, timeout=120)
    assert child.wait(timeout=120) == 0, shown.decode(errors="replace")
    return shown.decode()


def read_until_closed(leader: int, timeout: float = 30.0) -> bytes:
    """Everything shown on a pseudo-terminal, read from its leader side until the other side
    is closed (then closes the leader). One read returns only what the kernel has passed across
    so far, which can stop anywhere in what was written: read to the end, within a deadline."""
    deadline = time.monotonic() + timeout
    shown = b""
    try:
        while select.select([leader], [], [], max(deadline - time.monotonic(), 0))[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other side is closed and everything was read
                return shown
            if not chunk:
                return shown
            shown += chunk
        raise AssertionError(f"the terminal was still open after {timeout}s: {shown!r}")
    finally:
        os.close(leader)


def test_the_rate_and_time_left_follow_the_last_half_minute_not_the_whole_run():
    bar = Bar(logging.getLogger("test"), "encoding", 1000, "MB")
    start = bar.started
    for seconds, done in ((10, 100), (60, 600)):  # 10 MB/s for a minute
        bar.rate(done, start + seconds)
    # then 1 MB/s (35 s, clear of the window's edge: the clock's floats are not exact)
    rate, left = bar.rate(635, start + 95)
    assert rate == pytest.approx(1.0) and left == pytest.approx(365.0)  # the average: 6.7
