"""The evaluation's analysis and report on synthetic rows whose every figure can be worked out by hand."""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from evaluation.analysis import analyze, best_auc, default_wrong_below
from evaluation.markdown import write_report
from evaluation.rows import RequestRow, rows_from_csv, rows_to_csv

SNRS = (0.0, 10.0, 20.0)
CLIPS = 4
# Clips answered right (out of 4) per method and condition; None is the clean condition.
RIGHT = {
    "none": {0.0: 1, 10.0: 2, 20.0: 3, None: 4},
    "seen-0.5": {0.0: 2, 10.0: 3, 20.0: 4, None: 4},
    "seen-1": {0.0: 4, 10.0: 2, 20.0: 3, None: 3},
    "spectral-subtraction": {0.0: 1, 10.0: 2, 20.0: 3, None: 4},
    "rnnoise": {0.0: 2, 10.0: 1, 20.0: 2, None: 4},
}
DENOISER_SEE_SHIFT = {"spectral-subtraction": 0.02, "rnnoise": -0.01}
NOISE_SEE_SHIFT = {"babble": 0.0, "white": 0.03}


def _see_none(noise: str, snr: float | None, clip: int) -> float:
    """SEE without any fix: low for right answers, 0.5 higher for wrong ones, so SEE separates them perfectly."""
    wrong = clip >= RIGHT["none"][snr]
    return 0.1 + 0.02 * clip + 0.5 * wrong + (0.0 if snr is None else NOISE_SEE_SHIFT.get(noise, 0.0))


def _row(noise: str, snr: float | None, method: str, clip: int, *, wer: bool = False) -> RequestRow:
    success = 1.0 if clip < RIGHT[method][snr] else 0.0
    see = _see_none(noise, snr, clip) + DENOISER_SEE_SHIFT.get(method, 0.0)
    # One clip more agrees with its clean answer than is right: clip 3's clean answer is wrong and stays so.
    agrees = clip < min(CLIPS, RIGHT[method][snr] + 1)
    return RequestRow(
        noise=noise,
        snr_db=snr,
        method=method,
        clip=f"clip{clip}",
        success=success,
        wer=1.0 - success if wer else None,
        see=see,
        residual_see=see * (0.3 if method == "seen-0.5" else 0.1) if method.startswith("seen-") else None,
        true_snr_db=None if snr is None else snr + 0.5,
        wada_snr_db=40.0 if snr is None else snr - 1.0 + 0.1 * clip,
        stoi=1.0 if snr is None else 0.6 + 0.01 * snr,
        dnsmos_bak=4.0 if snr is None else 1.5 + 0.1 * snr,  # a condition-level score: ties inside a condition
        dnsmos_ovrl=3.5 if snr is None else 1.2 + 0.08 * snr,
        answer=f"answer {clip}" if agrees else f"other {clip}",
        agreement=1.0 if agrees else 0.0,
    )


def _rows(methods: tuple[str, ...] = tuple(RIGHT), noises: tuple[str, ...] = ("babble", "white")) -> list[RequestRow]:
    rows = [_row(n, s, m, c) for n in noises for s in SNRS for m in methods for c in range(CLIPS)]
    return rows + [_row("clean", None, m, c) for m in methods for c in range(CLIPS)]


@pytest.fixture(scope="module")
def rows() -> list[RequestRow]:
    return _rows()


def test_condition_means_match_a_hand_computed_case(rows: list[RequestRow]) -> None:
    analysis = analyze(rows, resamples=200)
    assert len(analysis.conditions) == 2 * 3 * 5 + 5 and analysis.requests == len(rows)
    babble_0 = next(c for c in analysis.conditions if c.key == ("babble", 0.0, "none"))
    see = [0.1, 0.62, 0.64, 0.66]  # clip 0 right, clips 1-3 wrong
    assert babble_0.n == 4 and babble_0.success == pytest.approx(0.25) and babble_0.wer is None
    assert babble_0.see == pytest.approx(0.505) and babble_0.see_std == pytest.approx(statistics.stdev(see))
    assert babble_0.residual_see is None and babble_0.residual_see_std is None
    assert babble_0.true_snr_db == pytest.approx(0.5) and babble_0.wada_snr_db == pytest.approx(-0.85)
    assert babble_0.stoi == pytest.approx(0.6)
    assert babble_0.dnsmos_bak == pytest.approx(1.5) and babble_0.dnsmos_ovrl == pytest.approx(1.2)
    assert babble_0.agreement == pytest.approx(0.5)  # clips 0 and 1 keep their clean answer
    seen = next(c for c in analysis.conditions if c.key == ("babble", 0.0, "seen-0.5"))
    assert seen.residual_see == pytest.approx(0.3 * 0.505) and seen.success == pytest.approx(0.5)
    clean = next(c for c in analysis.conditions if c.key == ("clean", None, "none"))
    assert clean.true_snr_db is None and clean.see == pytest.approx(0.13) and clean.success == 1.0
    assert [c.method for c in analysis.conditions[:5]] == [
        "none",
        "seen-0.5",
        "seen-1",
        "rnnoise",
        "spectral-subtraction",
    ]
    assert analysis.conditions[-1].noise == "clean"


