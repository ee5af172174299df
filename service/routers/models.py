"""``GET /v1/models``: the one model this server serves, with its noise profiles."""

from __future__ import annotations

from fastapi import APIRouter

from service.dependencies import State
from service.errors import error_responses
from service.protocol import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"], responses=error_responses(401, 500))


def _card(state: State) -> ModelCard:
    return ModelCard(
        id=state.model_name,
        created=state.created,
        noise_profiles=list(state.bundle.profiles),
        default_profile=state.bundle.default_profile,
        default_strength=state.bundle.default_strength,
    )


@router.get("/models")
async def list_models(state: State) -> ModelList:
    return ModelList(data=[_card(state)])


# 422 cannot happen (any path is a string); it is declared so that FastAPI does not document its own body for it.
@router.get("/models/{model_id:path}", responses=error_responses(400, 404, 422))
async def get_model(model_id: str, state: State) -> ModelCard:
    state.check_model(model_id)
    return _card(state)
