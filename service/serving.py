"""The serving state of one app, and the one request path every endpoint goes through.

:class:`ServiceState` is created by the app factory and filled in by the loader: the engine exists
only once the model, the bundle and the warm-up have succeeded. Every endpoint does the same three
steps, each in one place: :meth:`ServiceState.admit` (the model name, readiness, what the model can
be asked), decoding (:mod:`service.inputs`, every audio limit), and :meth:`ServiceState.submit`
(the audio metric, the job, the queue and the request timeout). Routers only parse and shape answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from seen.adapters import SpeechTask
from seen.bundle import NoiseBundle
from seen.policy import Control, NoisePolicy
from service.config import Settings
from service.engine.backend import Capabilities, GenerateJob, GenerateOutcome, ScoreJob, ScoreOutcome
from service.engine.engine import Engine, EngineStopped, QueueFull
from service.errors import ApiError
from service.inputs import AudioLimits
from service.metrics import ServiceMetrics
from service.protocol import SeenOptions

T = TypeVar("T")
MESSAGE_TOKENS = 8
"""Chat markup per message (role tokens, delimiters) counted towards the prompt limit: an upper estimate
for the supported chat templates."""
CHARACTERS_PER_TOKEN = 16
"""Bound on characters per allowed prompt token: beyond it a prompt is refused without being tokenized."""
T_Job = TypeVar("T_Job", ScoreJob, GenerateJob)


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
    cut_off: int = 0
    """Requests the shutdown grace period ended before they were answered (the exit code reports them)."""

    def count_cut_off(self) -> None:
        self.cut_off += 1

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

    def admit(self, model: str, *, chat: bool = False, task: SpeechTask | None = None) -> AudioLimits:
        """The first step of every request: the model it names, a ready server, a request the model can serve."""
        self.check_model(model)
        engine, limits = self.serving()
        if engine.at_capacity:  # admission control: no parsing or decoding of audio that would be refused
            raise self._queue_full(f"{engine.max_queue_size} requests are already waiting")
        if chat:
            self.check_chat()
        if task is not None:
            self.check_task(task)
        return limits

    async def submit(self, endpoint: str, job: T_Job) -> Any:
        """The last step: queue the job, wait for it under the timeout, and count the audio it served.

        Audio is counted only once the request is answered, so refused and timed-out requests are not.
        """
        engine, limits = self.serving()
        work = engine.generate(job) if isinstance(job, GenerateJob) else engine.score(job)
        outcome = await self._wait(work)
        if job.clips:
            seconds = sum(len(clip) for clip in job.clips) / limits.sample_rate
            self.metrics.audio_duration.labels(self.model_name, endpoint).observe(seconds)
        return outcome

    def check_prompt(self, text: str, messages: int = 1, param: str = "messages") -> None:
        """400 for a prompt over the limit (the setting or the model's context, the smaller), before queueing.

        Counted: the text's tokens plus ``MESSAGE_TOKENS`` per message for the chat markup around it (audio
        tokens are bounded by the audio limits instead). Text longer than ``CHARACTERS_PER_TOKEN`` characters
        per allowed token is refused without tokenizing it.
        """
        if self.capabilities is None:
            return
        limit = min(self.settings.max_prompt_tokens, self.capabilities.context_tokens)
        if len(text) > limit * CHARACTERS_PER_TOKEN:
            raise ApiError(
                400,
                f"the messages' text is {len(text)} characters; this server accepts at most {limit} tokens "
                f"(and never more than {limit * CHARACTERS_PER_TOKEN} characters)",
                code="prompt_too_long",
                param=param,
            )
        tokens = self.capabilities.count_text_tokens(text) + MESSAGE_TOKENS * messages
        if tokens > limit:
            raise ApiError(
                400,
                f"the prompt is {tokens} tokens ({messages} messages at {MESSAGE_TOKENS} tokens of markup each "
                f"included); this server accepts at most {limit}",
                code="prompt_too_long",
                param=param,
            )

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
        if not requested:
            raise ApiError(
                400,
                f"model is required: name the served model, {self.model_name!r}",
                code="missing_model",
                param="model",
            )
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
        on_noisy = options.on_noisy or settings.on_noisy
        try:
            self.policy.check_noisy_action(on_noisy)
        except ValueError as error:
            raise ApiError(400, str(error), code="on_noisy_unavailable", param="seen.on_noisy") from error
        return Control(
            enabled=enabled, strength=strength, profile=profile, adaptive=settings.adaptive, on_noisy=on_noisy
        )

    async def score(self, endpoint: str, job: ScoreJob) -> ScoreOutcome:
        outcome: ScoreOutcome = await self.submit(endpoint, job)
        return outcome

    async def generate(self, endpoint: str, job: GenerateJob) -> GenerateOutcome:
        """Generate; with ``on_noisy="refuse"`` the audio is scored first and noisy audio gets 422, ungenerated."""
        if job.control.on_noisy == "refuse" and job.clips:
            engine, _ = self.serving()
            scored = await self._wait(engine.score(ScoreJob(job.conversation, job.clips, job.control)))
            if job.control.action(scored.report) == "refuse":
                assert scored.report is not None
                report = scored.report
                raise ApiError(
                    422,
                    f"the audio is too noisy to answer reliably: its SEE is {report.see:.3f}, above the "
                    f"{report.profile!r} threshold {report.threshold:.3f}; record it again somewhere quieter, or "
                    "send seen.on_noisy='answer' (or 'mark') to get an answer anyway",
                    code="noisy_audio",
                    param="messages",
                )
        outcome: GenerateOutcome = await self.submit(endpoint, job)
        return outcome

    @staticmethod
    def noisy_input(job: GenerateJob, outcome: GenerateOutcome) -> bool | None:
        """The answer's ``noisy_input`` field: true when the request asked to mark noisy input and it was."""
        return True if job.control.action(outcome.report) == "mark" else None

    def _queue_full(self, reason: str) -> ApiError:
        retry = {"Retry-After": str(self.settings.retry_after_seconds)}
        return ApiError(503, f"the server is at capacity ({reason}); retry later", code="queue_full", headers=retry)

    async def _wait(self, submitted: Awaitable[T]) -> T:
        timeout = self.settings.request_timeout_seconds
        retry = {"Retry-After": str(self.settings.retry_after_seconds)}
        try:
            return await asyncio.wait_for(submitted, timeout)
        except QueueFull as error:
            raise self._queue_full(str(error)) from error
        except EngineStopped as error:
            raise ApiError(503, str(error), code="shutting_down", headers=retry) from error
        except TimeoutError as error:
            raise ApiError(504, f"the request took longer than {timeout:g} s", code="timeout") from error
