"""The paper-reproduction figures, reduced from per-request rows.

The runner writes one :class:`RequestRow` per (condition, clip); :func:`analyze` turns them into the paper's
claims: SEE tracks success better than the raw-audio measures (correlations over condition means), SEE flags
wrong answers (request-level ROC AUC), waveform denoisers barely move SEE while SEEN recovers success, and SEEN
leaves clean audio alone. Success is measured twice: against the ground truth, and (the paper's own measure)
as agreement with the model's answer on the clean clip. A method that was not run, or a measure an older run
did not record, gives empty sections, never an error, and :meth:`Analysis.to_dict` is strict JSON (non-finite
numbers become ``None``).

Over 300 lines on purpose: one small reduction per claim of the paper, kept in one file so that the
whole analysis reads top to bottom.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from evaluation.rows import RequestRow
from evaluation.stats import Method, correlation, roc_auc

CLEAN = "clean"
NONE = "none"
SEEN_PREFIX = "seen-"
POOLED = "pooled"
KINDS: tuple[Method, ...] = ("pearson", "spearman")
MEASURES = ("see", "true_snr_db", "wada_snr_db", "dnsmos_bak", "dnsmos_ovrl", "stoi")
"""What is correlated with success: SEE (inside the model) and the raw-audio measures it is compared with."""
REFERENCE_MEASURES = frozenset({"true_snr_db", "stoi"})
"""Measures that need the clean clip, which a deployment never has (oracles, shown for scale)."""
SUCCESS, AGREEMENT = "success", "agreement"
TARGETS = (SUCCESS, AGREEMENT)
"""What a measure should predict: success against the ground truth, and agreement with the clean answer."""


def is_seen(method: str) -> bool:
    return method.startswith(SEEN_PREFIX)


def is_denoiser(method: str) -> bool:
    return method != NONE and not is_seen(method)


def method_order(methods: Iterable[str]) -> list[str]:
    """The order of every table: "none", then the SEEN variants, then the denoisers, each alphabetically."""
    return sorted(set(methods), key=lambda m: (m != NONE, not is_seen(m), m))


def snr_key(snr_db: float | None) -> float:
    """Sort key that puts clean (``None``) above every SNR, at the top of each noise curve."""
    return math.inf if snr_db is None else snr_db


def default_wrong_below(rows: Iterable[RequestRow]) -> float:
    """The success below which an answer counts as wrong: any miss for exact-match QA, WER above 50 % otherwise."""
    return 0.5 if any(r.wer is not None for r in rows) else 1.0


@dataclass(frozen=True)
class ConditionStats:
    """Means over the clips of one (noise, SNR, method): ``None`` where no clip had the value, NaN values skipped."""

    noise: str
    snr_db: float | None
    method: str
    n: int
    success: float
    wer: float | None
    see: float
    see_std: float
    residual_see: float | None
    residual_see_std: float | None
    true_snr_db: float | None
    wada_snr_db: float
    stoi: float
    dnsmos_bak: float | None  # None where the run did not record it
    dnsmos_ovrl: float | None
    agreement: float | None  # None where the run had no clean "none" answers

    @property
    def key(self) -> tuple[str, float | None, str]:
        return self.noise, self.snr_db, self.method


@dataclass(frozen=True)
class CorrelationEntry:
    """A measure against a target over condition means; signed (SEE should be negative, the others positive)."""

    scope: str  # a noise type, or "pooled"
    measure: str
    target: str  # "success" (against the ground truth) or "agreement" (with the clean answer)
    kind: Method
    value: float
    low: float
    high: float
    n: int
    abs_value: float  # |value|, to compare SEE with the SNRs across the sign


@dataclass(frozen=True)
class AucEntry:
    """How well a per-request score ranks wrong answers (positives) above right ones (negatives)."""

    score: str  # a key of AUC_SCORES: "see", "-wada_snr_db", "-dnsmos_bak", ...
    target: str  # wrong by "success" (the ground truth) or by "agreement" (changed from the clean answer)
    value: float
    low: float
    high: float
    positives: int
    negatives: int


@dataclass(frozen=True)
class DenoiserSee:
    """Mean SEE a denoiser leaves, beside method "none" on the same condition; difference > 0: it raised SEE."""

    method: str
    noise: str
    snr_db: float | None
    see: float
    see_none: float | None
    difference: float | None


@dataclass(frozen=True)
class SeenGain:
    """Best SEEN against best denoiser on one noisy condition; gains are success-rate fractions."""

    noise: str
    snr_db: float | None
    none_success: float | None
    best_seen: str | None
    best_seen_success: float | None
    best_denoiser: str | None
    best_denoiser_success: float | None
    gain: float | None  # best SEEN minus best denoiser
    gain_over_none: float | None  # best SEEN minus "none"


@dataclass(frozen=True)
class CleanEffect:
    """A method's success on clean audio minus that of "none": SEEN must not hurt clean requests."""

    method: str
    success: float
    difference: float | None


