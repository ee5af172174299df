"""Reference-free and reference-based audio measures for the evaluation.

The paper compares its SEE noise score with how noisy a clip *looks* without a clean reference, so the
blind WADA-SNR estimate (Kim & Stern, Interspeech 2008) is implemented here, beside the learned blind
DNSMOS P.835 (Reddy et al., ICASSP 2022; Microsoft's ONNX model as the ``speechmos`` package ships it);
STOI (through ``pystoi``) measures what a waveform denoiser does to intelligibility. The true SNR of a
mixture is :func:`seen.noise.achieved_snr_db`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any, NamedTuple

import numpy as np
import soxr
from numpy.typing import NDArray
from scipy import special, stats

WADA_GAMMA_SHAPE = 0.4
"""Shape of the Gamma distribution that WADA-SNR assumes for clean speech amplitudes."""
WADA_SNR_RANGE_DB = (-20.0, 100.0)
"""Range of the G(SNR) table; estimates outside it are clipped to its ends (as in the original method)."""
WADA_MIN_SAMPLES = 400
"""Fewer samples than this (25 ms at 16 kHz) give a G statistic too noisy to mean anything."""

_TABLE_STEP_DB = 0.5
_QUANTILES = 20_000  # Gamma quantile nodes of the outer expectation
_A_MAX = 40.0  # beyond this speech-to-noise amplitude ratio, E ln|a + Z| uses its asymptotic series
_A_GRID = np.linspace(0.0, _A_MAX, 2001)
_EPS = 1e-10  # floor of |x| / max|x|, as in the reference implementation, so digital zeros stay finite


def _expected_abs(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """E|a + Z| for Z ~ N(0, 1): the folded-normal mean."""
    return np.sqrt(2 / np.pi) * np.exp(-(a**2) / 2) + a * (1 - 2 * special.ndtr(-a))


@cache
def _expected_log_abs_grid() -> NDArray[np.float64]:
    """E ln|a + Z| on :data:`_A_GRID`.

    (a + Z)^2 is non-central chi-square with one degree of freedom, a Poisson(a^2 / 2) mixture of central
    chi-squares with 1 + 2j degrees of freedom, whose log means are ln 2 + digamma(1/2 + j); exact, with no
    sampling noise, unlike the Monte Carlo table the original method ships.
    """
    terms = np.arange(int(_A_MAX**2 / 2 + 12 * _A_MAX + 50))
    weights = stats.poisson.pmf(terms[None, :], (_A_GRID**2 / 2)[:, None])
    return 0.5 * (np.log(2.0) + weights @ special.digamma(0.5 + terms))


def _expected_log_abs(a: NDArray[np.float64]) -> NDArray[np.float64]:
    inside = np.interp(np.minimum(a, _A_MAX), _A_GRID, _expected_log_abs_grid())
    far = np.maximum(a, _A_MAX)  # ln a + E ln|1 + Z/a| expanded in 1/a^2; its next term is below 1e-8 here
    return np.where(a > _A_MAX, np.log(far) - 1 / (2 * far**2) - 3 / (4 * far**4), inside)


@cache
def wada_table() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(SNR in dB, expected G) for speech s = +-Gamma(0.4) plus Gaussian noise, G = ln E|s+n| - E ln|s+n|.

    G is scale-free, so noise is fixed at unit variance and speech scaled to the SNR. The outer expectation
    over the Gamma amplitude runs on its quantile midpoints, the inner one over the noise is closed-form.
    """
    snr_db = np.arange(WADA_SNR_RANGE_DB[0], WADA_SNR_RANGE_DB[1] + _TABLE_STEP_DB / 2, _TABLE_STEP_DB)
    k = WADA_GAMMA_SHAPE
    amplitudes = stats.gamma.ppf((np.arange(_QUANTILES) + 0.5) / _QUANTILES, k)
    scale = np.sqrt(10 ** (snr_db / 10) / (k * (k + 1)))  # E g^2 = k(k + 1) for a unit-scale Gamma
    a = scale[:, None] * amplitudes[None, :]
    g = np.log(_expected_abs(a).mean(axis=1)) - _expected_log_abs(a).mean(axis=1)
    return snr_db, g


def _as_signal(x: NDArray[np.floating], name: str) -> NDArray[np.float64]:
    x64 = np.asarray(x, dtype=np.float64)
    if x64.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x64.shape}")
    if not np.isfinite(x64).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x64


def wada_snr(x: NDArray[np.floating]) -> float:
    """Blind SNR of a speech clip in dB, by WADA-SNR, clipped to :data:`WADA_SNR_RANGE_DB`.

    Assumes stationary Gaussian noise, so coloured or bursty noise is misjudged; it measures the whole clip,
    pauses included, which is the same convention as :func:`seen.noise.mix_at_snr`.
    """
    x64 = _as_signal(x, "x")
    if x64.size < WADA_MIN_SAMPLES:
        raise ValueError(f"need at least {WADA_MIN_SAMPLES} samples for WADA-SNR, got {x64.size}")
    peak = float(np.max(np.abs(x64)))
    if peak <= 1e-12:
        raise ValueError("x is silent; WADA-SNR is undefined")
    magnitude = np.maximum(np.abs(x64) / peak, _EPS)
    g = float(np.log(magnitude.mean()) - np.log(magnitude).mean())
    snr_db, table = wada_table()
    return float(np.interp(g, table, snr_db))  # np.interp clamps to the table's ends


