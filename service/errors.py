"""Errors in OpenAI's envelope, ``{"error": {"message", "type", "param", "code"}}``, for every failure.

Handlers are installed for the service's own :class:`ApiError`, schema violations (422), unknown
routes and methods, and anything unexpected (a logged 500 whose body never holds a stack trace).
Each refusal is counted in ``rejected_requests_total`` by its code. :func:`error_responses` documents
the statuses a route answers with in OpenAPI, from the one table of what each status means.
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
from service.protocol import ErrorInfo, ErrorResponse

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

ERROR_STATUSES: dict[int, str] = {
    400: "Invalid request (the `code` says which): model missing (`missing_model`), invalid base64, undecodable, "
    "empty or non-finite audio, a container without audio (`no_audio_stream`), unknown profile, max_tokens or "
    "prompt too long (`max_tokens_too_large`, `prompt_too_long`), audio outside a user message, `/v1/see` without "
    "audio (`no_audio`), remote audio not allowed, chat with a speech recognizer (`chat_not_supported`), a "
    "language or translation the model cannot do (`unsupported_task`).",
    401: "`SEEN_API_KEYS` is set and the bearer token is missing (`missing_api_key`) or wrong (`invalid_api_key`).",
    404: "The model named is not the one served (`model_not_found`).",
    408: "The request body stopped arriving (`body_timeout`); the connection is closed.",
    413: "The body or an audio part is larger than the limit (`request_too_large`, `audio_too_large`), or the audio "
    "is longer than the model hears (`audio_too_long`); the message states the limit.",
    415: "Audio format or container not supported (`unsupported_format`).",
    422: "The request breaks the schema (`invalid_schema`); the message names each field.",
    500: "Unexpected failure (`internal_error`), logged by the server; the body holds no trace.",
    503: "Queue full (`queue_full`), model loading or failed to load (`model_loading`, `model_load_failed`), or "
    "shutting down (`shutting_down`); retry after `Retry-After` seconds.",
    504: "No answer within `SEEN_REQUEST_TIMEOUT_SECONDS` (`timeout`).",
}
"""What each error status means, for the OpenAPI document (the envelope is the same for all)."""
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "required": True, "schema": {"type": "integer"}}
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses: the envelope, and ``Retry-After`` with a 503."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {"model": ErrorResponse, "description": ERROR_STATUSES[status]}
        if status == 503:
            response["headers"] = _RETRY_AFTER
        responses[status] = response
    return responses


INFERENCE_ERRORS = error_responses(400, 401, 404, 408, 413, 415, 422, 500, 503, 504)
"""Every status a request that decodes audio and runs the model may get: the chat, audio and ``/v1/see`` routes."""


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
    info = ErrorInfo(message=message, type=_TYPES.get(status, "invalid_request_error"), param=param, code=code)
    return ErrorResponse(error=info).model_dump()


def error_response(
    status: int, message: str, *, code: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, code=code, param=param), status_code=status, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    """The field path a caller wrote: without the request part, pydantic's validator and union names
    (``function-after[...]``, ``list[tagged-union[...]]``) and the tag a tagged union repeats."""
    parts: list[str] = []
    for part in loc:
        text = str(part)
        if text in ("body", "query", "path", "header") or "[" in text:
            continue
        if parts and parts[-1] == text and not text.isdigit():
            continue  # {"type": "text", "text": ...}: the tag, then the field of the same name
        parts.append(text)
    return ".".join(parts)


def _validation_message(problems: list[dict[str, Any]], content_type: str) -> tuple[str, str | None]:
    """One readable message and the field it names, for pydantic's errors on a request."""
    if any(p.get("type") == "json_invalid" for p in problems):
        where = next(p for p in problems if p.get("type") == "json_invalid")
        position = next((part for part in where.get("loc", ()) if isinstance(part, int)), None)
        at = f" (at character {position})" if position is not None else ""
        return f"the body is not valid JSON{at}: {where.get('msg')}", None
    located = [(_location(tuple(p.get("loc", ()))), str(p.get("msg"))) for p in problems]
    # A union reports every branch: keep the deepest, which says what was wrong with what was sent.
    kept = [
        (where, message)
        for where, message in located
        if not any(other != where and other.startswith(f"{where}.") for other, _ in located)
    ]
    kept = list(dict.fromkeys(kept))
    if kept and kept[0][0] == "" and "json" not in content_type:
        sent = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        return f"send the body as JSON with Content-Type: application/json (this request had {sent})", None
    message = "; ".join(f"{where or 'body'}: {text}" for where, text in kept[:5])
    return message, (kept[0][0] or None) if kept else None


def install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    def count(code: str) -> None:
        metrics.rejected.labels(metrics.model_name, code).inc()

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        count(error.code)
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = list(error.errors()) or [{"loc": (), "msg": "invalid request"}]
        message, where = _validation_message(problems, request.headers.get("content-type", ""))
        count("invalid_schema")
        return error_response(422, message, code="invalid_schema", param=where)

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
