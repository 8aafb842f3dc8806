"""Retraining runs the service starts itself when no Prefect server is configured: `tinygpt
retrain` as a child process in the service's project, with embedded Prefect, MLflow and DVC,
as `make run` runs it. One at a time (the project's run lock allows no more); each keeps its
output in a log file, whose newest `step ...` line is its progress, and its summary as JSON."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TINYGPT = Path(sys.executable).with_name("tinygpt")
# A progress line as the run's loggers print it: "... INFO tinygpt.flow: step train" or
# "... INFO tinygpt.train: step 40/200 | loss 3.91 | ...".
PROGRESS = re.compile(r"(?:^|[-:] )(step \S.*)$")
STOP_SECONDS = 30  # a run asked to stop (SIGINT) gets this long before it is killed


class RunInProgress(Exception):
    """A run the service started is still going: the project trains one model at a time."""


@dataclass
class LocalRun:
    id: str
    process: subprocess.Popen
    log: Path
    summary: Path

    def state(self, alias: str) -> dict[str, Any]:
        """Its state as GET /runs/{id} reports a Prefect run's: state, final, progress, and
        once completed the outcome (the version it registered, whether `alias` moved)."""
        code = self.process.poll()
        state = "Running" if code is None else "Completed" if code == 0 else "Failed"
        answer: dict[str, Any] = {"run_id": self.id, "state": state, "final": code is not None,
                                  "where": "embedded", "progress": self.progress()}
        if code == 0:
            answer["outcome"] = self.outcome(alias)
        elif code is not None:
            answer["error"] = self.last_line()
        return answer

    def lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8", errors="replace").splitlines()

    def progress(self) -> str | None:
        matches = (PROGRESS.search(line) for line in reversed(self.lines()))
        return next((m.group(1) for m in matches if m), None)

    def last_line(self) -> str:
        return next((line for line in reversed(self.lines()) if line.strip()), "no output")

    def outcome(self, alias: str) -> dict[str, Any]:
        summary = json.loads(self.summary.read_text(encoding="utf-8"))
        return {"model": summary["model"], "version": str(summary["version"]),
                "alias": alias, "alias_version": str(summary["champion"]),
                "promoted": summary["promoted"], "reason": summary["promotion"],
                "tokenizer_digest": summary.get("tokenizer_digest")}


class LocalRuns:
    """The runs this service started, by id; their logs and summaries in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runs: dict[str, LocalRun] = {}

    def start(self, source: Path, overrides: list[str]) -> LocalRun:
        """`tinygpt retrain --source SOURCE --set ...` in the service's folder; RunInProgress
        while an earlier one runs."""
        if any(run.process.poll() is None for run in self.runs.values()):
            raise RunInProgress("a retraining run started here is still going; wait for it")
        self.folder.mkdir(parents=True, exist_ok=True)
        run_id = str(uuid.uuid4())
        log, summary = self.folder / f"{run_id}.log", self.folder / f"{run_id}.json"
        command = [str(TINYGPT), "retrain", "--source", str(source), "--summary-json",
                   str(summary), *(arg for o in overrides for arg in ("--set", o))]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        self.runs[run_id] = LocalRun(run_id, process, log, summary)
        return self.runs[run_id]

    def stop(self) -> None:
        """Ask every running run to stop as Ctrl-C does (it promotes nothing), then wait."""
        running = [run.process for run in self.runs.values() if run.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGINT)
        for process in running:
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
