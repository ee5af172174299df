"""Streaming a batched generate: each row's new text goes to its own request as it is sampled.

Tokens are turned into text on the device thread, incrementally: only a short window of recent tokens is
decoded per step (vLLM's prefix and read offsets), and a delta is held back while it ends inside a
multi-byte character. The HTTP layer receives text, never token ids.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from transformers.generation.streamers import BaseStreamer

from service.engine.backend import TextSink

Decode = Callable[[Sequence[int]], str]


class IncrementalDecoder:
    """Text deltas of a growing token list; the concatenated deltas equal the decoded whole."""

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # tokens before it are already text that sent deltas cover
        self._read = 0  # tokens before it have been emitted

    def push(self, ids: Sequence[int]) -> str:
        self._ids.extend(ids)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # nothing new, or a character still incomplete
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]


class BatchStreamer(BaseStreamer):
    """transformers' streamer contract for a whole batch: ``put`` gets one new token per row and step.

    The first ``put`` is the prompt and is skipped. A row stops streaming at its end token or limit;
    rows without a sink are not streamed at all. One host copy per step, outside the forward.
    """

    def __init__(
        self, sinks: Sequence[TextSink | None], limits: Sequence[int], end_ids: Collection[int], decode: Decode
    ) -> None:
        self._sinks = list(sinks)
        self._limits = list(limits)
        self._end_ids = set(end_ids)
        self._decoders = [IncrementalDecoder(decode) for _ in sinks]
        self._counts = [0] * len(sinks)
        self._done = [sink is None for sink in sinks]
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self._sinks), -1)[:, -1].tolist()):
            sink = self._sinks[row]
            if self._done[row] or sink is None:
                continue
            if token in self._end_ids:
                self._done[row] = True
                continue
            delta = self._decoders[row].push([int(token)])
            if delta:
                sink(delta)
            self._counts[row] += 1
            self._done[row] = self._counts[row] >= self._limits[row]

    def end(self) -> None:
        """Nothing to flush: the final text of every row comes with its outcome."""
