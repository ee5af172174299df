"""The evaluation's Markdown report and figures, drawn from an :class:`~evaluation.analysis.Analysis`.

Figures use :class:`matplotlib.figure.Figure` directly, never pyplot, so writing a report touches no global
backend state (safe in the CLI, in tests and beside a notebook). Sections whose methods were not run are left
out rather than printed empty.

Over 300 lines on purpose: one short writer per section of the report (and its plots), in the order
the report prints them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from evaluation.analysis import (
    AGREEMENT,
    CLEAN,
    KINDS,
    MEASURES,
    NONE,
    POOLED,
    REFERENCE_MEASURES,
    SUCCESS,
    TARGETS,
    Analysis,
    AucEntry,
    ConditionStats,
    best_auc,
    is_seen,
    method_order,
    snr_key,
    strongest_correlations,
)
from evaluation.stats import linear_fit

DASH = "–"
SCORE_NAMES = {
    "see": "SEE",
    "-wada_snr_db": "−WADA-SNR (blind)",
    "-dnsmos_bak": "−DNSMOS BAK (blind)",
    "-dnsmos_ovrl": "−DNSMOS OVRL (blind)",
    "-true_snr_db": "−true SNR (oracle, no clean)",
}
MEASURE_NAMES = {
    "see": "SEE",
    "true_snr_db": "true SNR",
    "wada_snr_db": "WADA-SNR",
    "dnsmos_bak": "DNSMOS BAK",
    "dnsmos_ovrl": "DNSMOS OVRL",
    "stoi": "STOI",
}
KIND_NAMES = {"pearson": "Pearson r", "spearman": "Spearman ρ"}
TARGET_NAMES = {
    SUCCESS: "success (against the ground truth)",
    AGREEMENT: "agreement (with the model's own answer on the clean clip)",
}
WRONG_NAMES = {SUCCESS: "wrong (ground truth)", AGREEMENT: "changed (vs clean answer)"}
Cell = Callable[[ConditionStats], str]


def _num(x: float | None, digits: int = 3, scale: float = 1.0, sign: str = "") -> str:
    return DASH if x is None or not math.isfinite(x) else f"{x * scale:{sign}.{digits}f}"


def _pct(x: float | None) -> str:
    return _num(x, 1, 100.0)


def _points(x: float | None) -> str:
    """A difference of success rates in percentage points, signed so a loss stands out."""
    return _num(x, 1, 100.0, "+")


def _ci(value: float, low: float, high: float, sign: str = "+") -> str:
    return f"{_num(value, 2, sign=sign)} [{_num(low, 2, sign=sign)}, {_num(high, 2, sign=sign)}]"


def _snr(snr_db: float | None) -> str:
    return "clean" if snr_db is None else f"{snr_db:g} dB"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows), ""]


def _columns(analysis: Analysis, noise: str) -> list[tuple[str, float | None]]:
    """A noise type's SNRs ascending, then the clean condition (shared by every noise type) when it was run."""
    snrs = sorted({c.snr_db for c in analysis.conditions if c.noise == noise}, key=snr_key)
    clean = noise != CLEAN and any(c.noise == CLEAN for c in analysis.conditions)
    return [(noise, s) for s in snrs] + ([(CLEAN, None)] if clean else [])


def _grid(analysis: Analysis, noise: str, lines: Sequence[tuple[str, str, Cell]]) -> list[str]:
    """A table of one noise type: a row per (label, method, cell) line, a column per SNR."""
    by_key = {c.key: c for c in analysis.conditions}
    columns = _columns(analysis, noise)
    rows = [
        [label, *(cell(by_key[(n, s, method)]) if (n, s, method) in by_key else DASH for n, s in columns)]
        for label, method, cell in lines
    ]
    return [f"### {noise}", "", *_table(["", *(_snr(s) for _, s in columns)], rows)]


def _by_noise(analysis: Analysis, heading: str, lines: Callable[[list[str]], list[tuple[str, str, Cell]]]) -> list[str]:
    noises = analysis.noises or ([CLEAN] if analysis.conditions else [])
    out = [f"## {heading}", ""]
    for noise in noises:
        methods = method_order(c.method for c in analysis.conditions if c.noise in (noise, CLEAN))
        out += _grid(analysis, noise, lines(methods))
    return out


def _pm(mean: float | None, std: float | None) -> str:
    return DASH if mean is None else f"{_num(mean)} ± {_num(std)}"


def _measure(name: str) -> str:
    return MEASURE_NAMES.get(name, name) + (" (oracle)" if name in REFERENCE_MEASURES else "")


