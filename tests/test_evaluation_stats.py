"""Correlations and ROC AUC: exact values on known cases, bootstrap intervals against textbook formulas."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from evaluation.stats import correlation, linear_fit, roc_auc


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_perfect_correlations_are_one_with_a_tight_interval(method: str) -> None:
    x = np.linspace(0.0, 1.0, 30)
    up = correlation(x, 2 * x + 1, method=method)  # type: ignore[arg-type]
    assert up.value == pytest.approx(1.0) and up.n == 30
    assert 0.99 <= up.low <= up.high <= 1.0
    down = correlation(x, 4 - x, method=method)  # type: ignore[arg-type]
    assert down.value == pytest.approx(-1.0) and -1.0 <= down.low <= down.high <= -0.99


def test_correlation_matches_scipy_and_its_interval_matches_fisher_z() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(200)
    y = 0.5 * x + rng.standard_normal(200)
    pearson = correlation(x, y)
    assert pearson.value == pytest.approx(stats.pearsonr(x, y).statistic)
    half_width = 1.96 / math.sqrt(200 - 3)
    fisher = (math.tanh(math.atanh(pearson.value) - half_width), math.tanh(math.atanh(pearson.value) + half_width))
    assert pearson.low == pytest.approx(fisher[0], abs=0.03) and pearson.high == pytest.approx(fisher[1], abs=0.03)
    spearman = correlation(x, y, method="spearman")
    assert spearman.value == pytest.approx(stats.spearmanr(x, y).statistic)
    assert spearman.low < spearman.value < spearman.high
    # Ranks ignore monotone transforms, so the very same resamples give the very same interval.
    assert correlation(np.exp(x), y**3, method="spearman") == pytest.approx(spearman)
    assert correlation(x, y, seed=1) != pearson and correlation(x, y, seed=0) == pearson


def test_degenerate_correlations_are_nan_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, y in (([1.0, 2.0], [2.0, 1.0]), ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]), ([], [])):
            result = correlation(x, y, method="spearman")
            assert math.isnan(result.value) and math.isnan(result.low) and math.isnan(result.high)
            assert result.n == len(x)
        # Three points: the one resample in nine that repeats a single point is skipped, the rest still count.
        few = correlation([0.0, 1.0, 2.0], [0.0, 2.0, 1.0])
        assert few.value == pytest.approx(0.5) and -1.0 <= few.low < few.value < few.high <= 1.0


def test_correlation_rejects_malformed_input() -> None:
    with pytest.raises(ValueError, match="length"):
        correlation([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        correlation([1.0, 2.0, float("nan")], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="method"):
        correlation([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], method="kendall")  # type: ignore[arg-type]


def test_auc_of_separating_reversed_and_tied_scores() -> None:
    labels = np.array([False] * 10 + [True] * 5)
    scores = np.arange(15.0)
    assert roc_auc(scores, labels) == (1.0, 1.0, 1.0, 5, 10)
    assert roc_auc(-scores, labels) == (0.0, 0.0, 0.0, 5, 10)
    assert roc_auc(np.full(15, 0.3), labels) == (0.5, 0.5, 0.5, 5, 10)


def test_auc_equals_the_pairwise_count_with_ties_as_half() -> None:
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 6, 300).astype(float)  # many ties
    labels = rng.random(300) < 0.3 + 0.1 * scores
    positives, negatives = scores[labels], scores[~labels]
    wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    auc = roc_auc(scores, labels)
    assert auc.value == pytest.approx(wins / (positives.size * negatives.size), abs=1e-12)
    assert (auc.positives, auc.negatives) == (labels.sum(), (~labels).sum())
    # Hanley & McNeil's (1982) standard error, for a sanity check of the bootstrap interval's width.
    a, p, n = auc.value, auc.positives, auc.negatives
    q1, q2 = a / (2 - a), 2 * a**2 / (1 + a)
    se = math.sqrt((a * (1 - a) + (p - 1) * (q1 - a**2) + (n - 1) * (q2 - a**2)) / (p * n))
    assert auc.low < a < auc.high and (auc.high - auc.low) == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_auc_of_random_scores_is_a_half_within_its_interval() -> None:
    rng = np.random.default_rng(3)
    auc = roc_auc(rng.standard_normal(2000), rng.random(2000) < 0.4)
    assert auc.value == pytest.approx(0.5, abs=0.03) and auc.low < 0.5 < auc.high and auc.high - auc.low < 0.07


def test_auc_is_nan_for_an_empty_class_and_rejects_non_boolean_labels() -> None:
    empty = roc_auc([0.1, 0.2, 0.3], [True, True, True])
    assert math.isnan(empty.value) and math.isnan(empty.low) and (empty.positives, empty.negatives) == (3, 0)
    assert math.isnan(roc_auc([], []).value)
    with pytest.raises(ValueError, match="booleans"):
        roc_auc([0.1, 0.2, 0.3], [0, 1, 1])
    with pytest.raises(ValueError, match="shape"):
        roc_auc([0.1, 0.2, 0.3], [True, False])


def test_linear_fit_recovers_a_line_and_is_nan_when_x_is_constant() -> None:
    x = np.array([0.0, 1.0, 2.0, 5.0])
    assert linear_fit(x, 3 * x - 2) == pytest.approx((3.0, -2.0))
    assert all(math.isnan(v) for v in linear_fit([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert all(math.isnan(v) for v in linear_fit([1.0], [1.0]))


def test_study_wer_change_is_paired_per_clip_with_an_interval() -> None:
    from evaluation.study import table, wer_change

    rows = []
    for clip in range(6):
        for noise, snr in (("clean", ""), ("white", "0.0"), ("white", "10.0")):
            base = 0.5 if noise == "white" else 0.1
            rows.append({"noise": noise, "snr_db": snr, "method": "none", "clip": f"c{clip}", "wer": str(base)})
            better = base - (0.2 if snr == "0.0" else 0.0)  # helps at 0 dB only, by 20 points
            rows.append({"noise": noise, "snr_db": snr, "method": "seen-1", "clip": f"c{clip}", "wer": str(better)})
    at_zero = wer_change(rows, "seen-1", [("white", 0.0)])
    assert at_zero.points == pytest.approx(20.0) and at_zero.low == pytest.approx(20.0) and at_zero.requests == 6
    both = wer_change(rows, "seen-1", [("white", 0.0), ("white", 10.0)])
    assert both.points == pytest.approx(10.0)
    assert wer_change(rows, "seen-1", [("clean", None)]).points == pytest.approx(0.0)
    text = table(rows, [0.0, 10.0])
    assert "| seen-1 | +0.00 [+0.00, +0.00] | +10.00 [+10.00, +10.00] | +10.00 [+10.00, +10.00] |" in text
    with pytest.raises(ValueError, match="no rows of method"):
        wer_change(rows, "seen-0.5", None)


def test_study_detector_table_scores_each_measure_on_the_unprocessed_answers() -> None:
    from evaluation.study import detector_table

    rows = []
    for index, wer in enumerate((0.0, 0.1, 0.15, 0.3, 0.5, 0.9)):
        failed = wer > 0.2
        noisy = {"see": str(0.1 + 0.1 * index), "wada_snr_db": str(30 - 5 * index), "dnsmos_ovrl": "3.0"}
        rows.append({"method": "none", "wer": str(wer), **noisy})
        # another method's rows never count: here they would reverse every ranking
        rows.append({"method": "seen-1", "wer": str(0.0 if failed else 1.0), **noisy})
    text = detector_table(rows)
    assert "| SEE | 1.00 [1.00, 1.00] | 3 | 3 |" in text  # rises with WER: separates perfectly
    assert "| WADA-SNR | 1.00 [1.00, 1.00] | 3 | 3 |" in text  # falls with WER: scored negated
    assert "| DNSMOS OVRL | 0.50 [0.50, 0.50] | 3 | 3 |" in text  # constant: chance
