"""`GET /health` (the served model, or 503), `GET /metrics` (Prometheus) and the playground
page at `GET /`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serve.routes.deps import HolderDep, MetricsDep, served

router = APIRouter()
STATIC = Path(__file__).parent.parent / "static"


@router.get("/health")
async def health(holder: HolderDep, metrics: MetricsDep) -> dict[str, Any]:
    return {"status": "ok", **served(holder, metrics).describe(), "error": holder.error}


@router.get("/metrics")
async def prometheus(holder: HolderDep, metrics: MetricsDep) -> Response:
    if holder.current is not None:
        metrics.version.labels(holder.current.name).set(float(holder.current.version))
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")
