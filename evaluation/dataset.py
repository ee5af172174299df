"""Evaluation inputs: clean clips with references, and the noise sources mixed into them.

A dataset is a CSV beside (or above) its audio files, in one of two shapes:

- question answering: ``file,question,answer`` (success = normalized exact match);
- transcription: ``file,transcript`` (or ``file,text``; success = 1 - WER, floored at 0).

Paths in ``file`` are relative to the CSV's folder. Audio goes through the project's one decoder.

Noise comes from a synthetic type, a folder of noise recordings, or babble built from a folder of real
speech by speakers other than the evaluated clip's (for LibriSpeech, whose files are named
SPEAKER-CHAPTER-UTTERANCE).
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from seen.audio import list_audio_files, load_audio_file
from seen.noise import NOISE_TYPES, generate_noise

TRANSCRIBE_QUESTION = "Transcribe the audio exactly, word for word."
"""The instruction for transcription datasets: the service's own transcription instruction."""

Task = Literal["qa", "transcription"]


@dataclass(frozen=True)
class Item:
    """One clean clip, what to ask about it and the reference answer."""

    clip_id: str
    audio: NDArray[np.float32]
    question: str
    reference: str


@dataclass(frozen=True)
class Dataset:
    name: str
    task: Task
    items: list[Item]
    fingerprint: str


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: the form answers and references are compared in."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def load_dataset(csv_path: Path, sample_rate: int, limit: int | None = None) -> Dataset:
    """Read a dataset CSV; every problem is reported with the row it is on."""
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        rows = list(reader)
    if {"file", "question", "answer"} <= columns:
        task: Task = "qa"
    elif "file" in columns and columns & {"transcript", "text"}:
        task = "transcription"
    else:
        raise ValueError(
            f"{csv_path}: columns {sorted(columns)}; expected file,question,answer (question answering) "
            "or file,transcript / file,text (transcription)"
        )
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"{csv_path} has no rows")
    digest = hashlib.sha256()
    items = []
    for number, row in enumerate(rows, start=2):
        path = csv_path.parent / row["file"]
        if not path.is_file():
            raise ValueError(f"{csv_path}, line {number}: audio file {path} does not exist")
        audio = load_audio_file(path, sample_rate)
        if task == "qa":
            question, reference = row["question"], row["answer"]
        else:
            question, reference = TRANSCRIBE_QUESTION, row.get("transcript") or row.get("text") or ""
        if not reference.strip():
            raise ValueError(f"{csv_path}, line {number}: empty reference")
        digest.update(f"{row['file']}|{question}|{reference}|{audio.size}".encode())
        items.append(Item(Path(row["file"]).stem, audio, question, reference))
    return Dataset(csv_path.stem, task, items, digest.hexdigest()[:16])


DEFAULT_BABBLE_TALKERS = 5
BABBLE_PREFIX = "babble:"


def speaker_of(clip_id: str) -> str:
    """The speaker of a clip named like LibriSpeech's SPEAKER-CHAPTER-UTTERANCE (else the whole name)."""
    return clip_id.split("-", 1)[0]


