"""Data at any size, at small sizes: memory stays flat and time grows linearly from 1 MB to
8 MB; a real Dask cluster (a scheduler and two workers on 127.0.0.1) gives the same tokenizer
and shards as the local one; bad input at scale ends fast with the file (and record) named."""

from __future__ import annotations

import filecmp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.scale import make_corpus, measure
from gpt.config import load_params
from gpt.data import CorpusError
from tasks.chunks import plan
from tasks.ingest import ingest

pytestmark = pytest.mark.slow  # not in `make test-fast`

BIN = Path(sys.executable).parent
CHUNKS = ["data.chunk_mb=0.1"]  # enough chunks at 1 MB for Dask (4 a worker) at both sizes
PREP = ("ingest", "validate", "tokenize", "encode", "train")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("corpora")
    return {size: make_corpus(root / f"{size}mb.txt", size, as_folder=False) for size in (1, 8)}


def test_memory_stays_flat_and_time_linear_from_1_to_8_mb(corpora, tmp_path):
    figures = {size: measure(corpus, tmp_path / f"p{size}", CHUNKS, PREP)
               for size, corpus in corpora.items()}
    for size, steps in figures.items():
        print(f"\n{size} MB: " + ", ".join(f"{s} {sec:.1f}s {peak >> 20} MB"
                                          for s, (sec, peak) in steps.items()))
    peak = {size: max(p for _, p in steps.values()) for size, steps in figures.items()}
    assert peak[8] <= 1.5 * peak[1], peak
    for step in PREP:
        per_mb = {size: figures[size][step][0] / size for size in figures}
        assert per_mb[8] <= 1.5 * per_mb[1], (step, per_mb)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def prefect_api(prefect_harness, monkeypatch) -> str:
    """The session's Prefect server, for the steps' processes and the Dask workers."""
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    return PREFECT_API_URL.value()


@pytest.fixture
def dask_cluster(tmp_path, prefect_api):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1, stopped by PID."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    processes = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1",
                                   "--port", str(port), "--no-dashboard"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    processes += [subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1",
                                    "--no-dashboard", "--local-directory", str(tmp_path / f"w{i}")],
                                   env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL) for i in range(2)]
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(30)


def test_a_running_dask_cluster_and_one_process_make_the_same_tokenizer_and_shards(
        corpora, tmp_path, dask_cluster):
    steps = ("ingest", "validate", "tokenize", "encode")
    local = measure(corpora[1], tmp_path / "local", CHUNKS, steps)
    remote = measure(corpora[1], tmp_path / "remote", [*CHUNKS,
                                                       f"data.dask_address={dask_cluster}"],
                     steps)
    alone = measure(corpora[1], tmp_path / "alone", [*CHUNKS, "data.workers=1"], steps)
    print(f"\nlocal cluster {local}\nrunning cluster {remote}\nin one process {alone}")
    for folder in ("data/tokenizer", "data/tokens"):
        a = tmp_path / "local" / folder
        names = sorted(p.name for p in a.iterdir())
        assert len(names) > 1
        for other in ("remote", "alone"):
            b = tmp_path / other / folder
            assert names == sorted(p.name for p in b.iterdir()), other
            match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
            assert match == names, (folder, other, mismatch, errors)
    chunks = len(plan(tmp_path / "local" / "data/validated/corpus.parquet", 0.1))
    assert chunks > 2
    for name in ("validate chunk", "count chunk", "encode chunk"):  # as Prefect tasks
        states = task_run_states(name)
        assert len(states) >= chunks and set(states) == {"COMPLETED"}, (name, states)


def task_run_states(name: str) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(like_=name)), limit=200)
    return [run.state_type.value for run in runs]


def ingest_refuses(project: Path, source: Path, *overrides: str) -> str:
    """Ingest's one line for a bad source, after checking it took seconds and left no table."""
    params = load_params(None, [f"paths.raw={project / 'raw'}", *overrides])
    started = time.monotonic()
    with pytest.raises(CorpusError) as refused:
        ingest(params, str(source))
    assert time.monotonic() - started < 60
    raw = project / "raw"
    assert not raw.exists() or not any(raw.iterdir())  # nothing half-written
    return str(refused.value)


def test_bad_input_at_scale_ends_fast_naming_the_file_and_record(tmp_path):
    junk = tmp_path / "junk.txt"
    junk.write_bytes(os.urandom(32 << 20))
    assert "junk.txt" in ingest_refuses(tmp_path, junk)

    line = tmp_path / "line.txt"
    line.write_text("word " * (2 << 20))  # 10 MB, no line break
    message = ingest_refuses(tmp_path, line, "data.chunk_mb=1")
    assert "line.txt: paragraph 0 is longer than 1,048,576 bytes" in message, message

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(5000):
        (folder / f"{i:05d}.txt").write_text(f"file {i}\n")
    (folder / "03217.txt").write_bytes(b"fine start \xc3\x28 then bad")
    message = ingest_refuses(tmp_path, folder)
    assert message.startswith("03217.txt: invalid UTF-8 at byte offset 11"), message
