"""Time spent in the audio encoder, read without host syncs inside the forward.

Pre- and post-forward hooks on the encoder module record CUDA events (or wall-clock times on the
CPU); the durations are read once, after the batch, when the caller's block ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from seen.hooks import hooks_installed


class EncoderTime:
    """Seconds the encoder ran during one :meth:`EncoderClock.measuring` block (valid after it ends)."""

    seconds: float = 0.0


class EncoderClock:
    """Brackets every forward of one module with timestamps."""

    def __init__(self, module: nn.Module) -> None:
        self._module = module
        self._cuda = next(module.parameters()).device.type == "cuda"
        self._marks: list[tuple[Any, Any]] | None = None

    def _now(self) -> Any:
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _start(self, _module: nn.Module, _inputs: Any) -> None:
        if self._marks is not None:
            self._marks.append((self._now(), None))

    def _end(self, _module: nn.Module, _inputs: Any, _output: Any) -> None:
        if self._marks:
            self._marks[-1] = (self._marks[-1][0], self._now())

    @contextmanager
    def installed(self) -> Iterator[None]:
        with hooks_installed([self._module], [self._end], [self._start]):
            yield

    @contextmanager
    def measuring(self) -> Iterator[EncoderTime]:
        """Sum the encoder's forwards in the block; a forward cut short by a stop counts until then."""
        result = EncoderTime()
        self._marks = []
        try:
            yield result
        finally:
            marks, self._marks = self._marks, None
            result.seconds = self._total(marks, stopped_at=self._now())

    def _total(self, marks: list[tuple[Any, Any]], stopped_at: Any) -> float:
        if self._cuda:
            torch.cuda.synchronize()
            return sum((start.elapsed_time(end or stopped_at) for start, end in marks), 0.0) / 1000.0
        return sum(((end or stopped_at) - start for start, end in marks), 0.0)
