"""OpenAI's API over the served models: `POST /v1/completions` and `POST /v1/chat/completions`
(whole, or streamed as server-sent `data:` chunks ending in `data: [DONE]`) and
`GET /v1/models`, so the official `openai` client works against `tinygpt serve` unchanged.

A request becomes a `GenerateRequest`, so the bounds, the queue and the causes of refusal are
those of /generate; only their shape follows OpenAI (`{"error": {"message", "type", "param"}}`).
A chat's messages become one prompt by a plain template (CHAT_TEMPLATE): these models continue
text, they were not trained on chats. Any other path under /v1 is OpenAI's 404.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve.generation import (
    Busy,
    ClientGone,
    Gate,
    GenerateRequest,
    Generation,
    Metrics,
    failed,
    streamed,
    whole,
)
from serve.routes.deps import GateDep, HoldersDep, MetricsDep, field_of
from serve.routes.generate import BUSY, start_generation

router = APIRouter(prefix="/v1")
ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


class Sampling(BaseModel):
    """The fields both requests share. Those we do not implement are accepted only at their
    neutral value."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=1000)
    max_tokens: int | None = 16
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    presence_penalty: float | None = Field(0.0, ge=0.0, le=0.0)
    frequency_penalty: float | None = Field(0.0, ge=0.0, le=0.0)
    user: str | None = None

    def prompt_text(self) -> str:
        raise NotImplementedError

    def token_budget(self) -> int | None:
        return self.max_tokens

    def as_generate(self) -> GenerateRequest:
        """The same request in /generate's terms, checked by its bounds."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        fields = {"prompt": self.prompt_text(),
                  "max_new_tokens": 16 if self.token_budget() is None else self.token_budget(),
                  "temperature": 1.0 if self.temperature is None else self.temperature,
                  "top_p": self.top_p, "top_k": None, "stop": stop, "seed": self.seed}
        try:
            return GenerateRequest.model_validate(fields, strict=False)
        except ValidationError as err:
            item = err.errors()[0]
            field = {"max_new_tokens": "max_tokens"}.get(str(item["loc"][0]), str(item["loc"][0]))
            raise OpenAIError(400, f"{field}: {item['msg']}", field) from None


class CompletionRequest(Sampling):
    prompt: str | list[str] = ""
    best_of: int | None = Field(None, ge=1, le=1)
    echo: bool = Field(False, le=False)
    logprobs: int | None = Field(None, le=0)

    def prompt_text(self) -> str:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise OpenAIError(400, "prompt: send one prompt per request", "prompt")
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# A chat's messages as one prompt: each "role: content" on its own line, then the line the
# model continues. (Our models continue text; none was trained on a chat format.)
CHAT_TEMPLATE, CHAT_REPLY = "{role}: {content}\n", "assistant:"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str
    name: str | None = None


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # the newer name of max_tokens
    logprobs: bool | None = Field(None, le=False)

    def prompt_text(self) -> str:
        return "".join(CHAT_TEMPLATE.format(role=m.role, content=m.content)
                       for m in self.messages) + CHAT_REPLY

    def token_budget(self) -> int | None:
        return (self.max_tokens if self.max_completion_tokens is None
                else self.max_completion_tokens)


class OpenAIError(Exception):
    """An error in the shape OpenAI's API answers with (and its client raises from)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message,
                          "type": ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": None}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.payload(), status_code=self.status)

    @classmethod
    def from_http(cls, err: HTTPException) -> OpenAIError:
        """/generate's refusal (a 422 naming a field, a 503 while loading) in OpenAI's shape."""
        detail = err.detail
        if isinstance(detail, list) and detail:
            param = detail[0]["field"]
            return cls(400, f"{param}: {detail[0]['message']}", param)
        message = detail if isinstance(detail, str) else json.dumps(detail)
        return cls(err.status_code, message)


def invalid_body(errors: list[dict[str, Any]]) -> JSONResponse:
    """A body that is not a CompletionRequest: a 400 naming the first bad field."""
    item = errors[0]
    param = field_of(item)
    return OpenAIError(400, f"{param or 'body'}: {item.get('msg', 'invalid')}", param).response()


