"""`tinygpt retrain` as `make run` starts it, with its own embedded Prefect server, stopped the
ways users stop it: Ctrl-C from a terminal (SIGINT to the whole process group), twice, and
kill -9; and its Prefect server killed under it. Each run ends in seconds with one line, the
champion never moves, and no Prefect server outlives the command."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from bench.scale import make_corpus
from stack.processes import alive
from tests.pipeline.test_crash import Run, registry, versions

STEPS = 3000
LONG = ["--set", f"train.max_steps={STEPS}", "--set", "train.eval_interval=100"]
SHORT = ["--fresh", "--set", "train.max_steps=20"]


def server_of(project: Path, run: Run) -> dict:
    """The record of the embedded Prefect server the run started (once it has one)."""
    path = project / ".tinygpt" / "prefect-servers" / f"{run.proc.pid}.json"
    deadline = time.monotonic() + 60
    while not path.is_file():
        assert run.proc.poll() is None and time.monotonic() < deadline, run.output[-3000:]
        time.sleep(0.1)
    return json.loads(path.read_text())


def wait_gone(record: dict, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while alive(record):
        assert time.monotonic() < deadline, f"process {record['pid']} still runs"
        time.sleep(0.1)


def ctrl_c(run: Run) -> float:
    """What a terminal sends on Ctrl-C: SIGINT to the foreground process group."""
    os.killpg(run.proc.pid, signal.SIGINT)
    return time.monotonic()


def no_champion(project: Path) -> bool:
    return all("champion" not in v.aliases for v in versions(project))


def test_a_dead_prefect_server_stops_the_run_and_promotes_nothing(project):
    run = Run(project, "retrain", *LONG, embedded=True)
    server = server_of(project, run)
    run.wait_for(f"step 20/{STEPS}")
    os.kill(server["pid"], signal.SIGKILL)
    killed = time.monotonic()
    code = run.finish(120)
    seconds = time.monotonic() - killed
    print(f"\n{seconds:.1f} s from the kill to the exit")
    assert code == 1 and seconds < 30, (seconds, run.output[-3000:])
    line = run.error_line()
    assert f"the Prefect server {server['url']} does not answer" in line, line
    assert "nothing was promoted" in line
    assert versions(project) == []


def test_kill_9_of_the_command_takes_its_prefect_server_with_it(project):
    run = Run(project, "retrain", *LONG, embedded=True)
    server = server_of(project, run)
    run.wait_for("step ingest")
    os.kill(run.proc.pid, signal.SIGKILL)
    run.finish()
    wait_gone(server, 10)


def test_ctrl_c_inside_a_step_stops_it_there_and_returns_in_seconds(project, tmp_path):
    corpus = make_corpus(tmp_path / "8mb.txt", 8, as_folder=False)  # validate takes seconds
    run = Run(project, "retrain", "--source", str(corpus), "--set", "data.chunk_mb=16",
              "--set", "validate.max_chars=1000000", *LONG, embedded=True)
    server = server_of(project, run)
    assert not list((project / ".tinygpt" / "prefect-servers").glob("*.json"))[1:], \
        "the last test's record was not reaped"
    run.wait_for("step validate")
    time.sleep(0.5)  # inside the step, one chunk in-process
    signalled = ctrl_c(run)
    code = run.finish(60)
    assert code == 1 and time.monotonic() - signalled < 10, run.output[-3000:]
    line = run.error_line()
    assert "run stopped by SIGINT; nothing was registered or promoted" in line, line
    assert "RunInterrupted: run stopped by SIGINT" in run.output  # cut inside the step
    assert "step drift" not in run.output
    assert not alive(server)


def test_ctrl_c_during_register_names_the_version_it_made(project):
    run = Run(project, "retrain", *SHORT, embedded=True)
    run.wait_for("step register")
    signalled = ctrl_c(run)
    code = run.finish(120)
    assert code == 1 and time.monotonic() - signalled < 30, run.output[-3000:]
    made = versions(project)[-1]
    line = run.error_line()
    assert f"tinygpt version {made.version} was registered but not promoted" in line, line
    assert made.tags["promotion_decision"].startswith("not promoted: run stopped by SIGINT")
    assert no_champion(project)
    assert registry(project).get_run(made.run_id).info.status == "KILLED"


def test_a_second_ctrl_c_exits_at_once(project):
    run = Run(project, "retrain", *SHORT, embedded=True)
    server = server_of(project, run)
    run.wait_for("step register")
    ctrl_c(run)
    run.wait_for("send it again to stop now")  # as a person does: the first one is answered
    signalled = ctrl_c(run)
    code = run.finish(60)
    assert code == 128 + signal.SIGINT and time.monotonic() - signalled < 5, run.output[-3000:]
    assert run.output.strip().splitlines()[-1].startswith("tinygpt: SIGINT again: stopped")
    assert no_champion(project)
    wait_gone(server, 10)


def test_ctrl_c_inside_a_long_data_step_on_dask_returns_within_5_s(project, tmp_path):
    corpus = make_corpus(tmp_path / "16mb.txt", 16, as_folder=False)
    run = Run(project, "retrain", "--source", str(corpus), "--set", "data.chunk_mb=0.5",
              "--set", "validate.max_chars=1000000", *LONG, embedded=True)
    deadline = time.monotonic() + 300
    while "chunks on Dask" not in run.output.partition("step encode")[2]:
        assert run.proc.poll() is None and time.monotonic() < deadline, run.output[-3000:]
        time.sleep(0.2)
    time.sleep(1)  # inside the step, chunks in flight
    signalled = ctrl_c(run)
    code = run.finish(60)
    seconds = time.monotonic() - signalled
    print(f"\n{seconds:.1f} s from Ctrl-C inside encode (on Dask) to the exit")
    assert code == 1 and seconds < 5, (seconds, run.output[-3000:])
    assert "run stopped by SIGINT" in run.error_line()


@pytest.fixture(scope="module", autouse=True)
def no_stray_server_after_the_module(project):
    yield
    left = [json.loads(p.read_text()) for p in
            (project / ".tinygpt" / "prefect-servers").glob("*.json")]
    assert not [r for r in left if alive(r)], left