def test_a_failed_blind_estimate_is_left_out_not_propagated(rows: list[RequestRow]) -> None:
    broken = [
        replace(r, wada_snr_db=math.nan)
        if (r.noise, r.snr_db, r.method, r.clip) == ("babble", 0.0, "none", "clip0")
        else r
        for r in rows
    ]
    analysis = analyze(broken, resamples=50)
    babble_0 = next(c for c in analysis.conditions if c.key == ("babble", 0.0, "none"))
    assert babble_0.n == 4 and babble_0.wada_snr_db == pytest.approx(-0.8)  # mean of clips 1-3
    auc = {a.score: a for a in analysis.auc if a.target == "success"}
    assert auc["-wada_snr_db"].negatives == 15 and auc["see"].negatives == 16
    json.dumps(analysis.to_dict(), allow_nan=False)


def test_see_correlates_negatively_with_success_and_snr_positively(rows: list[RequestRow]) -> None:
    correlations = analyze(rows, resamples=300).correlations
    entries = {(e.scope, e.measure, e.kind): e for e in correlations if e.target == "success"}
    assert {scope for scope, _, _ in entries} == {"babble", "white", "pooled"}
    for scope, points in (("babble", 4), ("white", 4), ("pooled", 7)):  # 3 SNRs (+ 3 more pooled) + clean
        pearson = entries[(scope, "see", "pearson")]
        assert pearson.n == points and pearson.value < -0.9 and pearson.abs_value == -pearson.value
        assert -1.0 <= pearson.low <= pearson.high < 0.0
        assert entries[(scope, "see", "spearman")].value < -0.9  # exactly -1 per noise; pooled has ties in success
        assert entries[(scope, "true_snr_db", "pearson")].n == points - 1  # clean has no true SNR
        assert entries[(scope, "true_snr_db", "spearman")].value == pytest.approx(1.0)
        assert entries[(scope, "wada_snr_db", "pearson")].value > 0.8
        for dnsmos in ("dnsmos_bak", "dnsmos_ovrl"):  # higher = cleaner, like an SNR, and clean is in here
            assert entries[(scope, dnsmos, "pearson")].n == points
            assert entries[(scope, dnsmos, "spearman")].value == pytest.approx(1.0)
    agreement = {(e.scope, e.measure, e.kind): e for e in correlations if e.target == "agreement"}
    assert set(agreement) == set(entries)
    see = agreement[("babble", "see", "pearson")]
    assert see.n == 4 and see.value < -0.9  # agreement 50/75/100/100 % against SEE means falling with SNR
    assert agreement[("babble", "see", "spearman")].value < -0.9


def test_see_detects_wrong_answers(rows: list[RequestRow], tmp_path: Path) -> None:
    entries = analyze(rows, resamples=300).auc
    auc = {a.score: a for a in entries if a.target == "success"}
    see = auc["see"]
    assert see.value == pytest.approx(1.0) and see.low <= see.high <= 1.0
    assert (see.positives, see.negatives) == (12, 16)  # 2 noises x (3 + 2 + 1) wrong; 12 noisy + 4 clean right
    assert (auc["-true_snr_db"].positives, auc["-true_snr_db"].negatives) == (12, 12)  # clean rows left out
    assert 0.5 < auc["-wada_snr_db"].value < 1.0
    for dnsmos in ("-dnsmos_bak", "-dnsmos_ovrl"):  # ties inside each condition keep it below SEE's
        assert 0.5 < auc[dnsmos].value < 1.0 and (auc[dnsmos].positives, auc[dnsmos].negatives) == (12, 16)
    assert [a.score for a in best_auc(entries, "success")][:1] == ["see"]
    changed = {a.score: a for a in entries if a.target == "agreement"}
    # Answers that changed from the clean one: 2 + 1 + 0 per noise; every clean "none" answer agrees.
    assert (changed["see"].positives, changed["see"].negatives) == (6, 22)
    assert 0.5 < changed["see"].value < 1.0  # clip 3 stays wrong (high SEE) yet agrees
    lenient_analysis = analyze(rows, wrong_below=0.0, resamples=50)
    lenient = {a.score: a for a in lenient_analysis.auc}["see"]
    assert lenient.positives == 0 and lenient.value != lenient.value  # nothing counts as wrong: NaN
    write_report(lenient_analysis, tmp_path, title="Lenient", run_seconds=1.0, settings={})
    text = (tmp_path / "report.md").read_text()
    assert "Flagging answers wrong (ground truth): no AUC is defined (0 such answers, 28 others)." in text


