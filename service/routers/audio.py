"""``POST /v1/audio/transcriptions``: OpenAI's multipart transcription, with the noise report."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import PlainTextResponse

from service.dependencies import Authenticated, State
from service.engine.protocol import GenerateJob, Sampling
from service.errors import ApiError
from service.inputs import decode_part
from service.protocol import Transcription, VerboseTranscription

router = APIRouter(prefix="/v1/audio", tags=["audio"], dependencies=[Authenticated])

INSTRUCTION = "Transcribe the audio exactly, word for word."


def _instruction(language: str | None, prompt: str | None) -> str:
    text = INSTRUCTION
    if language:
        text += f" The language is {language}."
    if prompt:
        text += f" Context: {prompt}"
    return text


@router.post("/transcriptions", response_model=None)
async def transcriptions(
    state: State,
    file: Annotated[UploadFile, File(description="Audio file: wav, mp3, flac or ogg.")],
    model: Annotated[str, Form()],
    prompt: Annotated[str | None, Form()] = None,
    language: Annotated[str | None, Form()] = None,
    response_format: Annotated[Literal["json", "text", "verbose_json"], Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
) -> Transcription | PlainTextResponse:
    state.check_model(model)
    _, limits = state.serving()
    data = await file.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise ApiError(
            413, f"the file is larger than the limit of {limits.max_bytes} bytes", code="audio_too_large", param="file"
        )
    name = file.filename or ""
    clips = await decode_part(data, limits, format=name.rsplit(".", 1)[-1] if "." in name else None, param="file")
    seconds = sum(len(clip) for clip in clips) / limits.sample_rate
    state.metrics.audio_duration.labels(state.model_name, "transcriptions").observe(seconds)
    content: list[dict[str, str]] = [{"type": "audio"} for _ in clips]
    content.append({"type": "text", "text": _instruction(language, prompt)})
    sampling = Sampling(max_tokens=state.settings.max_tokens_default, temperature=temperature)
    job = GenerateJob([{"role": "user", "content": content}], clips, state.control(None), sampling=sampling)
    outcome = await state.generate(job)
    if response_format == "text":
        return PlainTextResponse(outcome.text)
    if response_format == "verbose_json":
        return VerboseTranscription(
            text=outcome.text, noise_report=outcome.report, language=language or "unknown", duration=seconds
        )
    return Transcription(text=outcome.text, noise_report=outcome.report)
