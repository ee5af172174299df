"""Request dependencies: the app's serving state (API keys are checked at the edge, in :mod:`service.middleware`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.serving import ServiceState


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(get_state)]
