"""Helpers for driving the service: encoded audio, chat bodies, and an app running in-process."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings

MODEL_NAME = "tiny-qwen2-audio"
HOST = "127.0.0.1"
READY_TIMEOUT_SECONDS = 90.0
ROOT = Path(__file__).resolve().parents[1]


def audio_bytes(clip: np.ndarray, rate: int = 16000, format: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, clip, rate, format=format)
    return buffer.getvalue()


def audio_part(clip: np.ndarray, rate: int = 16000, format: str = "wav") -> dict[str, Any]:
    data = base64.b64encode(audio_bytes(clip, rate, format.upper())).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": format}}


def chat_body(*clips: np.ndarray, text: str = "What is said?", **extra: Any) -> dict[str, Any]:
    content = [audio_part(clip) for clip in clips] + [{"type": "text", "text": text}]
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def settings(model: Path, bundle: Path, **overrides: Any) -> Settings:
    """The tests' server settings: SEEN on, unless told otherwise, since most of them check what it does
    (the served default, off, is checked on its own)."""
    return Settings(
        model=str(model), bundle=str(bundle), served_model_name=MODEL_NAME, **{"seen_enabled": True, **overrides}
    )


@asynccontextmanager
async def running(app: FastAPI, wait_ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan, wait until it is ready (or failed), and give a client bound to it."""
    async with app.router.lifespan_context(app):
        state = app.state.service
        while wait_ready and not state.ready and not state.load_error:
            await asyncio.sleep(0.02)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://seen.test", timeout=60) as client:
            yield client


@asynccontextmanager
async def serving(model: Path, bundle: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings(model, bundle, **overrides))) as client:
        yield client


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a Prometheus text scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# -- the real server in a subprocess ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without any ``SEEN_*`` setting of its own, plus ``variables``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SEEN_")}
    env.update(variables)
    return env


@dataclass
class Server:
    """A server process, its port and the file its stdout and stderr go to."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @classmethod
    def start(cls, command: Sequence[str], port: int, log: Path, env: dict[str, str] | None = None) -> Server:
        with log.open("wb") as handle:
            process = subprocess.Popen(
                list(command), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env or environment()
            )
        return cls(process, port, log)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_in_flight(self, requests: int, timeout: float = 30.0) -> None:
        """Poll ``/metrics`` until ``requests`` are in flight (the scrape that reads the gauge counts as one)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while metric_value(client.get("/metrics").text, "seen_requests_in_flight") < requests:
                assert time.monotonic() < deadline, "the requests never reached the server"
                time.sleep(0.02)

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Poll ``/ready`` until 200; fail with the server's log if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    pytest.fail(f"the server exited with code {code} before it was ready; its log:\n{self.output()}")
                try:
                    if client.get("/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"the server was not ready within {timeout:g} s; its log:\n{self.output()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, and kill when it hangs; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
