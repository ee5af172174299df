"""Evaluation inputs: clean clips with references, and the noise sources mixed into them.

A dataset is a CSV beside (or above) its audio files, in one of two shapes:

- question answering: ``file,question,answer`` (success = normalized exact match);
- transcription: ``file,transcript`` (or ``file,text``; success = 1 - WER, floored at 0).

Paths in ``file`` are relative to the CSV's folder. Audio goes through the project's one decoder.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class NoiseSource:
    """A synthetic noise type, or a folder of noise recordings (clip i uses recording i modulo their count)."""

    name: str
    folder: Path | None = None

    def for_clip(self, index: int, n_samples: int, sample_rate: int, seed: int) -> NDArray[np.float32]:
        if self.folder is None:
            return generate_noise(self.name, n_samples, sample_rate, seed=seed + index)
        files = list_audio_files(self.folder)
        return load_audio_file(files[index % len(files)], sample_rate)


def parse_noise(value: str) -> NoiseSource:
    """``white`` (a synthetic type) or ``NAME=DIR`` (a folder of recordings)."""
    name, separator, folder = value.partition("=")
    if separator:
        path = Path(folder)
        if not name or not path.is_dir() or not list_audio_files(path):
            raise ValueError(f"noise {value!r}: expected NAME=DIR with a folder of audio files")
        return NoiseSource(name, path)
    if value not in NOISE_TYPES:
        raise ValueError(f"unknown noise type {value!r}; synthetic types: {', '.join(NOISE_TYPES)}, or NAME=DIR")
    return NoiseSource(value)
