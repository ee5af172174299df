"""WADA-SNR against the true SNR of mixtures, and STOI's ordering, on espeak-ng speech."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import special

from demo.speech import Voice, split_variants, synthesize
from evaluation.audio_measures import WADA_SNR_RANGE_DB, stoi, wada_snr, wada_table
from seen.noise import achieved_snr_db, generate_noise, mix_components

RATE = 16000
TEXTS = ("turn off the heater in the back", "please set an alarm for seven thirty tomorrow morning")


@pytest.fixture(scope="module")
def speech() -> list[NDArray[np.float32]]:
    train, held_out = split_variants()
    return [synthesize(TEXTS[0], Voice("en-us", train[0])), synthesize(TEXTS[1], Voice("en-gb", held_out[0]))]


def test_wada_table_is_increasing_and_meets_the_closed_form_limits() -> None:
    snr_db, g = wada_table()
    assert (snr_db[0], snr_db[-1]) == WADA_SNR_RANGE_DB
    assert np.all(np.diff(g) > 0)
    gaussian = 0.5 * np.log(2 / np.pi) + (np.euler_gamma + np.log(2)) / 2  # G of noise alone
    gamma_only = np.log(0.4) - special.digamma(0.4)  # G of Gamma(0.4) speech alone
    assert g[0] == pytest.approx(gaussian, abs=1e-3)
    assert g[-1] < gamma_only and g[-1] == pytest.approx(gamma_only, abs=0.03)


@pytest.mark.parametrize("seed", [0, 1])
def test_wada_snr_recovers_the_snr_of_its_own_signal_model(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 4 * RATE
    model_speech = rng.choice([-1.0, 1.0], n) * rng.gamma(0.4, 1.0, n)
    noise = rng.standard_normal(n)
    for snr in (0.0, 10.0, 20.0):
        scaled = noise * np.sqrt(np.mean(model_speech**2) / np.mean(noise**2) / 10 ** (snr / 10))
        assert wada_snr(model_speech + scaled) == pytest.approx(snr, abs=1.0)  # measured within 0.4 dB


def test_wada_snr_tracks_the_true_snr_of_speech_in_white_noise(speech: list[NDArray[np.float32]]) -> None:
    # Measured estimates: 1.0 / 11.6 / 23.2 dB and 0.7 / 10.6 / 20.6 dB; WADA overshoots at high SNR
    # on this short clip, whose pauses and espeak's digital silence make its amplitudes spikier than Gamma(0.4).
    tolerance = {0.0: 2.5, 10.0: 2.5, 20.0: 5.0}
    for i, clip in enumerate(speech):
        noise = generate_noise("white", clip.size, RATE, seed=i)
        estimates = []
        for snr, tol in tolerance.items():
            mix = mix_components(clip, noise, snr)
            assert achieved_snr_db(mix.clean, mix.mixture) == pytest.approx(snr, abs=0.01)
            estimates.append(wada_snr(mix.mixture))
            assert estimates[-1] == pytest.approx(snr, abs=tol)
        assert estimates == sorted(estimates) and estimates[-1] - estimates[0] > 15
        assert wada_snr(3.0 * mix.mixture) == pytest.approx(estimates[-1])  # level does not matter


def test_wada_snr_clips_to_the_table_range() -> None:
    noise = generate_noise("white", 4 * RATE, RATE, seed=0)
    assert wada_snr(noise) < -10
    assert wada_snr(np.repeat([0.0, 1.0, 0.0, -1.0], RATE)) == WADA_SNR_RANGE_DB[1]  # all-or-nothing "speech"


@pytest.mark.parametrize(
    ("clip", "message"),
    [
        (np.zeros(RATE), "silent"),
        (np.ones(100), "at least"),
        (np.ones((2, RATE)), "1-D"),
        (np.full(RATE, np.nan), "NaN"),
    ],
)
def test_wada_snr_rejects_what_it_cannot_measure(clip: NDArray[np.float64], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wada_snr(clip)


def test_stoi_is_one_for_identical_speech_and_falls_with_noise(speech: list[NDArray[np.float32]]) -> None:
    clip = speech[1]
    assert stoi(clip, clip, RATE) == pytest.approx(1.0, abs=1e-6)
    noise = generate_noise("white", clip.size, RATE, seed=0)
    scores = [stoi(clip, mix_components(clip, noise, snr).mixture, RATE) for snr in (20.0, 10.0, 0.0, -10.0)]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.9 and scores[-1] < 0.7
    extended = stoi(clip, mix_components(clip, noise, 0.0).mixture, RATE, extended=True)
    assert extended < scores[2]  # ESTOI penalises the same noise harder


def test_stoi_rejects_mismatched_or_too_short_clips(speech: list[NDArray[np.float32]]) -> None:
    clip = speech[0]
    with pytest.raises(ValueError, match="length"):
        stoi(clip, clip[:-1], RATE)
    with pytest.raises(ValueError, match="undefined"):
        stoi(clip[: RATE // 10], clip[: RATE // 10], RATE)
