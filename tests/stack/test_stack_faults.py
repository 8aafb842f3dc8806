"""The team stack when parts of it fail: a server or the database stopped before or during a
run, the worker killed mid-run, the stack taken down with a run in flight. Each run fails
plainly or is marked so, nothing is half-registered, `champion` stays, and `tinygpt stack up`
brings back what stopped. Runs after test_stack.py, on its stack; the last test takes it down.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from stack.envfile import read_env
from stack.processes import alive, port_open, stop
from stack.services import CRASH_AFTER_SECONDS, HEARTBEAT_SECONDS, SERVICES
from tests.scratch import ROOT
from tests.stack.conftest import (
    BIN,
    LONG,
    OVERRIDES,
    StackUp,
    clean_env,
    ok,
    run,
    running_on_worker,
    sets,
    start_run,
    tinygpt,
    wait_for_run,
)


def restart(stack: StackUp, expected: str) -> str:
    """`tinygpt stack up` after a fault: it starts only what stopped."""
    out = ok(tinygpt("stack", "up", cwd=stack.root))
    assert f"{expected} down; starting it again" in out, out
    started = [line.split(" ... ")[0] for line in out.splitlines()
               if line.startswith("starting ")]
    assert started == [f"starting {expected}"], out
    return out


def error_line(result: subprocess.CompletedProcess) -> str:
    """A failed command's one line: exit 1, no traceback, the error last."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("tinygpt: error")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    print(f"\n{errors[0]}")
    return errors[0]


def test_mlflow_stopped_before_a_run_fails_it_at_once_in_one_line(stack: StackUp):
    champion, versions = stack.champion(), stack.versions()
    stop(stack.services()["mlflow"])
    began = time.perf_counter()
    line = error_line(tinygpt("retrain", *sets(OVERRIDES), cwd=stack.root))
    assert time.perf_counter() - began < 30
    assert f"the MLflow server {stack.env['MLFLOW_TRACKING_URI']} does not answer" in line
    assert "tinygpt stack status" in line
    restart(stack, "mlflow")
    assert (stack.champion(), stack.versions()) == (champion, versions)


def test_the_database_stopped_before_a_run_fails_it_at_once_in_one_line(stack: StackUp):
    champion, versions = stack.champion(), stack.versions()
    os.kill(stack.services()["postgres"]["pid"], signal.SIGINT)  # PostgreSQL's fast shutdown
    deadline = time.monotonic() + 30
    while port_open(stack.ports["postgres"]):
        assert time.monotonic() < deadline, "PostgreSQL did not stop"
        time.sleep(0.2)
    began = time.perf_counter()
    line = error_line(tinygpt("retrain", *sets(OVERRIDES), cwd=stack.root))
    assert time.perf_counter() - began < 30
    assert "the Prefect server" in line and "Database is not available" in line, line
    restart(stack, "postgres")
    assert (stack.champion(), stack.versions()) == (champion, versions)


def test_mlflow_stopped_during_a_run_fails_it_and_registers_nothing(stack: StackUp):
    champion, versions = stack.champion(), stack.versions()
    lock = stack.root / "dvc.lock"  # none yet: the worker's runs work in their own clones
    lock_before = lock.read_bytes() if lock.exists() else None
    proc, log = start_training(stack)
    try:
        lost = time.monotonic()
        stop(stack.services()["mlflow"])
        proc.wait(timeout=120)
        seconds = time.monotonic() - lost
    finally:
        if proc.poll() is None:
            proc.kill()
        restart(stack, "mlflow")
    last = last_line(proc, log)
    assert f"MLflow server {stack.env['MLFLOW_TRACKING_URI']}" in last, last
    print(f"\n{seconds:.1f} s from the loss to the exit")
    assert seconds < 30, seconds
    assert (stack.champion(), stack.versions()) == (champion, versions)
    assert (lock.read_bytes() if lock.exists() else None) == lock_before  # put back


def test_the_database_stopped_during_a_run_fails_it_in_seconds_naming_it(stack: StackUp):
    champion, versions = stack.champion(), stack.versions()
    proc, log = start_training(stack)
    try:
        lost = time.monotonic()
        os.kill(stack.services()["postgres"]["pid"], signal.SIGINT)  # a fast shutdown
        proc.wait(timeout=120)
        seconds = time.monotonic() - lost
    finally:
        if proc.poll() is None:
            proc.kill()
        restart(stack, "postgres")
    last = last_line(proc, log)
    assert "database" in last.lower() and "http://127.0.0.1:" in last, last
    print(f"\n{seconds:.1f} s from the loss to the exit")
    assert seconds < 30, seconds
    assert (stack.champion(), stack.versions()) == (champion, versions)


