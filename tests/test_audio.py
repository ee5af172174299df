"""Tests for the single audio-decoding path (seen.audio)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from seen.audio import SUPPORTED_FORMATS, AudioError, decode_audio, list_audio_files, load_audio_file

SUBTYPES = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}


def _sine(rate: int, seconds: float = 0.5, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype or SUBTYPES.get(fmt))
    return buf.getvalue()


def _code(data: bytes, format: str | None = None, max_seconds: float | None = None) -> AudioError:
    with pytest.raises(AudioError) as info:
        decode_audio(data, 16000, format=format, max_seconds=max_seconds)
    return info.value


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_round_trip_stereo_to_mono_resampled(fmt: str, rate: int) -> None:
    x = _sine(rate)
    out = decode_audio(_encode(np.stack([x, 0.5 * x], axis=1), rate, fmt), 16000)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(out.size - round(x.size * 16000 / rate)) <= 1
    assert 0.3 < np.max(np.abs(out)) < 0.45  # average of 0.5 and 0.25 peaks, not their sum


def test_mp3_round_trip() -> None:
    try:
        data = _encode(_sine(44100), 44100, "MP3")
    except (sf.LibsndfileError, TypeError, ValueError):
        pytest.skip("libsndfile built without MP3 encoding")
    out = decode_audio(data, 16000, format="mp3")
    assert abs(out.size - 8000) <= 1200  # MP3 pads with encoder delay


def test_downmix_is_channel_average_without_resampling() -> None:
    x = _sine(16000)
    out = decode_audio(_encode(np.stack([x, -0.2 * x], axis=1), 16000, "WAV", "FLOAT"), 16000)
    np.testing.assert_allclose(out, 0.4 * x, atol=1e-6)


def test_sine_keeps_frequency_after_resampling() -> None:
    out = decode_audio(_encode(_sine(44100, seconds=1.0), 44100), 16000)
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    peak_hz = np.fft.rfftfreq(out.size, 1 / 16000)[np.argmax(spectrum)]
    assert abs(peak_hz - 440.0) <= 1.0


@pytest.mark.parametrize("hint", ["wav", "WAV", ".flac", "ogg", "mp3"])
def test_supported_format_hints_accepted(hint: str) -> None:
    assert decode_audio(_encode(_sine(16000), 16000), 16000, format=hint).size == 8000


def test_unsupported_format_hint() -> None:
    err = _code(_encode(_sine(16000), 16000), format="aiff")
    assert err.code == "unsupported_format"
    assert "'aiff'" in str(err) and all(fmt in str(err) for fmt in SUPPORTED_FORMATS)


def test_unsupported_container_detected_from_bytes() -> None:
    err = _code(_encode(_sine(16000), 16000, "AIFF", "PCM_16"), format="wav")
    assert err.code == "unsupported_format" and "AIFF" in str(err) and "wav, flac, ogg, mp3" in str(err)


def test_undecodable_audio_carries_soundfile_reason() -> None:
    err = _code(b"definitely not audio" * 20)
    assert err.code == "undecodable_audio"
    assert str(err).startswith("could not decode audio: ") and "not recognised" in str(err).lower()


def test_empty_payload_and_zero_frames() -> None:
    assert _code(b"").code == "empty_audio"
    err = _code(_encode(np.zeros((0, 1), dtype=np.float32), 16000))
    assert err.code == "empty_audio" and "no samples" in str(err)


def test_silent_audio() -> None:
    err = _code(_encode(np.full(16000, 5e-5, dtype=np.float32), 16000, "WAV", "FLOAT"))
    assert err.code == "silent_audio" and "peak" in str(err) and "0.0001" in str(err)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_audio(bad: float) -> None:
    x = _sine(16000)
    x[100] = bad
    err = _code(_encode(x, 16000, "WAV", "FLOAT"))
    assert err.code == "non_finite_audio" and "NaN or infinite" in str(err)


def test_too_long_is_rejected_not_truncated() -> None:
    data = _encode(_sine(16000, seconds=2.5), 16000)
    err = _code(data, max_seconds=2.0)
    assert err.code == "audio_too_long" and "2.50 s" in str(err) and "limit is 2 s" in str(err)
    assert decode_audio(data, 16000, max_seconds=2.5).size == 40000  # exactly at the limit is fine


def test_invalid_arguments_are_plain_value_errors() -> None:
    data = _encode(_sine(16000), 16000)
    with pytest.raises(ValueError, match="target_rate"):
        decode_audio(data, 0)
    with pytest.raises(ValueError, match="max_seconds"):
        decode_audio(data, 16000, max_seconds=0)


def test_load_audio_file(tmp_path: Path) -> None:
    path = tmp_path / "a.flac"
    path.write_bytes(_encode(_sine(8000), 8000, "FLAC"))
    assert load_audio_file(path, 16000).size == 8000
    assert load_audio_file(str(path), 8000).size == 4000


def test_load_audio_file_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.wav"):
        load_audio_file(tmp_path / "missing.wav", 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"garbage" * 50)
    with pytest.raises(AudioError) as info:
        load_audio_file(bad, 16000)
    assert info.value.code == "undecodable_audio" and str(bad) in str(info.value)


def test_list_audio_files(tmp_path: Path) -> None:
    for name in ["b.wav", "a.FLAC", "sub/c.ogg", "sub/deep/d.mp3", "notes.txt", "e.aiff"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = list_audio_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.FLAC",
        "b.wav",
        "sub/c.ogg",
        "sub/deep/d.mp3",
    ]


def test_list_audio_files_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        list_audio_files(tmp_path / "nope")
    (tmp_path / "f.wav").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match=r"f\.wav"):
        list_audio_files(tmp_path / "f.wav")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no audio")
    with pytest.raises(ValueError, match=r"no audio files.*empty"):
        list_audio_files(empty)
