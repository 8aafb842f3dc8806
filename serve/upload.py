"""Corpus uploads: a safe place to keep one, its validation, the vocabulary it gets (kept for
its run), and the retraining run it starts: on a Prefect deployment's worker when a Prefect
API is configured, else in the service's own project (serve.local_runs)."""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from collections.abc import AsyncIterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
UPLOAD_ID = re.compile(r"^[0-9a-f]{12}$")  # the prefix upload_path gives each kept upload
VOCABULARY = ".vocabulary.json"  # beside a kept upload: the settings its vocabulary was built with


class UploadTooLarge(Exception):
    """The body passed the upload limit; nothing of it was kept."""




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


async def save_upload(chunks: AsyncIterable[bytes], path: Path, limit: int) -> None:
    """Write the body to path as it arrives, counting its bytes, so that memory holds one chunk
    whatever the client sends (a chunked body has no Content-Length to refuse up front).

    Past `limit` bytes it stops reading and raises UploadTooLarge; on that or any other failure
    (a client that goes away) the partial file is deleted.
    """
    size = 0
    try:
        with path.open("xb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise UploadTooLarge
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


class InvalidUpload(ValueError):
    """The upload fails ingest or validation; the message names it as the client did."""


@contextmanager
def validated_upload(path: Path, filename: str, overrides: Sequence[str] = ()) -> Iterator[Any]:
    """Ingest + validate an uploaded corpus in a scratch folder, with the suite of the
    project's params.yaml (and overrides); yields the scratch Params, or raises InvalidUpload.

    The problem names the upload by the client's `filename`: the server's upload and scratch
    folders mean nothing to the client and are not its business.
    """
    from gpt.config import load_params, with_paths
    from tasks.ingest import ingest
    from tasks.validate import validate

    with tempfile.TemporaryDirectory() as scratch:
        params = with_paths(load_params(overrides=["data.kind=text", *overrides]),
                            **{name: f"{scratch}/{name}" for name in
                               ("raw", "validated", "tokenizer", "reports")})
        try:
            ingest(params, str(path))
            validate(params)
        except ValueError as err:
            # The report lives in the scratch folder, deleted on return: drop its mention.
            message = re.sub(rf"(; report: )?{re.escape(scratch)}\S*", "", str(err))
            raise InvalidUpload(message.replace(str(path), filename)
                                .replace(path.name, filename)) from None
        yield params


def validate_upload(path: Path, filename: str) -> str | None:
    """The problem with an uploaded corpus, or None when it passes validation."""
    try:
        with validated_upload(path, filename):
            return None
    except InvalidUpload as err:
        return str(err)


def build_tokenizer(path: Path, filename: str, overrides: Sequence[str]) -> dict[str, Any]:
    """ingest -> validate -> tokenize on an upload (the 000 write-up's build_tokenizer step):
    what the pipeline's tokenize step trains on it with these settings (the same digest), and
    how it cuts the corpus's start."""
    from gpt.tokenizer import load_tokenizer
    from tasks.tokenize import tokenize

    with validated_upload(path, filename, overrides) as params:
        built = tokenize(params)
        tokenizer = load_tokenizer(built["path"])
        head = path.read_text(encoding="utf-8")[:2000]
        ids = tokenizer.encode(head)
    return {"kind": built["kind"], "vocab_size": built["vocab_size"],
            "seconds": round(built["seconds"], 3), "digest": built["digest"],
            "bytes_per_token": round(len(head.encode()) / max(len(ids), 1), 3),
            "first_tokens": [tokenizer.decode([i]) for i in ids[:32]]}


def keep_vocabulary(path: Path, filename: str, overrides: Sequence[str],
                    built: dict[str, Any]) -> str:
    """Keep an upload and the settings its vocabulary was built with, for POST /train; its
    id."""
    upload_id = path.name[:12]
    (path.parent / f"{upload_id}{VOCABULARY}").write_text(json.dumps({
        "file": path.name, "filename": filename, "overrides": list(overrides),
        "digest": built["digest"], "vocab_size": built["vocab_size"]}), encoding="utf-8")
    return upload_id


def kept_upload(upload_dir: Path, upload_id: str) -> tuple[Path, list[str]]:
    """The kept upload with that id and its vocabulary's settings; KeyError when none is."""
    record = upload_dir / f"{upload_id}{VOCABULARY}"
    if not UPLOAD_ID.match(upload_id) or not record.is_file():
        raise KeyError(upload_id)
    kept = json.loads(record.read_text(encoding="utf-8"))
    path = upload_dir.resolve() / kept["file"]  # a worker on another host reads it too
    if not path.is_file():
        raise KeyError(upload_id)
    return path, kept["overrides"]


def prefect_api_set() -> bool:
    """Whether a Prefect API is configured (environment or profile)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


async def start_deployment_run(deployment: str, source: Path,
                               overrides: Sequence[str] = ()) -> dict[str, str]:
    """Create a run of the retraining deployment for the uploaded corpus, its overrides after
    the deployment's own; do not wait."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    async with get_client() as prefect:
        defaults = (await prefect.read_deployment_by_name(deployment)).parameters
    parameters = {"source": str(source),
                  "overrides": [*defaults.get("overrides", []), *overrides]}
    flow_run = await run_deployment(name=deployment, parameters=parameters, timeout=0)
    return {"id": str(flow_run.id), "state": flow_run.state.name if flow_run.state else "?",
            "where": "worker"}
