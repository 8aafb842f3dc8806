"""`GET /health` (the default model; 503 when degraded or without one), `GET /models` (every
served model), `GET /metrics` (Prometheus) and the playground page at `GET /`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serve.model_holder import ModelHolder
from serve.routes.deps import HolderDep, HoldersDep, MetricsDep, served

router = APIRouter()
STATIC = Path(__file__).parent.parent / "static"


@router.get("/health")
async def health(holder: HolderDep, metrics: MetricsDep) -> JSONResponse:
    """200 "ok"; 503 "degraded" while the model served is not the one the URI names (its last
    refresh failed, or that version failed check_model, which runs on every version before it
    is served), so a monitor notices although generation goes on with the old one."""
    described = served(holder, metrics).describe()
    if holder.error is not None:
        return JSONResponse({"status": "degraded", "reason": holder.error, **described},
                            status_code=503)
    return JSONResponse({"status": "ok", **described})


@router.get("/models")
async def models(holders: HoldersDep) -> dict[str, list[dict]]:
    """Each served model as /health describes it, the default first; one still loading or
    unavailable says so instead, and one degraded says why (as /health does for the default)."""
    return {"models": [listed(holder) for holder in holders.values()]}


def listed(holder: ModelHolder) -> dict[str, Any]:
    loaded = holder.current
    if loaded is None:
        return {"model": holder.name, "status": "loading" if holder.error is None
                else "unavailable", "error": holder.error}
    if holder.error is not None:
        return {**loaded.describe(), "status": "degraded", "reason": holder.error}
    return loaded.describe()


@router.get("/metrics")
async def prometheus(holders: HoldersDep, metrics: MetricsDep) -> Response:
    for each in holders.values():
        if each.current is not None:
            metrics.serving(each.current)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")
