"""Run the app with uvicorn: one process, one engine, graceful on SIGTERM.

uvicorn stops accepting connections on SIGTERM, lets in-flight requests (streams included) finish
for up to ``shutdown_grace_seconds``, then runs the app's shutdown, which drains the engine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import uvicorn

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


def serve(settings: Settings) -> int:
    """Serve until stopped; 0 after a clean shutdown, 1 when the model could not be loaded."""
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
    )
    server = _Server(config)
    server.run()
    return 1 if app.state.service.load_error else 0