@router.get("/models")
async def models(holders: HoldersDep) -> dict[str, Any]:
    """The served models, the default first; `created` is when the served version loaded."""
    return {"object": "list", "data": [
        {"id": name, "object": "model", "owned_by": "tinygpt",
         "created": int(holder.current.loaded_at) if holder.current else 0}
        for name, holder in holders.items()]}


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request, holders: HoldersDep,
                      gate: GateDep, metrics: MetricsDep
                      ) -> dict[str, Any] | JSONResponse | StreamingResponse:
    """OpenAI's clients always name the model, so there is no default one here."""
    return await answer(body, TEXT, request, holders, gate, metrics)


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request, holders: HoldersDep,
                           gate: GateDep, metrics: MetricsDep
                           ) -> dict[str, Any] | JSONResponse | StreamingResponse:
    """The messages by CHAT_TEMPLATE as one prompt, answered as /v1/completions does."""
    return await answer(body, CHAT, request, holders, gate, metrics)


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                  include_in_schema=False)
async def unknown(path: str, request: Request) -> JSONResponse:
    return OpenAIError(404, f"no {request.method} /v1/{path} here: this service answers "
                            f"GET /v1/models, POST /v1/completions and POST "
                            f"/v1/chat/completions").response()


async def answer(body: Sampling, kind: str, request: Request, holders: HoldersDep,
                 gate: GateDep, metrics: MetricsDep
                 ) -> dict[str, Any] | JSONResponse | StreamingResponse:
    """Generate for an OpenAI request of either kind, whole or streamed."""
    try:
        asked = body.as_generate()
        named = holders.get(body.model)
        if named is None:
            raise OpenAIError(404, f"model: no served model {body.model!r}; this service "
                                   f"serves {', '.join(holders)}", "model")
        generation = start_generation(asked, holders, named, metrics)
        if body.stream:
            if gate.full():
                raise OpenAIError(429, BUSY)
            return StreamingResponse(chunks(generation, body.model, kind, request, gate,
                                            metrics),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            text = await whole(generation, gate, metrics)
        except Busy:
            raise OpenAIError(429, BUSY) from None
    except HTTPException as err:
        return OpenAIError.from_http(err).response()
    except OpenAIError as err:
        return err.response()
    return {**envelope(body.model, kind),
            "choices": [choice(text, finish_reason(generation), kind)],
            "usage": usage(generation)}


async def chunks(generation: Generation, model: str, kind: str, request: Request, gate: Gate,
                 metrics: Metrics) -> AsyncIterator[str]:
    """OpenAI's stream: one chunk per piece, a last one with the finish reason and usage, then
    `data: [DONE]`; a failure is an error chunk (what OpenAI's client raises from) before it."""
    head = envelope(model, kind, streamed=True)
    try:
        async with aclosing(streamed(generation, request, gate, metrics)) as pieces:
            async for piece in pieces:
                yield data({**head, "choices": [choice(piece, None, kind, streamed=True)]})
        yield data({**head, "usage": usage(generation), "choices": [
            choice("", finish_reason(generation), kind, streamed=True)]})
    except ClientGone:
        return
    except Busy:
        yield data(OpenAIError(429, BUSY).payload())
    except Exception as err:  # the response has started: its status can no longer say so
        yield data(OpenAIError(500, failed(err)).payload())
    yield "data: [DONE]\n\n"


TEXT, CHAT = "text", "chat"  # /v1/completions, /v1/chat/completions


def envelope(model: str, kind: str, streamed: bool = False) -> dict[str, Any]:
    if kind == CHAT:
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": model,
                "object": "chat.completion.chunk" if streamed else "chat.completion"}
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": model}


def choice(text: str, reason: str | None, kind: str, streamed: bool = False) -> dict[str, Any]:
    """One choice: a completion's text; a chat's message, or in a stream its delta (the last
    chunk's delta is empty)."""
    if kind == TEXT:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": reason}
    if not streamed:
        return {"index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": reason}
    delta = {"role": "assistant", "content": text} if reason is None else {}
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}


def finish_reason(generation: Generation) -> str:
    """"length" when max_tokens ran out, else "stop" (a stop string or the end of text)."""
    return ("length" if generation.completion_tokens >= generation.params.max_new_tokens
            else "stop")


def usage(generation: Generation) -> dict[str, int]:
    return {"prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens}


def data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
