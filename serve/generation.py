"""Generation without HTTP: the request model, one generation's pieces and stats, the gate that
bounds how many run at once, and the Prometheus metrics the service keeps."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from gpt.config import TUNABLE_SAMPLING
from gpt.generate import SamplingParams, decode_stream, encode_prompt, iter_tokens
from gpt.sft import PROMPT, prompt_ids
from serve.model_holder import LoadedModel

MAX_PROMPT_CHARS = 8000
DEFAULTS = SamplingParams()  # what a request leaves out (the page starts from them too)
log = logging.getLogger("tinygpt.serve")

StopString = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class GenerateRequest(BaseModel):
    """Every field bounded; unknown fields and wrong types are refused, never coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int = Field(DEFAULTS.max_new_tokens, ge=1, le=1024)
    temperature: float = Field(DEFAULTS.temperature, ge=0.0, le=5.0)
    top_k: int | None = Field(DEFAULTS.top_k, ge=1, le=65535)
    top_p: float | None = Field(DEFAULTS.top_p, gt=0.0, le=1.0)
    repetition_penalty: float = Field(DEFAULTS.repetition_penalty, ge=0.5, le=5.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: list[StopString] = Field(default_factory=list, max_length=8)
    # "completion": the prompt is wrapped as <|prompt|> ... <|completion|> (fine-tuned models);
    # None: completion for a model whose tokenizer has those control tokens, else text.
    mode: Literal["text", "completion"] | None = None
    # The tokens the model attends to, prompt and answer: a window sliding over the last
    # context_tokens (None: the model's block size).
    context_tokens: int | None = Field(DEFAULTS.context_tokens, ge=1, le=65535)
    model: str | None = Field(None, max_length=1000)  # a served model's name; None: the default

    def sampling(self, model_defaults: Mapping[str, Any]) -> SamplingParams:
        """The request's sampling; a tunable setting it leaves out takes the served model's
        default (its recipe's choice)."""
        chosen = {name: getattr(self, name) for name in TUNABLE_SAMPLING}
        chosen.update({name: value for name, value in model_defaults.items()
                       if name in TUNABLE_SAMPLING and name not in self.model_fields_set})
        return SamplingParams(**chosen, seed=self.seed, stop=tuple(self.stop),
                              context_tokens=self.context_tokens)


def failed(err: Exception) -> str:
    """What a client is told of a generation that raised once its answer had started: the
    exception's type; the service's log gets the traceback (a client has no use for it)."""
    log.error("generation failed", exc_info=err)
    return f"generation failed ({type(err).__name__}); the service's log has its cause"


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
    """The service's Prometheus metrics, in a registry of their own."""

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

    def serving(self, loaded: LoadedModel) -> None:
        """Record the served version (a checkpoint folder has none to record)."""
        if loaded.version.isdigit():
            self.version.labels(loaded.name).set(float(loaded.version))


class Generation:
    """One generation: text pieces as they are decided, plus counts and timings."""

    def __init__(self, loaded: LoadedModel, request: GenerateRequest) -> None:
        self.loaded = loaded
        self.params = request.sampling(loaded.sampling)
        self.prompt = request.prompt
        self.mode = request.mode or (
            "completion" if PROMPT in loaded.tokenizer.special_tokens else "text")
        if self.mode == "completion":
            ids = prompt_ids(loaded.tokenizer, request.prompt)  # ValueError without controls
            self.idx = torch.tensor([ids], dtype=torch.long)
        else:
            self.idx = encode_prompt(loaded.tokenizer, request.prompt)
        if request.context_tokens is not None:
            self.idx = self.idx[:, -request.context_tokens:]
        # A completion-mode answer the fallback checks as a whole: it comes in one piece.
        self.fallback = loaded.fallback if self.mode == "completion" else None
        self.fell_back = False
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
        pieces = decode_stream(self._token_ids(), self.loaded.tokenizer, self.params.stop)
        if self.fallback is not None:
            pieces = iter([self._checked("".join(pieces))])
        for piece in pieces:
            if self.first_piece_at is None:
                self.first_piece_at = time.perf_counter()
            yield piece

    def _checked(self, answer: str) -> str:
        """The answer, or the fallback's when it is degenerate (a cancelled one is kept)."""
        if self.cancelled.is_set():
            return answer
        answer, self.fell_back = self.fallback.answer(self.prompt, answer)
        return answer

    def stats(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        first = (self.first_piece_at or time.perf_counter()) - self.started
        stats = {"prompt_tokens": self.prompt_tokens,
                 "completion_tokens": self.completion_tokens,
                 "model": self.loaded.name, "version": self.loaded.version,
                 "seconds": round(seconds, 4), "first_piece_seconds": round(first, 4),
                 "tokens_per_s": round(self.completion_tokens / max(seconds, 1e-9), 2)}
        if self.fallback is not None:
            stats["fell_back"] = self.fell_back  # the answer is the closest training one
        return stats


class ClientGone(Exception):
    """The client of a streamed answer went away: the stream ends without another word."""


async def streamed(generation: Generation, request: Any, gate: Gate, metrics: Metrics
                   ) -> AsyncIterator[str]:
    """The one serving loop every route formats: the generation's pieces as they are decided,
    in a slot of the gate (Busy when its queue is full), each decided on a worker thread so the
    event loop keeps serving; ClientGone once `request` (None: a whole answer) disconnects.
    However it ends, the generation stops and its tokens are counted."""
    try:
        async with gate.slot():
            pieces = generation.pieces()
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                if request is not None and await request.is_disconnected():
                    raise ClientGone
                yield piece
    finally:
        generation.cancelled.set()
        metrics.tokens.inc(generation.completion_tokens)


async def whole(generation: Generation, gate: Gate, metrics: Metrics) -> str:
    """The whole answer, by the same loop."""
    return "".join([piece async for piece in streamed(generation, None, gate, metrics)])
