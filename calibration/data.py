"""Calibration clip sets from folders, decoded through the project's one audio path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from calibration.pipeline import ClipSet
from seen.adapters import Clip
from seen.audio import decode_audio, list_audio_files

MIN_SEGMENT_SECONDS = 0.5
"""Tails of split clips shorter than this carry too few frames to pool and are left out."""


def split_into_windows(clip: Clip, sample_rate: int, window_seconds: float) -> list[Clip]:
    """Cut a clip longer than the model's window into consecutive window-length segments.

    Calibration rows are clip means, so a long recording becomes several rows instead of being
    truncated to its first window.
    """
    window = int(window_seconds * sample_rate)
    if len(clip) <= window:
        return [clip]
    segments = [clip[start : start + window] for start in range(0, len(clip), window)]
    return [s for s in segments if len(s) >= MIN_SEGMENT_SECONDS * sample_rate and np.abs(s).max() > 0]


def load_clip_set(name: str, folder: str | Path, sample_rate: int, window_seconds: float) -> ClipSet:
    """All audio files below ``folder`` as clips at ``sample_rate``, with a fingerprint of their bytes."""
    root = Path(folder)
    files = list_audio_files(root)
    digest = hashlib.sha256()
    clips: list[Clip] = []
    for path in files:
        data = path.read_bytes()
        digest.update(str(path.relative_to(root)).encode() + b"\0" + hashlib.sha256(data).digest())
        clip = decode_audio(data, sample_rate, format=path.suffix)
        clips.extend(split_into_windows(clip, sample_rate, window_seconds))
    return ClipSet(name=name, clips=clips, fingerprint=f"sha256:{digest.hexdigest()[:16]}:{len(files)}files")