def _correlation_section(analysis: Analysis, level: str) -> list[str]:
    """Per target, a table per correlation kind: a row per scope, the measures side by side."""
    out = []
    for target in TARGETS:
        entries = {(e.scope, e.measure, e.kind): e for e in analysis.correlations if e.target == target}
        if not entries:
            continue
        measures = [m for m in MEASURES if any(key[1] == m for key in entries)]
        scopes = list(dict.fromkeys(key[0] for key in entries))
        out += [
            f"## Correlation with {target} (condition means, method none)",
            "",
            f"Target: {TARGET_NAMES.get(target, target)}. Signed values: SEE is higher for noisier audio, so it "
            "should correlate negatively; the SNRs, DNSMOS and STOI are higher for cleaner audio and should "
            "correlate positively, so compare magnitudes. A noise type's points are its SNRs plus the clean "
            "condition; the clean point has no true SNR and is left out of the true-SNR column only. (oracle): "
            "needs the clean clip, which a deployment does not have.",
            "",
        ]
        for kind in KINDS:
            rows = []
            for scope in scopes:
                cells = [
                    DASH if (e := entries.get((scope, m, kind))) is None else _ci(e.value, e.low, e.high)
                    for m in measures
                ]
                see = entries.get((scope, "see", kind))
                rows.append([scope, *cells, DASH if see is None else str(see.n)])
            header = ["scope", *(_measure(m) for m in measures), "points"]
            out += [f"{KIND_NAMES[kind]} [{level}]:", "", *_table(header, rows)]
        ranked = strongest_correlations(analysis.correlations, target)
        if ranked:
            order = " > ".join(f"{_measure(e.measure)} ({_num(e.value, 2, sign='+')})" for e in ranked)
            line = f"Pooled, by |Pearson r| with {target}: the strongest is **{_measure(ranked[0].measure)}**"
            blind = [e for e in ranked if e.measure not in REFERENCE_MEASURES]
            if blind and blind[0] is not ranked[0]:
                line += f", the strongest without the clean clip **{_measure(blind[0].measure)}**"
            out += [f"{line}; {order}.", ""]
    return out


def _leader(entries: list[AucEntry]) -> str:
    best = entries[0]
    text = f"**{SCORE_NAMES.get(best.score, best.score)}** (AUC {_num(best.value, 2)})"
    if len(entries) > 1:
        text += f", ahead of {SCORE_NAMES.get(entries[1].score, entries[1].score)} ({_num(entries[1].value, 2)})"
    return text


def _auc_section(analysis: Analysis, level: str) -> list[str]:
    """The scores side by side, a column group per target, then which score detects best (computed)."""
    targets = [t for t in TARGETS if any(a.target == t for a in analysis.auc)]
    by_key = {(a.score, a.target): a for a in analysis.auc}
    scores = list(dict.fromkeys(a.score for a in analysis.auc))
    rows = []
    for score in scores:
        cells = [SCORE_NAMES.get(score, score)]
        for target in targets:
            a = by_key.get((score, target))
            cells += (
                [DASH] * 3 if a is None else [_ci(a.value, a.low, a.high, sign=""), str(a.positives), str(a.negatives)]
            )
        rows.append(cells)
    header = ["score (higher = more likely wrong)"]
    for target in targets:
        header += [f"AUC, {WRONG_NAMES.get(target, target)} [{level}]", "positives", "negatives"]
    out = ["## Detecting wrong answers (ROC AUC per request, method none)", "", *_table(header, rows)]
    for target in targets:
        ranked, blind = best_auc(analysis.auc, target), best_auc(analysis.auc, target, blind=True)
        line = f"Flagging answers {WRONG_NAMES.get(target, target)}: "
        if ranked:
            line += f"best {_leader(ranked)}"
            if blind and blind[0] is not ranked[0]:
                line += f"; best without the clean clip {_leader(blind)}"
        else:
            see = by_key.get(("see", target)) or next(a for a in analysis.auc if a.target == target)
            line += f"no AUC is defined ({see.positives} such answers, {see.negatives} others)"
        out += [line + ".", ""]
    return out


def _denoiser_section(analysis: Analysis) -> list[str]:
    if not analysis.denoiser_see:
        return []
    rows = [
        [d.method, d.noise, _snr(d.snr_db), _num(d.see_none), _num(d.see), _num(d.difference, sign="+")]
        for d in analysis.denoiser_see
    ]
    differences: dict[str, list[float]] = {}
    for d in analysis.denoiser_see:
        differences.setdefault(d.method, []).extend([] if d.difference is None else [d.difference])
    means = ", ".join(f"{m} {_num(float(np.mean(v)) if v else None, sign='+')}" for m, v in differences.items())
    return [
        "## SEE left by denoisers",
        "",
        "Δ > 0: the denoised audio carries more noise energy inside the model than the noisy audio did.",
        "",
        *_table(["denoiser", "noise", "SNR", "SEE (none)", "SEE (denoised)", "Δ SEE"], rows),
        f"Mean Δ SEE per denoiser: {means}.",
        "",
    ]