def stoi(clean: NDArray[np.floating], degraded: NDArray[np.floating], rate: int, extended: bool = False) -> float:
    """STOI (or ESTOI with ``extended``) of ``degraded`` against ``clean``, in [0, 1] for ordinary speech.

    pystoi resamples to 10 kHz itself and drops silent frames; when fewer than 30 frames (~0.4 s of speech)
    remain it would return a placeholder 1e-5, which is raised here as a ValueError instead.
    """
    from pystoi import stoi as _pystoi

    clean64, degraded64 = _as_signal(clean, "clean"), _as_signal(degraded, "degraded")
    if clean64.shape != degraded64.shape:
        raise ValueError(f"clean and degraded differ in length: {clean64.size} vs {degraded64.size}")
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Not enough STFT frames")
        try:
            return float(_pystoi(clean64, degraded64, rate, extended=extended))
        except RuntimeWarning as warning:
            raise ValueError(f"STOI is undefined for this clip: {warning}") from warning


DNSMOS_RATE = 16000
"""DNSMOS P.835 runs on 16 kHz audio; other rates are resampled first."""
DNSMOS_INPUT_SAMPLES = 144_160
"""The model's fixed input: 9.01 s at 16 kHz."""
DNSMOS_HOP_SAMPLES = DNSMOS_RATE
"""Clips longer than the input are scored on windows 1 s apart and averaged, as the reference scorer does."""
# Quadratics from the model's raw outputs to P.835 MOS: those of speechmos.dnsmos.DNSMOS
# (and of Microsoft's dnsmos_local.py) for the non-personalised model.
_DNSMOS_BAK_POLY = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
_DNSMOS_OVRL_POLY = np.poly1d([-0.06766283, 1.11546468, 0.04602535])


class Dnsmos(NamedTuple):
    """DNSMOS P.835 scores on a 1-5 MOS scale; higher is cleaner, like an SNR."""

    bak: float  # background: how little intrusive noise is heard (5 = none noticeable)
    ovrl: float  # overall quality


@cache
def _dnsmos_session() -> Any:
    """The ONNX session of DNSMOS P.835 (``sig_bak_ovr.onnx`` from ``speechmos``), built once per process.

    The model file is used directly, not through ``speechmos.dnsmos``: that module imports librosa (which
    ``speechmos`` does not declare) only for the P.808 score, which is not used here.
    """
    import onnxruntime

    model = resources.files("speechmos") / "dnsmos_models" / "sig_bak_ovr.onnx"
    with resources.as_file(model) as path:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _dnsmos_windows(x: NDArray[np.float64]) -> NDArray[np.float32]:
    """The model inputs of one 16 kHz clip: 9.01 s windows 1 s apart.

    A shorter clip is looped to exactly one window. (``speechmos`` doubles it until it is long enough and
    averages every window of the doubled audio, i.e. the same loop at shifted phases, up to 7x the work;
    it also computes window ends in floating point, which silently drops the windows starting 7-23 s in.
    Windows here are exact, so for clips of 9.01-16 s both give identical scores.)
    """
    if x.size < DNSMOS_INPUT_SAMPLES:
        return np.resize(x, (1, DNSMOS_INPUT_SAMPLES)).astype(np.float32)
    count = (x.size - DNSMOS_INPUT_SAMPLES) // DNSMOS_HOP_SAMPLES + 1
    starts = np.arange(count) * DNSMOS_HOP_SAMPLES
    return np.stack([x[s : s + DNSMOS_INPUT_SAMPLES] for s in starts]).astype(np.float32)


def dnsmos(clips: Sequence[NDArray[np.floating]], rate: int) -> list[Dnsmos]:
    """DNSMOS P.835 background (BAK) and overall (OVRL) scores of each clip, blind (no clean reference).

    Each clip is scored on its 9.01 s windows (see :func:`_dnsmos_windows`), mapped to MOS per window and
    averaged over the clip's windows, as the reference scorer does. Windows run one at a time: batching
    them is slower on CPU (measured 0.57 s vs 0.21 s per window) and gives identical scores.
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    session = _dnsmos_session()
    scores = []
    for index, clip in enumerate(clips):
        x = _as_signal(clip, f"clip {index}")
        if x.size == 0 or not np.any(x):
            raise ValueError(f"clip {index} is empty or silent; DNSMOS is undefined")
        if rate != DNSMOS_RATE:
            x = soxr.resample(x, rate, DNSMOS_RATE, quality="HQ")  # the rate the project decodes with
        raw = np.concatenate([session.run(None, {"input_1": window[None]})[0] for window in _dnsmos_windows(x)])
        bak, ovrl = _DNSMOS_BAK_POLY(raw[:, 1]), _DNSMOS_OVRL_POLY(raw[:, 2])
        scores.append(Dnsmos(float(np.mean(bak)), float(np.mean(ovrl))))
    return scores
