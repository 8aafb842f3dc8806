"""`GET /health` (the served model; 503 when degraded or without one), `GET /metrics`
(Prometheus) and the playground page at `GET /`."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serve.routes.deps import HolderDep, MetricsDep, served

router = APIRouter()
STATIC = Path(__file__).parent.parent / "static"


@router.get("/health")
async def health(holder: HolderDep, metrics: MetricsDep) -> JSONResponse:
    """200 "ok"; 503 "degraded" while the model served is not the one the URI names (its last
    refresh failed), so a monitor notices although generation goes on with the old one."""
    described = served(holder, metrics).describe()
    if holder.error is not None:
        return JSONResponse({"status": "degraded", "reason": holder.error, **described},
                            status_code=503)
    return JSONResponse({"status": "ok", **described})


@router.get("/metrics")
async def prometheus(holder: HolderDep, metrics: MetricsDep) -> Response:
    if holder.current is not None:
        metrics.serving(holder.current)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")