def _gain_section(analysis: Analysis) -> list[str]:
    if not analysis.seen_gain:
        return []
    rows = [
        [
            g.noise,
            _snr(g.snr_db),
            _pct(g.none_success),
            f"{g.best_seen or DASH} ({_pct(g.best_seen_success)})",
            f"{g.best_denoiser or DASH} ({_pct(g.best_denoiser_success)})",
            _points(g.gain),
            _points(g.gain_over_none),
        ]
        for g in analysis.seen_gain
    ]
    both = sum(g.gain is not None for g in analysis.seen_gain)
    header = ["noise", "SNR", "none", "best SEEN", "best denoiser", "SEEN − denoiser", "SEEN − none"]
    return [
        "## SEEN vs waveform denoisers (success rate, %; gains in points)",
        "",
        *_table(header, rows),
        f"Mean gain of the best SEEN over the best denoiser, over the {both} conditions that ran both: "
        f"{_points(analysis.mean_seen_gain)} points.",
        "",
    ]


def _clean_section(analysis: Analysis) -> list[str]:
    if not analysis.clean_effect:
        return []
    rows = [[e.method, _pct(e.success), _points(e.difference)] for e in analysis.clean_effect]
    return ["## Clean audio (must not get worse)", "", *_table(["method", "success (%)", "Δ vs none (points)"], rows)]


def _markdown(analysis: Analysis, title: str, run_seconds: float, settings: dict[str, Any], figures: list[Path]) -> str:
    level = f"{analysis.confidence:.0%}"
    out = [
        f"# {title}",
        "",
        f"Run time {run_seconds:.1f} s; {analysis.requests} requests in {len(analysis.conditions)} conditions. "
        f"A request counts as wrong when its success is below {analysis.wrong_below:g}; intervals are {level} "
        "percentile-bootstrap intervals.",
        "",
        *(_table(["setting", "value"], [[str(k), f"`{v}`"] for k, v in settings.items()]) if settings else []),
    ]
    out += _by_noise(analysis, "Success rate (%)", lambda ms: [(m, m, lambda c: _pct(c.success)) for m in ms])
    if any(c.agreement is not None for c in analysis.conditions):
        out += _by_noise(
            analysis,
            "Agreement with the clean answer (%; the model's own answer on the clean clip as reference)",
            lambda ms: [(m, m, lambda c: _pct(c.agreement)) for m in ms],
        )
    if any(c.wer is not None for c in analysis.conditions):
        out += _by_noise(analysis, "WER (%)", lambda ms: [(m, m, lambda c: _pct(c.wer)) for m in ms])
    out += _by_noise(
        analysis,
        "SEE by SNR (mean ± std over clips; residual SEE after SEEN)",
        lambda ms: (
            [("SEE (none)", NONE, lambda c: _pm(c.see, c.see_std))]
            + [(f"residual SEE ({m})", m, lambda c: _pm(c.residual_see, c.residual_see_std)) for m in ms if is_seen(m)]
        ),
    )
    out += _correlation_section(analysis, level) + _auc_section(analysis, level)
    out += _denoiser_section(analysis) + _gain_section(analysis) + _clean_section(analysis)
    out += ["## Figures", "", *(f"![{p.stem}]({p.name})" for p in figures)]
    return "\n".join(out) + "\n"


def _file_names(noises: Iterable[str]) -> dict[str, str]:
    """A distinct, filesystem-safe stem per noise name ("street/cafe 1" -> "street_cafe_1")."""
    names: dict[str, str] = {}
    for noise in noises:
        stem = base = re.sub(r"[^A-Za-z0-9._-]+", "_", noise).strip("._") or "noise"
        suffix = 1
        while stem in names.values():
            suffix += 1
            stem = f"{base}_{suffix}"
        names[noise] = stem
    return names


def _axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = figure.subplots()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return figure, ax


def _save(figure: Figure, ax: Any, path: Path) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    figure.savefig(path, dpi=120)


def _snr_axis(ax: Any, conditions: Iterable[ConditionStats], clean: bool) -> float:
    """Tick the SNRs and put "clean" one typical SNR step right of the highest; return the clean position."""
    snrs = sorted({c.snr_db for c in conditions if c.snr_db is not None})
    step = float(np.median(np.diff(snrs))) if len(snrs) > 1 else 5.0
    clean_x = (max(snrs) if snrs else 0.0) + step
    ax.set_xticks([*snrs, *([clean_x] if clean else [])], [f"{s:g}" for s in snrs] + (["clean"] if clean else []))
    return clean_x


