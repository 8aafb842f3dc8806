"""What every pipeline step shares: the file names steps hand each other, the kinds of data,
the retry rule and cache keys."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.config import Params
from tasks.interrupt import RunInterrupted

# File names inside the step folders (the folders themselves are params.paths).
CORPUS_FILE = "corpus.parquet"     # raw/ and validated/ of a text corpus
PAIRS_RAW = "pairs.jsonl"          # raw/ of prompt -> completion records, as read
PAIRS_FILE = "pairs.parquet"       # validated/ of prompt -> completion records
MANIFEST = "manifest.json"         # tokens/: digests and counts of what encode wrote
TRAIN_METRICS, EVAL_METRICS = "train.json", "eval.json"
LOSS_CSV = "loss.csv"
BEST, LATEST = "best", "latest"    # checkpoints inside the model folder


@dataclass(frozen=True)
class Kind:
    """What a kind of data decides outside the step functions.

    Each step module dispatches its kind-specific part on `name`; the rest lives here: which
    file the validated records live in, the DVC stages that version the kind, how
    the pyfunc answers, and how promotion compares two models of the kind.
    """

    name: str
    tag: str                 # the `kind` tag of its registered versions
    validated_file: str
    stage_prefix: str        # DVC stage names: "" -> ingest, ...; "sft-" -> sft-ingest, ...
    dvc_project: str         # the folder of the DVC project holding those stages
    mode: str                # the pyfunc's mode: "text" continues, "completion" answers
    metric: str              # the registry tag promotion compares
    metric_label: str        # how a report names it
    higher_is_better: bool
    data_tag: str            # the tag naming the data that metric was measured on

    @property
    def dvc_lock(self) -> Path:
        return Path(self.dvc_project) / "dvc.lock"

    @property
    def stages(self) -> list[str]:
        return [f"{self.stage_prefix}{step}" for step in DVC_STEPS]

    def better(self, candidate: float, champion: float) -> bool:
        return candidate > champion if self.higher_is_better else candidate < champion


DVC_STEPS = ("ingest", "validate", "tokenize", "encode", "train", "evaluate")
KINDS = {
    "text": Kind(name="text", tag="pretrain", validated_file=CORPUS_FILE,
                 stage_prefix="", dvc_project=".", mode="text", metric="val_bits_per_byte",
                 metric_label="val bits per byte", higher_is_better=False,
                 data_tag="val_text_digest"),
    "sft": Kind(name="sft", tag="sft", validated_file=PAIRS_FILE,
                stage_prefix="sft-", dvc_project="sft", mode="completion", metric="exact_match",
                metric_label="exact match", higher_is_better=True, data_tag="test_digest"),
}


def kind_of(params: Params) -> Kind:
    return KINDS[params.kind]


def kind_tagged(tag: str) -> Kind:
    """The kind whose registered versions carry this `kind` tag."""
    for kind in KINDS.values():
        if kind.tag == tag:
            return kind
    raise ValueError(f"unknown model kind tag {tag!r}; known: "
                     f"{', '.join(k.tag for k in KINDS.values())}")


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


def validated_path(params: Params) -> Path:
    return params.path("validated") / kind_of(params).validated_file

