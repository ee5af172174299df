"""Spoken examples of the demo task: who says which sentence, synthesized in parallel.

Training and test sets never share a voice variant, and the held-out sentences never reach training,
so the reported accuracy measures listening to new voices (and, separately, new sentences).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from demo.corpus import is_held_out, sentences, swapped_sentences, word_strings
from demo.speech import ACCENTS, Voice, split_variants, synthesize

QUESTIONS = ("What did the speaker ask for?", "Transcribe the audio.", "Transcribe the audio exactly, word for word.")
"""Instructions the model is trained to follow; the last one is the service's transcription instruction."""
NO_AUDIO_ANSWER = "there is no audio to listen to."
"""What the model says when the request holds no audio (the answer is never guessable from text)."""
SPOKEN_SECONDS = 4.0
"""The longest a request is spoken (a longer take is re-spoken faster): training, card and calibration clips."""
RATES = (130, 200)
PITCHES = (25, 75)


@dataclass(frozen=True)
class Example:
    """One spoken request and its answer (the sentence itself, lower case)."""

    sentence: str
    voice: Voice
    audio: NDArray[np.float32]


def split_sentences() -> tuple[list[str], list[str]]:
    """(training sentences, held-out sentences)."""
    every = sentences()
    return [s for s in every if not is_held_out(s)], [s for s in every if is_held_out(s)]


def voices(variants: Sequence[str]) -> list[tuple[str, str]]:
    """Every (accent, variant) pair of ``variants``."""
    return [(accent, variant) for accent in ACCENTS for variant in variants]


def speak(pairs: Sequence[tuple[str, Voice]], window_seconds: float, workers: int = 4) -> list[Example]:
    """Synthesize ``(sentence, voice)`` pairs; a take longer than the window is re-spoken faster, never cut."""

    def one(pair: tuple[str, Voice]) -> Example:
        sentence, voice = pair
        audio = synthesize(sentence, voice)
        while audio.size > window_seconds * 16000:
            voice = Voice(voice.accent, voice.variant, voice.rate + 20, voice.pitch)
            audio = synthesize(sentence, voice)
        return Example(sentence, voice, audio)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, pairs))


def sample_pairs(
    sentence_pool: Sequence[str], variant_pool: Sequence[str], count: int, seed: int
) -> list[tuple[str, Voice]]:
    """``count`` random (sentence, voice) pairs with random rate and pitch; the same seed gives the same list."""
    rng = random.Random(seed)
    people = voices(variant_pool)
    pairs = []
    for index in range(count):
        accent, variant = rng.choice(people)
        voice = Voice(accent, variant, rate=rng.randint(*RATES), pitch=rng.randint(*PITCHES))
        # Cycle through the sentences so every one is heard about equally often.
        sentence = (
            sentence_pool[index % len(sentence_pool)] if index < len(sentence_pool) else rng.choice(sentence_pool)
        )
        pairs.append((sentence, voice))
    return pairs


def training_pairs(
    count: int, seed: int, word_string_count: int = 0, swapped_count: int = 0
) -> list[tuple[str, Voice]]:
    """Training voices saying training sentences, then ``word_string_count`` random strings of their words,
    then ``swapped_count`` of them with words swapped (:func:`demo.corpus.swapped_sentences`)."""
    train_sentences, _ = split_sentences()
    train_variants, _ = split_variants()
    pairs = sample_pairs(train_sentences, train_variants, count, seed)
    if word_string_count:
        vocabulary = sorted({word for sentence in train_sentences for word in sentence.split()})
        strings = word_strings(vocabulary, word_string_count, seed + 1)
        pairs += sample_pairs(strings, train_variants, word_string_count, seed + 2)
    if swapped_count:
        swapped = swapped_sentences(train_sentences, swapped_count, seed + 3)
        pairs += sample_pairs(swapped, train_variants, swapped_count, seed + 4)
    return pairs


def held_out_pairs(count: int, seed: int, *, new_sentences: bool = False) -> list[tuple[str, Voice]]:
    """Held-out voices saying training sentences, or (``new_sentences``) held-out voices saying held-out sentences."""
    train_sentences, held_sentences = split_sentences()
    _, held_variants = split_variants()
    return sample_pairs(held_sentences if new_sentences else train_sentences, held_variants, count, seed)
