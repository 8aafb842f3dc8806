"""Corpus uploads: a safe place to keep one, its validation, and the retraining run it starts."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def upload_path(upload_dir: Path, filename: str) -> Path:
    """A fresh file inside upload_dir, whatever the client's file name says."""
    base = SAFE_NAME.sub("_", Path(filename.replace("\\", "/")).name).strip("._") or "corpus"
    suffix = ".jsonl" if base.endswith(".jsonl") else ".txt"
    stem = base.removesuffix(suffix)[:48] or "corpus"
    root = upload_dir.resolve()
    path = (root / f"{uuid.uuid4().hex[:12]}-{stem}{suffix}").resolve()
    if path.parent != root:
        raise ValueError("bad upload name")
    return path


def validate_upload(path: Path) -> str | None:
    """Ingest + validate an uploaded corpus in a scratch folder, with the suite of the
    project's params.yaml; the problem, or None."""
    import tempfile

    from gpt.config import load_params, with_paths
    from tasks.ingest import ingest
    from tasks.validate import validate

    with tempfile.TemporaryDirectory() as scratch:
        params = with_paths(load_params(overrides=["data.kind=text"]), raw=f"{scratch}/raw",
                            validated=f"{scratch}/validated", reports=f"{scratch}/reports")
        try:
            ingest(params, str(path))
            validate(params)
        except ValueError as err:
            return str(err)
    return None


async def start_retraining(deployment: str, source: Path) -> dict[str, str]:
    """Create a run of the retraining deployment for the uploaded corpus; do not wait."""
    from prefect.deployments import run_deployment

    flow_run = await run_deployment(name=deployment, parameters={"source": str(source)},
                                    timeout=0)
    return {"id": str(flow_run.id), "state": flow_run.state.name if flow_run.state else "?"}
