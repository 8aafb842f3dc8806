"""The tinygpt HTTP service: generation (plain and streamed), health, metrics, the web page,
and the corpus chain (upload, vocabulary, a retraining run on a Prefect deployment's worker or
in the service's own project).

Start it with `tinygpt serve`; build it in tests with `create_app(Settings(...))`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from serve.generation import Gate, Metrics
from serve.local_runs import LocalRuns
from serve.middleware import CapBody, Observe
from serve.model_holder import ModelHolder
from serve.routes import corpus, generate, openai, status
from serve.routes.deps import field_of
from serve.settings import Settings

__all__ = ["Settings", "create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service, its shared objects on `app.state`; the model loads when it starts."""
    settings = settings or Settings()
    # /docs and /redoc load Swagger UI's and ReDoc's scripts and styles from the service (the
    # assets fastapi-offline ships), not from a CDN as FastAPI's defaults do.
    app = FastAPIOffline(title="tinygpt", lifespan=_follow_model, static_url="/docs-assets")
    app.state.settings = settings
    holders = [ModelHolder(uri, settings.poll_seconds, settings.weights, settings.compile)
               for uri in settings.model_uris]
    app.state.holders = {holder.name: holder for holder in holders}
    if len(app.state.holders) < len(holders):
        raise ValueError(f"two of the models name the same registered model: "
                         f"{', '.join(settings.model_uris)}")
    app.state.holder = holders[0]  # the default: requests that name no model get it
    app.state.gate = Gate(settings.max_concurrency, settings.max_queue)
    app.state.metrics = Metrics()
    app.state.local_runs = LocalRuns(settings.upload_dir / "runs")
    # The last added runs first: CORS, then Observe (which so counts CapBody's 413s).
    app.add_middleware(CapBody, limit_for=settings.body_limit)
    app.add_middleware(Observe, metrics=app.state.metrics)
    if settings.cors_origins:  # a front end served from elsewhere; none by default
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Content-Type"])
    app.exception_handler(RequestValidationError)(_invalid_request)
    app.exception_handler(Exception)(_server_error)
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
    await asyncio.to_thread(app.state.local_runs.stop)  # they promote nothing


async def _invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """A 422 whose detail names each bad field (dotted, without the leading "body"); under
    /v1/, OpenAI's 400."""
    if request.url.path.startswith("/v1/"):
        return openai.invalid_body(list(err.errors()))
    detail = []
    for item in err.errors():
        detail.append({"field": field_of(item) or "body", "message": item.get("msg", "invalid")})
    return JSONResponse({"detail": detail}, status_code=422)


async def _server_error(request: Request, err: Exception) -> JSONResponse:
    """The 500 for an exception no route handled, as JSON (under /v1/, OpenAI's shape) naming
    its type only: the cause, with its traceback, goes to the service's log, not to clients."""
    message = f"internal error ({type(err).__name__}); the service's log has its cause"
    if request.url.path.startswith("/v1/"):
        return openai.OpenAIError(500, message).response()
    return JSONResponse({"detail": message}, status_code=500)
