"""Tests for the single audio-decoding path (seen.audio)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

import seen.audio
from seen.audio import (
    SILENCE_PEAK,
    SUPPORTED_FORMATS,
    AudioError,
    decode_audio,
    is_digital_silence,
    list_audio_files,
    load_audio_file,
)

ALLOWED = ", ".join(SUPPORTED_FORMATS)

SUBTYPES = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}


def _sine(rate: int, seconds: float = 0.5, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype or SUBTYPES.get(fmt))
    return buf.getvalue()


def _speechlike(rate: int, n: int, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated tone with a little noise: what lossy speech codecs are built for."""
    t = np.arange(n) / rate
    voiced = np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 360 * t) + 0.25 * np.sin(2 * np.pi * 540 * t)
    noise = np.random.default_rng(seed).standard_normal(n)
    return (0.2 * voiced * (1 + 0.8 * np.sin(2 * np.pi * 4 * t)) + 0.01 * noise).astype(np.float32)


def _av_encode(samples: np.ndarray, rate: int, container: str, codec: str, video: bool = False) -> bytes:
    """Encode mono samples with PyAV (FFmpeg), as a browser or phone would, optionally beside a video stream."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        audio = out.add_stream(codec, rate=rate, layout="mono")
        if video:
            picture = out.add_stream("mpeg4", rate=25)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
            for index in range(int(len(samples) / rate * 25)):
                image = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * index % 255, np.uint8), format="rgb24")
                image.pts = index
                out.mux(picture.encode(image))
            out.mux(picture.encode())
        if len(samples):
            frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, 0
            out.mux(audio.encode(frame))
        out.mux(audio.encode())
    return buffer.getvalue()


def _streamed_flac(samples: np.ndarray, rate: int) -> bytes:
    """FLAC as written to a pipe (``ffmpeg -f flac -``): STREAMINFO's 36-bit total-samples field is 0 (unknown)."""
    data = bytearray(_encode(samples, rate, "FLAC"))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first metadata block is STREAMINFO, from byte 8
    data[21] &= 0xF0  # the field is the low 4 bits of byte 21 and bytes 22..25
    data[22:26] = bytes(4)
    return bytes(data)


