"""`POST /generate` answers with the whole text; `POST /generate/stream` (also
`/generate-stream`, the 003 write-up's route) sends it as Server-Sent Events: `piece` events,
then `done` with the stats."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse

from gpt.tokenizer import UnknownCharacterError
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
from serve.model_holder import ModelHolder
from serve.routes.deps import GateDep, HolderDep, HoldersDep, MetricsDep, chosen, served

router = APIRouter()
BUSY = "too many requests; retry shortly"


def start_generation(body: GenerateRequest, holders: dict[str, ModelHolder],
                     default: ModelHolder, metrics: Metrics) -> Generation:
    """A generation on the model the request names, or a 422 naming the field that makes it
    impossible."""
    loaded = served(chosen(holders, default, body.model), metrics)
    try:
        generation = Generation(loaded, body)
    except UnknownCharacterError as err:
        raise HTTPException(422, detail=[{
            "field": "prompt", "message": f"the prompt holds {err.character!r}, a character "
            f"the model's tokenizer never saw in training"}]) from None
    except ValueError as err:
        raise HTTPException(422, detail=[{"field": "mode", "message": str(err)}]) from None
    block = loaded.model.config.block_size
    if generation.prompt_tokens > block:
        raise HTTPException(422, detail=[{
            "field": "prompt", "message": f"prompt is {generation.prompt_tokens} tokens; "
            f"the model reads at most {block}"}])
    return generation


@router.post("/generate")
async def generate(body: GenerateRequest, holders: HoldersDep, holder: HolderDep,
                   gate: GateDep, metrics: MetricsDep) -> dict[str, Any]:
    """The whole text; a completion-mode answer is also under `code`, the name the prompt ->
    code write-up's API (002) answers with."""
    generation = start_generation(body, holders, holder, metrics)
    try:
        text = await whole(generation, gate, metrics)
    except Busy:
        raise HTTPException(429, detail=BUSY) from None
    answer = {"text": text, **generation.stats()}
    if generation.mode == "completion":
        answer["code"] = text
    return answer


@router.post("/generate/stream")
@router.post("/generate-stream")  # the word-streaming write-up's (003) name for it
async def generate_stream(body: GenerateRequest, request: Request, holders: HoldersDep,
                          holder: HolderDep, gate: GateDep,
                          metrics: MetricsDep) -> StreamingResponse:
    generation = start_generation(body, holders, holder, metrics)
    # Checked before the response starts, while a 429 can still be sent; a queue that fills
    # after this is reported inside the stream.
    if gate.full():
        raise HTTPException(429, detail=BUSY)
    return StreamingResponse(events(generation, request, gate, metrics),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def events(generation: Generation, request: Request, gate: Gate,
                 metrics: Metrics) -> AsyncIterator[str]:
    """The generation's SSE events, always ending in `done` with the stats; a failure (a full
    queue, the model raising mid-generation) is an `error` event just before it, so a client
    never waits on a stream that just stops. It stops (and frees its slot) when the client goes
    away."""
    try:
        async with aclosing(streamed(generation, request, gate, metrics)) as pieces:
            async for piece in pieces:
                yield sse("piece", {"text": piece})
    except ClientGone:
        return
    except Busy:
        yield sse("error", {"detail": BUSY})
    except Exception as err:  # the response has started: its status can no longer say so
        yield sse("error", {"detail": failed(err)})
    yield sse("done", generation.stats())


def sse(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n"
