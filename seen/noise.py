"""Deterministic, synthetic noise and SNR-exact mixing.

Calibration and tests need noise that is reproducible from a seed and needs no downloaded corpus, so
every generator here is pure numpy/scipy driven by ``np.random.default_rng(seed)``.

Over 300 lines on purpose: one short generator per noise type, each documented, beside the one mixing
rule they are all used with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage, signal

NOISE_TYPES: tuple[str, ...] = ("white", "pink", "brown", "babble", "engine", "wind", "cabin", "cafeteria")
MIX_PEAK = 0.99

FloatArray = NDArray[np.float64]
# Rough adult (F1, F2, F3) formant targets in Hz for a, i, u, e, o, ae.
_VOWELS: tuple[tuple[float, float, float], ...] = (
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (570, 840, 2410),
    (660, 1720, 2410),
)
_FORMANT_BANDWIDTHS = (80.0, 100.0, 140.0)


def _slow_random(rng: np.random.Generator, n: int, sample_rate: int, cutoff_hz: float) -> FloatArray:
    """Smooth unit-variance random curve: the shared source of drifting pitch, rpm and gusts.

    Built at a 50 Hz control rate with a warm-up so the low-pass transient and the variance estimate do
    not depend on how short the requested clip is.
    """
    control_rate = 50.0
    m = int(np.ceil(n / sample_rate * control_rate)) + 2
    warmup = 1000
    sos = signal.butter(2, cutoff_hz, fs=control_rate, output="sos")
    curve = signal.sosfilt(sos, rng.standard_normal(m + warmup))[warmup // 2 :]
    curve = (curve - curve.mean()) / curve.std()
    t_control = np.arange(m) / control_rate
    return np.interp(np.arange(n) / sample_rate, t_control, curve[-m:])


def _leaky_integrate(x: FloatArray, sample_rate: int, corner_hz: float) -> FloatArray:
    """Integrate (1/f^2 power) above ``corner_hz`` but stay flat below it so the signal cannot drift."""
    a = float(np.exp(-2 * np.pi * corner_hz / sample_rate))
    y = signal.lfilter([1.0], [1.0, -a], x)
    return y - y.mean()


def _white(rng: np.random.Generator, n: int, sample_rate: int) -> FloatArray:
    return rng.standard_normal(n)


def _pink(rng: np.random.Generator, n: int, sample_rate: int) -> FloatArray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, d=1.0 / sample_rate)
    # Floor at 10 Hz so the few lowest bins do not dominate the energy of a long clip.
    spectrum *= 1.0 / np.sqrt(np.maximum(freqs, 10.0))
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n)


def _brown(rng: np.random.Generator, n: int, sample_rate: int) -> FloatArray:
    return _leaky_integrate(rng.standard_normal(n), sample_rate, corner_hz=10.0)


def _resonator_sos(freq: float, bandwidth: float, sample_rate: int) -> FloatArray:
    """Two-pole formant resonance with unit gain at DC, so vowels differ in colour rather than level."""
    r = np.exp(-np.pi * bandwidth / sample_rate)
    a1, a2 = -2 * r * np.cos(2 * np.pi * freq / sample_rate), r * r
    return np.array([[1 + a1 + a2, 0.0, 0.0, 1.0, a1, a2]])


def _talker(rng: np.random.Generator, n: int, sample_rate: int) -> FloatArray:
    """One synthetic talker: glottal pulses -> vowel formants, gated by a syllabic envelope with pauses."""
    # Pitch drifting slowly around a per-talker base inside 90-250 Hz.
    base_f0 = rng.uniform(100.0, 220.0)
    f0 = np.clip(base_f0 * 2.0 ** (0.15 * _slow_random(rng, n, sample_rate, 2.0)), 90.0, 250.0)
    phase = np.cumsum(f0 / sample_rate) + rng.random()
    pulses = np.diff(np.floor(phase), prepend=np.floor(phase[0])).astype(np.float64)
    # Glottal spectral tilt, plus a little aspiration so unvoiced stretches are not digital zero.
    source = signal.lfilter([1.0], [1.0, -0.95], pulses) + 0.02 * rng.standard_normal(n)

    # Syllables at 3-6 Hz, each a raised-sine envelope with a random vowel; ~15% of gaps are pauses.
    rate = rng.uniform(3.0, 6.0)
    envelope = np.zeros(n)
    vowel_of = np.zeros(n, dtype=np.intp)
    pos = -int(rng.uniform(0.0, 1.0 / rate) * sample_rate)  # start mid-syllable
    while pos < n:
        if rng.random() < 0.15:
            pos += int(rng.uniform(0.15, 0.5) * sample_rate)
            continue
        length = max(2, int(rng.uniform(0.7, 1.3) / rate * sample_rate))
        lo, hi = max(pos, 0), min(pos + length, n)
        if hi > lo:
            envelope[lo:hi] = np.sin(np.pi * (np.arange(lo, hi) - pos) / length)
            vowel_of[lo:hi] = rng.integers(len(_VOWELS))
        pos += length

    # Crossfade between fixed vowel filters: time-varying formants without per-block filter state.
    tract = rng.uniform(0.9, 1.15)  # vocal-tract length factor per talker
    weights = np.eye(len(_VOWELS))[vowel_of].T
    smooth = max(1, int(0.03 * sample_rate))
    weights = ndimage.uniform_filter1d(weights, smooth, axis=1, mode="nearest")
    voiced = np.zeros(n)
    for v, formants in enumerate(_VOWELS):
        sos = [
            _resonator_sos(f * tract, bw, sample_rate)
            for f, bw in zip(formants, _FORMANT_BANDWIDTHS, strict=True)
            if f * tract < 0.45 * sample_rate
        ]
        shaped = signal.sosfilt(np.vstack(sos), source) if sos else source
        voiced += weights[v] * shaped / (np.sqrt(np.mean(shaped**2)) + 1e-12)
    return voiced * envelope


def _babble(rng: np.random.Generator, n: int, sample_rate: int) -> FloatArray:
    total = np.zeros(n)
    for _ in range(int(rng.integers(6, 9))):
        talker = _talker(rng, n, sample_rate)
        level = 10 ** (rng.uniform(-3.0, 3.0) / 20)
        total += level * talker / (np.sqrt(np.mean(talker**2)) + 1e-12)
    return total


def _engine_drone(
    rng: np.random.Generator,
    n: int,
    sample_rate: int,
    *,
    firing_hz: tuple[float, float],
    drift: float,
    drift_cutoff_hz: float,
    ceiling_hz: float,
) -> FloatArray:
    """Harmonics of a firing frequency drawn from ``firing_hz`` whose rpm wanders by ``drift`` (relative std)."""
    fire = rng.uniform(*firing_hz) * (1 + drift * _slow_random(rng, n, sample_rate, drift_cutoff_hz))
    phase = 2 * np.pi * np.cumsum(fire) / sample_rate
    ceiling = min(ceiling_hz, 0.45 * sample_rate)
    harmonics = np.zeros(n)
    for k in range(1, int(ceiling / (fire.max() + 1e-9)) + 1):
        harmonics += rng.uniform(0.6, 1.0) / k * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return harmonics


def _engine(rng: np.random.Generator, n: int, sample_rate: int) -> FloatArray:
    """Firing-frequency harmonics with slowly wandering rpm, over low-passed brown rumble."""
    harmonics = _engine_drone(
        rng, n, sample_rate, firing_hz=(25.0, 60.0), drift=0.08, drift_cutoff_hz=0.3, ceiling_hz=400.0
    )
    sos = signal.butter(4, min(150.0, 0.4 * sample_rate), fs=sample_rate, output="sos")
    rumble = signal.sosfilt(sos, _brown(rng, n, sample_rate))
    return _unit_rms(harmonics) + 0.7 * _unit_rms(rumble)


def _cabin(rng: np.random.Generator, n: int, sample_rate: int) -> FloatArray:
    """A car cabin on the road: what ``engine`` lacks is the road, which dominates a real cabin.

    An engine drone whose rpm drifts further and slower than ``engine``'s (speeding up and easing off over
    ~10 s), plus broadband tyre/road noise that the body lets through mostly below ~200 Hz, with a weak
    tyre band near 1 kHz; the road part swells and fades (~3 dB std) as the surface changes.
    """
    drone = _engine_drone(
        rng, n, sample_rate, firing_hz=(30.0, 50.0), drift=0.15, drift_cutoff_hz=0.1, ceiling_hz=300.0
    )
    lowpass = signal.butter(2, min(200.0, 0.4 * sample_rate), fs=sample_rate, output="sos")
    road = signal.sosfilt(lowpass, _pink(rng, n, sample_rate))
    band = (min(600.0, 0.2 * sample_rate), min(1200.0, 0.4 * sample_rate))
    tyre = signal.sosfilt(
        signal.butter(2, band, btype="bandpass", fs=sample_rate, output="sos"), rng.standard_normal(n)
    )
    surface = np.exp(0.4 * _slow_random(rng, n, sample_rate, 0.3))
    return 0.8 * _unit_rms(drone) + surface * (_unit_rms(road) + 0.2 * _unit_rms(tyre))


def _clatter(rng: np.random.Generator, n: int, sample_rate: int) -> FloatArray:
    """Cutlery and dishes: short bright transients at Poisson times, each a click plus a few ringing partials.

    Levels are relative to a unit-RMS bed: peaks 0-18 dB above it, so the loudest clinks stand out of babble
    as they do in a canteen; partials are inharmonic (metal and china), 2-9 kHz, decaying in 10-80 ms.
    """
    out = np.zeros(n)
    low, high = min(2000.0, 0.2 * sample_rate), min(9000.0, 0.45 * sample_rate)
    for _ in range(int(rng.poisson(rng.uniform(1.5, 4.0) * n / sample_rate))):
        start = int(rng.integers(n))
        decay = rng.uniform(0.01, 0.08)
        t = np.arange(min(n - start, int(5 * decay * sample_rate) + 1)) / sample_rate
        partials = sum(
            (rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)))
            for f in rng.uniform(low, high, int(rng.integers(2, 5)))
        )
        click = rng.standard_normal(t.size) * np.exp(-t / 0.002)
        event = (partials + click) * np.exp(-t / decay)
        peak = float(np.max(np.abs(event)))
        if peak > 0:
            out[start : start + t.size] += 10 ** (rng.uniform(0.0, 18.0) / 20) * event / peak
    return out


def _cafeteria(rng: np.random.Generator, n: int, sample_rate: int) -> FloatArray:
    """A canteen: a babble bed with cutlery and dish clatter on top (see :func:`_clatter`)."""
    return _unit_rms(_babble(rng, n, sample_rate)) + _clatter(rng, n, sample_rate)


def _wind(rng: np.random.Generator, n: int, sample_rate: int) -> FloatArray:
    """Low-passed noise under a log-normal gust envelope (0.1-2 Hz), hence the strong level swings."""
    sos = signal.butter(2, min(500.0, 0.4 * sample_rate), fs=sample_rate, output="sos")
    base = signal.sosfilt(sos, _leaky_integrate(rng.standard_normal(n), sample_rate, corner_hz=30.0))
    gusts = np.exp(0.9 * _slow_random(rng, n, sample_rate, 1.0))
    return base * gusts


_GENERATORS: dict[str, Callable[[np.random.Generator, int, int], FloatArray]] = {
    "white": _white,
    "pink": _pink,
    "brown": _brown,
    "babble": _babble,
    "engine": _engine,
    "wind": _wind,
    "cabin": _cabin,
    "cafeteria": _cafeteria,
}


def _unit_rms(x: FloatArray) -> FloatArray:
    rms = float(np.sqrt(np.mean(np.square(x))))
    if not np.isfinite(rms) or rms <= 1e-12:
        raise ValueError("generated noise has no energy (clip too short?)")
    return x / rms


def generate_noise(kind: str, n_samples: int, sample_rate: int, seed: int) -> NDArray[np.float32]:
    """Unit-RMS float32 noise of one of :data:`NOISE_TYPES`, identical for identical arguments.

    Unit RMS makes the noise level a pure function of the SNR passed to :func:`mix_at_snr`.
    """
    if kind not in _GENERATORS:
        raise ValueError(f"unknown noise type {kind!r}; expected one of {', '.join(NOISE_TYPES)}")
    if n_samples < 2 or sample_rate <= 0:
        raise ValueError(f"need n_samples >= 2 and sample_rate > 0, got {n_samples} and {sample_rate}")
    rng = np.random.default_rng(seed)
    return _unit_rms(_GENERATORS[kind](rng, n_samples, sample_rate)).astype(np.float32)


class Mix(NamedTuple):
    """A mixture and the exact components summed into it, so the achieved SNR can be audited."""

    mixture: NDArray[np.float32]
    clean: NDArray[np.float32]  # clean as it appears in the mixture (after any peak scaling)
    noise: NDArray[np.float32]  # noise as it appears in the mixture
    scale: float  # peak-protection gain applied to both components (1.0 when none was needed)


def _energy(x: NDArray[np.floating], name: str) -> float:
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    energy = float(np.mean(np.square(x, dtype=np.float64)))
    if energy <= 1e-20:
        raise ValueError(f"{name} is silent; cannot set an SNR against it")
    return energy


def mix_components(clean: NDArray[np.floating], noise: NDArray[np.floating], snr_db: float) -> Mix:
    """Mix ``noise`` into ``clean`` at exactly ``snr_db`` over the whole clip.

    Noise is looped or cut to the clean length. The mixture is never clipped: if its peak exceeds 1.0,
    speech and noise are scaled down together so the peak is :data:`MIX_PEAK`, which leaves the SNR
    unchanged but means the speech is no longer at its original level (``Mix.scale`` records by how much).
    """
    if not np.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite, got {snr_db}")
    clean64 = np.asarray(clean, dtype=np.float64)
    clean_energy = _energy(clean64, "clean")
    noise64 = np.asarray(noise, dtype=np.float64)
    if noise64.ndim != 1 or noise64.size == 0:
        raise ValueError(f"noise must be a non-empty 1-D array, got shape {noise64.shape}")
    noise64 = np.resize(noise64, clean64.shape)  # np.resize repeats (loops) or cuts
    noise_energy = _energy(noise64, "noise")

    noise64 *= np.sqrt(clean_energy / (noise_energy * 10 ** (snr_db / 10)))
    mixture = clean64 + noise64
    peak = float(np.max(np.abs(mixture)))
    scale = MIX_PEAK / peak if peak > 1.0 else 1.0
    return Mix(
        mixture=(mixture * scale).astype(np.float32),
        clean=(clean64 * scale).astype(np.float32),
        noise=(noise64 * scale).astype(np.float32),
        scale=scale,
    )


def mix_at_snr(clean: NDArray[np.floating], noise: NDArray[np.floating], snr_db: float) -> NDArray[np.float32]:
    """Float32 mixture of ``clean`` and ``noise`` at ``snr_db``; see :func:`mix_components` for the rules."""
    return mix_components(clean, noise, snr_db).mixture


def achieved_snr_db(clean: NDArray[np.floating], mixture: NDArray[np.floating]) -> float:
    """SNR actually present in ``mixture``, taking ``mixture - clean`` as the noise.

    Pass the clean component as it appears in the mixture (``Mix.clean``); the original clean signal is
    only right when no peak scaling happened.
    """
    clean64 = np.asarray(clean, dtype=np.float64)
    residual = np.asarray(mixture, dtype=np.float64) - clean64
    return float(10 * np.log10(np.mean(clean64**2) / np.mean(residual**2)))
