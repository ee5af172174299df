"""Errors in OpenAI's envelope, ``{"error": {"message", "type", "param", "code"}}``, for every failure.

Handlers are installed for the service's own :class:`ApiError`, schema violations (422), unknown
routes and methods, and anything unexpected (a logged 500 whose body never holds a stack trace).
Each refusal is counted in ``rejected_requests_total`` by its code.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from seen.audio import AudioError
from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
_AUDIO_STATUS = {"unsupported_format": 415, "audio_too_long": 413}


class ApiError(Exception):
    """An answer other than success: status, message for the caller, and the OpenAI code/param."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    @staticmethod
    def from_audio(error: AudioError, param: str) -> ApiError:
        return ApiError(_AUDIO_STATUS.get(error.code, 400), str(error), code=error.code, param=param)

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, code=self.code, param=self.param)

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, code=self.code, param=self.param, headers=self.headers)


def error_body(status: int, message: str, *, code: str, param: str | None = None) -> dict[str, Any]:
    """The envelope itself, also sent as the last event of a stream that fails after it started."""
    return {
        "error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param, "code": code}
    }


def error_response(
    status: int, message: str, *, code: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, code=code, param=param), status_code=status, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    return ".".join(parts)


def install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    def count(code: str) -> None:
        metrics.rejected.labels(metrics.model_name, code).inc()

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        count(error.code)
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
        where = _location(tuple(first.get("loc", ())))
        message = "; ".join(f"{_location(tuple(p.get('loc', ()))) or 'body'}: {p.get('msg')}" for p in problems[:5])
        count("invalid_schema")
        return error_response(422, message, code="invalid_schema", param=where or None)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        count(code)
        headers = dict(error.headers) if error.headers else None
        return error_response(error.status_code, str(error.detail), code=code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        count("internal_error")
        return error_response(500, "internal server error; the server log has the details", code="internal_error")
