"""ASGI middleware: request metrics measured to the last byte, and the request-size limit.

Pure ASGI (not ``BaseHTTPMiddleware``) so that a streamed response is timed until its final chunk
and the body limit is checked before the body is read.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.metrics import ServiceMetrics


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


class BodyLimit:
    """413 for a request whose declared body exceeds the limit, before any of it is read."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: ServiceMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                self.metrics.rejected.labels(self.metrics.model_name, "request_too_large").inc()
                message = f"request body is {int(length)} bytes; the limit is {self.max_bytes} bytes"
                response = error_response(413, message, code="request_too_large")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