@dataclass(frozen=True)
class Analysis:
    """Every section of the report; success and gains are fractions (the report shows percent and points)."""

    wrong_below: float
    confidence: float
    requests: int
    conditions: list[ConditionStats]
    correlations: list[CorrelationEntry]
    auc: list[AucEntry]
    denoiser_see: list[DenoiserSee]
    seen_gain: list[SeenGain]
    mean_seen_gain: float | None
    clean_effect: list[CleanEffect]

    @property
    def noises(self) -> list[str]:
        return sorted({c.noise for c in self.conditions if c.noise != CLEAN})

    def to_dict(self) -> dict[str, Any]:
        """Plain, strict JSON data: non-finite numbers (degenerate statistics) become ``None``."""
        return dict(json.loads(json.dumps(asdict(self)), parse_constant=lambda _: None))


def _mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and std (ddof=1) of the given values; NaN ones (a blind estimate failing on silence) are left out."""
    given = np.asarray([v for v in values if v is not None], dtype=np.float64)
    finite = given[np.isfinite(given)]
    if given.size == 0:
        return None, None
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0


def condition_stats(rows: Iterable[RequestRow]) -> list[ConditionStats]:
    """One entry per (noise, SNR, method), ordered by noise (clean last), SNR, then :func:`method_order`."""
    groups: dict[tuple[str, float | None, str], list[RequestRow]] = defaultdict(list)
    for row in rows:
        groups[(row.noise, row.snr_db, row.method)].append(row)
    rank = {m: i for i, m in enumerate(method_order(key[2] for key in groups))}
    out = []
    for (noise, snr, method), group in sorted(
        groups.items(), key=lambda item: (item[0][0] == CLEAN, item[0][0], snr_key(item[0][1]), rank[item[0][2]])
    ):
        stats: dict[str, Any] = {}
        for name in ("success", "wer", "see", "residual_see", *MEASURES[1:], AGREEMENT):
            stats[name], std = _mean_std(getattr(r, name) for r in group)
            if name in ("see", "residual_see"):
                stats[f"{name}_std"] = std
        out.append(ConditionStats(noise, snr, method, len(group), **stats))
    return out


def _finite(pairs: Iterable[tuple[float, Any]]) -> list[tuple[float, Any]]:
    """Drop pairs whose score is not finite (a blind estimate can fail on silence); stats rejects NaN."""
    return [(x, y) for x, y in pairs if math.isfinite(x)]


def correlations(
    conditions: Sequence[ConditionStats], *, resamples: int, confidence: float, seed: int
) -> list[CorrelationEntry]:
    """Each measure against each target (success, agreement) over the condition means of method "none".

    A noise type's points are its SNRs plus the clean condition at the top of its curve (as the paper plots
    them); "pooled" is every "none" condition once. Clean has no finite true SNR, so it is left out of the
    true-SNR correlations only. A (measure, target) with no point at all (not recorded) gives no entry.
    """
    none = [c for c in conditions if c.method == NONE]
    clean = [c for c in none if c.noise == CLEAN]
    scopes = {
        noise: [c for c in none if c.noise == noise] + clean for noise in sorted({c.noise for c in none} - {CLEAN})
    }
    scopes[POOLED] = none
    out = []
    for target in TARGETS:
        for scope, points in scopes.items():
            for measure in MEASURES:
                pairs = _finite(
                    (x, y)
                    for c in points
                    if (x := getattr(c, measure)) is not None and (y := getattr(c, target)) is not None
                )
                if not pairs:
                    continue
                x, y = np.asarray([p[0] for p in pairs]), np.asarray([p[1] for p in pairs])
                for kind in KINDS:
                    r = correlation(x, y, kind, resamples=resamples, confidence=confidence, seed=seed)
                    out.append(
                        CorrelationEntry(scope, measure, target, kind, r.value, r.low, r.high, r.n, abs(r.value))
                    )
    return out


def _negated(value: float | None) -> float | None:
    return None if value is None else -value


AUC_SCORES: dict[str, Callable[[RequestRow], float | None]] = {
    "see": lambda r: r.see,
    "-wada_snr_db": lambda r: -r.wada_snr_db,
    "-dnsmos_bak": lambda r: _negated(r.dnsmos_bak),
    "-dnsmos_ovrl": lambda r: _negated(r.dnsmos_ovrl),
    "-true_snr_db": lambda r: _negated(r.true_snr_db),  # oracle; clean rows drop out
}
"""Per-request scores where higher should mean "more likely wrong" (so the cleaner-is-higher measures are negated)."""
REFERENCE_SCORES = frozenset({"-true_snr_db"})
"""Scores that need the clean clip (see :data:`REFERENCE_MEASURES`)."""


def error_auc(
    rows: Iterable[RequestRow], *, wrong_below: float, resamples: int, confidence: float, seed: int
) -> list[AucEntry]:
    """ROC AUC of each score for "the answer is wrong" (target < ``wrong_below``) over every method-"none" row.

    Wrong is judged by each target: success (against the ground truth) and agreement (changed from the clean
    answer). Rows without the score or the target drop out; a (score, target) with no row gives no entry.
    """
    none = [r for r in rows if r.method == NONE]
    out = []
    for target in TARGETS:
        for name, score in AUC_SCORES.items():
            pairs = _finite(
                (s, y < wrong_below)
                for r in none
                if (s := score(r)) is not None and (y := getattr(r, target)) is not None
            )
            if not pairs:
                continue
            scores = np.asarray([p[0] for p in pairs], dtype=np.float64)
            labels = np.asarray([p[1] for p in pairs], bool)
            auc = roc_auc(scores, labels, resamples=resamples, confidence=confidence, seed=seed)
            out.append(AucEntry(name, target, *auc))
    return out


def best_auc(entries: Iterable[AucEntry], target: str, *, blind: bool = False) -> list[AucEntry]:
    """The ``target``'s entries with a finite AUC, best first; with ``blind``, only scores needing no clean clip."""
    chosen = [
        e
        for e in entries
        if e.target == target and math.isfinite(e.value) and not (blind and e.score in REFERENCE_SCORES)
    ]
    return sorted(chosen, key=lambda e: -e.value)


