"""WADA-SNR against the true SNR of mixtures, STOI's ordering, and DNSMOS against the package it comes from."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from importlib import resources
from typing import Any

import numpy as np
import pytest
import soxr
from numpy.typing import NDArray
from scipy import special

from demo.speech import Voice, split_variants, synthesize
from evaluation import audio_measures
from evaluation.audio_measures import WADA_SNR_RANGE_DB, dnsmos, stoi, wada_snr, wada_table
from seen.audio import load_audio_file
from seen.noise import achieved_snr_db, generate_noise, mix_components
from tests.conftest import LIBRISPEECH, speechlike

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


def _librosa_stub() -> types.ModuleType:
    """Enough of librosa for ``speechmos.dnsmos`` to run: only its P.808 score uses it, which is not compared."""
    stub, feature = types.ModuleType("librosa"), types.ModuleType("librosa.feature")

    def melspectrogram(y: NDArray[np.float32], sr: int, n_fft: int, hop_length: int, n_mels: int) -> NDArray[Any]:
        return np.zeros((n_mels, 1 + (len(y) + 2 * (n_fft // 2) - n_fft) // hop_length))

    feature.melspectrogram = melspectrogram  # type: ignore[attr-defined]
    stub.feature = feature  # type: ignore[attr-defined]
    stub.power_to_db = lambda spectrum, ref: spectrum  # type: ignore[attr-defined]
    return stub


@pytest.fixture
def reference_dnsmos(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """speechmos's own DNSMOS scorer (with librosa stubbed when it is not installed)."""
    if importlib.util.find_spec("librosa") is None:
        monkeypatch.setitem(sys.modules, "librosa", _librosa_stub())
    sys.modules.pop("speechmos.dnsmos", None)
    try:
        module = importlib.import_module("speechmos.dnsmos")
        models = resources.files("speechmos") / "dnsmos_models"
        yield module.DNSMOS(str(models / "sig_bak_ovr.onnx"), str(models / "model_v8.onnx"))
    finally:
        sys.modules.pop("speechmos.dnsmos", None)  # it may hold the stub


@pytest.fixture(scope="module")
def real_speech() -> list[NDArray[np.float32]]:
    """Real read speech: DNSMOS is trained on it, and scores synthetic tones as noise whatever their SNR."""
    if not LIBRISPEECH.is_dir():
        pytest.skip(f"needs the LibriSpeech sample at {LIBRISPEECH}")
    return [load_audio_file(path, RATE) for path in sorted((LIBRISPEECH / "wav").glob("*.wav"))[:2]]


def test_dnsmos_matches_speechmos_on_clips_of_a_window_or_more(reference_dnsmos: Any) -> None:
    for seconds in (9.5, 12.0):  # one window, and three windows 1 s apart
        clip = speechlike(seconds, seed=3)
        for audio in (clip, mix_components(clip, generate_noise("babble", clip.size, RATE, seed=1), 5.0).mixture):
            ours, theirs = dnsmos([audio], RATE)[0], reference_dnsmos(audio, RATE, False)
            assert ours.bak == pytest.approx(theirs["bak_mos"], abs=1e-5)
            assert ours.ovrl == pytest.approx(theirs["ovrl_mos"], abs=1e-5)


def test_dnsmos_falls_with_noise_and_loads_its_model_once(
    real_speech: list[NDArray[np.float32]], reference_dnsmos: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    sessions = []
    real_session = onnxruntime.InferenceSession

    def counting(*args: Any, **kwargs: Any) -> Any:
        sessions.append(args)
        return real_session(*args, **kwargs)

    audio_measures._dnsmos_session.cache_clear()
    monkeypatch.setattr(onnxruntime, "InferenceSession", counting)
    try:
        for clip in real_speech:
            noise = generate_noise("white", clip.size, RATE, seed=0)
            mixtures = [mix_components(clip, noise, snr).mixture for snr in (20.0, 5.0, -5.0)]
            scores = dnsmos([clip, *mixtures], RATE)
            assert [s.bak for s in scores] == sorted((s.bak for s in scores), reverse=True)
            assert [s.ovrl for s in scores] == sorted((s.ovrl for s in scores), reverse=True)
            assert scores[0].bak > 3.5 and scores[-1].bak < 2.5 and all(1.0 <= s.ovrl <= 5.0 for s in scores)
            assert dnsmos([clip], RATE) == scores[:1]  # deterministic
            at_8k = dnsmos([soxr.resample(clip, RATE, 8000)], 8000)[0]  # resampled to the model's 16 kHz
            assert at_8k.bak == pytest.approx(scores[0].bak, abs=0.5)
            # Shorter than a window: looped once instead of doubled and windowed, close to speechmos.
            short = clip[: 3 * RATE]
            ours, theirs = dnsmos([short], RATE)[0], reference_dnsmos(short, RATE, False)
            assert ours.bak == pytest.approx(theirs["bak_mos"], abs=0.15)
            assert ours.ovrl == pytest.approx(theirs["ovrl_mos"], abs=0.15)
        assert len(sessions) == 1  # ours, built once and reused (speechmos's own scorer was built before)
    finally:
        audio_measures._dnsmos_session.cache_clear()  # drop the session built through the patch


@pytest.mark.parametrize(
    ("clip", "message"),
    [(np.zeros(RATE), "silent"), (np.zeros(0), "empty"), (np.ones((2, RATE)), "1-D"), (np.full(RATE, np.nan), "NaN")],
)
def test_dnsmos_rejects_what_it_cannot_score(clip: NDArray[np.float64], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dnsmos([clip], RATE)
