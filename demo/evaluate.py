"""How well the demo model answers: exact match and word error rate, clean and under synthetic noise.

Answers come from :class:`seen.adapters.AudioLM` (the model's chat template, batched greedy generation),
the same path the service generates through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jiwer
import numpy as np
import torch
from numpy.typing import NDArray

from seen.adapters import AudioLM
from seen.noise import generate_noise, mix_at_snr

QUESTION = "What did the speaker ask for?"
SNRS_DB = (30, 20, 10, 5, 0, -5, -10)
MAX_ANSWER_TOKENS = 80


@dataclass(frozen=True)
class Accuracy:
    exact_match: float
    wer: float
    count: int


def answer(
    lm: AudioLM, clips: Sequence[NDArray[np.float32]], question: str = QUESTION, batch_size: int = 32
) -> list[str]:
    """Greedy answers, one per clip."""
    answers: list[str] = []
    conversation = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": question}]}]
    for start in range(0, len(clips), batch_size):
        chunk = clips[start : start + batch_size]
        batch = lm.chat_batch([conversation] * len(chunk), chunk).to(lm.device, lm.dtype)
        with torch.inference_mode():
            tokens = lm.generate(batch, max_new_tokens=MAX_ANSWER_TOKENS, do_sample=False)
        answers += [text.strip() for text in lm.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    return answers


def score(answers: Sequence[str], references: Sequence[str]) -> Accuracy:
    exact = float(np.mean([a == r for a, r in zip(answers, references, strict=True)]))
    # An empty answer still counts as all words deleted.
    wer = float(jiwer.wer(list(references), [a or "<empty>" for a in answers]))
    return Accuracy(exact_match=exact, wer=wer, count=len(references))


def noisy(clips: Sequence[NDArray[np.float32]], kind: str, snr_db: float, seed: int) -> list[NDArray[np.float32]]:
    """Each clip mixed with its own noise of ``kind`` at ``snr_db`` (clip i uses noise seed ``seed + i``)."""
    return [mix_at_snr(clip, generate_noise(kind, clip.size, 16000, seed + i), snr_db) for i, clip in enumerate(clips)]
