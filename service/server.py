"""Run the app with uvicorn: one process, one engine, graceful on SIGTERM.

uvicorn stops accepting connections on SIGTERM, lets in-flight requests (streams included) finish
for up to ``shutdown_grace_seconds``, then runs the app's shutdown, which drains the engine.
"""

from __future__ import annotations

import logging

import uvicorn

from service.app import create_app
from service.config import Settings


def serve(settings: Settings) -> int:
    """Serve until stopped; 0 after a clean shutdown, 1 when the model could not be loaded."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server: uvicorn.Server | None = None

    def stop_server() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=stop_server)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
        access_log=settings.log_level == "debug",
    )
    server = uvicorn.Server(config)
    server.run()
    return 1 if app.state.service.load_error else 0
