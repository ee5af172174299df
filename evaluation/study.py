"""Final-split figures of the SEEN study: what each method does to WER, with intervals over clips.

``python -m evaluation.study runs/eval/MODEL/requests.csv`` reads the per-request rows ``seen eval`` writes
and prints, for every method beside ``none``, the mean WER change against no processing on clean audio
(the cost) and over the noisy conditions at the target SNRs (the gain, overall and per noise type), in
percentage points, each with a 95 % bootstrap interval. Clips are resampled (with replacement) as whole
units, all their conditions together, since a clip's difficulty is shared by every condition it is in.
Then SEE as a detector beside the blind audio measures: per-request ROC AUC for "WER above 0.2" of the
unprocessed answers (``none`` rows), with stratified bootstrap intervals.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.stats import FAILURE_WER, roc_auc

NONE, CLEAN = "none", "clean"


@dataclass(frozen=True)
class Change:
    """Mean WER change against no processing, in points (> 0: the method lowered the WER), with its interval."""

    points: float
    low: float
    high: float
    requests: int

    def __str__(self) -> str:
        return f"{self.points:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def wer_change(
    rows: Sequence[dict[str, str]],
    method: str,
    keep: Sequence[tuple[str, float | None]] | None,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> Change:
    """WER of ``none`` minus WER of ``method`` on the same (noise, SNR, clip) inputs, in points.

    ``keep`` limits the inputs to those (noise, SNR) conditions (SNR None: clean); None keeps all.
    """
    baseline = {(r["noise"], r["snr_db"], r["clip"]): float(r["wer"]) for r in rows if r["method"] == NONE}
    wanted = None if keep is None else {(noise, "" if snr is None else str(float(snr))) for noise, snr in keep}
    by_clip: dict[str, list[float]] = {}
    for row in rows:
        key = (row["noise"], row["snr_db"], row["clip"])
        if row["method"] != method or key not in baseline:
            continue
        if wanted is not None and (row["noise"], row["snr_db"]) not in wanted:
            continue
        by_clip.setdefault(row["clip"], []).append(100 * (baseline[key] - float(row["wer"])))
    if not by_clip:
        raise ValueError(f"no rows of method {method!r} in the conditions asked for")
    clips = list(by_clip)
    values = [np.array(by_clip[clip]) for clip in clips]
    point = float(np.mean(np.concatenate(values)))
    generator = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for index in range(resamples):
        picked = generator.integers(0, len(clips), len(clips))
        draws[index] = np.mean(np.concatenate([values[i] for i in picked]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return Change(point, float(low), float(high), sum(len(v) for v in values))


def table(rows: Sequence[dict[str, str]], snrs: Sequence[float]) -> str:
    """Markdown: per method, the clean cost, the noisy gain at ``snrs`` overall and per noise type."""
    noises = sorted({r["noise"] for r in rows if r["noise"] != CLEAN})
    present = {(r["noise"], r["snr_db"]) for r in rows}
    noisy = [(n, s) for n in noises for s in snrs if (n, str(float(s))) in present]
    methods = sorted({r["method"] for r in rows} - {NONE})
    snr_text = ", ".join(f"{s:g}" for s in snrs)
    header = ["method", "clean (change)", f"noisy at {snr_text} dB (gain)", *noises]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for method in methods:
        cells = [method, str(wer_change(rows, method, [(CLEAN, None)])), str(wer_change(rows, method, noisy))]
        for noise in noises:
            picked = [(n, s) for n, s in noisy if n == noise]
            cells.append(str(wer_change(rows, method, picked)) if picked else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


DETECTORS = (("SEE", "see", 1.0), ("WADA-SNR", "wada_snr_db", -1.0), ("DNSMOS OVRL", "dnsmos_ovrl", -1.0))
"""Scores compared as detectors of a failed answer: column and sign (higher = more likely failed)."""


def detector_table(rows: Sequence[dict[str, str]]) -> str:
    """Markdown: per-request AUC for a WER above :data:`FAILURE_WER` of the unprocessed answers, per score."""
    plain = [r for r in rows if r["method"] == NONE]
    failed = np.array([float(r["wer"]) > FAILURE_WER for r in plain])
    lines = ["| score | AUC [95 %] | failed | not failed |", "| --- | --- | --- | --- |"]
    for name, column, sign in DETECTORS:
        auc = roc_auc([sign * float(r[column]) for r in plain], failed)
        lines.append(
            f"| {name} | {auc.value:.2f} [{auc.low:.2f}, {auc.high:.2f}] | {auc.positives} | {auc.negatives} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("requests", type=Path, help="requests.csv of a seen eval run")
    parser.add_argument("--snrs", default="0,5,10", help="SNRs (dB) of the noisy gain (default: 0,5,10)")
    args = parser.parse_args(argv)
    snrs = [float(value) for value in args.snrs.split(",")]
    print("WER change against no processing, points (> 0: lower WER), 95 % bootstrap intervals over clips:\n")
    rows = read_rows(args.requests)
    print(table(rows, snrs))
    print(f"\nPer-request ROC AUC for WER > {FAILURE_WER} of the unprocessed answers:\n")
    print(detector_table(rows))


if __name__ == "__main__":
    main()
