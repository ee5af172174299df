"""The waveform denoisers keep length, type and alignment, and remove white noise from espeak-ng speech."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from demo.speech import Voice, split_variants, synthesize
from evaluation.denoisers import DENOISERS, make_denoiser
from seen.noise import Mix, generate_noise, mix_components

RATE = 16000


@pytest.fixture(scope="module")
def clean() -> NDArray[np.float32]:
    _, held_out = split_variants()
    return synthesize("please set an alarm for seven thirty tomorrow morning", Voice("en-gb", held_out[0]))


def _mix(clean: NDArray[np.float32], snr_db: float) -> Mix:
    return mix_components(clean, generate_noise("white", clean.size, RATE, seed=0), snr_db)


def _snr_db(reference: NDArray[np.float32], estimate: NDArray[np.float32]) -> float:
    reference64 = reference.astype(np.float64)
    return float(10 * np.log10(np.sum(reference64**2) / np.sum((estimate - reference64) ** 2)))


def _best_lag(reference: NDArray[np.float32], estimate: NDArray[np.float32], span: int = 50) -> int:
    inner = slice(2 * span, reference.size - 2 * span)
    window = reference[inner].astype(np.float64)
    scores = [np.dot(estimate[inner.start + lag : inner.stop + lag], window) for lag in range(-span, span + 1)]
    return int(np.argmax(scores)) - span


@pytest.mark.parametrize("name", sorted(DENOISERS))
def test_every_denoiser_keeps_length_type_and_alignment(name: str, clean: NDArray[np.float32]) -> None:
    denoiser = make_denoiser(name)
    assert denoiser.name == name
    mix = _mix(clean, 5.0)
    out = denoiser(mix.mixture[:-7], RATE)  # a length on no frame grid
    assert out.shape == (clean.size - 7,) and out.dtype == np.float32 and np.isfinite(out).all()
    assert _best_lag(mix.clean[:-7], out) == 0  # RNNoise's 20 ms lag and STFT padding are compensated
    for n, rate in ((200, RATE), (22050, 22050)):  # shorter than any analysis frame; another rate
        short = denoiser(mix.mixture[:n], rate)
        assert short.shape == (n,) and short.dtype == np.float32 and np.isfinite(short).all()


# (input SNR, least SNR gain, highest noise level left in the pauses relative to the input), measured on this
# clip as gains of 5.9 / 6.6 / 2.5 / 3.6 dB and pause levels of -8.7 / -19.5 / -31 / -17 dB.
EXPECTED = {
    "spectral-subtraction": (5.0, 4.5, -6.0),
    "rnnoise": (5.0, 4.5, -12.0),
    "noisereduce-stationary": (0.0, 1.0, -20.0),
    "noisereduce-nonstationary": (0.0, 1.5, -10.0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_denoisers_raise_the_snr_of_speech_in_white_noise(name: str, clean: NDArray[np.float32]) -> None:
    snr, least_gain, pause_level = EXPECTED[name]
    mix = _mix(clean, snr)
    out = make_denoiser(name)(mix.mixture, RATE)
    assert _snr_db(mix.clean, out) - snr >= least_gain
    pauses = np.abs(clean) < 1e-4  # espeak-ng's silences: there the output is residual noise only
    assert pauses.mean() > 0.1
    assert 10 * np.log10(np.mean(out[pauses] ** 2) / np.mean(mix.mixture[pauses] ** 2)) <= pause_level


def test_noisereduce_defaults_trade_speech_for_silence_at_moderate_snr(clean: NDArray[np.float32]) -> None:
    # Its whole-clip threshold also gates speech: at 5 dB the speech in the output is ~10 dB quieter (gain 0.31)
    # and the SNR against the clean signal falls (measured -2.1 dB), as its docstring warns.
    mix = _mix(clean, 5.0)
    out = make_denoiser("noisereduce-stationary")(mix.mixture, RATE)
    assert _snr_db(mix.clean, out) < 5.0
    assert np.dot(out, mix.clean) / np.dot(mix.clean, mix.clean) < 0.5


def test_make_denoiser_lists_the_known_names_and_denoisers_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="spectral-subtraction, noisereduce-stationary"):
        make_denoiser("wiener")
    denoiser = make_denoiser("spectral-subtraction")
    for audio, rate, message in (
        (np.zeros((2, RATE), np.float32), RATE, "1-D"),
        (np.full(RATE, np.nan, np.float32), RATE, "NaN"),
        (np.zeros(RATE, np.float32), 0, "rate"),
    ):
        with pytest.raises(ValueError, match=message):
            denoiser(audio, rate)