def _best_correlation(out: np.ndarray, ref: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Correlation of ``out`` with ``ref`` at the lag (``out`` delayed by it) where they agree best."""
    best = (-1.0, 0)
    for lag in range(max_lag + 1):
        n = min(len(out) - lag, len(ref))
        best = max(best, (float(np.corrcoef(out[lag : lag + n], ref[:n])[0, 1]), lag))
    return best


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
    # FFmpeg cannot place Vorbis exactly when all the audio is on one Ogg page (a clip this short, at a low
    # rate): it is then up to a short block off (12 ms). Longer Ogg/Vorbis is exact (test_ogg_vorbis_and_raw_aac).
    tolerance = 192 if fmt == "OGG" else 1
    assert abs(out.size - round(x.size * 16000 / rate)) <= tolerance
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


@pytest.mark.parametrize("hint", ["wav", "WAV", ".flac", "ogg", "oga", "opus", "mp3", "webm", "m4a", "mp4", "aac"])
def test_supported_format_hints_accepted(hint: str) -> None:
    assert decode_audio(_encode(_sine(16000), 16000), 16000, format=hint).size == 8000


def test_unsupported_format_hint() -> None:
    err = _code(_encode(_sine(16000), 16000), format="aiff")
    assert err.code == "unsupported_format"
    assert "'aiff'" in str(err) and all(fmt in str(err) for fmt in SUPPORTED_FORMATS)


def test_unsupported_container_detected_from_bytes() -> None:
    err = _code(_encode(_sine(16000), 16000, "AIFF", "PCM_16"), format="wav")
    assert err.code == "unsupported_format" and "AIFF" in str(err) and ALLOWED in str(err)


def test_containers_that_open_other_files_are_never_probed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.wav"
    target.write_bytes(_encode(_sine(16000), 16000))
    err = _code(f"ffconcat version 1.0\nfile '{target}'\n".encode(), format="wav")
    assert err.code == "unsupported_format" and ALLOWED in str(err)
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nfile://{target}\n#EXT-X-ENDLIST\n"
    assert _code(playlist.encode()).code in ("unsupported_format", "undecodable_audio")


def test_undecodable_audio_carries_the_decoder_reason() -> None:
    err = _code(b"definitely not audio" * 20)
    assert err.code == "undecodable_audio"
    assert str(err).startswith("could not decode audio: ") and "invalid data" in str(err).lower()


def test_empty_payload_and_zero_frames() -> None:
    assert _code(b"").code == "empty_audio"
    err = _code(_encode(np.zeros((0, 1), dtype=np.float32), 16000))
    assert err.code == "empty_audio" and "no samples" in str(err)


@pytest.mark.parametrize("level", [0.0, 5e-5])
def test_digital_silence_is_accepted_and_detectable(level: float) -> None:
    out = decode_audio(_encode(np.full(16000, level, dtype=np.float32), 16000, "WAV", "FLOAT"), 16000)
    assert out.size == 16000 and is_digital_silence(out)
    muted = decode_audio(_av_encode(np.zeros(48000, dtype=np.float32), 48000, "webm", "libopus"), 16000)
    assert abs(muted.size - 16000) <= 16 and is_digital_silence(muted)


def test_is_digital_silence_threshold() -> None:
    assert is_digital_silence(np.zeros(0, dtype=np.float32))
    assert is_digital_silence(np.full(10, -0.9 * SILENCE_PEAK, dtype=np.float32))
    assert not is_digital_silence(np.array([0.0, -1.5 * SILENCE_PEAK], dtype=np.float32))
    assert not is_digital_silence(_sine(16000, amp=0.01))


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


def test_streamed_flac_without_length_decodes() -> None:
    x = _sine(16000, seconds=1.25)
    data = _streamed_flac(x, 16000)
    assert sf.info(io.BytesIO(data)).frames > 10**15  # what the old soundfile-only decoder trusted and refused
    out = decode_audio(data, 16000, format="flac", max_seconds=30)
    np.testing.assert_allclose(out, x, atol=1 / 32768)
    err = _code(data, max_seconds=1.0)
    assert err.code == "audio_too_long" and "limit is 1 s" in str(err)


def test_over_long_stream_is_refused_without_decoding_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten minutes of streamed FLAC (no length in its header) against a 1 s limit: decoding stops just past 1 s."""
    data = _streamed_flac(np.zeros(600 * 16000, dtype=np.float32), 16000)
    decoded: list[int] = []
    to_float = seen.audio._to_float

    def counting(frame: av.AudioFrame) -> np.ndarray:
        decoded.append(frame.samples)
        return to_float(frame)

    monkeypatch.setattr(seen.audio, "_to_float", counting)
    start = time.perf_counter()
    err = _code(data, max_seconds=1.0)
    elapsed = time.perf_counter() - start
    assert err.code == "audio_too_long" and "longer than 1." in str(err) and "limit is 1 s" in str(err)
    assert 16000 < sum(decoded) <= 16000 + 4096  # one FLAC block past the limit, not 9.6 million samples
    assert elapsed < 2.0


@pytest.mark.parametrize(
    ("container", "codec", "video"),
    [
        ("webm", "libopus", False),  # browsers' MediaRecorder
        ("ogg", "libopus", False),
        ("ipod", "aac", False),  # .m4a from phones
        ("mp4", "aac", True),  # a recorded video: its picture is ignored
    ],
)
def test_browser_and_phone_formats(container: str, codec: str, video: bool) -> None:
    # 70 AAC frames (1.493 s at 48 kHz; not a whole number of 20 ms Opus frames, so Opus end-trimming counts).
    x = _speechlike(48000, 70 * 1024)
    out = decode_audio(_av_encode(x, 48000, container, codec, video), 16000, max_seconds=2.0)
    ref = decode_audio(_encode(x, 48000, "WAV", "FLOAT"), 16000)
    assert abs(out.size - ref.size) <= 16  # within 1 ms: encoder delay and padding are trimmed
    correlation, lag = _best_correlation(out, ref, max_lag=32)
    assert lag <= 2 and correlation > 0.98
    assert 0.8 < np.sqrt(np.mean(out**2) / np.mean(ref**2)) < 1.2


def test_ogg_vorbis_and_raw_aac() -> None:
    x = _speechlike(48000, 72000)
    ref = decode_audio(_encode(x, 48000, "WAV", "FLOAT"), 16000)
    vorbis = decode_audio(_encode(x, 48000, "OGG", "VORBIS"), 16000, format="oga")
    assert abs(vorbis.size - ref.size) <= 16 and _best_correlation(vorbis, ref, 32)[0] > 0.98
    # Raw ADTS cannot signal the AAC encoder's priming, so its 1024 samples (21 ms) stay in, as in every player.
    raw = decode_audio(_av_encode(x, 48000, "adts", "aac"), 16000, format="aac")
    assert 0 <= raw.size - ref.size <= 1024
    correlation, lag = _best_correlation(raw, ref, max_lag=400)
    assert abs(lag - 1024 / 3) <= 2 and correlation > 0.98


def test_lossy_formats_are_refused_when_too_long() -> None:
    data = _av_encode(_speechlike(48000, 3 * 48000), 48000, "webm", "libopus")
    err = _code(data, format="webm", max_seconds=2.0)
    assert err.code == "audio_too_long" and "limit is 2 s" in str(err)
    assert decode_audio(data, 16000, max_seconds=3.0).size == 48000


def test_container_without_audio_is_refused() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        picture = out.add_stream("mpeg4", rate=25)
        picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        for index in range(10):
            image = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            image.pts = index
            out.mux(picture.encode(image))
        out.mux(picture.encode())
    err = _code(buffer.getvalue(), format="mp4")
    assert err.code == "no_audio_stream" and "no audio stream" in str(err) and ALLOWED in str(err)


def test_mislabelled_upload_decodes_from_its_bytes() -> None:
    data = _av_encode(_speechlike(48000, 48000), 48000, "webm", "libopus")
    assert abs(decode_audio(data, 16000, format="wav").size - 16000) <= 16


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
    for name in ["b.wav", "a.FLAC", "sub/c.ogg", "sub/deep/d.mp3", "notes.txt", "e.aiff", "f.webm", "g.M4A"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = list_audio_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.FLAC",
        "b.wav",
        "f.webm",
        "g.M4A",
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


def test_samples_far_beyond_full_scale_are_refused() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, np.full(8000, 1e30, dtype=np.float32), 16000, format="WAV", subtype="FLOAT")
    with pytest.raises(AudioError) as caught:
        decode_audio(buffer.getvalue(), 16000)
    assert caught.value.code == "audio_out_of_range" and "full scale is 1.0" in str(caught.value)
    loud = io.BytesIO()
    sf.write(loud, np.full(8000, 3.0, dtype=np.float32), 16000, format="WAV", subtype="FLOAT")
    assert decode_audio(loud.getvalue(), 16000).max() == pytest.approx(3.0)  # hot, but a real float file
