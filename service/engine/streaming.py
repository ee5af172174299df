"""Streaming a batched generate: each row's new tokens go to its own request as they are sampled."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from transformers.generation.streamers import BaseStreamer

from service.engine.protocol import TokenSink


class BatchStreamer(BaseStreamer):
    """transformers' streamer contract for a whole batch: ``put`` gets one new token per row and step.

    The first ``put`` is the prompt and is skipped. A row stops streaming at its end token or limit;
    rows without a sink are not streamed at all. One host copy per step, outside the forward.
    """

    def __init__(self, sinks: Sequence[TokenSink | None], limits: Sequence[int], end_ids: Collection[int]) -> None:
        self._sinks = list(sinks)
        self._limits = list(limits)
        self._end_ids = set(end_ids)
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
            sink([int(token)])
            self._counts[row] += 1
            self._done[row] = self._counts[row] >= self._limits[row]

    def end(self) -> None:
        """Nothing to flush: the final text of every row comes with its outcome."""
