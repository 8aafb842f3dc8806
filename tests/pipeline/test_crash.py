"""Runs that survive kill -9, Ctrl-C and each other, tried for real: `tinygpt retrain` as a
process in a throwaway project, signals sent to it, its state read back from MLflow, Prefect,
DVC and the files. The processes share the session's Prefect server (the harness), as runs of
a team share theirs, instead of each starting a temporary one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from gpt.files import sha256_file, sha256_tree
from tests.pipeline.conftest import BIN, dvc

# Long enough to be caught mid-training: the first run is paused (SIGSTOP) while the second
# tries to start, so it cannot run to its end meanwhile, however fast the machine.
STEPS = 600
LONG = ["--set", f"train.max_steps={STEPS}", "--set", "train.eval_interval=50"]
RESUMED = re.compile(r"resuming an interrupted run from step (\d+)")
STAGING = Path("data/.model.staging")


class Run:
    """One `tinygpt` process in the project, in its own process group (as a terminal starts
    a command), output to a file. It reports to the session's Prefect server, or, embedded,
    to the one it starts itself as `make run` does."""

    def __init__(self, project: Path, *args: str, embedded: bool = False) -> None:
        self.log_path = project / f".run-{time.time_ns()}.log"
        from prefect.settings import PREFECT_API_URL

        env = {k: v for k, v in os.environ.items()
               if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL")}
        env["PREFECT_HOME"] = str(project / ".prefect")
        if not embedded:
            env["PREFECT_API_URL"] = PREFECT_API_URL.value()
        with open(self.log_path, "w") as out:
            self.proc = subprocess.Popen([str(BIN / "tinygpt"), *args], cwd=project, env=env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def error_line(self) -> str:
        """The one line the command ends with on failure."""
        errors = [line for line in self.output.splitlines()
                  if line.startswith("tinygpt: error: ")]
        assert len(errors) == 1, self.output[-3000:]
        return errors[0]

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.proc.poll() is None, f"exited early:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output[-3000:]}"
            time.sleep(0.2)

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def registry(project: Path) -> MlflowClient:
    """The project's store, its registry named too: otherwise MlflowClient takes the registry
    an earlier test set for this process."""
    store = f"sqlite:///{project / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=store, registry_uri=store)


def versions(project: Path) -> list:
    return registry(project).search_model_versions("name='tinygpt'")


def mlflow_runs(project: Path) -> list:
    client = registry(project)
    experiment = client.get_experiment_by_name("tinygpt")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])


def flow_run_state(flow_run_id: str) -> str:
    """The state of a flow run, as the Prefect server has it."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state.name


