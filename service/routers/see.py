"""``POST /v1/see``: the noise report of a request's audio, without generating."""

from __future__ import annotations

from fastapi import APIRouter

from service.dependencies import State
from service.engine.backend import ScoreJob
from service.errors import INFERENCE_ERRORS, ApiError
from service.inputs import prepare_messages
from service.protocol import ChatCompletionRequest, SeeResponse

router = APIRouter(prefix="/v1", tags=["see"], responses=INFERENCE_ERRORS)


@router.post("/see")
async def see(request: ChatCompletionRequest, state: State) -> SeeResponse:
    """Score only: the encoder runs as far as the last critical layer; generation fields are ignored."""
    limits = state.admit(request.model)
    control = state.control(request.seen)
    prepared = await prepare_messages(request.messages, limits, state.http)
    if not prepared.clips:
        raise ApiError(
            400, "nothing to score: the messages have no input_audio part", code="no_audio", param="messages"
        )
    outcome = await state.score("see", ScoreJob(prepared.conversation, prepared.clips, control))
    assert outcome.report is not None
    return SeeResponse(model=state.model_name, audio_seconds=prepared.seconds, noise_report=outcome.report)
