"""Waveform denoisers that SEEN is compared against, behind one protocol.

Every denoiser maps a mono clip to a clip of the same length and alignment, so a downstream model, STOI
and the SNR against the clean reference see the denoised audio sample for sample where the noisy one was.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np
import soxr
from numpy.typing import NDArray
from scipy import signal

Audio = NDArray[np.float32]


class Denoiser(Protocol):
    """A waveform denoiser: same length, float32, sample-aligned with its input."""

    @property
    def name(self) -> str: ...

    def __call__(self, audio: Audio, rate: int) -> Audio: ...


def _checked(audio: NDArray[np.floating], rate: int) -> Audio:
    clip = np.asarray(audio, dtype=np.float32)
    if clip.ndim != 1 or clip.size == 0:
        raise ValueError(f"audio must be a non-empty 1-D array, got shape {clip.shape}")
    if not np.isfinite(clip).all():
        raise ValueError("audio contains NaN or infinite values")
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    return clip


def _fit(x: NDArray[np.floating], n: int) -> Audio:
    """Cut or zero-pad to ``n`` samples: STFT and resampling round lengths to their own grids."""
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, x.size)] = x[:n]
    return out


@dataclass(frozen=True)
class SpectralSubtraction:
    """Power spectral subtraction with over-subtraction and a spectral floor (Berouti et al., 1979).

    The noise power spectrum is the mean of the ``noise_quantile`` lowest-energy frames, so the clip needs
    some pauses: on speech without any, noise is over-estimated and speech attenuated. Each bin keeps
    ``|Y|^2 - over_subtraction * N`` where that exceeds ``floor * N`` and ``floor * N`` otherwise; the floor
    masks the "musical noise" of isolated surviving bins. The noisy phase is kept.
    """

    frame_s: float = 0.032  # Hann window length; 512 samples at 16 kHz
    noise_quantile: float = 0.1  # share of the quietest frames taken as noise only
    over_subtraction: float = 2.0  # alpha: subtract this many times the noise estimate
    floor: float = 0.02  # beta: power floor relative to the noise estimate (-17 dB)

    @property
    def name(self) -> str:
        return "spectral-subtraction"

    def __call__(self, audio: Audio, rate: int) -> Audio:
        clip = _checked(audio, rate)
        nperseg = max(16, round(self.frame_s * rate))
        hop = nperseg // 4  # 75 % overlap: a Hann window then sums to a constant
        padded = _fit(clip, max(clip.size, nperseg))
        _, _, spec = signal.stft(padded, nperseg=nperseg, noverlap=nperseg - hop, window="hann")
        power = np.abs(spec) ** 2

        # Frames are centred at k * hop; those reaching into the zero boundary padding are not noise.
        centres = np.arange(power.shape[1]) * hop
        interior = (centres >= nperseg // 2) & (centres + nperseg // 2 <= padded.size)
        candidates = power[:, interior] if interior.any() else power
        energy = candidates.sum(axis=0)
        quietest = energy <= np.quantile(energy, self.noise_quantile)
        noise = candidates[:, quietest].mean(axis=1, keepdims=True)

        cleaned = power - self.over_subtraction * noise
        cleaned = np.where(cleaned > self.floor * noise, cleaned, self.floor * noise)
        gain = np.sqrt(cleaned / np.maximum(power, 1e-30))
        _, out = signal.istft(spec * gain, nperseg=nperseg, noverlap=nperseg - hop, window="hann")
        return _fit(out, clip.size)


NOISEREDUCE_N_FFT = 1024
"""noisereduce's default FFT size: its STFT fails on shorter clips, so they are zero-padded to it."""


@dataclass(frozen=True)
class NoiseReduce:
    """Spectral gating from the ``noisereduce`` package (Sainburg) at its default settings.

    Defaults are kept so the baseline is the package as people use it. Without a separate noise clip the
    stationary gate takes its threshold from the whole clip, speech included, so it removes the noise in
    pauses (about -30 dB) but also most of the speech energy: on speech in white noise the SNR against the
    clean signal rises at 0 dB and falls from about 5 dB up (see tests/test_evaluation_denoisers.py).
    """

    stationary: bool

    @property
    def name(self) -> str:
        return "noisereduce-stationary" if self.stationary else "noisereduce-nonstationary"

    def __call__(self, audio: Audio, rate: int) -> Audio:
        import noisereduce

        clip = _checked(audio, rate)
        padded = _fit(clip, max(clip.size, NOISEREDUCE_N_FFT))
        out = noisereduce.reduce_noise(y=padded, sr=rate, stationary=self.stationary, n_jobs=1, use_tqdm=False)
        return _fit(np.asarray(out, dtype=np.float32), clip.size)


RNNOISE_RATE = 48_000
RNNOISE_FRAME = 480
RNNOISE_DELAY = 960
"""Output lag of the librnnoise that pyrnnoise 0.4 bundles, in 48 kHz samples (measured; tested)."""
_PCM_SCALE = 32768.0  # RNNoise expects float samples on the 16-bit integer scale


@dataclass(frozen=True)
class RNNoise:
    """RNNoise (Valin, 2018) from ``pyrnnoise``'s bundled library, with its 20 ms lag removed.

    The library works on 480-sample frames at 48 kHz, so the clip is resampled there and back with soxr.
    Its C entry point is called directly: pyrnnoise's frame helper rounds the output to int16, which wraps
    around instead of saturating when the denoised signal exceeds full scale.
    """

    @property
    def name(self) -> str:
        return "rnnoise"

    def __call__(self, audio: Audio, rate: int) -> Audio:
        from pyrnnoise import rnnoise

        clip = _checked(audio, rate)
        high = soxr.resample(clip, rate, RNNOISE_RATE) if rate != RNNOISE_RATE else clip
        n_frames = -(-(high.size + RNNOISE_DELAY) // RNNOISE_FRAME)
        buffer = np.zeros(n_frames * RNNOISE_FRAME, dtype=np.float32)
        buffer[: high.size] = high * _PCM_SCALE
        state = rnnoise.create()
        try:
            for start in range(0, buffer.size, RNNOISE_FRAME):
                frame = buffer[start : start + RNNOISE_FRAME]  # a contiguous view, processed in place
                pointer = frame.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                rnnoise.lib.rnnoise_process_frame(state, pointer, pointer)
        finally:
            rnnoise.destroy(state)
        denoised = buffer[RNNOISE_DELAY : RNNOISE_DELAY + high.size] / _PCM_SCALE
        low = soxr.resample(denoised, RNNOISE_RATE, rate) if rate != RNNOISE_RATE else denoised
        return _fit(low, clip.size)


DENOISERS: dict[str, Callable[[], Denoiser]] = {
    "spectral-subtraction": SpectralSubtraction,
    "noisereduce-stationary": partial(NoiseReduce, stationary=True),
    "noisereduce-nonstationary": partial(NoiseReduce, stationary=False),
    "rnnoise": RNNoise,
}


def make_denoiser(name: str) -> Denoiser:
    """The denoiser registered as ``name``, with its default settings."""
    if name not in DENOISERS:
        raise ValueError(f"unknown denoiser {name!r}; expected one of {', '.join(DENOISERS)}")
    return DENOISERS[name]()
