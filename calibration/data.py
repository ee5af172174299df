"""Calibration clip sets from folders, decoded through the project's one audio path."""

from __future__ import annotations

import hashlib
from pathlib import Path

from calibration.pipeline import ClipSet
from seen.adapters import Clip
from seen.audio import decode_audio, is_digital_silence, list_audio_files, split_into_windows

MIN_SEGMENT_SECONDS = 0.5
"""Tails of split clips shorter than this carry too few frames to pool and are left out."""


def calibration_segments(clip: Clip, sample_rate: int, window_seconds: float) -> list[Clip]:
    """A clip as calibration rows: one per window, short tails and digital silence left out.

    Calibration rows are clip means, so a long recording becomes several rows instead of being
    truncated to its first window; silence carries neither speech nor noise, so it is no row at all.
    """
    segments = [s for s in split_into_windows(clip, sample_rate, window_seconds) if not is_digital_silence(s)]
    if len(segments) == 1:
        return segments
    return [s for s in segments if len(s) >= MIN_SEGMENT_SECONDS * sample_rate]


def load_clip_set(name: str, folder: str | Path, sample_rate: int, window_seconds: float) -> ClipSet:
    """All audio files below ``folder`` as clips at ``sample_rate``, with a fingerprint of what they sound like.

    The fingerprint hashes the decoded samples, not the file bytes: a float WAV written by libsndfile carries
    a timestamped PEAK chunk, so the same audio written twice would otherwise fingerprint differently.
    """
    root = Path(folder)
    files = list_audio_files(root)
    digest = hashlib.sha256()
    clips: list[Clip] = []
    for path in files:
        clip = decode_audio(path.read_bytes(), sample_rate, format=path.suffix)
        digest.update(str(path.relative_to(root)).encode() + b"\0" + hashlib.sha256(clip.tobytes()).digest())
        clips.extend(calibration_segments(clip, sample_rate, window_seconds))
    return ClipSet(name=name, clips=clips, fingerprint=f"sha256:{digest.hexdigest()[:16]}:{len(files)}files")
