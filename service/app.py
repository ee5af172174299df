"""The app factory: ``create_app(settings)`` builds the FastAPI app; nothing happens at import time.

The bundle is read at once (it is small, and a bad one should stop the server before it listens).
The model loads in the background after start-up so that ``/health`` answers while it does;
``/ready`` turns 200 once the model is loaded, checked against the bundle, patched, and a warm-up
request has gone through the engine. A load failure is logged, reported by ``/ready``, and passed
to ``on_fatal`` (the server uses it to exit). ``/docs`` (Swagger UI) and ``/redoc`` are served from
files installed with the package (fastapi-offline), so they work without internet access.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from seen import __version__
from seen.adapters import AudioLM, load_audio_lm, resolve_device, resolve_dtype
from seen.bundle import NoiseBundle
from seen.noise import generate_noise
from seen.policy import Control, NoisePolicy
from service.config import Settings
from service.engine.backend import Backend, GenerateJob, Sampling, ScoreJob
from service.engine.engine import Engine
from service.engine.transformers_backend import ModelBackend
from service.engine.vllm_backend import VllmBackend, check_vllm_support
from service.errors import install_error_handlers
from service.inputs import AudioLimits
from service.metrics import ServiceMetrics, see_buckets
from service.middleware import ApiKeys, BodyLimit, Cancellation, RequestMetrics
from service.protocol import EXAMPLE_MODEL
from service.routers import audio, chat, health, models, see
from service.serving import ServiceState

logger = logging.getLogger(__name__)
ROUTERS = (chat.router, audio.router, see.router, models.router, health.router)
WARMUP_SECONDS = 1.0
BODY_OVERHEAD = 4 / 3  # base64 inflation of audio inside JSON
BODY_SLACK_BYTES = 1 << 20
API_PREFIX = "/v1/"
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "One of the server's API keys (SEEN_API_KEYS), required on /v1/* when any is set.",
}


def _policy(settings: Settings, bundle: NoiseBundle) -> NoisePolicy:
    policy = NoisePolicy(bundle, noisy_threshold=settings.noisy_threshold)
    if settings.adaptive:
        policy.check_adaptive()
    policy.check_noisy_action(settings.on_noisy)
    policy.check_profile(settings.default_profile or bundle.default_profile)
    return policy


def _backend(state: ServiceState, lm: AudioLM) -> Backend:
    """The backend ``settings.engine`` names (vLLM, an optional extra, is imported only when chosen)."""
    settings = state.settings
    if settings.engine == "vllm":
        return VllmBackend(
            lm,
            state.bundle,
            state.policy,
            model_name=state.model_name,
            see_method=settings.see_method,
            max_num_seqs=settings.max_running_requests,
        )
    return ModelBackend(lm, state.bundle, state.policy, model_name=state.model_name, see_method=settings.see_method)


async def load_model(state: ServiceState) -> None:
    """Load, check, patch and warm up; the engine only becomes visible once all of it passed."""
    settings = state.settings
    if settings.engine == "vllm":
        check_vllm_support(state.bundle)  # before minutes of loading
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)  # the loaders' own meaning of "auto"
    started = time.perf_counter()
    lm = await asyncio.to_thread(load_audio_lm, settings.model, device=device, dtype=dtype)
    backend = await asyncio.to_thread(_backend, state, lm)  # vLLM's engine takes a while to start
    engine = Engine(
        backend,
        max_batch_size=settings.max_batch_size,
        batch_wait_seconds=settings.batch_wait_seconds,
        max_queue_size=settings.max_queue_size,
        max_running=settings.max_running_requests if settings.engine == "vllm" else None,
    )
    engine.start()
    state.capabilities = backend.capabilities
    state.limits = AudioLimits(
        sample_rate=lm.sample_rate,
        max_seconds=settings.max_audio_seconds,
        window_seconds=lm.max_clip_seconds,
        chunk_long_audio=settings.chunk_long_audio,
        max_bytes=settings.max_audio_bytes,
        url_allowlist=tuple(settings.audio_url_allowlist),
        url_fetch_seconds=min(settings.audio_url_timeout_seconds, settings.request_timeout_seconds),
    )
    state.engine = engine
    if settings.warmup:
        clip = 0.05 * generate_noise("pink", int(WARMUP_SECONDS * lm.sample_rate), lm.sample_rate, seed=0)
        conversation = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Warm-up."}]}]
        control = Control(enabled=True, strength=state.bundle.default_strength, profile=state.bundle.default_profile)
        await engine.score(ScoreJob(conversation, [clip], control))
        await engine.generate(GenerateJob(conversation, [clip], control, sampling=Sampling(max_tokens=2)))
    engine.attach_metrics(state.metrics)
    if settings.engine == "vllm":
        state.metrics.include_engine_metrics("vllm:")
    state.metrics.describe_model(
        lm.architecture, state.bundle.bases_sha256, state.bundle.site.value, list(state.bundle.profiles)
    )
    state.ready = True
    logger.info("ready: %s on %s (%s) in %.1f s", state.model_name, device, dtype, time.perf_counter() - started)


def _naming(node: Any, name: str) -> Any:
    """``node`` with every value that names the examples' model naming ``name`` instead."""
    if node == EXAMPLE_MODEL:
        return name
    if isinstance(node, dict):
        return {key: _naming(value, name) for key, value in node.items()}
    if isinstance(node, list):
        return [_naming(value, name) for value in node]
    return node


