"""Correlations and ROC AUC with percentile-bootstrap confidence intervals.

The paper's claims are of the form "the SEE score tracks accuracy" and "the SEE score flags wrong answers",
measured on a few hundred clips, so every figure carries an interval. Degenerate data (too few points,
constant input, an empty class) gives NaN rather than an exception, so one empty condition does not stop
a whole evaluation; malformed input (mismatched lengths, NaN values) is still a ValueError.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

Method = Literal["pearson", "spearman"]
MIN_POINTS = 3
"""Fewer points than this give no correlation (with two, any non-constant pair correlates perfectly)."""
FAILURE_WER = 0.2
"""An answer with a WER above this counts as failed where SEE is scored as a detector (the SEEN study)."""


class Correlation(NamedTuple):
    value: float
    low: float
    high: float
    n: int


class Auc(NamedTuple):
    value: float
    low: float
    high: float
    positives: int
    negatives: int


def _vector(values: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; drop them first")
    return array


def _rowwise_pearson(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """Pearson r of each row pair; NaN where a row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((xc**2).sum(axis=1) * (yc**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / denominator
    return np.where(denominator > 0, np.clip(r, -1.0, 1.0), np.nan)


def _interval(samples: NDArray[np.float64], confidence: float) -> tuple[float, float]:
    """Percentile interval of the finite bootstrap samples; NaN when none is finite."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2
    low, high = np.quantile(finite, [tail, 1 - tail])
    return float(low), float(high)


def _check_bootstrap(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def correlation(
    x: ArrayLike,
    y: ArrayLike,
    method: Method = "pearson",
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Correlation:
    """Pearson or Spearman correlation with a percentile-bootstrap interval over resampled (x, y) pairs.

    NaN throughout when there are fewer than :data:`MIN_POINTS` pairs or either input is constant;
    resamples that happen to be constant are skipped rather than counted.
    """
    _check_bootstrap(resamples, confidence)
    xs, ys = _vector(x, "x"), _vector(y, "y")
    if xs.shape != ys.shape:
        raise ValueError(f"x and y differ in length: {xs.size} vs {ys.size}")
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    n = xs.size
    if n < MIN_POINTS or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return Correlation(float("nan"), float("nan"), float("nan"), n)

    test = stats.pearsonr if method == "pearson" else stats.spearmanr
    value = float(test(xs, ys).statistic)
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    bx, by = xs[index], ys[index]
    if method == "spearman":
        bx, by = stats.rankdata(bx, axis=1), stats.rankdata(by, axis=1)
    low, high = _interval(_rowwise_pearson(bx, by), confidence)
    return Correlation(value, low, high, n)


def _auc_of_rows(scores: NDArray[np.float64], positive: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Mann-Whitney AUC per row: P(positive scores higher) + P(tie) / 2, via average ranks."""
    ranks = stats.rankdata(scores, axis=-1)
    n_pos = positive.sum(axis=-1)
    n_neg = positive.shape[-1] - n_pos
    u = (ranks * positive).sum(axis=-1) - n_pos * (n_pos + 1) / 2
    return np.asarray(u / (n_pos * n_neg), dtype=np.float64)


def roc_auc(
    scores: ArrayLike, labels: ArrayLike, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Auc:
    """ROC AUC of ``scores`` for ``labels`` (True = positive), ties counted as half, with a bootstrap interval.

    Positives and negatives are resampled separately (a stratified bootstrap), so every resample keeps both
    classes at their observed sizes. NaN throughout when either class is empty.
    """
    _check_bootstrap(resamples, confidence)
    values = _vector(scores, "scores")
    flags = np.asarray(labels)
    if flags.shape != values.shape:
        raise ValueError(f"scores and labels differ in shape: {values.shape} vs {flags.shape}")
    if flags.size and flags.dtype != np.bool_:
        raise ValueError(f"labels must be booleans (True = positive), got dtype {flags.dtype}")
    flags = flags.astype(bool)
    n_pos, n_neg = int(flags.sum()), int((~flags).sum())
    if n_pos == 0 or n_neg == 0:
        return Auc(float("nan"), float("nan"), float("nan"), n_pos, n_neg)

    value = float(_auc_of_rows(values, flags))
    rng = np.random.default_rng(seed)
    pos, neg = values[flags], values[~flags]
    resampled = np.concatenate(
        [pos[rng.integers(0, n_pos, size=(resamples, n_pos))], neg[rng.integers(0, n_neg, size=(resamples, n_neg))]],
        axis=1,
    )
    order = np.arange(n_pos + n_neg) < n_pos
    low, high = _interval(_auc_of_rows(resampled, np.broadcast_to(order, resampled.shape)), confidence)
    return Auc(value, low, high, n_pos, n_neg)


def linear_fit(x: ArrayLike, y: ArrayLike) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line, for drawing on a scatter plot; NaNs if x is constant."""
    xs, ys = _vector(x, "x"), _vector(y, "y")
    if xs.shape != ys.shape:
        raise ValueError(f"x and y differ in length: {xs.size} vs {ys.size}")
    if xs.size < 2 or np.ptp(xs) == 0:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(slope), float(intercept)
