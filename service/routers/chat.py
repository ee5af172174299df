"""``POST /v1/chat/completions``: neutralize, generate, and return the text with its noise report."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from service.dependencies import State
from service.engine.backend import GenerateJob, GenerateOutcome, Sampling
from service.errors import INFERENCE_ERRORS, ApiError, error_body
from service.inputs import message_text, prepare_messages
from service.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    Usage,
    completion_id,
    now,
)
from service.serving import ServiceState

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["chat"], responses=INFERENCE_ERRORS)
COMPLETION = {
    "model": ChatCompletion,
    "description": "The completion with its noise report; with `stream: true`, server-sent events of "
    "`chat.completion.chunk` objects (the last one carries the noise report), then `data: [DONE]`.",
    "content": {
        "text/event-stream": {
            "itemSchema": {  # FastAPI's form for server-sent events: the schema of each event
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {
                        "type": "string",
                        "description": "A ChatCompletionChunk as JSON, the error envelope if generation fails after "
                        "the stream started, or [DONE].",
                    }
                },
            }
        }
    },
}


def _usage(outcome: GenerateOutcome) -> Usage:
    total = outcome.prompt_tokens + outcome.completion_tokens
    return Usage(prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens, total_tokens=total)


async def build_job(request: ChatCompletionRequest, state: ServiceState) -> GenerateJob:
    """Check and decode a chat request into a generate job."""
    limits = state.admit(request.model, chat=True)
    settings = state.settings
    control = state.control(request.seen)
    max_tokens = request.max_completion_tokens or request.max_tokens or settings.max_tokens_default
    if max_tokens > settings.max_tokens_limit:
        raise ApiError(
            400,
            f"max_tokens is {max_tokens}; this server generates at most {settings.max_tokens_limit}",
            code="max_tokens_too_large",
            param="max_completion_tokens" if request.max_completion_tokens else "max_tokens",
        )
    state.check_prompt(message_text(request.messages), len(request.messages))
    prepared = await prepare_messages(request.messages, limits, state.http)
    sampling = Sampling(
        max_tokens=max_tokens,
        temperature=request.temperature or 0.0,
        top_p=request.top_p,
        seed=request.seed,
        stop=request.stop_sequences,
    )
    return GenerateJob(prepared.conversation, prepared.clips, control, sampling=sampling)


@router.post("/chat/completions", response_model=None, responses={200: COMPLETION})
async def chat_completions(request: ChatCompletionRequest, state: State) -> ChatCompletion | StreamingResponse:
    job = await build_job(request, state)
    if request.stream:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        return await _stream(state, job, include_usage)
    outcome = await state.generate("chat", job)
    return ChatCompletion(
        model=state.model_name,
        choices=[Choice(message=AssistantMessage(content=outcome.text), finish_reason=outcome.finish_reason)],
        usage=_usage(outcome),
        noise_report=outcome.report,
        noisy_input=state.noisy_input(job, outcome),
    )


def _emittable(text: str, stops: Sequence[str]) -> int:
    """Length of the prefix that is safe to send: before any stop string, a partial one, or a split character."""
    cut = min([len(text), *(i for i in (text.find(s) for s in stops) if i >= 0)])
    if cut == len(text):
        cut -= max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    while cut > 0 and text[cut - 1] == "\ufffd":
        cut -= 1
    return cut


async def _stream(state: ServiceState, job: GenerateJob, include_usage: bool) -> StreamingResponse:
    """Server-sent events in OpenAI's chunk shape; errors before the first token keep their status."""
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue[str | None] = asyncio.Queue()

    def sink(delta: str) -> None:  # called on the device thread
        loop.call_soon_threadsafe(deltas.put_nowait, delta)

    job.sink = sink
    task = asyncio.create_task(state.generate("chat", job))
    task.add_done_callback(lambda _: deltas.put_nowait(None))
    first = await deltas.get()
    if first is None and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]  # queue full, timeout...: a proper status, not a 200
    stream_id, created = completion_id(), now()

    def chunk(choices: list[ChunkChoice], **extra: Any) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=stream_id, created=created, model=state.model_name, choices=choices, **extra)

    def event(chunk: ChatCompletionChunk | dict[str, Any]) -> str:
        body = chunk.model_dump_json() if isinstance(chunk, ChatCompletionChunk) else json.dumps(chunk)
        return f"data: {body}\n\n"

    async def events() -> AsyncIterator[str]:
        text = ""
        sent = ""
        item = first
        try:
            yield event(chunk([ChunkChoice(delta=Delta(role="assistant", content=""))]))
            while item is not None:
                text += item
                safe = text[: _emittable(text, job.sampling.stop)]
                if len(safe) > len(sent) and safe.startswith(sent):
                    yield event(chunk([ChunkChoice(delta=Delta(content=safe[len(sent) :]))]))
                    sent = safe
                item = await deltas.get()
            try:
                outcome = task.result()
            except ApiError as error:
                yield event(error.body())
                return
            except Exception:  # the stream has started: the failure can only be reported in it
                logger.exception("streamed generation failed")
                yield event(error_body(500, "generation failed; the server log has the details", code="internal_error"))
                return
            rest = outcome.text[len(sent) :] if outcome.text.startswith(sent) else ""
            final = ChunkChoice(delta=Delta(content=rest or None), finish_reason=outcome.finish_reason)
            yield event(chunk([final], noise_report=outcome.report, noisy_input=state.noisy_input(job, outcome)))
            if include_usage:
                yield event(chunk([], usage=_usage(outcome)))
            yield "data: [DONE]\n\n"
        finally:
            task.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
