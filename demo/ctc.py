"""A training-only auxiliary loss: CTC over the audio encoder's output.

With the language-model loss alone, the small decoder learns the sentence grammar long before the
encoder learns to tell words apart, and it settles on plausible sentences that confuse content words
(``heater`` for ``radio``). A linear CTC head on the encoder output makes every encoder frame carry the
letters being spoken, the usual hybrid CTC/attention recipe of speech recognition. On the same 1,500
steps (4,000 clips, clean speech, two runs side by side) it lifted held-out exact match from 0.07 to 0.86.
The head exists only during training: the saved checkpoint is the plain
``Qwen2AudioForConditionalGeneration``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

ALPHABET = " abcdefghijklmnopqrstuvwxyz"
"""The letters of the task's sentences; CTC index 0 is the blank, letter i is i + 1."""


def letter_targets(sentences: Sequence[str]) -> list[torch.Tensor]:
    targets = []
    for sentence in sentences:
        unknown = sorted(set(sentence) - set(ALPHABET))
        if unknown:
            raise ValueError(f"the CTC alphabet has no {unknown} (in {sentence!r}); it has: {ALPHABET!r}")
        targets.append(torch.tensor([ALPHABET.index(c) + 1 for c in sentence]))
    return targets


class EncoderCtc(torch.nn.Module):
    """Keeps the audio encoder's output of each forward and scores it against the spoken sentences."""

    def __init__(self, model: Any, encoder_dim: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(encoder_dim, len(ALPHABET) + 1)
        self._frames: torch.Tensor | None = None
        tower = model.get_submodule("model.audio_tower")
        self._handle = tower.register_forward_hook(self._keep)

    def _keep(self, _module: torch.nn.Module, _args: Any, output: Any) -> None:
        self._frames = output.last_hidden_state

    def loss(self, sentences: Sequence[str]) -> torch.Tensor:
        """CTC loss of the last forward's clips (in the order the processor batched them)."""
        frames, self._frames = self._frames, None
        if not sentences:
            return torch.zeros(())
        if frames is None or frames.shape[0] != len(sentences):
            raise RuntimeError("the encoder did not run on exactly one clip per sentence")
        log_probs = self.head(frames).log_softmax(-1).transpose(0, 1)  # (frames, clips, letters)
        targets = letter_targets(sentences)
        return F.ctc_loss(
            log_probs,
            torch.cat(targets),
            input_lengths=torch.full((len(targets),), frames.shape[1], dtype=torch.long),
            target_lengths=torch.tensor([len(t) for t in targets]),
            zero_infinity=True,
        )

    def remove(self) -> None:
        self._handle.remove()
