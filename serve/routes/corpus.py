"""`POST /corpus` validates an uploaded corpus and starts a retraining run on it;
`GET /runs/{run_id}` reports that run's state."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from serve.settings import Settings
from serve.upload import start_retraining, upload_path, validate_upload

router = APIRouter()


@router.post("/corpus")
async def upload_corpus(request: Request, filename: str = "corpus.txt") -> JSONResponse:
    settings: Settings = request.app.state.settings
    data = await request.body()
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, detail="upload over the size limit")
    settings.upload_dir.mkdir(parents=True, exist_ok=True)
    path = upload_path(settings.upload_dir, filename)
    path.write_bytes(data)
    problem = await asyncio.to_thread(validate_upload, path)
    if problem is not None:
        return JSONResponse({"valid": False, "errors": problem}, status_code=422)
    try:
        run = await start_retraining(settings.retrain_deployment, path)
    except Exception as err:
        return JSONResponse({"valid": True, "error": f"retraining unavailable: {err}"},
                            status_code=503)
    return JSONResponse({"valid": True, "run_id": run["id"], "state": run["state"]},
                        status_code=202)


@router.get("/runs/{run_id}")
async def run_state(run_id: uuid.UUID) -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    try:
        async with get_client() as prefect:
            flow_run = await prefect.read_flow_run(run_id)
    except Exception as err:
        raise HTTPException(404, detail=f"no such run ({type(err).__name__})") from None
    return {"run_id": str(run_id), "state": flow_run.state.name if flow_run.state else None,
            "final": bool(flow_run.state and flow_run.state.is_final())}
