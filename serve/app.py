"""The tinygpt HTTP service: generation (plain and streamed), health, metrics, the web page,
and corpus upload that starts a retraining run through a Prefect deployment.

Start it with `tinygpt serve`; build it in tests with `create_app(Settings(...))`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline

from serve.generation import Gate, Metrics
from serve.model_holder import ModelHolder
from serve.routes import corpus, generate, openai, status
from serve.routes.deps import field_of, too_large
from serve.settings import Settings

__all__ = ["Settings", "create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service, its shared objects on `app.state`; the model loads when it starts."""
    settings = settings or Settings()
    # /docs and /redoc load Swagger UI's and ReDoc's scripts and styles from the service (the
    # assets fastapi-offline ships), not from a CDN as FastAPI's defaults do.
    app = FastAPIOffline(title="tinygpt", lifespan=_follow_model, static_url="/docs-assets")
    app.state.settings = settings
    holders = [ModelHolder(uri, settings.poll_seconds, settings.weights)
               for uri in settings.model_uris]
    app.state.holders = {holder.name: holder for holder in holders}
    if len(app.state.holders) < len(holders):
        raise ValueError(f"two of the models name the same registered model: "
                         f"{', '.join(settings.model_uris)}")
    app.state.holder = holders[0]  # the default: requests that name no model get it
    app.state.gate = Gate(settings.max_concurrency, settings.max_queue)
    app.state.metrics = Metrics()
    app.middleware("http")(_limit_and_observe)
    if settings.cors_origins:  # a front end served from elsewhere; none by default
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Content-Type"])
    app.exception_handler(RequestValidationError)(_invalid_request)
    for module in (generate, openai, status, corpus):
        app.include_router(module.router)
    return app


@asynccontextmanager
async def _follow_model(app: FastAPI) -> AsyncIterator[None]:
    for holder in app.state.holders.values():
        holder.start()
    yield
    for holder in app.state.holders.values():
        await holder.stop()


async def _limit_and_observe(request: Request,
                             call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Refuse an oversized body from its Content-Length before reading it (a chunked upload is
    counted as it is read, by `POST /corpus`); count and time every request by its route."""
    settings: Settings = request.app.state.settings
    metrics: Metrics = request.app.state.metrics
    started = time.perf_counter()
    length = request.headers.get("content-length")
    limit = (settings.max_upload_bytes if request.url.path == "/corpus"
             else settings.max_body_bytes)
    if length is not None and (not length.isdigit() or int(length) > limit):
        response: Response = too_large(limit)
    else:
        response = await call_next(request)
    route = request.scope.get("route")
    name = getattr(route, "path", "unmatched")
    metrics.requests.labels(name, str(response.status_code)).inc()
    metrics.latency.labels(name).observe(time.perf_counter() - started)
    return response


async def _invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """A 422 whose detail names each bad field (dotted, without the leading "body"); under
    /v1/, OpenAI's 400."""
    if request.url.path.startswith("/v1/"):
        return openai.invalid_body(list(err.errors()))
    detail = []
    for item in err.errors():
        detail.append({"field": field_of(item) or "body", "message": item.get("msg", "invalid")})
    return JSONResponse({"detail": detail}, status_code=422)
