"""The project's single audio-decoding path.

Every entry point (HTTP service, CLI, calibration) decodes through :func:`decode_audio` so that the
model always sees the same thing for the same bytes: mono float32 at the model's rate, never silently
truncated, and rejected with a machine-readable :class:`AudioError` code when it cannot be trusted.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from numpy.typing import NDArray

SUPPORTED_FORMATS: tuple[str, ...] = ("wav", "flac", "ogg", "mp3")
AUDIO_EXTENSIONS: frozenset[str] = frozenset(f".{fmt}" for fmt in SUPPORTED_FORMATS)
SILENCE_PEAK = 1e-4

# libsndfile major-format names mapped onto the formats we accept; WAVEX is WAV with an extensible header.
_SF_FORMATS: dict[str, str] = {"WAV": "wav", "WAVEX": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3"}
_ALLOWED = ", ".join(SUPPORTED_FORMATS)


class AudioError(ValueError):
    """Bad client audio; ``code`` lets an HTTP layer map it to a status without parsing the message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _check_duration(n_frames: int, rate: int, max_seconds: float | None) -> None:
    """Refuse over-long audio: truncating would score a clip the caller never sent."""
    if max_seconds is not None and n_frames / rate > max_seconds:
        raise AudioError(
            "audio_too_long",
            f"audio is {n_frames / rate:.2f} s long; the limit is {max_seconds:g} s (it is never truncated)",
        )


def decode_audio(
    data: bytes, target_rate: int, *, format: str | None = None, max_seconds: float | None = None
) -> NDArray[np.float32]:
    """Decode WAV/FLAC/OGG/MP3 bytes to validated mono float32 at ``target_rate``.

    ``format`` is the caller's hint (file extension or upload field) and is only checked against
    :data:`SUPPORTED_FORMATS`; the container is detected from the bytes and must itself be supported,
    so a mislabelled but valid upload still decodes while e.g. AIFF is refused whatever its label.
    Channels are averaged (not summed) so downmixing cannot push a full-scale stereo file past 1.0.
    """
    if target_rate <= 0:
        raise ValueError(f"target_rate must be positive, got {target_rate}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    if format is not None and format.lower().lstrip(".") not in SUPPORTED_FORMATS:
        raise AudioError("unsupported_format", f"audio format {format!r} is not supported; allowed: {_ALLOWED}")
    if not data:
        raise AudioError("empty_audio", "audio payload is empty (0 bytes)")

    try:
        with sf.SoundFile(io.BytesIO(data)) as handle:
            container = _SF_FORMATS.get(handle.format)
            if container is None:
                raise AudioError(
                    "unsupported_format",
                    f"audio container {handle.format!r} is not supported; allowed: {_ALLOWED}",
                )
            source_rate = int(handle.samplerate)
            # Header check first so a huge upload is refused before it is decoded into memory.
            if handle.frames > 0:
                _check_duration(int(handle.frames), source_rate, max_seconds)
            frames = handle.read(dtype="float32", always_2d=True)
    except RuntimeError as exc:  # sf.LibsndfileError and friends
        reason = getattr(exc, "error_string", None) or str(exc)
        raise AudioError("undecodable_audio", f"could not decode audio: {reason}") from exc

    if frames.shape[0] == 0:
        raise AudioError("empty_audio", "audio contains no samples")
    _check_duration(frames.shape[0], source_rate, max_seconds)
    if not np.isfinite(frames).all():
        raise AudioError("non_finite_audio", "audio contains NaN or infinite samples; only finite values are allowed")

    mono = frames.mean(axis=1, dtype=np.float32)
    if source_rate != target_rate:
        mono = soxr.resample(mono, source_rate, target_rate, quality="HQ")
    mono = np.ascontiguousarray(mono, dtype=np.float32)

    if mono.size == 0:
        raise AudioError("empty_audio", "audio is too short to resample to a single sample")
    peak = float(np.max(np.abs(mono)))
    if peak < SILENCE_PEAK:
        raise AudioError(
            "silent_audio", f"audio is silent (peak {peak:.2e}); the peak must be at least {SILENCE_PEAK:g}"
        )
    return mono


def split_into_windows(samples: NDArray[np.float32], rate: int, window_seconds: float) -> list[NDArray[np.float32]]:
    """Consecutive window-long segments covering every sample (the last may be shorter), in order."""
    window = int(window_seconds * rate)
    if window <= 0:
        raise ValueError(f"window must hold at least one sample, got {window_seconds} s at {rate} Hz")
    return [samples[start : start + window] for start in range(0, len(samples), window)]


def load_audio_file(path: str | Path, target_rate: int, max_seconds: float | None = None) -> NDArray[np.float32]:
    """Decode a file through :func:`decode_audio` so files and uploads can never disagree.

    A missing path raises :class:`FileNotFoundError` (a caller/config mistake, not bad audio); decoding
    problems raise :class:`AudioError` with the same code as for bytes, and the message names the path.
    The extension is the format hint, so e.g. ``clip.aiff`` is refused as ``unsupported_format``.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"audio file not found (or not a regular file): {file}")
    try:
        return decode_audio(file.read_bytes(), target_rate, format=file.suffix or None, max_seconds=max_seconds)
    except AudioError as exc:
        raise AudioError(exc.code, f"{file}: {exc}") from exc


def list_audio_files(folder: Path) -> list[Path]:
    """Recursively list supported audio files in a stable order, so runs over a folder are reproducible.

    Extensions match case-insensitively; an empty result is an error because it is almost always a
    wrong path rather than an intentionally empty data set.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"audio folder does not exist: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"expected a folder of audio files, got a file: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise ValueError(f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) found under {folder}")
    return files