def start_training(stack: StackUp) -> tuple[subprocess.Popen, Path]:
    """A long `tinygpt retrain` on the stack, returned once it trains."""
    log = stack.root.parent / f"during-{time.time_ns()}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "retrain", *sets(LONG)],
                                cwd=stack.root, env=clean_env(), stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not re.search(r"training [\d.]+M parameters", log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
    return proc, log


def last_line(proc: subprocess.Popen, log: Path) -> str:
    """The one line a failed run ends with."""
    output = log.read_text()
    assert proc.returncode == 1, output[-3000:]
    last = output.strip().splitlines()[-1]
    print(f"\n{last}")
    assert last.startswith("tinygpt: error: "), output[-3000:]
    return last


def test_a_run_whose_worker_died_is_crashed_by_its_silence_and_gc_takes_its_workspace(
        stack: StackUp):
    """kill -9 of the worker and the run it started (a lost host): nothing reports, and no
    worker restarts, yet the server marks the run Crashed once its heartbeats stop, which
    frees its slot. Its workspace stays for a look; `tinygpt gc` lists it, then removes it."""
    api = stack.api
    champion, versions = stack.champion(), stack.versions()
    lost = start_run(api, LONG)
    running_on_worker(stack, lost)
    # The automation counts silence from a heartbeat: let the run's first one go out (it
    # follows RUNNING by a moment, later on a loaded host), or nothing ever marks it Crashed.
    time.sleep(5)
    processes = running_on_worker(stack, lost)  # the worker and the flow run it started
    for process in processes:  # the machine is lost: nothing gets to report
        process.kill()
    psutil.wait_procs(processes, timeout=10)
    killed = time.monotonic()
    crashed = wait_for_run(api, lost, timeout=CRASH_AFTER_SECONDS + HEARTBEAT_SECONDS + 30)
    print(f"\nworker and run killed: Crashed after {time.monotonic() - killed:.0f} s "
          f"(heartbeats every {HEARTBEAT_SECONDS} s, crashed after {CRASH_AFTER_SECONDS} s "
          f"without one)")
    assert crashed["state"]["type"] == "CRASHED", crashed["state"]
    assert "no heartbeat" in crashed["state"]["message"]
    assert (stack.champion(), stack.versions()) == (champion, versions)

    workspace = stack.root / ".tinygpt" / "workspaces" / lost
    assert (workspace / "project" / "params.yaml").is_file()
    listed = ok(tinygpt("gc", cwd=stack.root))
    assert f"workspace {workspace} (flow run {lost}, CRASHED" in listed, listed
    assert workspace.exists()  # a dry run
    assert "; removed" in ok(tinygpt("gc", "--apply", cwd=stack.root))
    assert not workspace.exists()

    restart(stack, "worker")
    rerun = wait_for_run(api, start_run(api, OVERRIDES), timeout=300)
    assert rerun["state"]["name"] == "Completed", (
        stack.root / ".stack" / "logs" / "worker.log").read_text()[-4000:]


def test_down_leaves_no_process_behind(stack: StackUp):
    # A long run in progress on the worker: `down` stops it too (it gets SIGTERM first).
    api = stack.api
    services = stack.services()
    running_on_worker(stack, start_run(api, LONG))
    ok(tinygpt("stack", "down", cwd=stack.root))
    for name, record in services.items():
        assert not alive(record), f"{name} (pid {record['pid']}) still runs"
    for name, port in stack.ports.items():
        assert not port_open(port), f"{name}'s port {port} still answers"
    inside = []
    for process in psutil.process_iter():
        try:
            if process.cwd().startswith(str(stack.root)):
                inside.append(f"{process.pid} {' '.join(process.cmdline())}")
        except psutil.Error:
            continue
    assert not inside, inside  # flow runs, servers, PostgreSQL: none works in the project now

    # Back to embedded: no env file, DVC's default remote is the project's own again.
    assert read_env(stack.root) == {}
    assert ok(run(str(BIN / "dvc"), "remote", "default", cwd=stack.root)).strip() == "local"
    status = tinygpt("stack", "status", cwd=stack.root)
    assert status.returncode == 1
    assert [line.split()[:2] for line in status.stdout.splitlines()[1:]] == [
        [name, "down"] for name in SERVICES]


