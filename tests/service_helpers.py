"""Helpers for driving the service: encoded audio, chat bodies, and an app running in-process."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings

MODEL_NAME = "tiny-qwen2-audio"


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
    return Settings(model=str(model), bundle=str(bundle), served_model_name=MODEL_NAME, **overrides)


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