def test_seen_gain_denoiser_see_and_clean_effect(rows: list[RequestRow]) -> None:
    analysis = analyze(rows, resamples=50)
    gains = {(g.noise, g.snr_db): g for g in analysis.seen_gain}
    assert set(gains) == {(n, s) for n in ("babble", "white") for s in SNRS}  # clean is not a noisy condition
    expected: dict[float | None, tuple[str, float, str, float]] = {
        0.0: ("seen-1", 1.0, "rnnoise", 0.5),  # seen-1 beats seen-0.5; rnnoise beats spectral subtraction
        10.0: ("seen-0.5", 0.75, "spectral-subtraction", 0.5),
        20.0: ("seen-0.5", 1.0, "spectral-subtraction", 0.75),
    }
    for (_, snr), gain in gains.items():
        seen, seen_success, denoiser, denoiser_success = expected[snr]
        assert (gain.best_seen, gain.best_denoiser) == (seen, denoiser)
        assert gain.best_seen_success == seen_success and gain.best_denoiser_success == denoiser_success
        assert gain.gain == pytest.approx(seen_success - denoiser_success)
        assert gain.gain_over_none == pytest.approx(seen_success - RIGHT["none"][snr] / 4)
    assert analysis.mean_seen_gain == pytest.approx((0.5 + 0.25 + 0.25) / 3)
    shifts = {(d.method, d.noise, d.snr_db): d for d in analysis.denoiser_see}
    assert len(shifts) == 2 * 7
    assert shifts[("rnnoise", "white", 10.0)].difference == pytest.approx(-0.01)
    assert shifts[("spectral-subtraction", "clean", None)].difference == pytest.approx(0.02)
    assert shifts[("spectral-subtraction", "babble", 0.0)].see_none == pytest.approx(0.505)
    effect = {e.method: e.difference for e in analysis.clean_effect}
    assert effect == pytest.approx({"seen-0.5": 0.0, "seen-1": -0.25, "rnnoise": 0.0, "spectral-subtraction": 0.0})
    json.dumps(analysis.to_dict(), allow_nan=False)


def test_csv_round_trip_keeps_none_and_exact_floats(tmp_path: Path, rows: list[RequestRow]) -> None:
    extra = [_row("white", 10.0, "seen-1", 3, wer=True), _row("clean", None, "none", 1, wer=True)]
    answers = ["", 'a "quoted", comma\nand a new line', "  spaced  ", "ünïcode — ok", None]
    odd = [replace(rows[0], answer=a, dnsmos_bak=None, agreement=None) for a in answers]
    path = tmp_path / "rows.csv"
    rows_to_csv([*rows, *extra, *odd], path)
    assert rows_from_csv(path) == [*rows, *extra, *odd]  # an empty answer stays "", a missing one None
    rows_to_csv([*rows, *extra], path)
    text = path.read_text()
    path.write_text(text.replace("clean,,none,clip1,1.0,0.0,", "clean,,none,clip1,,0.0,"))
    with pytest.raises(ValueError, match="'success' is empty"):
        rows_from_csv(path)
    path.write_text("noise,snr_db\nclean,\n")
    with pytest.raises(ValueError, match="missing columns"):
        rows_from_csv(path)


def test_rows_of_runs_before_dnsmos_and_agreement_still_load_and_analyse(
    tmp_path: Path, rows: list[RequestRow]
) -> None:
    path = tmp_path / "old.csv"
    rows_to_csv(rows, path)
    old_columns = [
        *("noise", "snr_db", "method", "clip", "success", "wer", "see", "residual_see"),
        *("true_snr_db", "wada_snr_db", "stoi"),
    ]  # the columns of the first release
    with path.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    old = rows_from_csv(path)
    assert old == [replace(r, dnsmos_bak=None, dnsmos_ovrl=None, answer=None, agreement=None) for r in rows]
    analysis = analyze(old, resamples=50)
    assert {e.measure for e in analysis.correlations} == {"see", "true_snr_db", "wada_snr_db", "stoi"}
    assert {e.target for e in analysis.correlations} | {a.target for a in analysis.auc} == {"success"}
    assert {a.score for a in analysis.auc} == {"see", "-wada_snr_db", "-true_snr_db"}
    assert all(c.dnsmos_bak is None and c.agreement is None for c in analysis.conditions)
    write_report(analysis, tmp_path / "report", title="Old run", run_seconds=1.0, settings={})
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| DNSMOS" not in text and "Agreement with the clean answer" not in text  # no empty columns or tables


