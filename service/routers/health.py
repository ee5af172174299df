"""Liveness, readiness and the Prometheus scrape."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.dependencies import State
from service.errors import error_responses
from service.protocol import Health, Readiness

router = APIRouter(tags=["operations"])
NOT_READY = error_responses(503)[503] | {
    "description": "The model is still loading (`model_loading`) or failed to load (`model_load_failed`)."
}


@router.get("/health")
async def health() -> Health:
    """The process is alive and answering (the model may still be loading)."""
    return Health()


@router.get("/ready", response_model=Readiness, responses={503: NOT_READY})
async def ready(state: State) -> Readiness | Response:
    """200 once the model and bundle are loaded and the warm-up request passed; 503 until then."""
    if state.ready:
        return Readiness(model=state.model_name)
    return state.unavailable().response()


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Every metric in Prometheus's text exposition format."}},
)
async def metrics(state: State) -> Response:
    """The Prometheus scrape."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