def document_api(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    """``app.openapi``: FastAPI's document, with the served model's name in the examples and the bearer scheme.

    The scheme is documentation: the key is checked by the :class:`ApiKeys` middleware, and ``/v1/*`` operations
    require it in the document only when the server has keys.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document: dict[str, Any] = _naming(build(), settings.model_name)
            document.setdefault("components", {})["securitySchemes"] = {"bearer": BEARER}
            protected = [path for path in document["paths"] if settings.api_keys and path.startswith(API_PREFIX)]
            for path in protected:
                for operation in document["paths"][path].values():
                    operation["security"] = [{"bearer": []}]
            app.openapi_schema = document
        return app.openapi_schema

    return openapi


def create_app(settings: Settings | None = None, *, on_fatal: Callable[[], None] | None = None) -> FastAPI:
    settings = settings or Settings()
    bundle = NoiseBundle.load(settings.bundle)
    metrics = ServiceMetrics(settings.model_name, see_buckets(bundle, settings.see_buckets))
    state = ServiceState(settings=settings, bundle=bundle, policy=_policy(settings, bundle), metrics=metrics)
    metrics.describe_bundle(bundle, state.policy.thresholds)
    metrics.track_readiness(lambda: state.ready)

    async def load_in_background() -> None:
        try:
            await load_model(state)
        except Exception as error:
            state.load_error = str(error)
            logger.error("cannot serve %s with bundle %s: %s", settings.model, settings.bundle, error)
            if on_fatal is not None:
                on_fatal()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.created = int(time.time())
        state.http = httpx.AsyncClient(timeout=10.0, follow_redirects=False) if settings.audio_url_allowlist else None
        state.loader = asyncio.create_task(load_in_background())
        try:
            yield
        finally:
            state.ready = False
            state.loader.cancel()
            await asyncio.gather(state.loader, return_exceptions=True)
            if state.engine is not None:
                await state.engine.stop()
                close = getattr(state.engine.backend, "close", None)
                if close is not None:
                    close()
            if state.http is not None:
                await state.http.aclose()

    app = FastAPIOffline(title="seen", version=__version__, lifespan=lifespan)
    app.state.service = state
    for router in ROUTERS:
        app.include_router(router)
    app.openapi = document_api(app, settings)  # type: ignore[method-assign]  # FastAPI's way to extend it
    install_error_handlers(app, metrics)
    body_limit = int(settings.max_audio_bytes * BODY_OVERHEAD) + BODY_SLACK_BYTES
    # added innermost first: metrics, then cancellation, then the key, then the body limit see a request
    app.add_middleware(
        BodyLimit, max_bytes=body_limit, read_timeout=settings.body_read_timeout_seconds, metrics=metrics
    )
    app.add_middleware(ApiKeys, keys=settings.api_keys, prefix=API_PREFIX, metrics=metrics)
    app.add_middleware(Cancellation, on_cut_off=state.count_cut_off)
    endpoints = [getattr(route, "path", "") for router in ROUTERS for route in router.routes]
    app.add_middleware(RequestMetrics, metrics=metrics, endpoints=endpoints)
    return app
