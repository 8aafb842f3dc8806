"""What every pipeline step shares: the file names steps hand each other and the retry rule
(the kinds of data are tasks/kinds/)."""

from __future__ import annotations

import errno
import os
from typing import Any

from tasks.interrupt import RunInterrupted

# File names inside the step folders (the folders themselves are params.paths).
CORPUS_FILE = "corpus.parquet"     # raw/ and validated/ of a text corpus
PAIRS_RAW = "pairs.jsonl"          # raw/ of prompt -> completion records, as read
PAIRS_FILE = "pairs.parquet"       # validated/ of prompt -> completion records
MANIFEST = "manifest.json"         # tokens/: digests and counts of what encode wrote
TRAIN_METRICS, EVAL_METRICS = "train.json", "eval.json"
LOSS_CSV = "loss.csv"
BEST, LATEST = "best", "latest"    # checkpoints inside the model folder


# Errors that a retry seconds later meets again: a full disk or quota, a read-only or
# forbidden folder. Retrying them only delays the one line that says so.
PERMANENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                              errno.EPERM})


def retry_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry I/O hiccups; never bad input (a ValueError), a
    permanent OS error or a run that was asked to stop."""
    try:
        state.result()
    except (ValueError, RunInterrupted):
        return False
    except Exception as err:
        return not permanent_error(err)
    return True


def permanent_error(err: BaseException) -> bool:
    """Whether err, or an error it came from, is a permanent OS error; a tool's failure
    (dvc's) counts when its message carries the system's words for one."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in PERMANENT_ERRNOS:
            return True
        if any(os.strerror(code) in str(err) for code in PERMANENT_ERRNOS):
            return True
        err = err.__cause__ or err.__context__
    return False
