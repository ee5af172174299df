"""Synthetic speech for the demo task: espeak-ng voices (accent + variant), rates and pitches.

Audio goes through :func:`seen.audio.decode_audio` like every other input, so training, tests and
the service hear the same thing. Voices are split by variant: the held-out variants are never
heard in training, so test accuracy measures generalisation to new voices.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import NDArray

from seen.audio import decode_audio

ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
"""espeak-ng's own English voices (the mbrola ones need a separate synthesizer)."""
HELD_OUT_SHARE = 0.2


class SpeechUnavailable(RuntimeError):
    """espeak-ng is not installed."""


@dataclass(frozen=True)
class Voice:
    accent: str
    variant: str
    rate: int = 160  # words per minute
    pitch: int = 50  # 0..99

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}"


def _espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise SpeechUnavailable("espeak-ng is not installed (Debian package espeak-ng)")
    return path


@cache
def variants() -> tuple[str, ...]:
    """The voice variants espeak-ng ships, by file name, sorted."""
    listing = subprocess.run([_espeak(), "--voices=variant"], capture_output=True, text=True, check=True).stdout
    names = [line.split()[-1].removeprefix("!v/") for line in listing.splitlines()[1:] if "!v/" in line]
    return tuple(sorted(set(names)))


def is_held_out_variant(variant: str) -> bool:
    digest = int.from_bytes(hashlib.sha256(variant.encode()).digest()[:4], "big")
    return digest / 2**32 < HELD_OUT_SHARE


def split_variants() -> tuple[list[str], list[str]]:
    """(training variants, held-out variants)."""
    every = variants()
    return [v for v in every if not is_held_out_variant(v)], [v for v in every if is_held_out_variant(v)]


def synthesize(text: str, voice: Voice, sample_rate: int = 16000) -> NDArray[np.float32]:
    """Speak ``text`` with ``voice``: mono float32 at ``sample_rate``."""
    command = [_espeak(), "--stdout", "-v", voice.name, "-s", str(voice.rate), "-p", str(voice.pitch), text]
    wav = subprocess.run(command, capture_output=True, check=True).stdout
    return decode_audio(wav, sample_rate, format="wav")
