"""The demo task: spoken requests to an in-car or meeting assistant, built from a small grammar.

The grammar is compositional (action x device x place, destination kinds, contacts, numbers, meeting
controls) so that a model must hear every word to answer; the answer is the sentence itself in lower
case. Sentences are split deterministically so that some are never heard in training.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re

_DEVICES = ("heater", "lights", "fan", "radio", "seat heating", "air conditioning", "defroster", "reading light")
_PLACES = ("front", "back", "driver side", "passenger side", "left", "right")
_DESTINATIONS = (
    "charging station", "gas station", "parking garage", "hospital", "pharmacy", "coffee shop", "restaurant", "hotel",
)  # fmt: skip
_CONTACTS = ("the office", "my manager", "the garage", "the front desk", "the doctor", "home")
_NUMBERS = ("eighteen", "nineteen", "twenty", "twenty one", "twenty two", "twenty three", "twenty four")
_MEETING = (
    "start the meeting recording", "stop the meeting recording", "mute the microphone", "unmute the microphone",
    "share my screen", "stop sharing my screen", "turn on the camera", "turn off the camera",
)  # fmt: skip
_GENRES = ("jazz", "rock", "classical", "news")
_WINDOWS = ("front left window", "front right window", "rear left window", "rear right window", "sunroof")
_HOURS = ("nine", "ten", "eleven", "two", "three")
_LEVELS = ("one", "two", "three", "four", "five")


def sentences() -> list[str]:
    """Every sentence of the task, lower case, in a fixed order."""
    built = [f"turn {state} the {device} in the {place}" for state, device, place in
             itertools.product(("on", "off"), _DEVICES, _PLACES)]  # fmt: skip
    built += [f"navigate to the nearest {place}" for place in _DESTINATIONS]
    built += [f"find a {place} nearby" for place in _DESTINATIONS]
    built += [f"call {contact}" for contact in _CONTACTS]
    built += [f"send a message to {contact}" for contact in _CONTACTS]
    built += [f"set the temperature to {number} degrees" for number in _NUMBERS]
    built += [f"set the temperature in the {zone} to {n} degrees" for zone in ("front", "back") for n in _NUMBERS]
    built += [f"set the fan speed to {level}" for level in _LEVELS]
    built += [f"set the volume to {level}" for level in _LEVELS]
    built += [f"{verb} the {window}" for verb in ("open", "close") for window in _WINDOWS]
    built += list(_MEETING)
    built += [f"play {genre} on the radio" for genre in _GENRES]
    built += [f"remind me to call {contact}" for contact in _CONTACTS]
    built += [f"schedule a meeting with {contact} at {hour}" for contact in _CONTACTS[:4] for hour in _HOURS]
    return built


def content_words(texts: list[str]) -> set[str]:
    """Words that carry meaning (articles, prepositions and the like left out)."""
    function = {"the", "to", "in", "on", "my", "a", "of"}
    return {word for text in texts for word in re.findall(r"[a-z]+", text) if word not in function}


def is_held_out(sentence: str, share: float = 0.1) -> bool:
    """Whether a sentence is kept out of training (a stable hash, so every run agrees)."""
    digest = int.from_bytes(hashlib.sha256(sentence.encode()).digest()[:4], "big")
    return digest / 2**32 < share


def word_strings(vocabulary: list[str], count: int, seed: int, lengths: tuple[int, int] = (2, 8)) -> list[str]:
    """``count`` random strings of the task's words, none of them a sentence of the task.

    Heard beside the sentences in training, they make the model transcribe what it hears instead of
    completing a memorized template, which is what answering a held-out sentence needs.
    """
    rng = random.Random(seed)
    known = set(sentences())
    strings: list[str] = []
    while len(strings) < count:
        text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(*lengths)))
        if text not in known:
            strings.append(text)
    return strings


def swapped_sentences(base: list[str], count: int, seed: int) -> list[str]:
    """``count`` sentences of ``base`` with one content word (sometimes two) replaced by another of
    ``base``'s content words, none of them a sentence of the task.

    A held-out sentence is a familiar frame around a filler never heard in it ("find a hotel nearby");
    these keep the frames and change the fillers, so the model learns that a frame's words are heard, not
    predicted.
    """
    rng = random.Random(seed)
    content = content_words(base)
    vocabulary = sorted(content)
    known = set(sentences())
    swapped: list[str] = []
    while len(swapped) < count:
        words = rng.choice(base).split()
        fillers = [position for position, word in enumerate(words) if word in content]
        for position in rng.sample(fillers, min(len(fillers), 1 if rng.random() < 0.7 else 2)):
            words[position] = rng.choice([word for word in vocabulary if word != words[position]])
        text = " ".join(words)
        if text not in known:
            swapped.append(text)
    return swapped
