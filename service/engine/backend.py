"""What the engine is asked to do and what it answers: plain data, independent of HTTP."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from seen.adapters import Clip, Message, SpeechTask
from seen.policy import Control, NoiseAssessment

TextSink = Callable[[str], None]
"""Receives a streamed request's new text as it is generated (called from the device thread)."""


GREEDY_BELOW = 1e-5
"""Temperatures below this decode greedily: dividing logits by a smaller one overflows float32 (and is the
argmax anyway)."""


@dataclass(frozen=True)
class Sampling:
    """Generation parameters of one request."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def batch_key(self) -> tuple[object, ...]:
        """Requests share a generate call only when these agree (max_tokens is enforced per request)."""
        return (0.0 if self.greedy else self.temperature, self.top_p, self.seed, self.stop)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass
class ScoreJob:
    """Score a conversation's audio: SEE only, no generation."""

    conversation: Sequence[Message]
    clips: Sequence[Clip]
    control: Control
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False, kw_only=True)
    """Set when nobody waits for the answer any more (client gone, timeout, shutdown): a backend stops the
    job's generation at its next token."""


@dataclass
class GenerateJob(ScoreJob):
    """Neutralize, generate, and report SEE."""

    sampling: Sampling = field(default_factory=lambda: Sampling(max_tokens=16))
    sink: TextSink | None = None
    speech: SpeechTask | None = None
    """The task for speech recognizers (transcription and translation routes); None for chat."""


@dataclass(frozen=True)
class Timing:
    """Device time a batch spent, shared by the requests in it."""

    encoder_seconds: float
    generation_seconds: float
    batch_size: int


@dataclass(frozen=True)
class ScoreOutcome:
    report: NoiseAssessment | None
    timing: Timing


@dataclass(frozen=True)
class GenerateOutcome:
    text: str
    finish_reason: str  # "stop", "length", or "cancelled" (never sent: nobody is waiting)
    prompt_tokens: int
    completion_tokens: int
    report: NoiseAssessment | None
    timing: Timing


@dataclass(frozen=True)
class Capabilities:
    """What a backend's model can be asked, so that callers refuse the rest before queueing."""

    answers_chat: bool
    check_task: Callable[[SpeechTask], None]
    """Raises ValueError for a transcription or translation the model cannot do (the language, the task)."""
    sample_rate: int
    window_seconds: float
    profiles: tuple[str, ...]
    default_profile: str
    context_tokens: int
    """The language model's positions: no prompt may take more."""
    count_text_tokens: Callable[[str], int]
    """Tokens a text takes in a prompt (thread-safe: a fast tokenizer, no model)."""


class Backend(Protocol):
    """The device work behind the engine: a batch in, one outcome per job out, in order.

    Implemented by :class:`service.engine.transformers_backend.ModelBackend` (transformers ``generate``) and
    :class:`service.engine.vllm_backend.VllmBackend`. Streaming jobs get their text deltas through ``job.sink``.
    """

    @property
    def model_name(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    def close(self) -> None: ...

    def score(self, jobs: Sequence[ScoreJob]) -> list[ScoreOutcome]: ...

    def generate(self, jobs: Sequence[GenerateJob]) -> list[GenerateOutcome]: ...

    def start_generate(self, jobs: Sequence[GenerateJob]) -> list[Future[GenerateOutcome]]:
        """Do the batch's device-thread work and return one future per job, done when its answer is.

        The engine calls this on its device thread and takes the next batch as soon as it returns: a backend
        that finishes requests elsewhere (vLLM's loop) lets later batches join the running ones.
        """
        ...
