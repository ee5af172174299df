"""``GET /v1/models``: the one model this server serves, with its noise profiles."""

from __future__ import annotations

from fastapi import APIRouter

from service.dependencies import State
from service.protocol import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


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


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, state: State) -> ModelCard:
    state.check_model(model_id)
    return _card(state)
