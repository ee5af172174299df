"""From API messages and uploads to what the engine needs: the model's conversation format and decoded clips.

All audio, whether base64 in ``input_audio``, an uploaded file or an allowed ``audio_url``, goes
through :func:`decode_part` and so through :func:`seen.audio.decode_audio`. Each limit has one rule:
the byte limit is :func:`check_size` (applied while reading, before decoding), the duration limit is
the decoder's ``max_seconds`` (:attr:`AudioLimits.accepted_seconds`), and the URL allow-list is
:func:`_fetch`'s. Audio longer than the model's window is refused or, when chunking is configured,
split into window-long parts: nothing is truncated.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx
from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from seen.adapters import Clip, Message
from seen.audio import SUPPORTED_FORMATS, AudioError, decode_audio, split_into_windows
from service.errors import ApiError
from service.protocol import AudioUrlPart, ChatMessage, InputAudioPart, TextPart

_ALLOWED = ", ".join(SUPPORTED_FORMATS)


@dataclass(frozen=True)
class AudioLimits:
    """What one audio part may be, fixed at start-up from the settings and the model."""

    sample_rate: int
    max_seconds: float
    window_seconds: float
    chunk_long_audio: bool
    max_bytes: int
    url_allowlist: tuple[str, ...] = ()
    url_fetch_seconds: float = 10.0
    """Deadline of one ``audio_url`` fetch, however slowly the remote host sends."""

    @property
    def accepted_seconds(self) -> float:
        return self.max_seconds if self.chunk_long_audio else min(self.max_seconds, self.window_seconds)


@dataclass
class PreparedAudio:
    conversation: list[Message] = field(default_factory=list)
    clips: list[Clip] = field(default_factory=list)
    seconds: float = 0.0


def check_size(size: int, limits: AudioLimits, param: str, what: str = "audio") -> None:
    """The byte limit of one audio part: the one rule, applied wherever bytes arrive."""
    if size > limits.max_bytes:
        raise ApiError(
            413, f"{what} is larger than the limit of {limits.max_bytes} bytes", code="audio_too_large", param=param
        )


async def decode_part(data: bytes, limits: AudioLimits, *, format: str | None, param: str) -> list[Clip]:
    """One audio file as the clips the model sees (one, or its windows when chunking is on)."""
    check_size(len(data), limits, param)
    try:
        clip = await run_in_threadpool(
            decode_audio, data, limits.sample_rate, format=format, max_seconds=limits.accepted_seconds
        )
    except AudioError as error:
        if error.code == "audio_too_long" and not limits.chunk_long_audio:
            message = f"{error}; the model hears at most {limits.window_seconds:g} s per audio part"
            raise ApiError(413, message, code=error.code, param=param) from error
        raise ApiError.from_audio(error, param) from error
    if len(clip) <= limits.window_seconds * limits.sample_rate:
        return [clip]
    return split_into_windows(clip, limits.sample_rate, limits.window_seconds)


def _base64_audio(part: InputAudioPart, limits: AudioLimits, param: str) -> tuple[bytes, str]:
    fmt = part.input_audio.format.lower()
    if fmt not in SUPPORTED_FORMATS:
        raise ApiError(
            415, f"audio format {fmt!r} is not supported; allowed: {_ALLOWED}", code="unsupported_format", param=param
        )
    encoded = part.input_audio.data
    check_size(len(encoded) * 3 // 4, limits, param)  # before decoding the base64
    try:
        return base64.b64decode(encoded, validate=True), fmt
    except (binascii.Error, ValueError) as error:
        raise ApiError(
            400, f"input_audio.data is not valid base64: {error}", code="invalid_base64", param=param
        ) from error


async def _fetch(
    url: str, limits: AudioLimits, client: httpx.AsyncClient | None, param: str
) -> tuple[bytes, str | None]:
    if client is None or not limits.url_allowlist:
        raise ApiError(
            400,
            "audio_url parts are not fetched: this server has no audio URL allow-list",
            code="audio_url_not_allowed",
            param=param,
        )
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ApiError(
            400, f"audio_url must be an http(s) URL, got {url[:100]!r}", code="invalid_audio_url", param=param
        )
    if parsed.hostname not in limits.url_allowlist:
        allowed = ", ".join(limits.url_allowlist) or "none (remote audio is disabled)"
        raise ApiError(
            400,
            f"audio_url host {parsed.hostname!r} is not allowed; allowed hosts: {allowed}",
            code="audio_url_not_allowed",
            param=param,
        )
    try:
        async with asyncio.timeout(limits.url_fetch_seconds), client.stream("GET", url) as response:
            response.raise_for_status()
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                check_size(size, limits, param, f"audio at {url}")
                chunks.append(chunk)
    except TimeoutError as error:
        raise ApiError(
            400,
            f"audio_url {url} was not fetched within {limits.url_fetch_seconds:g} s",
            code="audio_url_timeout",
            param=param,
        ) from error
    except httpx.HTTPError as error:
        raise ApiError(
            400, f"could not fetch audio_url {url}: {error}", code="audio_url_unreachable", param=param
        ) from error
    suffix = parsed.path.rsplit(".", 1)[-1].lower() if "." in parsed.path else None
    return b"".join(chunks), suffix if suffix in SUPPORTED_FORMATS else None


def message_text(messages: Sequence[ChatMessage]) -> str:
    """All the text of a conversation, as the prompt-length check counts it."""
    texts = []
    for message in messages:
        if isinstance(message.content, str):
            texts.append(message.content)
        else:
            texts.extend(part.text for part in message.content or [] if isinstance(part, TextPart))
    return "\n".join(texts)


async def prepare_messages(
    messages: Sequence[ChatMessage], limits: AudioLimits, client: httpx.AsyncClient | None = None
) -> PreparedAudio:
    """Decode every audio part and rewrite the messages into the adapters' ``{"type": "audio"}`` form."""
    prepared = PreparedAudio()
    for index, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        parts = [TextPart(type="text", text=message.content)] if isinstance(message.content, str) else message.content
        content: list[dict[str, Any]] = []
        for number, part in enumerate(parts or []):
            param = f"messages.{index}.content.{number}"
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
                continue
            if role != "user":
                raise ApiError(
                    400,
                    f"audio is only accepted in user messages, not {message.role}",
                    code="invalid_audio_role",
                    param=param,
                )
            if isinstance(part, InputAudioPart):
                data, fmt = _base64_audio(part, limits, param)
                clips = await decode_part(data, limits, format=fmt, param=param)
            else:
                assert isinstance(part, AudioUrlPart)
                data, hint = await _fetch(part.audio_url.url, limits, client, param)
                clips = await decode_part(data, limits, format=hint, param=param)
            prepared.clips.extend(clips)
            prepared.seconds += sum(len(clip) for clip in clips) / limits.sample_rate
            content.extend({"type": "audio"} for _ in clips)
        if role == "user":
            prepared.conversation.append({"role": role, "content": content})
        else:
            prepared.conversation.append({"role": role, "content": "".join(p["text"] for p in content)})
    return prepared


async def prepare_upload(file: UploadFile, limits: AudioLimits, instruction: str) -> PreparedAudio:
    """An uploaded file (the audio API's multipart ``file``) as one user message: its audio, then the instruction."""
    data = await file.read(limits.max_bytes + 1)  # never more than one byte past the limit
    check_size(len(data), limits, "file", "the file")
    name = file.filename or ""
    clips = await decode_part(data, limits, format=name.rsplit(".", 1)[-1] if "." in name else None, param="file")
    content: list[dict[str, Any]] = [{"type": "audio"} for _ in clips]
    content.append({"type": "text", "text": instruction})
    seconds = sum(len(clip) for clip in clips) / limits.sample_rate
    return PreparedAudio([{"role": "user", "content": content}], clips, seconds)
