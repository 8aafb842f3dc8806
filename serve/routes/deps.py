"""What the routers share: the objects `create_app` keeps on `app.state`, and the served model."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from serve.generation import Gate, Metrics
from serve.model_holder import LoadedModel, ModelHolder


def get_holder(request: Request) -> ModelHolder:
    return request.app.state.holder


def get_holders(request: Request) -> dict[str, ModelHolder]:
    return request.app.state.holders


def get_gate(request: Request) -> Gate:
    return request.app.state.gate


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


HolderDep = Annotated[ModelHolder, Depends(get_holder)]
HoldersDep = Annotated[dict[str, ModelHolder], Depends(get_holders)]
GateDep = Annotated[Gate, Depends(get_gate)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def served(holder: ModelHolder, metrics: Metrics) -> LoadedModel:
    """The model being served, or a 503 saying whether it is loading or unavailable.

    Handlers call this themselves rather than declaring it a dependency: dependencies run
    before the body is validated, and a bad request must get its 422 even with no model.
    """
    loaded = holder.current
    if loaded is None:
        state = "loading" if holder.loading or holder.error is None else "unavailable"
        raise HTTPException(503, detail={"status": state, "error": holder.error})
    metrics.serving(loaded)
    return loaded


def chosen(holders: dict[str, ModelHolder], default: ModelHolder,
           name: str | None) -> ModelHolder:
    """The holder of the model a request names (None: the default), or a 422 listing them."""
    if name is None:
        return default
    if name not in holders:
        raise HTTPException(422, detail=[{
            "field": "model", "message": f"no served model {name!r}; this service serves "
            f"{', '.join(holders)}"}])
    return holders[name]


def field_of(error: dict) -> str | None:
    """The dotted field a validation error is about, without FastAPI's leading "body"."""
    return ".".join(str(p) for p in error.get("loc", ()) if p != "body") or None


def too_large(limit: int) -> JSONResponse:
    """The 413 for a body over `limit`, whether refused from its Content-Length or counted. The
    rest of that body is never read: the connection closes, so the client stops sending it
    (and the server does not read it to reach a next request)."""
    return JSONResponse({"detail": f"request body over the {limit}-byte limit"}, status_code=413,
                        headers={"Connection": "close"})
