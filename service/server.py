"""Run the app with uvicorn: one process, one engine, graceful on SIGTERM.

uvicorn stops accepting connections on SIGTERM, lets in-flight requests (streams included) finish
for up to ``shutdown_grace_seconds``, then runs the app's shutdown, which drains the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.app import create_app
from service.config import Settings


class _Server(uvicorn.Server):
    """uvicorn's server, except that a drained shutdown on SIGTERM/SIGINT ends with exit code 0.

    uvicorn re-raises the signal once it has shut down gracefully, so the process would die of it
    (exit 143) even though every request was answered; here the shutdown is the signal's handling.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


class _HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers.

    uvicorn has none (its keep-alive timer restarts on every byte), so a client that sends its headers
    a byte at a time would hold a connection for ever; here the connection is closed when a request's
    headers are not complete ``header_timeout`` seconds after the connection opened or the previous
    answer ended. Bodies have their own deadline, in :class:`service.middleware.BodyLimit`.
    """

    header_timeout = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self._deadline is not None and self.conn.their_state is not h11.IDLE:
            self._deadline.cancel()  # the headers are in
            self._deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)


def protocol_with_header_deadline(seconds: float) -> type[H11Protocol]:
    return type("HeaderDeadline", (_HeaderDeadline,), {"header_timeout": seconds})


def serve(settings: Settings) -> int:
    """Serve until stopped: 0 after a clean shutdown; 1 when the model could not be loaded or when the
    grace period cut requests off (each got a 503 and the log says how many)."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server: _Server | None = None

    def stop_server() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=stop_server)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,  # type: ignore[arg-type]  # a float works
        access_log=settings.log_level == "debug",
        http=protocol_with_header_deadline(settings.header_read_timeout_seconds),
    )
    server = _Server(config)
    server.run()
    state = app.state.service
    if state.cut_off:
        logging.getLogger(__name__).error(
            "shutdown cut off %d requests after the %g s grace period", state.cut_off, settings.shutdown_grace_seconds
        )
    return 1 if state.load_error or state.cut_off else 0
