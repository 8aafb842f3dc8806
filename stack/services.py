"""`tinygpt stack up | down | status | env`: the team's services on 127.0.0.1, state in .stack/.

    postgres  PostgreSQL 15 (Debian's), databases `mlflow` and `prefect`, data in .stack/pg
    s3        moto's S3 server, bucket `tinygpt` (MLflow artifacts under mlflow/, DVC under dvc/)
    mlflow    `mlflow server`: registry + tracking in PostgreSQL, artifacts proxied to S3
    prefect   `prefect server start` on PostgreSQL, the `tinygpt` process work pool and the
              deployments of prefect.yaml
    worker    `prefect worker start --pool tinygpt`: runs scheduled and on-demand retraining

Clients need only the variables of .stack/stack.env; the DVC remote `stack`
(s3://tinygpt/dvc) goes into .dvc/config.local. moto keeps objects in memory: `down` saves the
bucket to .stack/s3/ and `up` loads it back, so models and data outlive a restart (not a
kill -9 of the stack).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stack import remote
from stack.envfile import ENV_FILE, STACK_DIR, VARIABLES, env_file, read_env, write_env
from stack.processes import (
    HOST,
    StackError,
    alive,
    log_tail,
    pick_ports,
    port_open,
    record_of,
    spawn,
    stop,
    tree,
    wait_until,
)

PG_BIN = Path(os.environ.get("TINYGPT_PG_BIN", "/usr/lib/postgresql/15/bin"))
BIN = Path(sys.executable).parent
SERVICES = ("postgres", "s3", "mlflow", "prefect", "worker")
# Ports tried first (the tools' usual ones, PostgreSQL beside a system one); a taken port is
# replaced by a free one, and the ports a stack got are kept for its next start.
WANTED_PORTS = {"postgres": 5433, "s3": 9000, "mlflow": 5000, "prefect": 4200}
DATABASES = ("mlflow", "prefect")
BUCKET = "tinygpt"
POOL = "tinygpt"
GPU_POOL = "gpu"  # prefect.yaml's `gpu` deployment; a GPU host runs `tinygpt worker --pool gpu`
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "tinygpt", "AWS_SECRET_ACCESS_KEY": "tinygpt-stack",
                  "AWS_DEFAULT_REGION": "us-east-1"}
PIDS_FILE = "pids.json"
PORTS_FILE = "ports.json"
START_TIMEOUT = 180.0
# Runs work in workspaces of their own (prefect.yaml's pull steps), so they can run at once:
# the pool runs two, each worker one (a run uses every core of its host).
POOL_CONCURRENCY, WORKER_LIMIT = 2, 1
# A flow run sends a heartbeat every HEARTBEAT_SECONDS (Prefect's minimum); one silent for
# CRASH_AFTER_SECONDS lost its process (its worker's host died, a kill -9) and is marked
# Crashed by the server's automation, which frees its slot in the pool.
HEARTBEAT_SECONDS, CRASH_AFTER_SECONDS = 30, 60
ZOMBIE_AUTOMATION = "tinygpt: crash flow runs that stopped sending heartbeats"


def _print(line: str, end: str = "\n") -> None:
    # a closed pipe (`| head`) must not stop a start or a stop half-way
    with contextlib.suppress(OSError):
        print(line, end=end, flush=True)


class Stack:
    """The stack of one project folder (the current directory for the command line)."""

    def __init__(self, root: Path | None = None, out: Callable[..., None] = _print) -> None:
        self.root = (root or Path.cwd()).resolve()
        self.folder = self.root / STACK_DIR
        self.out = out
        self.state: dict[str, Any] = self._load(PIDS_FILE) or {}

    # -- state files ------------------------------------------------------------------------------

    def _load(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _save(self, name: str, data: dict[str, Any]) -> None:
        path = self.folder / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return self.state.setdefault("services", {})

    def _record(self, name: str, record: dict[str, Any]) -> None:
        self.services[name] = record
        self._save(PIDS_FILE, self.state)

    @property
    def ports(self) -> dict[str, int]:
        return self.state["ports"]

    def url(self, service: str) -> str:
        return f"http://{HOST}:{self.ports[service]}"

    def variables(self) -> dict[str, str]:
        """The clients' view of the stack: each tool's standard variables."""
        return {
            "MLFLOW_TRACKING_URI": self.url("mlflow"),
            "PREFECT_API_URL": f"{self.url('prefect')}/api",
            "AWS_ENDPOINT_URL": self.url("s3"),
            **S3_CREDENTIALS,
            "PGHOST": HOST,
            "PGPORT": str(self.ports["postgres"]),
            "PGUSER": "postgres",
            remote.VARIABLE: f"s3://{BUCKET}/dvc",
        }

    # -- status -----------------------------------------------------------------------------------

    def service_up(self, name: str) -> bool:
        record = self.services.get(name)
        if not alive(record):
            return False
        port = record.get("port")
        return port is None or port_open(int(port))

    def status_lines(self) -> list[str]:
        lines = []
        for name in SERVICES:
            record = self.services.get(name)
            where = {
                "postgres": lambda r: f"postgresql://postgres@{HOST}:{r['port']} "
                                      f"(databases {', '.join(DATABASES)})",
                "s3": lambda r: f"http://{HOST}:{r['port']} (bucket {BUCKET})",
                "mlflow": lambda r: f"http://{HOST}:{r['port']} (UI, tracking, registry)",
                "prefect": lambda r: f"http://{HOST}:{r['port']} (UI; API /api)",
                "worker": lambda r: f"pool {POOL} as {r.get('name', '?')}",
            }[name]
            if record is None:
                lines.append(f"{name:<9} down")
            elif self.service_up(name):
                lines.append(f"{name:<9} up    {where(record)}  pid {record['pid']}")
            else:
                lines.append(f"{name:<9} DOWN  (was {where(record)}, pid {record['pid']}; "
                             f"log {self._relative(record.get('log', ''))})")
        return lines

    def status(self) -> int:
        """One line per service; 0 when every service is up, 1 otherwise."""
        if not self.services:
            self.out("no stack here: everything runs embedded (`tinygpt stack up` starts one)")
        for line in self.status_lines():
            self.out(line)
        if self.services and env_file(self.root).is_file():
            self.out(f"env file  {ENV_FILE}")
        return 0 if all(self.service_up(name) for name in SERVICES) else 1

    def _relative(self, path: str) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return path

    # -- up ---------------------------------------------------------------------------------------

    def up(self) -> dict[str, str]:
        """Start every service (a running stack is left as it is); the env file's variables."""
        if not (self.root / "prefect.yaml").is_file() or not (self.root / ".dvc").is_dir():
            raise StackError(f"{self.root} is not a tinygpt project (prefect.yaml and .dvc/ "
                             "expected): run `tinygpt stack up` in the project's root")
        if self.services:
            down = [name for name in SERVICES if not self.service_up(name)]
            if not down:
                self.out("the stack is already up:")
                for line in self.status_lines():
                    self.out(f"  {line}")
                return read_env(self.root)
            return self._restart(down)
        if not (PG_BIN / "initdb").is_file():
            raise StackError(f"PostgreSQL 15 is not installed ({PG_BIN / 'initdb'} is missing): "
                             "`make stack-up` installs Debian's package (apt-get install "
                             "postgresql)")
        self.folder.mkdir(exist_ok=True)
        self.folder.chmod(0o755)
        (self.folder / "logs").mkdir(exist_ok=True)
        wanted = {**WANTED_PORTS, **(self._load(PORTS_FILE) or {})}
        self.state = {"root": str(self.root), "ports": pick_ports(wanted), "services": {},
                      "started": time.time()}
        self._save(PORTS_FILE, self.ports)
        self._save(PIDS_FILE, self.state)
        started = time.perf_counter()
        try:
            self._start(SERVICES)
            self._configure_dvc()
            write_env(self.variables(), self.root)
        except BaseException:
            self.out("stack up failed; stopping what it started")
            self.down(quiet=True)
            raise
        self.state["up_seconds"] = round(time.perf_counter() - started, 1)
        self._save(PIDS_FILE, self.state)
        self.out(f"stack up in {self.state['up_seconds']:.1f} s")
        self._print_places()
        return self.variables()

    def _start(self, names: Iterable[str]) -> None:
        """Start the named services, in the stack's order."""
        starters = {"postgres": self._start_postgres, "s3": self._start_s3,
                    "mlflow": self._start_mlflow, "prefect": self._start_prefect,
                    "worker": self._start_worker}
        for name in SERVICES:
            if name in names:
                self._step(f"starting {name}", starters[name])
                if name == "prefect":
                    self._step("applying prefect.yaml", self._deploy, done="done")

    def _restart(self, down: list[str]) -> dict[str, str]:
        """Start again the services that stopped (a crash, a reboot, a `kill`); the others keep
        running, and the clients' variables stay the same."""
        self.out(f"{', '.join(down)} down; starting {'it' if len(down) == 1 else 'them'} again")
        for name in down:
            record = self.services.pop(name)
            stop(record, timeout=5)  # what is left of it: a worker's orphaned flow run
        self._start(down)
        write_env(self.variables(), self.root)
        self.out("stack up")
        return self.variables()

    def _print_places(self) -> None:
        self.out(f"  MLflow UI    {self.url('mlflow')}")
        self.out(f"  Prefect UI   {self.url('prefect')}")
        self.out(f"  S3           {self.url('s3')} (bucket {BUCKET})")
        self.out(f"  PostgreSQL   postgresql://postgres@{HOST}:{self.ports['postgres']}")
        self.out(f"  DVC remote   {remote.NAME} = s3://{BUCKET}/dvc (default, .dvc/config.local)")
        self.out(f"  env file     {ENV_FILE} (tinygpt reads it; a shell: "
                 "eval \"$(tinygpt stack env)\")")

    def _step(self, what: str, start: Callable[[], str], done: str = "up") -> None:
        self.out(f"{what} ... ", end="")
        began = time.perf_counter()
        try:
            detail = start()
        except BaseException:
            self.out("failed")
            raise
        self.out(f"{done} in {time.perf_counter() - began:.1f} s ({detail})")

    def _log(self, name: str) -> Path:
        return self.folder / "logs" / f"{name}.log"

    def _client_env(self) -> dict[str, str]:
        """The environment of the stack's clients (deploy, the worker and its flow runs): the
        stack's variables win over the caller's."""
        return {**os.environ, **self.variables(),
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    # PostgreSQL ---------------------------------------------------------------------------------

    def _pg(self, *argv: str | Path) -> subprocess.CompletedProcess:
        """Run a PostgreSQL program; as the `postgres` user when we are root (the server
        refuses to run as root)."""
        as_postgres = ({"user": "postgres", "group": "postgres", "extra_groups": []}
                       if os.geteuid() == 0 else {})
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8"}
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env,
                              cwd=self.folder, timeout=120, **as_postgres)

    def _socket_dir(self) -> Path:
        """A folder for the server's Unix socket: .stack/pg-run, or a temporary folder when
        that path is too long for a socket name (107 bytes)."""
        folder = self.folder / "pg-run"
        if len(str(folder / f".s.PGSQL.{self.ports['postgres']}.lock")) < 100:
            folder.mkdir(exist_ok=True)
            return folder
        return Path(tempfile.mkdtemp(prefix="tinygpt-pg-"))

    def _start_postgres(self) -> str:
        data, log = self.folder / "pg", self._log("postgres")
        data.mkdir(exist_ok=True, mode=0o700)
        sockets = self._socket_dir()
        log.touch()
        if os.geteuid() == 0:
            for path in (data, sockets, log):
                shutil.chown(path, "postgres", "postgres")
            probe = self._pg("test", "-w", data)
            if probe.returncode != 0:
                raise StackError(f"PostgreSQL runs as the `postgres` user, who cannot write "
                                 f"{data}: make the project's parent folders searchable by "
                                 f"others (chmod o+x) or put the project elsewhere")
        data.chmod(0o700)
        if not (data / "PG_VERSION").is_file():
            done = self._pg(PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust",
                            "-E", "UTF8", "--locale=C.UTF-8")
            if done.returncode != 0:
                raise StackError(f"initdb failed: {done.stdout}{done.stderr}")
        port = self.ports["postgres"]
        done = self._pg(PG_BIN / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o",
                        f"-p {port} -k {sockets} -c listen_addresses={HOST}", "start")
        pid_file = data / "postmaster.pid"
        if done.returncode != 0 or not pid_file.is_file():
            raise StackError(f"PostgreSQL did not start: {done.stdout}{done.stderr}\n"
                             f"the end of {log}:\n{log_tail(log)}")
        pid = int(pid_file.read_text().split()[0])
        self._record("postgres", record_of(pid, port=port, log=log, data=data,
                                           socket_dir=sockets))
        import psycopg2

        connection = psycopg2.connect(host=HOST, port=port, user="postgres", dbname="postgres")
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                for name in DATABASES:
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cursor.fetchone() is None:
                        cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return f"postgresql://postgres@{HOST}:{port}, databases {', '.join(DATABASES)}"

    # S3 -----------------------------------------------------------------------------------------

    def s3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url("s3"),
                            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])

    def _start_s3(self) -> str:
        port = self.ports["s3"]
        record = spawn([str(BIN / "moto_server"), "-H", HOST, "-p", str(port)], os.environ,
                       self._log("s3"), self.root)
        self._record("s3", {**record, "port": port})
        wait_until("s3", lambda: port_open(port), record, START_TIMEOUT)
        client = self.s3_client()
        wait_until("s3", lambda: client.list_buckets() is not None, record, 30)
        if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=BUCKET)
        saved = self.folder / "s3" / BUCKET
        restored = 0
        for path in sorted(saved.rglob("*")) if saved.is_dir() else []:
            if path.is_file():
                client.upload_file(str(path), BUCKET, path.relative_to(saved).as_posix())
                restored += 1
        return (f"{self.url('s3')}, bucket {BUCKET}"
                + (f", {restored} objects loaded from {STACK_DIR}/s3" if restored else ""))

    def _save_bucket(self) -> int:
        """Copy the bucket to .stack/s3/ (moto keeps it in memory only)."""
        client = self.s3_client()
        fresh = self.folder / "s3.new"
        shutil.rmtree(fresh, ignore_errors=True)
        count = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for item in page.get("Contents", []):
                target = fresh / BUCKET / item["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(BUCKET, item["Key"], str(target))
                count += 1
        fresh.mkdir(exist_ok=True)
        old = self.folder / "s3"
        if old.exists():
            aside = self.folder / "s3.old"
            shutil.rmtree(aside, ignore_errors=True)
            old.rename(aside)
            fresh.rename(old)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            fresh.rename(old)
        return count

    # MLflow -------------------------------------------------------------------------------------

    def _start_mlflow(self) -> str:
        port, pg = self.ports["mlflow"], self.ports["postgres"]
        env = {**os.environ, **S3_CREDENTIALS, "AWS_ENDPOINT_URL": self.url("s3"),
               "MLFLOW_S3_ENDPOINT_URL": self.url("s3"),
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        record = spawn([str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(port),
                        "--workers", "1",
                        "--backend-store-uri", f"postgresql://postgres@{HOST}:{pg}/mlflow",
                        "--artifacts-destination", f"s3://{BUCKET}/mlflow"],
                       env, self._log("mlflow"), self.root)
        self._record("mlflow", {**record, "port": port})
        import httpx

        wait_until("mlflow", lambda: httpx.get(f"{self.url('mlflow')}/health",
                                               timeout=5).status_code == 200,
                   record, START_TIMEOUT)
        experiment = self._ensure_experiment()
        return f"{self.url('mlflow')}, experiment {experiment}, artifacts s3://{BUCKET}/mlflow"

    def _ensure_experiment(self) -> str:
        """Create the pipeline's experiment on the server, so its artifacts go through the
        server to S3 (the pipeline, finding none, would make one with a local folder)."""
        import httpx

        from gpt.config import load_params

        name = load_params().registry.experiment
        api = f"{self.url('mlflow')}/api/2.0/mlflow/experiments"
        found = httpx.get(f"{api}/get-by-name", params={"experiment_name": name}, timeout=30)
        if found.status_code == 200:
            return name
        created = httpx.post(f"{api}/create", json={"name": name}, timeout=30)
        if created.status_code != 200:
            raise StackError(f"could not create the MLflow experiment {name}: {created.text}")
        return name

    # Prefect ------------------------------------------------------------------------------------

    def _start_prefect(self) -> str:
        port, pg = self.ports["prefect"], self.ports["postgres"]
        env = {**os.environ,
               "PREFECT_API_DATABASE_CONNECTION_URL":
                   f"postgresql+asyncpg://postgres@{HOST}:{pg}/prefect",
               "PREFECT_HOME": str(self.folder / "prefect"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        record = spawn([str(BIN / "prefect"), "server", "start", "--host", HOST, "--port",
                        str(port)], env, self._log("prefect"), self.root)
        self._record("prefect", {**record, "port": port})
        import httpx

        wait_until("prefect", lambda: httpx.get(f"{self.url('prefect')}/api/health",
                                                timeout=5).status_code == 200,
                   record, START_TIMEOUT)
        return f"{self.url('prefect')}, database prefect"

    def _prefect(self, *args: str) -> str:
        done = subprocess.run([str(BIN / "prefect"), *args], env=self._client_env(),
                              cwd=self.root, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            raise StackError(f"prefect {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def _deploy(self) -> str:
        import httpx

        api = f"{self.url('prefect')}/api"
        for pool in (POOL, GPU_POOL):
            if httpx.get(f"{api}/work_pools/{pool}", timeout=30).status_code != 200:
                self._prefect("work-pool", "create", pool, "--type", "process")
        httpx.patch(f"{api}/work_pools/{POOL}", json={"concurrency_limit": POOL_CONCURRENCY},
                    timeout=30).raise_for_status()
        self._prefect("--no-prompt", "deploy", "--all")
        _ensure_zombie_automation(api)
        deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
        names = sorted(f"{d['name']}" for d in deployments)
        return (f"work pool {POOL} ({POOL_CONCURRENCY} runs at once, {WORKER_LIMIT} per "
                f"worker) and {GPU_POOL}, deployments {', '.join(names)}")

    def _reconcile_orphans(self) -> list[str]:
        """Mark Crashed the pool's runs that Prefect thinks active but whose process is gone.

        A worker killed with its flow runs (kill -9) reports nothing; the zombie automation
        marks such a run Crashed once its heartbeats stop, and a starting worker does it at
        once for the runs of this host. A run whose process still lives finishes and reports
        by itself."""
        import httpx

        api = f"{self.url('prefect')}/api"
        active = httpx.post(f"{api}/flow_runs/filter", timeout=30, json={
            "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}},
            "work_pools": {"name": {"any_": [POOL]}}}).json()
        crashed = []
        for flow_run in active:
            if _flow_run_process_alive(flow_run):
                continue
            state = {"type": "CRASHED", "name": "Crashed", "message":
                     "its worker stopped and took the run's process with it; found by "
                     "`tinygpt stack up` when it started a new worker"}
            httpx.post(f"{api}/flow_runs/{flow_run['id']}/set_state",
                       json={"state": state, "force": True}, timeout=30).raise_for_status()
            crashed.append(flow_run["name"])
        return crashed

    def _start_worker(self) -> str:
        import httpx

        crashed = self._reconcile_orphans()
        name = f"tinygpt-{socket.gethostname()}-{secrets.token_hex(3)}"
        # Its workspaces where `tinygpt gc` in this checkout looks (the `tinygpt worker` default)
        env = {**self._client_env(),
               **worker_environment(self.root / ".tinygpt" / "workspaces")}
        record = spawn([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", name,
                        "--limit", str(WORKER_LIMIT)], env, self._log("worker"), self.root)
        self._record("worker", {**record, "name": name})
        api = f"{self.url('prefect')}/api/work_pools/{POOL}/workers/filter"

        def online() -> bool:
            workers = httpx.post(api, json={}, timeout=10).json()
            return any(w["name"] == name and w["status"] == "ONLINE" for w in workers)

        wait_until("worker", online, record, START_TIMEOUT)
        return f"pool {POOL}, {name}" + (
            f"; marked Crashed, their worker gone: {', '.join(crashed)}" if crashed else "")

    # DVC ----------------------------------------------------------------------------------------

    def _configure_dvc(self) -> None:
        """The `stack` S3 remote as the default, and DVC's site cache, in .dvc/config.local
        (git-ignored); what was there before is put back by `down`."""
        self.state["dvc_before"] = remote.use_remote(
            self.root, f"s3://{BUCKET}/dvc", self.url("s3"), str(self.folder / "dvc-site-cache"))
        self._save(PIDS_FILE, self.state)

    # -- down -------------------------------------------------------------------------------------

    def down(self, quiet: bool = False) -> int:
        """Stop every service (the worker first, PostgreSQL last); no process stays behind."""
        if not self.services:
            env_file(self.root).unlink(missing_ok=True)
            if not quiet:
                self.out("no stack is up here")
            return 0
        env_file(self.root).unlink(missing_ok=True)  # from now on clients stay embedded
        left: list[str] = []
        for name in reversed(SERVICES):
            record = self.services.get(name)
            if record is None:
                continue
            if not alive(record) and not tree(record):
                self.out(f"{name} was not running")
                continue
            self.out(f"stopping {name} ... ", end="")
            began = time.perf_counter()
            note = ""
            if name == "s3" and self.service_up("s3"):
                try:
                    note = f", {self._save_bucket()} objects saved to {STACK_DIR}/s3"
                except Exception as err:  # stop it anyway, and say what was lost
                    note = f", bucket NOT saved: {err}"
            if name == "postgres" and alive(record):
                self._pg(PG_BIN / "pg_ctl", "-D", record["data"], "stop", "-m", "fast", "-w",
                         "-t", "60")
            remaining = stop(record)
            if remaining:
                left += [f"{name}: pid {p.pid}" for p in remaining]
                self.out(f"FAILED ({len(remaining)} processes left)")
            else:
                self.out(f"stopped in {time.perf_counter() - began:.1f} s{note}")
            if name == "postgres" and record.get("socket_dir", "").startswith(
                    tempfile.gettempdir()):
                shutil.rmtree(record["socket_dir"], ignore_errors=True)
        try:
            remote.drop_remote(self.root, self.state.get("dvc_before") or {})
        except Exception as err:
            left.append(f"dvc config.local not restored: {err}")
        if left:
            raise StackError("the stack did not stop whole: " + "; ".join(left))
        (self.folder / PIDS_FILE).unlink(missing_ok=True)
        self.state = {}
        if not quiet:
            self.out("stack down; tinygpt runs embedded again")
        return 0


def worker_environment(work_dir: Path) -> dict[str, str]:
    """What a worker (the stack's, or `tinygpt worker` on any host) runs with: its runs'
    workspaces under work_dir (tasks/workspace.py), heartbeats from every flow run, and a
    poll every 3 s (not Prefect's 10: a run starts at once)."""
    return {"TINYGPT_WORKSPACES": str(work_dir.resolve()),
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
            "PREFECT_WORKER_QUERY_SECONDS": "3"}


def _ensure_zombie_automation(api: str) -> None:
    """The server's automation that marks Crashed a flow run whose heartbeats stopped, on
    whichever host its worker ran: after a heartbeat, another one (or the run's end) must
    come within CRASH_AFTER_SECONDS."""
    import httpx

    found = httpx.post(f"{api}/automations/filter", json={}, timeout=30).json()
    if any(a["name"] == ZOMBIE_AUTOMATION for a in found):
        return
    ends = [f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled",
                                                      "Crashed")]
    httpx.post(f"{api}/automations/", timeout=30, json={
        "name": ZOMBIE_AUTOMATION, "enabled": True,
        "trigger": {"type": "event", "posture": "Proactive",
                    "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
                    "after": ["prefect.flow-run.heartbeat"],
                    "expect": ["prefect.flow-run.heartbeat", *ends],
                    "for_each": ["prefect.resource.id"], "threshold": 1,
                    "within": CRASH_AFTER_SECONDS},
        "actions": [{"type": "change-flow-run-state", "state": "CRASHED",
                     "message": f"no heartbeat for {CRASH_AFTER_SECONDS} s: its process is "
                                f"gone (its worker's host died, or it was killed)"}],
    }).raise_for_status()


def _flow_run_process_alive(flow_run: dict[str, Any]) -> bool:
    """Whether the process a process worker started for flow_run still runs it (its PID, and
    the flow run id in its environment, in case the PID was reused)."""
    import psutil

    pid = flow_run.get("infrastructure_pid")
    if not pid:  # never started: its worker went down while submitting it
        return False
    try:
        return psutil.Process(int(pid)).environ().get("PREFECT__FLOW_RUN_ID") == flow_run["id"]
    except (psutil.Error, ValueError):
        return False


def up(root: Path | None = None) -> dict[str, str]:
    return Stack(root).up()


def down(root: Path | None = None) -> int:
    return Stack(root).down()


def status(root: Path | None = None) -> int:
    return Stack(root).status()


def env_lines(root: Path | None = None) -> list[str]:
    from stack.envfile import export_lines

    values = read_env(root)
    if not values:
        raise StackError("no stack is up here (no .stack/stack.env): run `tinygpt stack up`")
    tools = shlex.quote(str(Path(sys.executable).parent))  # prefect, mlflow, dvc, dask
    return [*export_lines({k: values[k] for k in VARIABLES if k in values}),
            f'export PATH={tools}:"$PATH"']
