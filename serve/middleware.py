"""What wraps every route, as pure ASGI middleware: the request body capped as it arrives, and
every request counted and timed by route and status.

Pure ASGI rather than `@app.middleware("http")`: that form sees neither the bytes of a body as
they arrive (only a whole Content-Length) nor a route's exception (it re-raises it before a
status exists, so the 500 the client gets went uncounted).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.generation import Metrics
from serve.routes.deps import too_large


class BodyTooLarge(Exception):
    """The request body passed its cap; its 413 has been sent."""


class CapBody:
    """Refuse a body over its route's cap (`limit_for(path)`): from its Content-Length before
    reading it, or, chunked or lying, by counting its bytes as the app reads them. The 413 goes
    out the moment the count passes the cap, with `Connection: close` so the client stops
    sending; the app's read raises BodyTooLarge, and whatever it answers to that is dropped.

    Memory stays flat: uvicorn stops reading the socket until the app asks for the next chunk,
    so no more than the cap and one chunk are ever held, whatever the client sends.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await too_large(limit)(scope, receive, send)
            return
        received = 0
        started = refused = False

        async def counted() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and not refused:
                    refused = True
                    if not started:
                        await too_large(limit)(scope, receive, send)
                    raise BodyTooLarge(limit)
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused:  # the 413 is the answer; the app's reply to its failed read is not
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except BodyTooLarge:
            if not refused:
                raise


class Observe:
    """Count every request by its route's path and the status the client got: a refusal from
    CapBody, and a 500 for an exception that escapes the app (Starlette's error middleware
    outside this one answers it), even one that breaks a response already started. Time it
    from its start to the end of its answer, a stream's last event included."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        except Exception:
            status = 500
            raise
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's value (the first, if repeated), or None."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
