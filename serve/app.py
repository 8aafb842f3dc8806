"""The tinygpt HTTP service: generation (plain and streamed), health, metrics, the web page,
and corpus upload that starts a retraining run through a Prefect deployment.

Start it with `tinygpt serve`; build it in tests with `create_app(Settings(...))`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from gpt.generate import SamplingParams, decode_stream, encode_prompt, iter_tokens
from gpt.sft import prompt_ids
from serve.registry import LoadedModel, ModelHolder

log = logging.getLogger("tinygpt.serve")
STATIC = Path(__file__).parent / "static"
MAX_PROMPT_CHARS = 8000


@dataclass
class Settings:
    model_uri: str = "models:/tinygpt@champion"
    poll_seconds: float = 10.0          # how often the alias is checked
    max_concurrency: int = 2            # generations running at once
    max_queue: int = 8                  # requests allowed to wait for a slot; more get 429
    max_body_bytes: int = 64 * 1024     # JSON requests
    max_upload_bytes: int = 5 * 1024 * 1024
    upload_dir: Path = Path("uploads")
    retrain_deployment: str = "retrain/on-demand"


StopString = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class GenerateRequest(BaseModel):
    """Every field bounded; unknown fields and wrong types are refused, never coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int = Field(100, ge=1, le=1024)
    temperature: float = Field(0.8, ge=0.0, le=5.0)
    top_k: int | None = Field(50, ge=1, le=65535)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, ge=0.5, le=5.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: list[StopString] = Field(default_factory=list, max_length=8)
    # "completion": the prompt is wrapped as <|prompt|> ... <|completion|> for fine-tuned models
    mode: Literal["text", "completion"] = "text"

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              top_k=self.top_k, top_p=self.top_p,
                              repetition_penalty=self.repetition_penalty, seed=self.seed,
                              stop=tuple(self.stop))


class Busy(Exception):
    """Every generation slot is taken and the queue is full."""


class Gate:
    """At most max_active generations at once, at most max_waiting waiting for a slot."""

    def __init__(self, max_active: int, max_waiting: int) -> None:
        self._slots = asyncio.Semaphore(max_active)
        self.max_waiting = max_waiting
        self.waiting = 0

    def full(self) -> bool:
        return self._slots.locked() and self.waiting >= self.max_waiting

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.full():
            raise Busy
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tinygpt_requests", "HTTP requests", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("tinygpt_request_seconds", "request latency", ["route"],
                                 registry=self.registry,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
        self.tokens = Counter("tinygpt_generated_tokens", "tokens generated",
                              registry=self.registry)
        self.version = Gauge("tinygpt_model_version", "registry version being served",
                             ["model"], registry=self.registry)


class Generation:
    """One generation: text pieces as they are decided, plus counts and timings."""

    def __init__(self, loaded: LoadedModel, request: GenerateRequest) -> None:
        self.loaded = loaded
        self.params = request.sampling()
        self.prompt = request.prompt
        if request.mode == "completion":
            ids = prompt_ids(loaded.tokenizer, request.prompt)  # ValueError without controls
            self.idx = torch.tensor([ids], dtype=torch.long)
        else:
            self.idx = encode_prompt(loaded.tokenizer, request.prompt)
        self.cancelled = threading.Event()
        self.completion_tokens = 0
        self.started = time.perf_counter()
        self.first_piece_at: float | None = None

    @property
    def prompt_tokens(self) -> int:
        return int(self.idx.size(1))

    def _token_ids(self) -> Iterator[int]:
        eot = self.loaded.tokenizer.special_tokens.get("<|endoftext|>")
        stop_ids = () if eot is None else (eot,)
        for token in iter_tokens(self.loaded.model, self.idx, self.params, stop_ids):
            token_id = int(token.item())
            if self.cancelled.is_set() or token_id in stop_ids:
                return
            self.completion_tokens += 1
            yield token_id

    def pieces(self) -> Iterator[str]:
        for piece in decode_stream(self._token_ids(), self.loaded.tokenizer, self.params.stop):
            if self.first_piece_at is None:
                self.first_piece_at = time.perf_counter()
            yield piece

    def stats(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        first = (self.first_piece_at or time.perf_counter()) - self.started
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "model": self.loaded.name, "version": self.loaded.version,
                "seconds": round(seconds, 4), "first_piece_seconds": round(first, 4),
                "tokens_per_s": round(self.completion_tokens / max(seconds, 1e-9), 2)}


