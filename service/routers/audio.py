"""``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``: OpenAI's multipart audio API with a noise report.

Audio LMs get the task as an instruction; speech recognizers (Whisper) get it as their decoder
prompt (task and language), so the same request works on both.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import PlainTextResponse

from seen.adapters import SpeechTask
from service.dependencies import Authenticated, State
from service.engine.protocol import GenerateJob, Sampling
from service.errors import ApiError
from service.inputs import decode_part
from service.protocol import Transcription, VerboseTranscription
from service.serving import ServiceState

router = APIRouter(prefix="/v1/audio", tags=["audio"], dependencies=[Authenticated])

INSTRUCTIONS = {
    "transcribe": "Transcribe the audio exactly, word for word.",
    "translate": "Translate the audio into English.",
}
ResponseFormat = Literal["json", "text", "verbose_json"]


def _instruction(task: SpeechTask, prompt: str | None) -> str:
    text = INSTRUCTIONS[task.task]
    if task.language:
        text += f" The language is {task.language}."
    if prompt:
        text += f" Context: {prompt}"
    return text


async def _run(
    state: ServiceState,
    task: SpeechTask,
    file: UploadFile,
    model: str,
    prompt: str | None,
    response_format: ResponseFormat,
    temperature: float,
) -> Transcription | PlainTextResponse:
    state.check_model(model)
    _, limits = state.serving()
    state.check_task(task)
    data = await file.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise ApiError(
            413, f"the file is larger than the limit of {limits.max_bytes} bytes", code="audio_too_large", param="file"
        )
    name = file.filename or ""
    clips = await decode_part(data, limits, format=name.rsplit(".", 1)[-1] if "." in name else None, param="file")
    seconds = sum(len(clip) for clip in clips) / limits.sample_rate
    endpoint = "transcriptions" if task.task == "transcribe" else "translations"
    state.metrics.audio_duration.labels(state.model_name, endpoint).observe(seconds)
    content: list[dict[str, str]] = [{"type": "audio"} for _ in clips]
    content.append({"type": "text", "text": _instruction(task, prompt)})
    sampling = Sampling(max_tokens=state.settings.max_tokens_default, temperature=temperature)
    job = GenerateJob(
        [{"role": "user", "content": content}], clips, state.control(None), sampling=sampling, speech=task
    )
    outcome = await state.generate(job)
    if response_format == "text":
        return PlainTextResponse(outcome.text)
    if response_format == "verbose_json":
        return VerboseTranscription(
            text=outcome.text,
            noise_report=outcome.report,
            task=task.task,
            language=task.language or ("english" if task.task == "translate" else "unknown"),
            duration=seconds,
        )
    return Transcription(text=outcome.text, noise_report=outcome.report)


@router.post("/transcriptions", response_model=None)
async def transcriptions(
    state: State,
    file: Annotated[UploadFile, File(description="Audio file: wav, mp3, flac or ogg.")],
    model: Annotated[str, Form()],
    prompt: Annotated[str | None, Form()] = None,
    language: Annotated[str | None, Form(description="ISO 639-1 code of the spoken language")] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
) -> Transcription | PlainTextResponse:
    task = SpeechTask("transcribe", language or None)
    return await _run(state, task, file, model, prompt, response_format, temperature)


@router.post("/translations", response_model=None)
async def translations(
    state: State,
    file: Annotated[UploadFile, File(description="Audio file: wav, mp3, flac or ogg.")],
    model: Annotated[str, Form()],
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
) -> Transcription | PlainTextResponse:
    """Speech in any language the model knows, answered in English."""
    return await _run(state, SpeechTask("translate"), file, model, prompt, response_format, temperature)
