"""The project's single audio-decoding path.

Every entry point (HTTP service, CLI, calibration) decodes through :func:`decode_audio` so that the
model always sees the same thing for the same bytes: mono float32 at the model's rate, never silently
truncated, and rejected with a machine-readable :class:`AudioError` code when it cannot be trusted.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import soxr
from numpy.typing import NDArray

SUPPORTED_FORMATS: tuple[str, ...] = ("wav", "flac", "ogg", "oga", "opus", "mp3", "webm", "m4a", "mp4", "aac")
AUDIO_EXTENSIONS: frozenset[str] = frozenset(f".{fmt}" for fmt in SUPPORTED_FORMATS)
SILENCE_PEAK = 1e-4
MAX_PEAK = 64.0
"""Largest sample magnitude accepted (full scale is 1): float files can exceed 1, but not by orders of
magnitude; far beyond it (1e19 and up) the log-mel features themselves overflow."""

# FFmpeg demuxers PyAV may open: the supported containers ("webm" is the matroska demuxer, "mp4" the mov
# one, "aac" raw ADTS), plus a few harmless audio-only ones so that refusing them can name them. Nothing
# else is even probed, so demuxers that open further files or URLs (hls, concat, ...) never run.
_ACCEPTED_DEMUXERS = frozenset({"wav", "flac", "ogg", "mp3", "webm", "mp4", "aac"})
_NAMED_REFUSALS = ("aiff", "caf", "w64", "au")
_OPEN_OPTIONS = {"format_whitelist": ",".join(sorted(_ACCEPTED_DEMUXERS) + list(_NAMED_REFUSALS))}
_ALLOWED = ", ".join(SUPPORTED_FORMATS)
# Full scale of the integer sample formats FFmpeg decoders produce (planar "s16p" shares "s16"'s).
_INT_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2.0**31, "s64": 2.0**63}


class AudioError(ValueError):
    """Bad client audio; ``code`` lets an HTTP layer map it to a status without parsing the message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def is_digital_silence(samples: NDArray[np.floating]) -> bool:
    """Whether a decoded clip is digital silence (a muted microphone): its peak is below :data:`SILENCE_PEAK`.

    Such audio is accepted by :func:`decode_audio`; this lets a caller flag it rather than refuse it.
    """
    return samples.size == 0 or float(np.max(np.abs(samples))) < SILENCE_PEAK


def _to_float(frame: av.AudioFrame) -> NDArray[np.float32]:
    """One decoded frame as float32 ``(channels, samples)`` in [-1, 1], exactly as the codec produced it."""
    array = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: one row of interleaved samples
        array = array.reshape(-1, frame.layout.nb_channels).T
    name = frame.format.name.rstrip("p")
    if name == "u8":
        return ((array.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if name in _INT_SCALE:
        return (array / _INT_SCALE[name]).astype(np.float32)
    return array.astype(np.float32, copy=False)


def _too_long(seconds: float, max_seconds: float, exact: bool) -> AudioError:
    """Refuse over-long audio: truncating would score a clip the caller never sent."""
    length = f"{seconds:.2f} s long" if exact else f"longer than {seconds:.2f} s"
    return AudioError("audio_too_long", f"audio is {length}; the limit is {max_seconds:g} s (it is never truncated)")


def _decode(data: bytes, max_seconds: float | None) -> tuple[NDArray[np.float32], int]:
    """The first audio stream's samples ``(channels, samples)`` and rate, decoded no further than the limit."""
    with av.open(io.BytesIO(data), mode="r", options=_OPEN_OPTIONS) as container:
        demuxer = container.format.name
        if not _ACCEPTED_DEMUXERS & set(demuxer.split(",")):
            raise AudioError(
                "unsupported_format", f"audio container {demuxer.upper()!r} is not supported; allowed: {_ALLOWED}"
            )
        if not container.streams.audio:
            raise AudioError(
                "no_audio_stream", f"the {demuxer} container holds no audio stream; send audio in one of: {_ALLOWED}"
            )
        chunks: list[NDArray[np.float32]] = []
        rate, decoded = 0, 0
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            if rate and frame.sample_rate != rate:
                raise AudioError("undecodable_audio", "could not decode audio: its sample rate changes mid-stream")
            rate = frame.sample_rate
            chunks.append(_to_float(frame))
            decoded += frame.samples
            # Judged on decoded samples (headers may omit or misstate the length) and checked per frame,
            # so an over-long stream is refused after decoding just past the limit, never all of it.
            if max_seconds is not None and decoded / rate > max_seconds:
                declared = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
                raise _too_long(max(declared, decoded / rate), max_seconds, exact=declared > decoded / rate)
    if not chunks:
        return np.zeros((1, 0), dtype=np.float32), 1
    if len({chunk.shape[0] for chunk in chunks}) > 1:
        raise AudioError("undecodable_audio", "could not decode audio: its channel count changes mid-stream")
    return np.concatenate(chunks, axis=1), rate


def decode_audio(
    data: bytes, target_rate: int, *, format: str | None = None, max_seconds: float | None = None
) -> NDArray[np.float32]:
    """Decode audio bytes (see :data:`SUPPORTED_FORMATS`) to validated mono float32 at ``target_rate``.

    Everything is decoded by FFmpeg through PyAV, from the first audio stream (video is ignored).
    ``format`` is the caller's hint (file extension or upload field) and is only checked against
    :data:`SUPPORTED_FORMATS`; the container is detected from the bytes and must itself be supported,
    so a mislabelled but valid upload still decodes while e.g. AIFF is refused whatever its label.
    The duration is that of the decoded samples, never a header's. Channels are averaged (not summed)
    so downmixing cannot push a full-scale stereo file past 1.0. Digital silence is accepted (see
    :func:`is_digital_silence`).
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
        frames, source_rate = _decode(data, max_seconds)
    except AudioError:
        raise
    except av.error.ArgumentError as exc:  # the format whitelist refused the detected container
        raise AudioError("unsupported_format", f"audio is not in a supported container; allowed: {_ALLOWED}") from exc
    except (av.FFmpegError, ValueError) as exc:  # ValueError: PyAV's own refusals of malformed frames
        reason = getattr(exc, "strerror", None) or str(exc)
        raise AudioError("undecodable_audio", f"could not decode audio: {reason}") from exc

    if frames.shape[1] == 0:
        raise AudioError("empty_audio", "audio contains no samples")
    if not np.isfinite(frames).all():
        raise AudioError("non_finite_audio", "audio contains NaN or infinite samples; only finite values are allowed")
    peak = float(np.abs(frames).max())
    if peak > MAX_PEAK:
        raise AudioError(
            "audio_out_of_range",
            f"audio samples reach {peak:.3g}; full scale is 1.0 and at most {MAX_PEAK:g} is accepted "
            "(a float file written without scaling?)",
        )

    mono = frames.mean(axis=0, dtype=np.float32)
    if source_rate != target_rate:
        mono = soxr.resample(mono, source_rate, target_rate, quality="HQ")
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if mono.size == 0:
        raise AudioError("empty_audio", "audio is too short to resample to a single sample")
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