def _curve(conditions: Iterable[ConditionStats]) -> tuple[list[float], list[ConditionStats]]:
    """The noisy points of a curve, as (SNRs, conditions); conditions already come sorted by SNR."""
    points = [(c.snr_db, c) for c in conditions if c.snr_db is not None]
    return [snr for snr, _ in points], [c for _, c in points]


def _success_figure(analysis: Analysis, noise: str, path: Path) -> None:
    figure, ax = _axes(f"Success vs SNR: {noise}", "SNR (dB)", "success (%)")
    conditions = [c for c in analysis.conditions if c.noise == noise]
    clean = {c.method: c for c in analysis.conditions if c.noise == CLEAN}
    clean_x = _snr_axis(ax, conditions, bool(clean))
    for method in method_order(c.method for c in conditions):
        snrs, points = _curve(c for c in conditions if c.method == method)
        success = [100 * c.success for c in points]
        (line,) = ax.plot(snrs, success, marker="o", label=method)
        if method in clean:  # a dotted step to the clean star, so overlapping stars still show whose they are
            tail = ([snrs[-1]], [success[-1]]) if snrs else ([], [])
            x, y = [*tail[0], clean_x], [*tail[1], 100 * clean[method].success]
            ax.plot(x, y, linestyle=":", marker=None, color=line.get_color())
            ax.plot([clean_x], y[-1:], marker="*", markersize=11, color=line.get_color())
    _save(figure, ax, path)


def _see_snr_figure(analysis: Analysis, path: Path) -> None:
    figure, ax = _axes("SEE vs SNR (method none, mean ± std over clips)", "SNR (dB)", "SEE")
    none = [c for c in analysis.conditions if c.method == NONE]
    clean = [c for c in none if c.noise == CLEAN]
    clean_x = _snr_axis(ax, none, bool(clean))
    for i, noise in enumerate(analysis.noises):  # dodged sideways a little so the error bars stay apart
        snrs, points = _curve(c for c in none if c.noise == noise)
        dodged = [s + 0.25 * (i - (len(analysis.noises) - 1) / 2) for s in snrs]
        ax.errorbar(
            dodged, [c.see for c in points], yerr=[c.see_std for c in points], marker="o", capsize=3, label=noise
        )
    for c in clean:
        ax.errorbar([clean_x], [c.see], yerr=[c.see_std], marker="*", markersize=11, color="black", label=CLEAN)
    _save(figure, ax, path)


def _see_success_figure(analysis: Analysis, path: Path) -> None:
    figure, ax = _axes("Success vs SEE (condition means, method none)", "SEE", "success (%)")
    none = [c for c in analysis.conditions if c.method == NONE and math.isfinite(c.see)]
    for noise in [*analysis.noises, CLEAN]:
        points = [c for c in none if c.noise == noise]
        marker, size = ("*", 120) if noise == CLEAN else ("o", 36)
        if points:
            ax.scatter([c.see for c in points], [100 * c.success for c in points], marker=marker, s=size, label=noise)
    slope, intercept = linear_fit([c.see for c in none], [c.success for c in none])
    if math.isfinite(slope):
        key = (POOLED, "see", SUCCESS, "pearson")
        pooled = (e.value for e in analysis.correlations if (e.scope, e.measure, e.target, e.kind) == key)
        r = next(pooled, math.nan)
        xs = np.linspace(min(c.see for c in none), max(c.see for c in none), 50)
        ax.plot(xs, 100 * (slope * xs + intercept), color="gray", linestyle="--", label=f"pooled fit, r = {r:+.2f}")
    _save(figure, ax, path)


def write_report(
    analysis: Analysis, out_dir: Path, *, title: str, run_seconds: float, settings: dict[str, Any]
) -> list[Path]:
    """Write ``report.md`` and its PNG figures into ``out_dir`` (created if needed); return every written path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    for noise, stem in _file_names(analysis.noises).items():
        figures.append(out_dir / f"success_vs_snr_{stem}.png")
        _success_figure(analysis, noise, figures[-1])
    if any(c.method == NONE for c in analysis.conditions):
        figures += [out_dir / "see_vs_snr.png", out_dir / "see_vs_success.png"]
        _see_snr_figure(analysis, figures[-2])
        _see_success_figure(analysis, figures[-1])
    report = out_dir / "report.md"
    report.write_text(_markdown(analysis, title, run_seconds, settings, figures), encoding="utf-8")
    return [report, *figures]
