"""Data preparation a chunk at a time, fanned out on Dask.

Ingest writes the records table in row groups of about `data.chunk_mb` of text; validate
copies it as it is. A chunk is one row group's rows of one split (a row group that straddles
the train/val cut gives two chunks), so a chunk's work holds one chunk in memory whatever the
corpus's size, and every chunk is the same wherever it runs: a Dask cluster of any size gives
the same tokenizer and the same shards as one process.

`fan_out` runs a step's chunk function over the chunks as Prefect tasks on Prefect's Dask task
runner: a local cluster of `data.workers` processes (one per core by default), or the running
cluster at `data.dask_address` (whose workers need the same PREFECT_API_URL and a view of
the project's folder). Data of a single row group (Tiny Shakespeare) runs here, in
this process: a cluster would only add its start-up.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Iterator, Sequence
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
    """The Prefect API this process reports to, if one is configured (a flow run, a CLI
    command); None when a step runs alone (`python -m tasks`, a DVC stage)."""
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


def fan_out(params: Params, step: Any, chunks: Sequence[Chunk], label: str,
            **arguments: Any) -> Iterator[Any]:
    """step(chunk, **arguments) for every chunk, results in the chunks' order, with progress
    lines; more than one row group (or a Dask address): on Dask, a few per worker in flight,
    as Prefect tasks when there is a Prefect API to report to (else as the plain function:
    a step run alone has no flow to show them in). A stop request stops the wait within
    POLL_SECONDS (a local cluster goes with it)."""
    total = sum(c.n_bytes for c in chunks)
    with Progress(log, label, total >> 20, "MB") as progress:
        done = 0
        for chunk, result in _results(params, step, chunks, arguments):
            done += chunk.n_bytes
            progress.update(done >> 20)
            yield result


def _results(params: Params, step: Any, chunks: Sequence[Chunk],
             arguments: dict[str, Any]) -> Iterator[tuple[Chunk, Any]]:
    if len({c.group for c in chunks}) <= 1 and not params.data.dask_address:
        for chunk in chunks:
            check_stop()
            yield chunk, step.fn(chunk, **arguments)
        return
    started = time.perf_counter()
    logging.getLogger("distributed").setLevel(logging.WARNING)
    api = prefect_api()
    from prefect_dask import DaskTaskRunner

    with local_cluster(params, api) as cluster, DaskTaskRunner(
            cluster=cluster, address=params.data.dask_address) as runner:
        log.info("%d chunks on Dask (%s, %s), started in %.1fs", len(chunks),
                 params.data.dask_address or f"a local cluster of {workers(params)} processes",
                 "as Prefect tasks" if api else "no Prefect API: as plain functions",
                 time.perf_counter() - started)

        def submit(chunk: Chunk) -> Any:
            if api:
                return runner.submit(step, {"chunk": chunk, **arguments})
            return runner.client.submit(step.fn, chunk, **arguments, pure=False)

        waiting: deque[tuple[Chunk, Any]] = deque()
        queue = iter(chunks)
        in_flight = 2 * max(1, len(runner.client.scheduler_info()["workers"]))
        try:
            while True:
                while len(waiting) < in_flight and (chunk := next(queue, None)) is not None:
                    waiting.append((chunk, submit(chunk)))
                if not waiting:
                    return
                chunk, future = waiting.popleft()
                yield chunk, wait_for(future)
        except BaseException:
            if cluster is not None:
                kill_workers(cluster)
            raise


def wait_for(future: Any) -> Any:
    """A chunk's result (a Prefect future's or a Dask future's), looking for a stop request
    while it runs."""
    dask_future = getattr(future, "wrapped_future", future)
    while not dask_future.done():
        check_stop()
        time.sleep(POLL_SECONDS)
    return future.result()


def chunk_task_options() -> dict[str, Any]:
    """What every chunk task shares: results travel back through Dask, never to storage."""
    return {"persist_result": False, "retries": 0}
