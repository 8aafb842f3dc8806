"""The 000 write-up's chain, upload -> vocabulary -> train -> generate: `POST /build_tokenizer`
validates an upload and builds its vocabulary (with `keep=true` both stay, under an id);
`POST /train` starts a retraining run on a kept upload with that vocabulary; `GET
/runs/{run_id}` reports the run's state and progress, and the version it registered; the new
champion is then served to POST /generate. `POST /corpus` is upload and train in one request.

A run goes to the Prefect deployment's worker when a Prefect API is configured (a team stack),
else it runs in the service's own project as `tinygpt retrain` (serve.local_runs)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gpt.tokenizer import TOKENIZER_KINDS
from serve.local_runs import RunInProgress
from serve.routes.deps import too_large
from serve.settings import Settings
from serve.upload import (
    UPLOAD_ID,
    InvalidUpload,
    UploadTooLarge,
    build_tokenizer,
    keep_vocabulary,
    kept_upload,
    prefect_api_set,
    save_upload,
    start_deployment_run,
    upload_path,
    validate_upload,
)

router = APIRouter()


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    upload_id: str = Field(pattern=UPLOAD_ID.pattern)  # from POST /build_tokenizer?keep=true
    max_steps: int | None = Field(None, ge=1, le=1_000_000)  # None: params.yaml's


async def start_run(request: Request, source: Path, overrides: list[str]) -> JSONResponse:
    """A retraining run on source (202), on the worker or embedded; 409 while an embedded
    run is going, 503 when the Prefect API fails."""
    settings: Settings = request.app.state.settings
    try:
        if prefect_api_set():
            run = await start_deployment_run(settings.retrain_deployment, source, overrides)
        else:
            local = request.app.state.local_runs.start(source, overrides)
            run = {"id": local.id, "state": "Running", "where": "embedded"}
    except RunInProgress as err:
        return JSONResponse({"valid": True, "error": str(err)}, status_code=409)
    except Exception as err:
        return JSONResponse({"valid": True, "error": f"retraining unavailable: "
                             f"{type(err).__name__}: {err}"}, status_code=503)
    return JSONResponse({"valid": True, "run_id": run["id"], "state": run["state"],
                         "where": run["where"]}, status_code=202)


@router.post("/corpus")
async def upload_corpus(request: Request, filename: str = "corpus.txt") -> JSONResponse:
    """Keep the upload only when a run was started on it: that run reads the file later."""
    settings: Settings = request.app.state.settings
    settings.upload_dir.mkdir(parents=True, exist_ok=True)
    room = settings.max_upload_dir_bytes - folder_bytes(settings.upload_dir)
    limit = min(settings.max_upload_bytes, room)  # this upload's: the file's cap, or the room
    if room < min(settings.max_upload_bytes, int(request.headers.get("content-length", 1))):
        return JSONResponse({"detail": f"the upload folder is full: its accepted uploads fill "
                             f"{settings.max_upload_dir_bytes // 2**20} MB "
                             f"(--upload-folder-mb); remove old ones from "
                             f"{settings.upload_dir.name}/"}, status_code=413)
    path = upload_path(settings.upload_dir, filename)
    try:
        await save_upload(request.stream(), path, limit)
    except UploadTooLarge:
        return too_large(limit)
    answer = None
    try:
        problem = await asyncio.to_thread(validate_upload, path, filename)
        if problem is not None:
            return JSONResponse({"valid": False, "errors": problem}, status_code=422)
        answer = await start_run(request, path, [])
        return answer
    finally:
        if answer is None or answer.status_code != 202:
            path.unlink()


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


@router.post("/build_tokenizer")
async def build_tokenizer_route(
        request: Request, filename: str = "corpus.txt",
        kind: Annotated[str, Query(pattern=f"^({'|'.join(TOKENIZER_KINDS)})$")] = "bpe",
        vocab_size: Annotated[int, Query(ge=1, le=65535)] = 2048,
        min_frequency: Annotated[int | None, Query(ge=1)] = None,
        keep: bool = False) -> JSONResponse:
    """ingest -> validate -> tokenize on the body, with params.yaml's settings and these. The
    upload is deleted when the answer is sent, unless `keep`: then it stays with these
    settings under the answer's `upload_id`, for POST /train."""
    settings: Settings = request.app.state.settings
    settings.upload_dir.mkdir(parents=True, exist_ok=True)
    path = upload_path(settings.upload_dir, filename)
    overrides = [f"tokenizer.kind={kind}", f"tokenizer.vocab_size={vocab_size}"]
    if min_frequency is not None:
        overrides.append(f"tokenizer.min_frequency={min_frequency}")
    try:
        await save_upload(request.stream(), path, settings.max_upload_bytes)
    except UploadTooLarge:
        return too_large(settings.max_upload_bytes)
    kept = None
    try:
        built = await asyncio.to_thread(build_tokenizer, path, filename, overrides)
        if keep:
            kept = {"upload_id": keep_vocabulary(path, filename, overrides, built)}
    except InvalidUpload as err:
        return JSONResponse({"valid": False, "errors": str(err)}, status_code=422)
    except ValueError as err:  # the settings: a vocabulary too small for this kind, ...
        return JSONResponse({"detail": [{"field": "query", "message": str(err)}]},
                            status_code=422)
    finally:
        if kept is None:
            path.unlink(missing_ok=True)
    return JSONResponse({"valid": True, **built, **(kept or {})})


