"""ASGI middleware: the HTTP edge, where a request is counted, authenticated, bounded and cancelled.

Pure ASGI (not ``BaseHTTPMiddleware``) so that a streamed response is timed until its final chunk,
the API key and the body limit are checked before the body is read, and a request whose client
has gone is cancelled down to its generation (the engine stops a cancelled job at the next token).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Collection, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ApiError
from service.metrics import ServiceMetrics

DISCONNECT: Message = {"type": "http.disconnect"}
CLOSE = {"Connection": "close"}
"""Sent with an answer given before the body was read: the rest of it is never read, so the connection ends."""


async def _answer(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    await error.response()(scope, receive, send)


class RequestMetrics:
    """Counts every HTTP request by endpoint and status, and times it until the response is complete."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, endpoints: Collection[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in self.endpoints else "other"  # bounded label values
        name = self.metrics.model_name
        status = 500
        started = time.perf_counter()

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        in_flight = self.metrics.in_flight.labels(name)
        in_flight.inc()
        try:
            await self.app(scope, receive, observed)
        finally:
            in_flight.dec()
            self.metrics.requests.labels(name, endpoint, str(status)).inc()
            self.metrics.latency.labels(name, endpoint).observe(time.perf_counter() - started)


class ApiKeys:
    """401 for a protected path without one of the configured bearer tokens, before its body is read."""

    def __init__(self, app: ASGIApp, keys: Sequence[str], prefix: str, metrics: ServiceMetrics) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.prefix = prefix
        self.metrics = metrics

    def _refusal(self, scope: Scope) -> ApiError | None:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        if not any(hmac.compare_digest(token.strip().encode("latin-1"), key) for key in self.keys):
            return ApiError(401, "incorrect API key", code="invalid_api_key")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys and scope["type"] == "http" and scope["path"].startswith(self.prefix):
            refusal = self._refusal(scope)
            if refusal is not None:
                self.metrics.rejected.labels(self.metrics.model_name, refusal.code).inc()
                await _answer(refusal, scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a body over the limit, whether declared (Content-Length) or streamed (chunked), and 408
    for a body that stops arriving; the app's own answer to the cut-off body is replaced by that one."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float, metrics: ServiceMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        self.metrics = metrics

    def _too_large(self, size: str) -> ApiError:
        return ApiError(413, f"request body is {size}; the limit is {self.max_bytes} bytes", code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        refusal: ApiError | None = None
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            refusal = self._too_large(f"{int(declared)} bytes")
        received, body_done, started = 0, False, False

        async def limited() -> Message:
            nonlocal received, body_done, refusal
            if refusal is not None:
                return DISCONNECT
            if body_done:  # after the body only the disconnect is left: no deadline on waiting for it
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except TimeoutError:
                refusal = ApiError(
                    408,
                    f"the request body stopped arriving (nothing for {self.read_timeout:g} s)",
                    code="body_timeout",
                    headers=CLOSE,
                )
                return DISCONNECT
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refusal = self._too_large(f"more than {self.max_bytes} bytes (streamed)")
                    return DISCONNECT
                body_done = not message.get("more_body", False)
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refusal is None or started:
                started = started or message["type"] == "http.response.start"
                await send(message)

        if refusal is None:
            try:
                await self.app(scope, limited, guarded)
            except Exception:
                if refusal is None:
                    raise
        if refusal is not None and not started:
            self.metrics.rejected.labels(self.metrics.model_name, refusal.code).inc()
            await _answer(refusal, scope, receive, send)


class Cancellation:
    """Cancels a request whose client has gone, and answers in the envelope one that shutdown cuts off.

    The app runs in its own task; once the body is read, the only message left is the disconnect,
    so a watcher waits for it and cancels the task (the engine then stops the job at its next token).
    When uvicorn's grace period runs out it cancels the request itself: a request that has not
    started its answer gets a 503 envelope instead of a bare ``Internal Server Error``, and
    ``on_cut_off`` counts it so that the process can exit with the truth.
    """

    def __init__(self, app: ASGIApp, on_cut_off: Callable[[], None]) -> None:
        self.app = app
        self.on_cut_off = on_cut_off

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_read = asyncio.Event()
        started = finishing = client_gone = False

        async def tracked_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_read.set()
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started, finishing
            started = started or message["type"] == "http.response.start"
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finishing = True
            await send(message)

        async def run_app() -> None:
            await self.app(scope, tracked_receive, tracked_send)

        app = asyncio.create_task(run_app())

        async def watch() -> None:
            nonlocal client_gone
            await body_read.wait()
            while not app.done():
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not finishing:
                        client_gone = True
                        app.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await app
        except asyncio.CancelledError:
            if client_gone:
                return  # nobody is left to answer
            self.on_cut_off()
            if started:
                raise
            shutdown = ApiError(
                503,
                "the server shut down before this request finished; send it again",
                code="shutting_down",
                headers={"Retry-After": "1"},
            )
            await _answer(shutdown, scope, receive, send)
        finally:
            watcher.cancel()
