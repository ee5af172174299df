"""Request dependencies: the app's serving state and API-key authentication."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.errors import ApiError
from service.serving import ServiceState


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(get_state)]


def require_api_key(request: Request, state: State) -> None:
    """401 unless the bearer token is one of the configured keys (no keys configured: open)."""
    keys = state.settings.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
    if not any(hmac.compare_digest(token.strip().encode(), key.encode()) for key in keys):
        raise ApiError(401, "incorrect API key", code="invalid_api_key")


Authenticated = Depends(require_api_key)