@cache
def _speech_by_speaker(folder: Path) -> dict[str, tuple[Path, ...]]:
    """A folder's recordings grouped by speaker, listed once per process (a corpus folder can be large)."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in list_audio_files(folder):
        groups[speaker_of(path.stem)].append(path)
    return {speaker: tuple(paths) for speaker, paths in sorted(groups.items())}


@lru_cache(maxsize=256)
def _recording(path: Path, sample_rate: int) -> NDArray[np.float64]:
    """A decoded recording at unit RMS, read-only: a babble clip reuses it at every SNR of a noise type."""
    audio = load_audio_file(path, sample_rate).astype(np.float64)
    rms = float(np.sqrt(np.mean(audio**2)))
    if rms <= 1e-8:
        raise ValueError(f"{path} is silent; it cannot be a babble talker")
    audio /= rms
    audio.setflags(write=False)
    return audio


@dataclass(frozen=True)
class NoiseSource:
    """A synthetic noise type, a folder of noise recordings, or babble of real speech.

    With a folder and ``talkers == 0``, clip i uses recording i modulo their count. With ``talkers > 0`` the
    folder holds speech: each clip's babble mixes that many recordings by distinct speakers, none of them the
    clip's own, chosen by ``seed + index`` (see :meth:`babble_recordings`).
    """

    name: str
    folder: Path | None = None
    talkers: int = 0

    @property
    def spec(self) -> str:
        """The ``--noise`` value that gives this source (also its record in a run's settings)."""
        if self.folder is None:
            return self.name
        return (
            f"{self.name}={BABBLE_PREFIX}{self.talkers}:{self.folder}" if self.talkers else f"{self.name}={self.folder}"
        )

    def _babble_plan(self, index: int, clip_id: str, seed: int) -> list[tuple[Path, float]]:
        """(recording, start as a fraction of its length) per talker; one RNG stream per (seed, clip index)."""
        assert self.folder is not None
        groups = _speech_by_speaker(self.folder)
        others = [speaker for speaker in groups if speaker != speaker_of(clip_id)]
        if len(others) < self.talkers:
            raise ValueError(
                f"noise {self.name!r}: {self.folder} has {len(others)} speakers besides {speaker_of(clip_id)!r} "
                f"(clip {clip_id}), fewer than the {self.talkers} talkers asked for"
            )
        rng = np.random.default_rng(seed + index)
        chosen = rng.choice(len(others), size=self.talkers, replace=False)
        recordings = [groups[others[i]][int(rng.integers(len(groups[others[i]])))] for i in chosen]
        return list(zip(recordings, rng.random(self.talkers).tolist(), strict=True))

    def babble_recordings(self, index: int, clip_id: str, seed: int) -> list[Path]:
        """The recordings mixed into clip ``index``'s babble: distinct speakers, never the clip's own."""
        return [path for path, _ in self._babble_plan(index, clip_id, seed)]

    def for_clip(
        self, index: int, n_samples: int, sample_rate: int, seed: int, clip_id: str = ""
    ) -> NDArray[np.float32]:
        """Noise for clip ``index`` (named ``clip_id``, whose speaker real-speech babble leaves out)."""
        if self.folder is None:
            return generate_noise(self.name, n_samples, sample_rate, seed=seed + index)
        if not self.talkers:
            files = list_audio_files(self.folder)
            return load_audio_file(files[index % len(files)], sample_rate)
        # Each talker at equal (unit) RMS over its whole recording, so a pause in the cut does not get boosted;
        # looped from a random start to the clip's length.
        total = np.zeros(n_samples)
        for path, start in self._babble_plan(index, clip_id, seed):
            audio = _recording(path, sample_rate)
            total += np.resize(np.roll(audio, -int(start * audio.size)), n_samples)
        rms = float(np.sqrt(np.mean(total**2)))
        if rms <= 1e-8:
            raise ValueError(f"noise {self.name!r}: the babble for clip {clip_id} is silent")
        return (total / rms).astype(np.float32)


def _parse_babble(name: str, spec: str, value: str) -> NoiseSource:
    count, colon, rest = spec.partition(":")
    talkers, folder = (int(count), rest) if colon and count.isdigit() else (DEFAULT_BABBLE_TALKERS, spec)
    path = Path(folder)
    if talkers < 1 or not path.is_dir():
        raise ValueError(f"noise {value!r}: expected NAME=babble:DIR or NAME=babble:K:DIR (K >= 1 talkers)")
    speakers = len(_speech_by_speaker(path))
    if speakers < talkers:
        raise ValueError(f"noise {value!r}: {path} holds {speakers} speakers, fewer than {talkers} talkers")
    return NoiseSource(name, path, talkers)


def parse_noise(value: str) -> NoiseSource:
    """``white`` (a synthetic type), ``NAME=DIR`` (a folder of noise recordings) or ``NAME=babble[:K]:DIR``.

    The last builds each clip's babble from K (default 5) speech recordings in DIR by other speakers.
    """
    name, separator, folder = value.partition("=")
    if separator and name and folder.startswith(BABBLE_PREFIX):
        return _parse_babble(name, folder.removeprefix(BABBLE_PREFIX), value)
    if separator:
        path = Path(folder)
        if not name or not path.is_dir() or not list_audio_files(path):
            raise ValueError(f"noise {value!r}: expected NAME=DIR with a folder of audio files")
        return NoiseSource(name, path)
    if value not in NOISE_TYPES:
        raise ValueError(
            f"unknown noise type {value!r}; synthetic types: {', '.join(NOISE_TYPES)}, or NAME=DIR, "
            "or NAME=babble[:K]:DIR"
        )
    return NoiseSource(value)