def strongest_correlations(
    entries: Iterable[CorrelationEntry], target: str, *, scope: str = POOLED, kind: Method = "pearson"
) -> list[CorrelationEntry]:
    """One scope's finite correlations with ``target``, strongest (largest magnitude) first."""
    chosen = [e for e in entries if (e.scope, e.target, e.kind) == (scope, target, kind) and math.isfinite(e.abs_value)]
    return sorted(chosen, key=lambda e: -e.abs_value)


def _method(condition: ConditionStats | None) -> str | None:
    return None if condition is None else condition.method


def _success(condition: ConditionStats | None) -> float | None:
    return None if condition is None else condition.success


def _difference(a: ConditionStats | None, b: ConditionStats | None) -> float | None:
    return None if a is None or b is None else a.success - b.success


def _best(conditions: Iterable[ConditionStats]) -> ConditionStats | None:
    """Highest success; ties go to the first in :func:`method_order` (the conditions come in that order)."""
    return max(conditions, key=lambda c: c.success, default=None)


def analyze(
    rows: Sequence[RequestRow],
    *,
    wrong_below: float = 1.0,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Analysis:
    """Every section of the report; ``wrong_below`` is usually :func:`default_wrong_below` of the rows."""
    conditions = condition_stats(rows)
    by_key = {c.key: c for c in conditions}
    by_condition: dict[tuple[str, float | None], list[ConditionStats]] = defaultdict(list)
    for c in conditions:
        by_condition[(c.noise, c.snr_db)].append(c)

    denoiser_see = []
    for c in sorted((c for c in conditions if is_denoiser(c.method)), key=lambda c: c.method):
        base = by_key.get((c.noise, c.snr_db, NONE))
        see_none = None if base is None else base.see
        denoiser_see.append(
            DenoiserSee(c.method, c.noise, c.snr_db, c.see, see_none, None if see_none is None else c.see - see_none)
        )

    seen_gain = []
    for (noise, snr), group in by_condition.items():
        seen, denoiser = _best(c for c in group if is_seen(c.method)), _best(c for c in group if is_denoiser(c.method))
        if noise == CLEAN or (seen is None and denoiser is None):
            continue
        none = by_key.get((noise, snr, NONE))
        seen_gain.append(
            SeenGain(
                noise, snr, _success(none), _method(seen), _success(seen), _method(denoiser),
                _success(denoiser), _difference(seen, denoiser), _difference(seen, none),
            )
        )  # fmt: skip
    gains = [g.gain for g in seen_gain if g.gain is not None]

    clean_none = by_key.get((CLEAN, None, NONE))
    clean_effect = [
        CleanEffect(c.method, c.success, _difference(c, clean_none))
        for c in by_condition.get((CLEAN, None), [])
        if c.method != NONE
    ]
    return Analysis(
        wrong_below=wrong_below,
        confidence=confidence,
        requests=len(rows),
        conditions=conditions,
        correlations=correlations(conditions, resamples=resamples, confidence=confidence, seed=seed),
        auc=error_auc(rows, wrong_below=wrong_below, resamples=resamples, confidence=confidence, seed=seed),
        denoiser_see=denoiser_see,
        seen_gain=seen_gain,
        mean_seen_gain=float(np.mean(gains)) if gains else None,
        clean_effect=clean_effect,
    )
