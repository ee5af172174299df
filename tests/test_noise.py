"""Tests for deterministic noise generation and SNR-exact mixing (seen.noise)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal, stats

from seen.noise import NOISE_TYPES, achieved_snr_db, generate_noise, mix_at_snr, mix_components

SR = 16000


def _psd(x: np.ndarray, rate: int = SR) -> tuple[np.ndarray, np.ndarray]:
    return signal.welch(x.astype(np.float64), rate, nperseg=4096)


def _loglog_slope(x: np.ndarray, lo: float = 50.0, hi: float = 2000.0) -> float:
    f, p = _psd(x)
    band = (f >= lo) & (f <= hi)
    return float(np.polyfit(np.log10(f[band]), np.log10(p[band]), 1)[0])


def _frame_rms(x: np.ndarray, rate: int, frame_s: float = 0.05) -> np.ndarray:
    frame = int(rate * frame_s)
    x64 = x[: x.size // frame * frame].astype(np.float64)
    return np.sqrt(np.mean(x64.reshape(-1, frame) ** 2, axis=1))


def _syllabic_modulation(x: np.ndarray, rate: int) -> tuple[float, float]:
    """(2-8 Hz envelope power, its share of the 0.5-20 Hz envelope power)."""
    sos = signal.butter(4, 30.0, fs=rate, output="sos")
    env = signal.sosfiltfilt(sos, np.abs(x.astype(np.float64)))[:: rate // 100]
    f, p = signal.periodogram(env / env.mean() - 1.0, 100.0)
    band = float(p[(f >= 2) & (f <= 8)].sum())
    return band, band / float(p[(f >= 0.5) & (f <= 20)].sum())


def _speech_like(rate: int, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


@pytest.mark.parametrize("kind", NOISE_TYPES)
def test_deterministic_unit_rms_float32(kind: str) -> None:
    a = generate_noise(kind, 2 * SR, SR, seed=7)
    assert a.dtype == np.float32 and a.shape == (2 * SR,) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, generate_noise(kind, 2 * SR, SR, seed=7))
    assert not np.allclose(a, generate_noise(kind, 2 * SR, SR, seed=8))
    assert np.sqrt(np.mean(a.astype(np.float64) ** 2)) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("kind", NOISE_TYPES)
@pytest.mark.parametrize("n", [2, 37, 800])
def test_short_clips_and_other_rates(kind: str, n: int) -> None:
    for rate in (8000, 44100):
        x = generate_noise(kind, n, rate, seed=1)
        assert x.shape == (n,) and np.isfinite(x).all()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="white, pink, brown, babble, engine, wind"):
        generate_noise("traffic", 100, SR, 0)
    with pytest.raises(ValueError, match="n_samples"):
        generate_noise("white", 0, SR, 0)


def test_white_is_flat() -> None:
    assert abs(_loglog_slope(generate_noise("white", 10 * SR, SR, 0))) < 0.1


def test_pink_slope_minus_one() -> None:
    assert _loglog_slope(generate_noise("pink", 10 * SR, SR, 0)) == pytest.approx(-1.0, abs=0.15)


def test_brown_slope_minus_two_without_drift() -> None:
    x = generate_noise("brown", 10 * SR, SR, 0)
    assert _loglog_slope(x) == pytest.approx(-2.0, abs=0.2)
    halves = x.reshape(2, -1).mean(axis=1)
    assert np.all(np.abs(halves) < 0.5)  # leaky integration: no random-walk drift


def test_engine_energy_below_300_hz() -> None:
    for seed in range(3):
        f, p = _psd(generate_noise("engine", 5 * SR, SR, seed))
        assert p[f < 300].sum() / p.sum() > 0.9


def test_wind_is_low_passed_and_gusty() -> None:
    rate = 8000
    wind = generate_noise("wind", 20 * rate, rate, seed=3)
    white_rms = _frame_rms(generate_noise("white", 20 * rate, rate, seed=3), rate)
    wind_rms = _frame_rms(wind, rate)
    assert wind_rms.std() / wind_rms.mean() > 0.5
    assert white_rms.std() / white_rms.mean() < 0.1
    f, p = signal.welch(wind.astype(np.float64), rate, nperseg=4096)
    assert p[f < 500].sum() / p.sum() > 0.9


def test_babble_has_syllabic_modulation() -> None:
    rate = 8000
    babble_band, babble_share = _syllabic_modulation(generate_noise("babble", 20 * rate, rate, 0), rate)
    white_band, _ = _syllabic_modulation(generate_noise("white", 20 * rate, rate, 0), rate)
    assert babble_share > 0.5  # most envelope fluctuation sits at syllable rates
    assert babble_band > 20 * white_band


def _level_variation(x: np.ndarray, rate: int = SR) -> float:
    """Coefficient of variation of the 250 ms frame RMS: how much the level moves over time."""
    rms = _frame_rms(x, rate, frame_s=0.25)
    return float(rms.std() / rms.mean())


def _transient_ratio(x: np.ndarray, rate: int = SR) -> float:
    """Energy of the loudest 10 ms frame above 2 kHz over that of the median frame."""
    high = signal.sosfilt(signal.butter(4, 2000.0, btype="highpass", fs=rate, output="sos"), x)
    energy = _frame_rms(high, rate, frame_s=0.01) ** 2
    return float(energy.max() / np.median(energy))


def test_cabin_is_a_low_rumble_whose_level_drifts_unlike_engine() -> None:
    for seed in range(3):
        cabin = generate_noise("cabin", 20 * SR, SR, seed)
        f, p = _psd(cabin)
        assert p[f < 500].sum() / p.sum() > 0.9  # measured 0.97
        assert p[f > 2000].sum() / p.sum() < 0.01
        # The road part swells and fades with the surface (measured 0.23-0.31); engine's drone is steady (~0.07).
        assert _level_variation(cabin) > 0.18
        assert _level_variation(generate_noise("engine", 20 * SR, SR, seed)) < 0.1
    assert _level_variation(generate_noise("white", 20 * SR, SR, 0)) < 0.05


def test_cafeteria_is_babble_with_bright_transients() -> None:
    for seed in range(3):
        cafeteria = generate_noise("cafeteria", 10 * SR, SR, seed).astype(np.float64)
        babble = generate_noise("babble", 10 * SR, SR, seed).astype(np.float64)
        # Clinks make the amplitude distribution heavy-tailed (measured kurtosis 1.4-2.3 vs 0.4-0.7 for babble).
        assert stats.kurtosis(cafeteria) > stats.kurtosis(babble) + 0.5
        # Above 2 kHz the loudest 10 ms frame outweighs the median one by >1000x (a clink); babble's by ~10x.
        assert _transient_ratio(cafeteria) > 100 > 3 * _transient_ratio(babble)
        f, p = _psd(cafeteria)
        fb, pb = _psd(babble)
        assert p[f > 2000].sum() / p.sum() > 0.05 > 20 * pb[fb > 2000].sum() / pb.sum()  # bright, babble is not
        # The bed keeps the syllabic rhythm of babble.
        assert _syllabic_modulation(cafeteria.astype(np.float32), SR)[1] > 0.3
        assert _level_variation(cafeteria) > 0.1


@pytest.mark.parametrize("snr_db", [-10.0, -5.0, 0.0, 5.0, 10.0, 20.0, 30.0])
def test_mix_hits_snr(snr_db: float) -> None:
    clean = _speech_like(SR)
    mix = mix_components(clean, generate_noise("pink", clean.size, SR, 0), snr_db)
    assert achieved_snr_db(mix.clean, mix.mixture) == pytest.approx(snr_db, abs=0.1)
    np.testing.assert_allclose(mix.mixture, mix.clean + mix.noise, atol=1e-6)
    np.testing.assert_array_equal(mix.mixture, mix_at_snr(clean, generate_noise("pink", clean.size, SR, 0), snr_db))
    assert mix.mixture.dtype == np.float32 and np.max(np.abs(mix.mixture)) <= 1.0


def test_short_noise_is_looped() -> None:
    clean = _speech_like(SR)
    noise = generate_noise("white", 3000, SR, 0)
    mix = mix_components(clean, noise, 10.0)
    assert mix.mixture.shape == clean.shape and mix.scale == 1.0
    gain = mix.noise[:3000] / noise
    np.testing.assert_allclose(mix.noise, np.resize(noise, clean.size) * gain[0], rtol=1e-5, atol=1e-7)
    assert achieved_snr_db(clean, mix.mixture) == pytest.approx(10.0, abs=0.1)


def test_long_noise_is_cut() -> None:
    clean = _speech_like(SR)
    noise = generate_noise("white", 5 * clean.size, SR, 0)
    mix = mix_components(clean, noise, 0.0)
    assert mix.mixture.shape == clean.shape
    np.testing.assert_allclose(mix.noise / noise[: clean.size], mix.noise[0] / noise[0], rtol=1e-4)


def test_scales_down_instead_of_clipping() -> None:
    clean = 3 * _speech_like(SR)  # peak 0.9 before any noise
    mix = mix_components(clean, generate_noise("white", clean.size, SR, 0), -5.0)
    assert mix.scale < 1.0
    assert np.max(np.abs(mix.mixture)) == pytest.approx(0.99, abs=1e-6)
    np.testing.assert_allclose(mix.clean, clean * mix.scale, rtol=1e-5, atol=1e-7)
    assert achieved_snr_db(mix.clean, mix.mixture) == pytest.approx(-5.0, abs=0.1)


def test_mix_rejects_bad_input() -> None:
    clean = _speech_like(SR)
    noise = generate_noise("white", clean.size, SR, 0)
    with pytest.raises(ValueError, match="clean is silent"):
        mix_at_snr(np.zeros_like(clean), noise, 10.0)
    with pytest.raises(ValueError, match="noise is silent"):
        mix_at_snr(clean, np.zeros(100, dtype=np.float32), 10.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        mix_at_snr(np.where(np.arange(clean.size) == 5, np.nan, clean), noise, 10.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        mix_at_snr(clean, np.full(10, np.inf), 10.0)
    with pytest.raises(ValueError, match="snr_db must be finite"):
        mix_at_snr(clean, noise, float("nan"))
    with pytest.raises(ValueError, match="1-D"):
        mix_at_snr(clean, np.zeros(0), 10.0)