@pytest.fixture(scope="module")
def interrupted(project):
    """A run stopped by SIGINT mid-training, while a second run tried to start beside it."""
    first = Run(project, "retrain", *LONG)
    first.wait_for(f"step 100/{STEPS}")
    os.kill(first.proc.pid, signal.SIGSTOP)  # alive, holding the lock, not training
    second = Run(project, "retrain", *LONG)
    started = time.monotonic()
    second_code = second.finish(120)
    second_seconds = time.monotonic() - started
    os.kill(first.proc.pid, signal.SIGCONT)
    os.killpg(first.proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    signalled = time.monotonic()
    code = first.finish(120)
    return {"first": first, "code": code, "stop_seconds": time.monotonic() - signalled,
            "second": second, "second_code": second_code, "second_seconds": second_seconds}


def test_a_second_run_stops_at_once_naming_the_running_one(interrupted):
    second = interrupted["second"]
    assert interrupted["second_code"] == 1
    assert f"another run holds this project (pid {interrupted['first'].proc.pid}" in \
        second.error_line()
    assert interrupted["second_seconds"] < 30  # before Prefect or any step starts
    assert "step ingest" not in second.output


def test_ctrl_c_stops_the_run_within_seconds_and_registers_nothing(interrupted, project):
    first = interrupted["first"]
    assert interrupted["code"] == 1 and interrupted["stop_seconds"] < 30, first.output[-2000:]
    line = first.error_line()
    assert "run stopped by SIGINT" in line and "Run the same command again to resume" in line
    assert versions(project) == []
    run = mlflow_runs(project)[-1]
    assert run.info.status == "KILLED"
    assert flow_run_state(run.data.tags["prefect.flow_run_id"]) == "Cancelled"
    assert (STAGING / "latest" / "optimizer.safetensors").is_file()


@pytest.fixture(scope="module")
def killed_then_resumed(interrupted, project):
    """After the Ctrl-C: a rerun killed with SIGKILL (its whole process group) mid-training,
    then the same command once more, which resumes."""
    killed = Run(project, "retrain", *LONG)
    killed.wait_for("resuming an interrupted run from step")
    interrupted_at = int(RESUMED.search(killed.output)[1])
    past_an_eval = (interrupted_at // 50 + 2) * 50  # latest/ was rewritten at an eval since
    killed.wait_for(f"step {past_an_eval}/{STEPS}")
    os.killpg(killed.proc.pid, signal.SIGKILL)
    killed.finish()
    resumed = Run(project, "retrain", *LONG)
    code = resumed.finish()
    return {"killed": killed, "resumed": resumed, "code": code, "interrupted_at": interrupted_at,
            "weights": sha256_file("data/model/latest/model.safetensors")}


def test_kill_9_then_rerun_resumes_and_closes_the_dead_run(killed_then_resumed, project):
    resumed = killed_then_resumed["resumed"]
    assert killed_then_resumed["code"] == 0, resumed.output[-3000:]
    assert "took over the run lock left by a run that is gone" in resumed.output
    assert int(RESUMED.search(resumed.output)[1]) > killed_then_resumed["interrupted_at"]
    runs = mlflow_runs(project)
    killed_run = runs[-2]
    assert killed_run.info.status == "KILLED"
    assert flow_run_state(killed_run.data.tags["prefect.flow_run_id"]) == "Crashed"
    assert runs[-1].info.status == "FINISHED"
    assert [str(v.version) for v in versions(project)] == ["1"]


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(killed_then_resumed,
                                                                     project):
    fresh = Run(project, "retrain", *LONG, "--fresh")
    assert fresh.finish() == 0, fresh.output[-3000:]
    assert "resuming" not in fresh.output and "starting over (--fresh)" not in fresh.output
    assert sha256_file("data/model/latest/model.safetensors") == killed_then_resumed["weights"]


def test_kill_9_mid_register_leaves_no_half_made_version(killed_then_resumed, project):
    champion = registry(project).get_model_version_by_alias("tinygpt", "champion").version
    before = len(versions(project))
    run = Run(project, "retrain", "--set", "train.max_steps=20")
    run.wait_for("step register")
    os.killpg(run.proc.pid, signal.SIGKILL)
    run.finish()
    after = versions(project)
    assert all(v.tags.get("dvc_lock_digest") and v.tags.get("git_commit") for v in after)
    assert len(after) in (before, before + 1)
    assert registry(project).get_model_version_by_alias("tinygpt", "champion").version \
        == champion
    gc = Run(project, "gc")
    assert gc.finish() == 0
    assert "versions: none" in gc.output and "is RUNNING but process" in gc.output
    closed = Run(project, "gc", "--apply")
    assert closed.finish() == 0 and "marked KILLED" in closed.output
    assert mlflow_runs(project)[-1].info.status == "KILLED"


def test_a_failed_push_restores_lock_metrics_and_model_and_registers_nothing(
        killed_then_resumed, project):
    state = {"lock": sha256_file("dvc.lock"), "metrics": sha256_tree("metrics"),
             "model": sha256_tree("data/model"), "versions": len(versions(project))}
    remote = project.parent / f"{project.name}-remote"
    blocked = project.parent / "not-a-folder"
    blocked.write_text("a file where the remote should be")
    dvc("remote", "modify", "local", "url", str(blocked), cwd=project)
    try:
        run = Run(project, "retrain", "--set", "train.max_steps=20")
        assert run.finish() == 1
    finally:
        dvc("remote", "modify", "local", "url", str(remote), cwd=project)
    line = run.error_line()
    assert line.startswith("tinygpt: error: dvc push") and not line.endswith("failed: ")
    assert sha256_file("dvc.lock") == state["lock"]
    assert sha256_tree("metrics") == state["metrics"]
    assert sha256_tree("data/model") == state["model"]
    assert len(versions(project)) == state["versions"]
