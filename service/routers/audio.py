"""``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``: OpenAI's multipart audio API with a noise report.

Audio LMs get the task as an instruction; speech recognizers (Whisper) get it as their decoder
prompt (task and language), so the same request works on both.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import PlainTextResponse

from seen.adapters import SpeechTask
from service.dependencies import State
from service.engine.backend import GenerateJob, Sampling
from service.errors import INFERENCE_ERRORS
from service.inputs import prepare_upload
from service.protocol import EXAMPLE_MODEL, Transcription, VerboseTranscription
from service.serving import ServiceState

router = APIRouter(prefix="/v1/audio", tags=["audio"], responses=INFERENCE_ERRORS)

INSTRUCTIONS = {
    "transcribe": "Transcribe the audio exactly, word for word.",
    "translate": "Translate the audio into English.",
}
ResponseFormat = Literal["json", "text", "verbose_json"]
TRANSCRIPTION = {
    "model": Transcription | VerboseTranscription,
    "description": "The text with its noise report (`json`, `verbose_json`), or the text alone (`text`).",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}
AudioFile = Annotated[
    UploadFile, File(description="Audio file: wav, flac, ogg, oga, opus, mp3, webm, m4a, mp4 or aac.")
]
Model = Annotated[str, Form(description="The served model's name (required)", examples=[EXAMPLE_MODEL])]


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
    limits = state.admit(model, task=task)
    if prompt:
        state.check_prompt(prompt, param="prompt")  # the caller's part; the task instruction is fixed and short
    prepared = await prepare_upload(file, limits, _instruction(task, prompt))
    sampling = Sampling(max_tokens=state.settings.max_tokens_default, temperature=temperature)
    job = GenerateJob(prepared.conversation, prepared.clips, state.control(None), sampling=sampling, speech=task)
    outcome = await state.generate("transcriptions" if task.task == "transcribe" else "translations", job)
    if response_format == "text":
        return PlainTextResponse(outcome.text)
    if response_format == "verbose_json":
        return VerboseTranscription(
            text=outcome.text,
            noise_report=outcome.report,
            noisy_input=state.noisy_input(job, outcome),
            task=task.task,
            language=task.language or ("english" if task.task == "translate" else "unknown"),
            duration=prepared.seconds,
        )
    return Transcription(text=outcome.text, noise_report=outcome.report, noisy_input=state.noisy_input(job, outcome))


@router.post("/transcriptions", response_model=None, responses={200: TRANSCRIPTION})
async def transcriptions(
    state: State,
    file: AudioFile,
    model: Model = "",
    prompt: Annotated[str | None, Form()] = None,
    language: Annotated[str | None, Form(description="ISO 639-1 code of the spoken language")] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
) -> Transcription | PlainTextResponse:
    task = SpeechTask("transcribe", language or None)
    return await _run(state, task, file, model, prompt, response_format, temperature)


@router.post("/translations", response_model=None, responses={200: TRANSCRIPTION})
async def translations(
    state: State,
    file: AudioFile,
    model: Model = "",
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
) -> Transcription | PlainTextResponse:
    """Speech in any language the model knows, answered in English."""
    return await _run(state, SpeechTask("translate"), file, model, prompt, response_format, temperature)