@router.post("/train")
async def train(body: TrainRequest, request: Request) -> JSONResponse:
    """A retraining run on a kept upload, with the vocabulary settings it was built with."""
    settings: Settings = request.app.state.settings
    try:
        path, overrides = kept_upload(settings.upload_dir, body.upload_id)
    except KeyError:
        raise HTTPException(404, detail=f"no kept upload {body.upload_id}: build its "
                            f"vocabulary first (POST /build_tokenizer?keep=true)") from None
    if body.max_steps is not None:
        overrides.append(f"train.max_steps={body.max_steps}")
    return await start_run(request, path, overrides)


@router.get("/runs/{run_id}")
async def run_state(request: Request, run_id: uuid.UUID) -> dict[str, Any]:
    """A run this service started, or one Prefect knows: 404 when neither has it; 503 when
    Prefect cannot be asked."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    local = request.app.state.local_runs.runs.get(str(run_id))
    if local is not None:
        return await asyncio.to_thread(local.state, served_alias(request.app.state.settings))
    if not prefect_api_set():
        raise HTTPException(404, detail="no such run") from None
    try:
        async with get_client() as prefect:
            flow_run = await prefect.read_flow_run(run_id)
            progress = await latest_progress(prefect, run_id)
    except ObjectNotFound:
        raise HTTPException(404, detail="no such run") from None
    except Exception as err:
        raise HTTPException(503, detail=f"Prefect API unreachable: {type(err).__name__}: {err}"
                            ) from None
    answer = {"run_id": str(run_id), "state": flow_run.state.name if flow_run.state else None,
              "final": bool(flow_run.state and flow_run.state.is_final()),
              "where": "worker", "progress": progress}
    if flow_run.state and flow_run.state.is_completed():
        answer["outcome"] = await outcome(request.app.state.settings, str(run_id))
    return answer


async def latest_progress(prefect, run_id: uuid.UUID) -> str | None:
    """The run's newest progress line from its Prefect logs: the step it is on ("step train"),
    or how far training is ("step 120/1000 | loss 3.9 | ... | 3m05s left")."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    logs = await prefect.read_logs(
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
        sort=LogSort.TIMESTAMP_DESC, limit=50)
    return next((entry.message for entry in logs if entry.message.startswith("step ")), None)


def served_alias(settings: Settings) -> str:
    """The alias the default model follows (champion when it names a version or a folder)."""
    from registry import parse_model_uri

    if not settings.model_uri.startswith("models:/"):
        return "champion"
    return parse_model_uri(settings.model_uri)[1] or "champion"


async def outcome(settings: Settings, run_id: str) -> dict[str, Any]:
    """The version a completed run registered and whether it became the served alias's."""
    from registry import parse_model_uri, registered_by

    name = parse_model_uri(settings.model_uri)[0]
    try:
        return {"model": name, **await asyncio.to_thread(registered_by, name, run_id,
                                                         served_alias(settings))}
    except Exception as err:  # the registry may be down; the run's state still stands
        return {"model": name, "error": f"{type(err).__name__}: {err}"}
