"""Ctrl-C wherever it lands: the signal handler answers even when it interrupts the main thread
inside a logging handler that holds a plain lock, as Prefect's log shipper does for every line
a run logs (PREFECT_LOGGING_EXTRA_LOGGERS=tinygpt)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A run logging a step line through a handler that ships records under a non-reentrant lock;
# the Ctrl-C arrives while that lock is held, so the handler runs inside the critical section.
CTRL_C_INSIDE_A_LOG_SHIPPER = """
import logging, os, signal, threading
from tasks.interrupt import stop_on_signals, stop_reason, stop_requested

class Shipper(logging.Handler):
    def __init__(self):
        super().__init__()
        self.shipping = threading.Lock()

    def emit(self, record):
        with self.shipping:
            if record.getMessage() == "step 120":
                os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode, in here
                self.format(record)

logging.getLogger("tinygpt").addHandler(Shipper())
logging.getLogger("tinygpt").setLevel(logging.INFO)
with stop_on_signals():
    logging.getLogger("tinygpt.train").info("step 120")
    print("stop requested:", stop_requested(), "by", stop_reason())
"""


def test_ctrl_c_inside_a_log_handlers_lock_is_answered_and_requests_the_stop():
    done = subprocess.run([sys.executable, "-c", CTRL_C_INSIDE_A_LOG_SHIPPER], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stop requested: True by SIGINT"
    assert done.stderr == ("tinygpt: SIGINT: stopping at the next safe point "
                           "(send it again to stop now)\n")
