"""The serving state of one app, and the request plumbing every endpoint shares.

:class:`ServiceState` is created by the app factory and filled in by the loader: the engine exists
only once the model, the bundle and the warm-up have succeeded. Endpoints resolve a request's
SEEN control, submit a job with the request timeout, and get :class:`ApiError` for every way that
can fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from seen.adapters import SpeechTask
from seen.bundle import NoiseBundle
from seen.policy import Control, NoisePolicy
from service.config import Settings
from service.engine.engine import Engine, EngineStopped, QueueFull
from service.engine.protocol import Capabilities, GenerateJob, GenerateOutcome, ScoreJob, ScoreOutcome
from service.errors import ApiError
from service.inputs import AudioLimits
from service.metrics import ServiceMetrics
from service.protocol import SeenOptions

T = TypeVar("T")


@dataclass
class ServiceState:
    settings: Settings
    bundle: NoiseBundle
    policy: NoisePolicy
    metrics: ServiceMetrics
    engine: Engine | None = None
    limits: AudioLimits | None = None
    capabilities: Capabilities | None = None
    ready: bool = False
    load_error: str | None = None
    created: int = 0
    http: httpx.AsyncClient | None = None
    loader: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def model_name(self) -> str:
        return self.settings.model_name

    def unavailable(self) -> ApiError:
        retry = {"Retry-After": str(self.settings.retry_after_seconds)}
        if self.load_error:
            return ApiError(
                503, f"the model failed to load: {self.load_error}", code="model_load_failed", headers=retry
            )
        return ApiError(503, "the model is still loading; retry shortly", code="model_loading", headers=retry)

    def serving(self) -> tuple[Engine, AudioLimits]:
        """The engine and audio limits, or 503 while the server is not ready."""
        if not self.ready or self.engine is None or self.limits is None:
            raise self.unavailable()
        return self.engine, self.limits

    def check_chat(self) -> None:
        """Speech recognizers transcribe whatever is asked: a chat request gets a 400 that says where to go."""
        if self.capabilities is not None and not self.capabilities.answers_chat:
            raise ApiError(
                400,
                f"model {self.model_name!r} is a speech recognizer: it transcribes audio and cannot answer chat "
                "messages; use POST /v1/audio/transcriptions (or /v1/audio/translations), or POST /v1/see for "
                "the noise report alone",
                code="chat_not_supported",
                param="model",
            )

    def check_task(self, task: SpeechTask) -> None:
        if self.capabilities is None:
            return
        try:
            self.capabilities.check_task(task)
        except ValueError as error:
            param = "language" if task.language and "language" in str(error) else "model"
            raise ApiError(400, str(error), code="unsupported_task", param=param) from error

    def check_model(self, requested: str) -> None:
        if requested != self.model_name:
            raise ApiError(
                404,
                f"model {requested!r} does not exist; this server serves {self.model_name!r}",
                code="model_not_found",
                param="model",
            )

    def control(self, options: SeenOptions | None) -> Control:
        """The request's SEEN settings over the server's defaults, checked against the bundle."""
        settings, options = self.settings, options or SeenOptions()
        strength = options.strength
        if strength is None:
            strength = (
                settings.default_strength if settings.default_strength is not None else self.bundle.default_strength
            )
        profile = options.profile or settings.default_profile or self.bundle.default_profile
        try:
            self.policy.check_profile(profile)
        except ValueError as error:
            raise ApiError(400, str(error), code="unknown_profile", param="seen.profile") from error
        enabled = settings.seen_enabled if options.enabled is None else options.enabled
        return Control(enabled=enabled, strength=strength, profile=profile, adaptive=settings.adaptive)

    async def score(self, job: ScoreJob) -> ScoreOutcome:
        engine, _ = self.serving()
        return await self._wait(engine.score(job))

    async def generate(self, job: GenerateJob) -> GenerateOutcome:
        engine, _ = self.serving()
        return await self._wait(engine.generate(job))

    async def _wait(self, submitted: Awaitable[T]) -> T:
        timeout = self.settings.request_timeout_seconds
        retry = {"Retry-After": str(self.settings.retry_after_seconds)}
        try:
            return await asyncio.wait_for(submitted, timeout)
        except QueueFull as error:
            raise ApiError(
                503, f"the server is at capacity ({error}); retry later", code="queue_full", headers=retry
            ) from error
        except EngineStopped as error:
            raise ApiError(503, str(error), code="shutting_down", headers=retry) from error
        except TimeoutError as error:
            raise ApiError(504, f"the request took longer than {timeout:g} s", code="timeout") from error
