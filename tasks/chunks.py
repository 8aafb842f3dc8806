"""Data preparation a chunk at a time, fanned out on Dask.

Ingest writes the records table in row groups of about `data.chunk_mb` of text; validate
copies it as it is. A chunk is one row group's rows of one split (a row group that straddles
the train/val cut gives two chunks), so a chunk's work holds one chunk in memory whatever the
corpus's size, and every chunk is the same wherever it runs: a Dask cluster of any size gives
the same tokenizer and the same shards as one process.

`fan_out` runs a step's chunk function over the chunks as Prefect tasks on Prefect's Dask task
runner: a local cluster of `data.workers` processes (one per core by default), or the running
cluster at `data.dask_address` (whose workers need the same PREFECT_API_URL and a view of
the project's folder). With data.workers: 1, or too few chunks to pay for a worker's start
(under MIN_CHUNKS_PER_WORKER each: Tiny Shakespeare is one), they run here, in this process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from gpt.config import Params
from gpt.progress import Progress
from tasks.interrupt import check_stop

log = logging.getLogger("tinygpt.chunks")
DOC_SEPARATOR = "\n\n"  # between documents in a tokenizer's training text
POLL_SECONDS = 0.2      # how often a wait for a chunk looks for a stop request
# Fewer chunks than this per worker run in this process: a worker's start (a fresh interpreter,
# the step's imports: 1 s, 3 s with Great Expectations) costs more than a few chunks' work.
MIN_CHUNKS_PER_WORKER = 4


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of row group `group` of the records table at `path`, all in one
    split; `separated`: its first record starts a document after another one of its split."""

    path: str
    group: int
    start: int
    stop: int
    split: str
    separated: bool
    n_bytes: int

    def read(self, columns: Sequence[str]) -> Any:
        """The chunk's rows (only `columns`) as a pyarrow table."""
        table = pq.ParquetFile(self.path).read_row_group(self.group, columns=list(columns))
        return table.slice(self.start, self.stop - self.start)

    def documents(self) -> Iterator[tuple[str, int, bool]]:
        """(text, UTF-8 bytes, whether a separator comes before it) of each document part in
        the chunk: consecutive records of one source joined once."""
        table = self.read(["text", "source", "n_bytes"])
        pieces: list[str] = []
        n_bytes, separated, last = 0, self.separated, None
        for text, source, size in zip(table["text"].to_pylist(), table["source"].to_pylist(),
                                      table["n_bytes"].to_pylist(), strict=True):
            if pieces and source != last:
                yield "".join(pieces), n_bytes, separated
                pieces, n_bytes, separated = [], 0, True
            pieces.append(text)
            n_bytes += size
            last = source
        if pieces:
            yield "".join(pieces), n_bytes, separated

    def text(self) -> str:
        """The chunk's part of its split's training text: documents joined by DOC_SEPARATOR."""
        return "".join((DOC_SEPARATOR if separated else "") + text
                       for text, _, separated in self.documents())


def text_digest(documents: Iterator[tuple[str, int, bool]]) -> str:
    """A digest of document parts and where documents begin."""
    digest = hashlib.sha256()
    for text, _, separated in documents:
        digest.update(b"\x00" if separated else b"")
        digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def combined_digest(digests: Sequence[str]) -> str:
    """One digest of a split from its chunks' digests, in order."""
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def plan(path: Path, val_fraction: float | None) -> list[Chunk]:
    """The chunks of a records table in order, train split first: the last val_fraction of
    its bytes (whole records; at least one record each side) is held out. With no
    val_fraction: one chunk per row group, all of split "all"."""
    table = pq.ParquetFile(path)
    groups = range(table.num_row_groups)
    sizes = [table.read_row_group(g, columns=["n_bytes"]).column(0).to_numpy() for g in groups]
    rows = sum(len(s) for s in sizes)
    cut = rows if val_fraction is None else held_out_from(sizes, val_fraction)
    chunks: list[Chunk] = []
    first_row, last_source = 0, None
    for group, group_sizes in zip(groups, sizes, strict=True):
        sources = table.read_row_group(group, columns=["source"]).column(0)
        for start, stop, split in ((0, cut - first_row, "train" if val_fraction else "all"),
                                   (cut - first_row, len(group_sizes), "val")):
            start, stop = max(start, 0), min(stop, len(group_sizes))
            if start >= stop:
                continue
            begins_split = first_row + start in (0, cut)
            separated = not begins_split and sources[start].as_py() != last_source
            chunks.append(Chunk(str(Path(path).resolve()), group, start, stop, split,
                                separated, int(group_sizes[start:stop].sum())))
            last_source = sources[stop - 1].as_py()
        first_row += len(group_sizes)
    return chunks


def held_out_from(sizes: list[np.ndarray], val_fraction: float) -> int:
    """The first held-out row, given every row group's record sizes."""
    rows = sum(len(s) for s in sizes)
    if rows < 2:
        raise ValueError(f"need at least 2 records to hold some out for validation, got {rows}")
    cumulative = np.cumsum(np.concatenate(sizes))
    cut = int((cumulative <= cumulative[-1] * (1 - val_fraction)).sum())
    return min(max(cut, 1), rows - 1)


def workers(params: Params) -> int:
    return params.data.workers or os.cpu_count() or 1


