"""`POST /corpus` validates an uploaded corpus and starts a retraining run on it;
`GET /runs/{run_id}` reports that run's state; `POST /build_tokenizer` shows the tokenizer an
upload would get, keeping nothing.

The 000 write-up's steps map here: /upload and /train are one request, POST /corpus (a run
reads its corpus itself), /build_tokenizer is POST /build_tokenizer, /generate is POST
/generate."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from gpt.tokenizer import TOKENIZER_KINDS
from serve.routes.deps import too_large
from serve.settings import Settings
from serve.upload import (
    InvalidUpload,
    PrefectNotConfigured,
    UploadTooLarge,
    build_tokenizer,
    require_prefect_api,
    save_upload,
    start_retraining,
    upload_path,
    validate_upload,
)

router = APIRouter()


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
    run = None
    try:
        problem = await asyncio.to_thread(validate_upload, path, filename)
        if problem is not None:
            return JSONResponse({"valid": False, "errors": problem}, status_code=422)
        try:
            run = await start_retraining(settings.retrain_deployment, path)
        except PrefectNotConfigured as err:
            return JSONResponse({"valid": True, "error": str(err)}, status_code=503)
        except Exception as err:
            return JSONResponse({"valid": True, "error": f"retraining unavailable: "
                                 f"{type(err).__name__}: {err}"}, status_code=503)
    finally:
        if run is None:
            path.unlink()
    return JSONResponse({"valid": True, "run_id": run["id"], "state": run["state"]},
                        status_code=202)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


@router.post("/build_tokenizer")
async def build_tokenizer_route(
        request: Request, filename: str = "corpus.txt",
        kind: Annotated[str, Query(pattern=f"^({'|'.join(TOKENIZER_KINDS)})$")] = "bpe",
        vocab_size: Annotated[int, Query(ge=1, le=65535)] = 2048,
        min_frequency: Annotated[int | None, Query(ge=1)] = None) -> JSONResponse:
    """ingest -> validate -> tokenize on the body, with params.yaml's settings and these; the
    upload and the tokenizer are deleted when the answer is sent."""
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
    try:
        built = await asyncio.to_thread(build_tokenizer, path, filename, overrides)
    except InvalidUpload as err:
        return JSONResponse({"valid": False, "errors": str(err)}, status_code=422)
    except ValueError as err:  # the settings: a vocabulary too small for this kind, ...
        return JSONResponse({"detail": [{"field": "query", "message": str(err)}]},
                            status_code=422)
    finally:
        path.unlink(missing_ok=True)
    return JSONResponse({"valid": True, **built})


@router.get("/runs/{run_id}")
async def run_state(request: Request, run_id: uuid.UUID) -> dict[str, Any]:
    """404 only when Prefect says the run does not exist; 503 when Prefect cannot be asked."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        require_prefect_api()
        async with get_client() as prefect:
            flow_run = await prefect.read_flow_run(run_id)
            progress = await latest_progress(prefect, run_id)
    except PrefectNotConfigured as err:
        raise HTTPException(503, detail=str(err)) from None
    except ObjectNotFound:
        raise HTTPException(404, detail="no such run") from None
    except Exception as err:
        raise HTTPException(503, detail=f"Prefect API unreachable: {type(err).__name__}: {err}"
                            ) from None
    answer = {"run_id": str(run_id), "state": flow_run.state.name if flow_run.state else None,
              "final": bool(flow_run.state and flow_run.state.is_final()),
              "progress": progress}
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


async def outcome(settings: Settings, run_id: str) -> dict[str, Any]:
    """The version a completed run registered and whether it became the served alias's."""
    from registry import parse_model_uri, registered_by

    name, alias, _ = parse_model_uri(settings.model_uri)
    try:
        return {"model": name, **await asyncio.to_thread(registered_by, name, run_id,
                                                         alias or "champion")}
    except Exception as err:  # the registry may be down; the run's state still stands
        return {"model": name, "error": f"{type(err).__name__}: {err}"}