def test_the_report_names_the_best_detector_from_the_data(tmp_path: Path, rows: list[RequestRow]) -> None:
    # SEE made uninformative and DNSMOS BAK a perfect detector: the report must say so.
    swapped = [replace(r, see=0.3, dnsmos_bak=4.0 - 2.0 * (r.success < 1.0)) for r in rows]
    analysis = analyze(swapped, resamples=50)
    ranked = best_auc(analysis.auc, "success")
    assert ranked[0].score == "-dnsmos_bak" and ranked[0].value == pytest.approx(1.0)
    assert {a.score: a.value for a in analysis.auc if a.target == "success"}["see"] == pytest.approx(0.5)
    write_report(analysis, tmp_path, title="Swapped", run_seconds=1.0, settings={})
    text = (tmp_path / "report.md").read_text()
    assert "Flagging answers wrong (ground truth): best **−DNSMOS BAK (blind)** (AUC 1.00)" in text
    # Over condition means, the true SNR stays the strongest, so the best blind measure is named beside it.
    assert "the strongest without the clean clip" in text


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, path


def test_report_has_every_section_and_valid_figures(tmp_path: Path, rows: list[RequestRow]) -> None:
    analysis = analyze(rows, resamples=100)
    paths = write_report(analysis, tmp_path / "out", title="Tiny eval", run_seconds=12.5, settings={"lambda": 1.0})
    names = sorted(p.name for p in paths)
    assert names == [
        "report.md",
        "see_vs_snr.png",
        "see_vs_success.png",
        *(f"success_vs_snr_{n}.png" for n in ("babble", "white")),
    ]
    text = (tmp_path / "out" / "report.md").read_text()
    for heading in (
        "# Tiny eval",
        "## Success rate (%)",
        "### babble",
        "## SEE by SNR",
        "residual SEE (seen-0.5)",
        "## Correlation with success",
        "## Detecting wrong answers",
        "## SEE left by denoisers",
        "## SEEN vs waveform denoisers",
        "## Clean audio",
        "![see_vs_success](see_vs_success.png)",
    ):
        assert heading in text, heading
    assert "## WER" not in text and "`1.0`" in text and "12.5 s" in text
    assert "| none | 25.0 | 50.0 | 75.0 | 100.0 |" in text  # success of "none" by SNR, then clean
    assert "+33.3 points" in text  # mean SEEN gain
    assert "## Agreement with the clean answer" in text and "| none | 50.0 | 75.0 | 100.0 | 100.0 |" in text
    assert "## Correlation with agreement" in text
    header = "| scope | SEE | true SNR (oracle) | WADA-SNR | DNSMOS BAK | DNSMOS OVRL | STOI (oracle) | points |"
    assert text.count(header) == 4  # Pearson and Spearman, for success and for agreement
    assert "−DNSMOS BAK (blind)" in text and "−DNSMOS OVRL (blind)" in text
    assert "Flagging answers wrong (ground truth): best **SEE** (AUC 1.00)" in text
    assert "Flagging answers changed (vs clean answer): best **SEE**" in text
    for path in paths[1:]:
        _assert_png(path)


def test_report_with_only_method_none_and_odd_noise_names(tmp_path: Path) -> None:
    rows = [_row(n, s, "none", c, wer=True) for n in ("street/cafe 1", "babble") for s in SNRS for c in range(CLIPS)]
    assert default_wrong_below(rows) == 0.5 and default_wrong_below(_rows(("none",))) == 1.0
    analysis = analyze(rows, wrong_below=0.5, resamples=50)  # no clean condition, no SEEN, no denoiser
    assert analysis.seen_gain == [] and analysis.denoiser_see == [] and analysis.clean_effect == []
    assert analysis.mean_seen_gain is None
    wer = next(c for c in analysis.conditions if c.key == ("babble", 0.0, "none")).wer
    assert wer == pytest.approx(0.75)
    paths = write_report(analysis, tmp_path, title="Only none", run_seconds=1.0, settings={})
    assert {p.name for p in paths} >= {"report.md", "success_vs_snr_street_cafe_1.png", "success_vs_snr_babble.png"}
    text = (tmp_path / "report.md").read_text()
    assert "## WER (%)" in text and "## SEEN vs" not in text and "## Clean audio" not in text
    for path in paths[1:]:
        _assert_png(path)
    empty = write_report(analyze([]), tmp_path / "empty", title="Empty", run_seconds=0.0, settings={})
    assert [p.name for p in empty] == ["report.md"]