def prefect_api() -> str | None:
    """The Prefect API this process reports to: the one a flow run or a CLI command set up,
    else PREFECT_API_URL; None when a step runs alone without one (`python -m tasks`, a DVC
    stage), which then never imports Prefect (a second of start-up)."""
    if "prefect" not in sys.modules:
        return os.environ.get("PREFECT_API_URL") or None
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@contextmanager
def local_cluster(params: Params, api: str | None) -> Iterator[Any]:
    """A Dask local cluster of data.workers processes reporting to this process's Prefect
    API, closed on the way out; None where data.dask_address names a running cluster."""
    if params.data.dask_address:
        yield None
        return
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=workers(params), threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.WARNING,
                           env={"PREFECT_API_URL": api} if api else {})
    try:
        yield cluster
    finally:
        cluster.close()


def kill_workers(cluster: Any) -> None:
    """End a local cluster's worker processes at once: a stopped step does not wait for the
    chunks in flight (closing a busy cluster takes seconds)."""
    for nanny in list(cluster.workers.values()):
        with suppress(ProcessLookupError, TypeError):
            os.kill(nanny.pid, signal.SIGKILL)


def fan_out(params: Params, work: Callable[..., Any], chunks: Sequence[Chunk], label: str,
            **arguments: Any) -> Iterator[Any]:
    """work(chunk, **arguments) for every chunk, results in the chunks' order, with progress
    lines. Enough chunks for more than one worker (or a Dask address): on Dask, two
    chunks per worker running, as Prefect tasks named after `work` when there is a Prefect API
    to report to (else as the plain function: a step run alone has no flow to show them in).
    A stop request stops the wait within POLL_SECONDS (a local cluster goes with it)."""
    total, started = sum(c.n_bytes for c in chunks), time.perf_counter()
    with Progress(log, label, total >> 20, "MB") as progress:
        finished = 0
        for chunk, result in _results(params, work, chunks, arguments):
            finished += chunk.n_bytes
            progress.update(finished >> 20)
            yield result
    seconds = time.perf_counter() - started
    log.info("%s: %.1f MB in %.1fs (%.1f MB/s)", label, total / 2**20, seconds,
             total / 2**20 / max(seconds, 1e-9))


def _results(params: Params, work: Callable[..., Any], chunks: Sequence[Chunk],
             arguments: dict[str, Any]) -> Iterator[tuple[Chunk, Any]]:
    if not params.data.dask_address and (
            workers(params) == 1 or len(chunks) < MIN_CHUNKS_PER_WORKER * workers(params)):
        for chunk in chunks:
            check_stop()
            yield chunk, work(chunk, **arguments)
        return
    started = time.perf_counter()
    api = prefect_api()
    quiet_dask()
    with local_cluster(params, api) as cluster, dask_submit(params, cluster, work,
                                                            api) as (submit, n_workers):
        log.info("%d chunks on Dask (%s, %s), started in %.1fs", len(chunks),
                 params.data.dask_address or f"a local cluster of {n_workers} processes",
                 "as Prefect tasks" if api else "no Prefect API: as plain functions",
                 time.perf_counter() - started)
        try:
            yield from _in_order(chunks, lambda chunk: submit(chunk, **arguments), n_workers)
        except BaseException:
            if cluster is not None:
                kill_workers(cluster)
            raise


@contextmanager
def dask_submit(params: Params, cluster: Any, work: Callable[..., Any], api: str | None
                ) -> Iterator[tuple[Callable[..., Any], int]]:
    """(submit(chunk, **arguments) -> a future, the number of workers) for the local cluster
    or the running one at data.dask_address: through Prefect's Dask task runner as a Prefect
    task when there is a Prefect API, else straight to Dask."""
    address = cluster if cluster is not None else params.data.dask_address
    if api:
        from prefect_dask import DaskTaskRunner

        as_task = prefect_task(work)
        with DaskTaskRunner(cluster=cluster, address=params.data.dask_address) as runner:
            yield ((lambda chunk, **arguments: runner.submit(as_task, {"chunk": chunk,
                                                                        **arguments})),
                   len(runner.client.scheduler_info()["workers"]))
        return
    from distributed import Client

    with Client(address) as client:
        yield ((lambda chunk, **arguments: client.submit(work, chunk, **arguments, pure=False)),
               len(client.scheduler_info()["workers"]))


def quiet_dask() -> None:
    """Dask's INFO lines (a scheduler starting, workers joining) are not the step's news. Its
    import sets them to INFO, so it is imported first."""
    import distributed  # noqa: F401

    logging.getLogger("distributed").setLevel(logging.WARNING)


def prefect_task(work: Callable[..., Any]) -> Any:
    """A chunk function as a Prefect task ("encode chunk"); its results travel back through
    Dask, never to result storage."""
    from prefect import task

    return task(work, name=work.__name__.replace("_", " "), persist_result=False, retries=0)


def _in_order(chunks: Sequence[Chunk], submit: Callable[[Chunk], Any],
              n_workers: int) -> Iterator[tuple[Chunk, Any]]:
    """Each chunk's result in the chunks' order, keeping two chunks per worker running: a
    slow chunk holds back the results behind it (at most four per worker wait), not the
    workers."""
    queue, waiting = iter(chunks), deque[tuple[Chunk, Any]]()
    running, lookahead = 2 * max(1, n_workers), 4 * max(1, n_workers)
    while True:
        while (len(waiting) < lookahead
               and sum(not done(f) for _, f in waiting) < running
               and (chunk := next(queue, None)) is not None):
            waiting.append((chunk, submit(chunk)))
        if not waiting:
            return
        if done(waiting[0][1]):
            chunk, future = waiting.popleft()
            yield chunk, future.result()
            continue
        check_stop()
        time.sleep(POLL_SECONDS)


def done(future: Any) -> bool:
    """Whether a Prefect future's or a Dask future's chunk has finished."""
    return getattr(future, "wrapped_future", future).done()