def _field_errors(err: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for item in err.errors():
        loc = [str(p) for p in item.get("loc", ()) if p != "body"]
        out.append({"field": ".".join(loc) or "body", "message": item.get("msg", "invalid")})
    return out


def _sse(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n"


SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    holder = ModelHolder(settings.model_uri, settings.poll_seconds)
    gate = Gate(settings.max_concurrency, settings.max_queue)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        holder.start()
        yield
        await holder.stop()

    app = FastAPI(title="tinygpt", lifespan=lifespan)
    app.state.holder, app.state.settings, app.state.metrics = holder, settings, metrics

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        length = request.headers.get("content-length")
        limit = (settings.max_upload_bytes if request.url.path == "/corpus"
                 else settings.max_body_bytes)
        if length is not None and (not length.isdigit() or int(length) > limit):
            response: Response = JSONResponse(
                {"detail": f"request body over the {limit}-byte limit"}, status_code=413)
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        metrics.requests.labels(name, str(response.status_code)).inc()
        metrics.latency.labels(name).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _field_errors(err)}, status_code=422)

    def served() -> LoadedModel:
        loaded = holder.current
        if loaded is None:
            state = "loading" if holder.loading or holder.error is None else "unavailable"
            raise HTTPException(503, detail={"status": state, "error": holder.error})
        metrics.version.labels(loaded.name).set(float(loaded.version))
        return loaded

    def start_generation(body: GenerateRequest) -> Generation:
        loaded = served()
        try:
            generation = Generation(loaded, body)
        except ValueError as err:
            raise HTTPException(422, detail=[{"field": "mode", "message": str(err)}]) from None
        block = loaded.model.config.block_size
        if generation.prompt_tokens > block:
            raise HTTPException(422, detail=[{
                "field": "prompt", "message": f"prompt is {generation.prompt_tokens} tokens; "
                f"the model reads at most {block}"}])
        return generation

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **served().describe(), "error": holder.error}

    @app.post("/generate")
    async def generate(body: GenerateRequest) -> dict[str, Any]:
        generation = start_generation(body)
        try:
            async with gate.slot():
                text = await asyncio.to_thread(lambda: "".join(generation.pieces()))
        except Busy:
            raise HTTPException(429, detail="too many requests; retry shortly") from None
        metrics.tokens.inc(generation.completion_tokens)
        return {"text": text, **generation.stats()}

    @app.post("/generate/stream")
    async def generate_stream(body: GenerateRequest, request: Request) -> StreamingResponse:
        generation = start_generation(body)
        if gate.full():
            raise HTTPException(429, detail="too many requests; retry shortly")

        async def events() -> AsyncIterator[str]:
            try:
                async with gate.slot():
                    pieces = generation.pieces()
                    while True:
                        piece = await asyncio.to_thread(next, pieces, None)
                        if piece is None:
                            break
                        if await request.is_disconnected():
                            return
                        yield _sse("piece", {"text": piece})
                    yield _sse("done", generation.stats())
            except Busy:
                yield _sse("error", {"detail": "too many requests; retry shortly"})
            finally:
                generation.cancelled.set()
                metrics.tokens.inc(generation.completion_tokens)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        if holder.current is not None:
            metrics.version.labels(holder.current.name).set(float(holder.current.version))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/corpus")
    async def upload_corpus(request: Request, filename: str = "corpus.txt") -> JSONResponse:
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

    @app.get("/runs/{run_id}")
    async def run_state(run_id: uuid.UUID) -> dict[str, Any]:
        from prefect.client.orchestration import get_client

        try:
            async with get_client() as prefect:
                flow_run = await prefect.read_flow_run(run_id)
        except Exception as err:
            raise HTTPException(404, detail=f"no such run ({type(err).__name__})") from None
        return {"run_id": str(run_id), "state": flow_run.state.name if flow_run.state else None,
                "final": bool(flow_run.state and flow_run.state.is_final())}

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


def validate_upload(path: Path) -> str | None:
    """Ingest + validate an uploaded corpus in a scratch folder; the problem, or None."""
    import tempfile

    from tasks.ingest import ingest
    from tasks.validate import validate

    with tempfile.TemporaryDirectory() as scratch:
        params = {"paths": {"raw": f"{scratch}/raw", "validated": f"{scratch}/validated",
                            "reports": f"{scratch}/reports"}}
        try:
            ingest(params, str(path))
            validate(params)
        except ValueError as err:
            return str(err)
    return None


async def start_retraining(deployment: str, source: Path) -> dict[str, str]:
    """Create a run of the retraining deployment for the uploaded corpus; do not wait."""
    from prefect.deployments import run_deployment

    flow_run = await run_deployment(name=deployment, parameters={"source": str(source)},
                                    timeout=0)
    return {"id": str(flow_run.id), "state": flow_run.state.name if flow_run.state else "?"}
