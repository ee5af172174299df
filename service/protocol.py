"""Request and response bodies of the HTTP API (OpenAI's shapes, plus the noise report)."""

from __future__ import annotations

import base64
import io
import math
import time
import uuid
import wave
from array import array
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

MAX_STOP_SEQUENCES = 4
EXAMPLE_MODEL = "qwen2-audio-demo"
"""The model named in the schema's examples; the app's OpenAPI document puts the served model's name in its place."""


def _example_wav(seconds: float = 0.02, rate: int = 16000) -> str:
    """A 20 ms 440 Hz tone as a base64 WAV: the audio of the schema's examples (short, and valid for the decoder)."""
    tone = array("h", (round(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(round(seconds * rate))))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(tone.tobytes())
    return base64.b64encode(buffer.getvalue()).decode()


EXAMPLE_AUDIO = _example_wav()
EXAMPLE_CHAT: dict[str, Any] = {
    "model": EXAMPLE_MODEL,
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "input_audio", "input_audio": {"data": EXAMPLE_AUDIO, "format": "wav"}},
                {"type": "text", "text": "What did the speaker ask for?"},
            ],
        }
    ],
    "max_tokens": 4,
}


class ErrorInfo(BaseModel):
    message: str = Field(description="What went wrong, for a person to read (never a stack trace).")
    type: str = Field(description="OpenAI's error type: invalid_request_error, authentication_error, ...")
    param: str | None = Field(description="The request field at fault, dotted (messages.0.content.1), if any.")
    code: str = Field(description="Machine-readable reason: model_not_found, queue_full, unsupported_format, ...")


class ErrorResponse(BaseModel):
    """OpenAI's error envelope, the body of every answer that is not a success."""

    error: ErrorInfo


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    model: str = Field(description="The served model's name.")


class LayerSee(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    layer: int = Field(description="Index of the critical layer in the model.")
    see: float = Field(description="SEE entering the layer, for the applied profile.")
    residual_see: float | None = Field(description="SEE left after the layer's neutralization (null: not run).")


class NoiseReport(BaseModel):
    """What the service measured about the noise in one request's audio.

    The wire form of :class:`seen.policy.NoiseAssessment` (validated from its attributes): the rules that
    fill it live in the core, this is only its schema.
    """

    model_config = ConfigDict(from_attributes=True)

    see: float = Field(description="Signal Embedding Energy of the input for the applied profile, in [0, 1].")
    residual_see: float | None = Field(
        description="SEE left after neutralization, averaged over the critical layers; null when only scored."
    )
    see_method: str = Field(description="'exact' (the paper's definition) or 'inline' (measured during SEEN).")
    see_by_profile: dict[str, float] = Field(description="SEE of the input under every profile of the bundle.")
    per_layer: list[LayerSee]
    profile: str = Field(description="Noise profile the audio was neutralized with.")
    enabled: bool = Field(description="Whether SEEN was applied.")
    strength: float = Field(description="Lambda applied (after adaptive scaling).")
    noisy: bool | None = Field(description="SEE above the noisy threshold; null when the bundle gives none.")
    threshold: float | None = Field(description="The noisy threshold used for this profile.")
    dominant_noise: str | None = Field(description="Profile with the highest SEE when the bundle has several.")
    clips: int = Field(description="Audio parts (or window-long chunks) the values are averaged over.")
    silent_clips: int = Field(
        0,
        description="Of those, clips that are digital silence (peak below 1e-4: a muted microphone?); they are "
        "served, but their SEE says nothing about noise.",
    )


class SeenOptions(BaseModel):
    """Per-request control of neutralization, sent as ``"seen": {...}`` (the SDK's ``extra_body``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    strength: float | None = Field(None, ge=0.0, le=2.0, description="Lambda of SEEN.")
    profile: str | None = Field(
        None, min_length=1, description="Noise profile of the bundle, or 'auto' for the dominant one."
    )
    on_noisy: Literal["answer", "mark", "refuse"] | None = Field(
        None,
        description="Noisy audio is answered (answer), answered with noisy_input true (mark), or refused with 422 "
        "noisy_audio (refuse); default: the server's SEEN_ON_NOISY.",
    )


def _valid_unicode(value: str) -> str:
    """Refuse unpaired surrogates (e.g. a lone \\ud800 from a JSON escape): no tokenizer can encode them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"text holds an unpaired surrogate (U+{ord(value[error.start]):04X}) at position {error.start}; "
            "send valid Unicode"
        ) from None
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class InputAudio(BaseModel):
    data: str = Field(description="Base64-encoded audio file.", examples=[EXAMPLE_AUDIO])
    format: str = Field(description="wav, flac, ogg, oga, opus, mp3, webm, m4a, mp4 or aac.", examples=["wav"])


class InputAudioPart(BaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioUrl(BaseModel):
    url: str


class AudioUrlPart(BaseModel):
    type: Literal["audio_url"]
    audio_url: AudioUrl


ContentPart = Annotated[TextPart | InputAudioPart | AudioUrlPart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[ContentPart] | None = None
    name: str | None = None


class ResponseFormat(BaseModel):
    type: Literal["text"]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` (and ``/v1/see``, which ignores the generation fields)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [EXAMPLE_CHAT, {**EXAMPLE_CHAT, "stream": True}]}
    )

    model: str = Field(description="The served model's name.", examples=[EXAMPLE_MODEL])
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Unset or 0: greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(
        None, ge=-(2**63), le=2**64 - 1, description="Sampling seed: a 64-bit integer (torch's range)."
    )
    stop: Text | list[Text] | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is generated.")
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0, description="Accepted for OpenAI clients; only 0.")
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0, description="Accepted for OpenAI clients; only 0.")
    logprobs: Literal[False] | None = Field(
        None, description="Accepted for OpenAI clients; log-probabilities are not returned."
    )
    top_logprobs: Literal[0] | None = None
    response_format: ResponseFormat | None = Field(None, description="Only plain text answers: {'type': 'text'}.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    seen: SeenOptions | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_SEQUENCES or any(not stop for stop in stops):
            raise ValueError(f"stop takes at most {MAX_STOP_SEQUENCES} non-empty strings")
        return value

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[Choice]
    usage: Usage
    noise_report: NoiseReport | None = Field(description="SEE of the request's audio; null without audio.")
    noisy_input: bool | None = Field(
        None, description="True when on_noisy is 'mark' and the audio was noisy: the answer may be unreliable."
    )


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    noise_report: NoiseReport | None = None
    noisy_input: bool | None = None


class Transcription(BaseModel):
    text: str
    noise_report: NoiseReport | None
    noisy_input: bool | None = Field(
        None, description="True when on_noisy is 'mark' and the audio was noisy: the text may be unreliable."
    )


class VerboseTranscription(Transcription):
    task: Literal["transcribe", "translate"] = "transcribe"
    language: str
    duration: float
    segments: list[dict[str, Any]] = Field(default_factory=list)


class SeeResponse(BaseModel):
    """``POST /v1/see``: the noise report alone."""

    id: str = Field(default_factory=lambda: f"see-{uuid.uuid4().hex}")
    object: Literal["see.report"] = "see.report"
    created: int = Field(default_factory=now)
    model: str
    audio_seconds: float
    noise_report: NoiseReport


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "seen"
    noise_profiles: list[str]
    default_profile: str
    default_strength: float


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
