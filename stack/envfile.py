"""The stack's one environment file, `.stack/stack.env`, in each tool's standard variables.

`tinygpt stack up` writes it and `tinygpt stack down` removes it, so while it exists the
stack is (meant to be) up. `KEY=VALUE` lines: a shell reads it with `set -a; . .stack/stack.env`,
and `tinygpt stack env` prints it as `export` lines. Nothing here imports a heavy library: the
command line reads this file before every command that talks to a service.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

STACK_DIR = Path(".stack")
ENV_FILE = STACK_DIR / "stack.env"
# The variables the file holds, in the order it lists them. Each is the tool's own: the same
# names point a client at managed PostgreSQL, S3 or a Prefect server instead. DVC has none for
# its remote, so the last one is ours (stack/remote.py).
VARIABLES = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
             "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "PGHOST", "PGPORT", "PGUSER",
             "TINYGPT_DVC_REMOTE")
# Set to 0/off/false to ignore a stack's env file (everything stays embedded).
OPT_OUT = "TINYGPT_STACK"


def env_file(root: Path | None = None) -> Path:
    return (root or Path.cwd()) / ENV_FILE


def read_env(root: Path | None = None) -> dict[str, str]:
    """The variables of the stack's env file; empty when there is no stack."""
    path = env_file(root)
    if not path.is_file():
        return {}
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip()
    return values


def write_env(values: dict[str, str], root: Path | None = None) -> Path:
    """Write the env file whole (a temporary file renamed into place)."""
    path = env_file(root)
    lines = ["# Written by `tinygpt stack up`; removed by `tinygpt stack down`.",
             "# `tinygpt` reads it (variables already set win); a shell: "
             f"set -a; . {ENV_FILE}; set +a"]
    lines += [f"{key}={values[key]}" for key in VARIABLES if key in values]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def apply_env(root: Path | None = None) -> dict[str, str]:
    """Set the env file's variables in os.environ unless already set; return those set.

    Nothing happens without a stack, or when TINYGPT_STACK is 0/off/false."""
    if os.environ.get(OPT_OUT, "").strip().lower() in ("0", "off", "false", "no"):
        return {}
    applied = {}
    for key, value in read_env(root).items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied


def export_lines(values: dict[str, str]) -> list[str]:
    """`export KEY=VALUE` lines for a POSIX shell."""
    return [f"export {key}={shlex.quote(value)}" for key, value in values.items()]
