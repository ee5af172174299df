"""``seen sweep``: which SEEN configuration (site, layers, basis, k, lambda, routing) helps a model, if any.

Each calibration site is recorded once (:func:`calibration.pipeline.record_rows`); every bundle of the
grid is built from those rows, so a sweep costs one recording per site plus the generation it measures.
Every bundle is evaluated with the same :class:`evaluation.runner.Evaluator` that ``seen eval`` uses, on
one split (selection), through the service's backend. Per configuration the sweep reports:

- **clean cost**: mean WER with SEEN on the clean clips minus the mean WER without it (points);
- **noisy gain**: mean WER without SEEN minus with it, over the noisy conditions (points; > 0 helps);
- **detector**: per-request ROC AUC of SEE for "WER > 0.2" of the unprocessed answer, and the pooled
  Pearson |r| between a condition's mean SEE and its mean success, over every noise type and SNR.

Results are stored one folder per bundle and routing (a resumed sweep skips what is done); ``sweep.json``
holds the grid and every setting, so the figures can be regenerated with one command.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from calibration.pipeline import CalibrationConfig, CalibrationRows, ClipSet, calibrate_from_rows, record_rows
from evaluation.dataset import Dataset
from evaluation.rows import RequestRow, ResultStore
from evaluation.runner import ADAPTIVE, CLEAN, NONE, Condition, Evaluator, Method, parse_method, run_all
from evaluation.stats import FAILURE_WER, correlation, roc_auc
from seen.adapters import AudioLM
from seen.basis import BasisOptions
from seen.bundle import NoiseBundle
from seen.hooks import SiteKind

BASIS_RECIPES: dict[str, BasisOptions] = {
    "paper": BasisOptions(),
    "chance": BasisOptions(delta=14.0, delta_mode="chance"),
    "clean-mean": BasisOptions(delta=14.0, delta_mode="chance", center="clean_mean"),
    "per-set": BasisOptions(delta=14.0, delta_mode="chance", center="per_set"),
    "contrastive": BasisOptions(method="contrastive"),
    "paired": BasisOptions(method="paired"),
}
"""The bases compared: the paper's literal SVD, chance-mode delta, clean-mean centring, per-set PCA,
the contrastive basis and the paired (noisy minus clean) basis."""
_LAYERS = re.compile(r"^(localized|all|last-(\d+)|layer-(\d+))$")


@dataclass(frozen=True)
class BundlePoint:
    """Everything that decides a bundle: where, which layers, which basis, how many directions."""

    site: SiteKind
    layers: str  # localized | all | last-N | layer-L
    basis: str  # a key of BASIS_RECIPES
    k: int | None  # cap on directions per layer; None: the recipe's own rule

    @property
    def key(self) -> str:
        return f"{self.site.value}__{self.layers}__{self.basis}__k{'auto' if self.k is None else self.k}"

    def layer_list(self, count: int) -> list[int] | None:
        match = _LAYERS.match(self.layers)
        if match is None:
            raise ValueError(f"layers {self.layers!r}: use localized, all, last-N or layer-L")
        if self.layers == "localized":
            return None
        if self.layers == "all":
            return list(range(count))
        if match.group(2):
            return list(range(max(0, count - int(match.group(2))), count))
        layer = int(match.group(3))
        if not 0 <= layer < count:
            raise ValueError(f"layer {layer} does not exist: the site has layers 0..{count - 1}")
        return [layer]

    def options(self) -> BasisOptions:
        if self.basis not in BASIS_RECIPES:
            raise ValueError(f"unknown basis {self.basis!r}; choose from {', '.join(BASIS_RECIPES)}")
        return replace(BASIS_RECIPES[self.basis], max_directions=self.k)


@dataclass(frozen=True)
class Grid:
    points: list[BundlePoint]
    lambdas: list[float]
    routings: list[str]  # "merged", "auto", or any profile name
    adaptive: bool = False  # also measure the adaptive mode (strength from the request's own SEE)

    @property
    def methods(self) -> list[Method]:
        """The SEEN methods each configuration is measured with (the unprocessed baseline is shared)."""
        methods = [parse_method(f"seen-{strength:g}") for strength in self.lambdas]
        return methods + ([parse_method(ADAPTIVE)] if self.adaptive else [])


def grid(
    sites: Sequence[SiteKind],
    layers: Sequence[str],
    bases: Sequence[str],
    ks: Sequence[int | None],
    lambdas: Sequence[float],
    routings: Sequence[str],
    *,
    factorial: bool = False,
    adaptive: bool = False,
) -> Grid:
    """The full product, or (default) the first value of every axis varied one axis at a time."""
    if factorial:
        points = [BundlePoint(s, la, b, k) for s in sites for la in layers for b in bases for k in ks]
    else:
        base = BundlePoint(sites[0], layers[0], bases[0], ks[0])
        points = [base]
        points += [replace(base, site=s) for s in sites[1:]]
        points += [replace(base, layers=la) for la in layers[1:]]
        points += [replace(base, basis=b) for b in bases[1:]]
        points += [replace(base, k=k) for k in ks[1:]]
    unique = list(dict.fromkeys(points))
    return Grid(unique, list(lambdas), list(routings), adaptive)


@dataclass(frozen=True)
class Outcome:
    """One configuration's figures on the split it was run on."""

    bundle: str
    routing: str
    method: str  # seen-<lambda> or seen-adaptive
    strength: float
    directions: int
    clean_cost: float
    noisy_gain: float
    gain_by_noise: dict[str, float]
    see_auc: float
    see_abs_r: float


def _mean_wer(rows: Iterable[RequestRow]) -> float:
    values = [row.wer for row in rows if row.wer is not None]
    return float(np.mean(values)) if values else float("nan")


def outcomes(
    bundle_key: str, routing: str, directions: int, rows: Sequence[RequestRow], baseline: Sequence[RequestRow]
) -> list[Outcome]:
    """Figures of each SEEN method in ``rows`` against the unprocessed ``baseline`` of the same inputs."""
    none = {(r.noise, r.snr_db, r.clip): r for r in baseline if r.method == NONE}
    results = []
    for method in sorted({r.method for r in rows if r.method != NONE}):
        mine = [r for r in rows if r.method == method]
        clean = [r for r in mine if r.noise == CLEAN]
        noisy = [r for r in mine if r.noise != CLEAN]
        clean_cost = _mean_wer(clean) - _mean_wer(none[(r.noise, r.snr_db, r.clip)] for r in clean)
        by_noise = {}
        for noise in sorted({r.noise for r in noisy}):
            picked = [r for r in noisy if r.noise == noise]
            by_noise[noise] = _mean_wer(none[(r.noise, r.snr_db, r.clip)] for r in picked) - _mean_wer(picked)
        gain = _mean_wer(none[(r.noise, r.snr_db, r.clip)] for r in noisy) - _mean_wer(noisy)
        # SEE (measured before the edit) against the failure of the unprocessed answer to the same input
        failed = [(none[(r.noise, r.snr_db, r.clip)].wer or 0.0) > FAILURE_WER for r in mine]
        auc = roc_auc([r.see for r in mine], failed, resamples=1).value
        conditions = sorted({(r.noise, r.snr_db) for r in mine}, key=str)
        see_means = [np.mean([r.see for r in mine if (r.noise, r.snr_db) == c]) for c in conditions]
        successes = [
            np.mean([none[(r.noise, r.snr_db, r.clip)].success for r in mine if (r.noise, r.snr_db) == c])
            for c in conditions
        ]
        r_value = correlation(see_means, successes, resamples=1).value if len(conditions) > 2 else float("nan")
        strength = parse_method(method).strength
        results.append(
            Outcome(
                bundle_key,
                routing,
                method,
                strength,
                directions,
                100 * clean_cost,
                100 * gain,
                {k: 100 * v for k, v in by_noise.items()},
                auc,
                abs(r_value),
            )
        )
    return results


def run_sweep(
    lm: AudioLM,
    clean: ClipSet,
    noises: Sequence[ClipSet],
    dataset: Dataset,
    conditions: Sequence[Condition],
    sweep: Grid,
    out: Path,
    *,
    batch_size: int = 16,
    max_tokens: int = 96,
    seed: int = 0,
    on_step: Callable[[str], None] = lambda _: None,
) -> list[Outcome]:
    """Record each site once, build and evaluate every bundle of the grid, and return every outcome.

    The unprocessed answers do not depend on the bundle, so they are generated once (``rows/baseline``) and
    every configuration generates only its SEEN methods; SEE itself is measured before the edit, so each
    configuration's own rows carry its detector figures.
    """
    out.mkdir(parents=True, exist_ok=True)
    methods = sweep.methods
    rows_by_site: dict[SiteKind, CalibrationRows] = {}
    results: list[Outcome] = []
    baseline: list[RequestRow] | None = None
    baseline_fingerprint = {
        "dataset": dataset.fingerprint,
        "conditions": [c.label for c in conditions],
        "seed": seed,
        "max_tokens": max_tokens,
    }
    for point in sweep.points:
        folder = out / "bundles" / point.key
        config = CalibrationConfig(
            site=point.site,
            layers=point.layer_list(lm.layer_count(point.site)),
            basis=point.options(),
            batch_size=batch_size,
        )
        if not (folder / "manifest.json").is_file():
            if point.site not in rows_by_site:
                on_step(f"recording {point.site.value}")
                paired = any(p.basis == "paired" and p.site is point.site for p in sweep.points)
                recording = CalibrationConfig(site=point.site, batch_size=batch_size)
                rows_by_site[point.site] = record_rows(lm, clean, noises, recording, paired=paired)
            on_step(f"building {point.key}")
            calibrate_from_rows(lm, rows_by_site[point.site], clean, noises, config).bundle.save(folder)
        bundle = NoiseBundle.load(folder)
        directions = sum(bundle.profiles[bundle.default_profile].ranks)
        for routing in sweep.routings:
            on_step(f"evaluating {point.key} ({routing})")
            fingerprint = {
                "bundle_sha256": bundle.bases_sha256,
                "dataset": dataset.fingerprint,
                "methods": [m.name for m in methods],
                "conditions": [c.label for c in conditions],
                "routing": routing,
                "seed": seed,
                "max_tokens": max_tokens,
            }
            store = ResultStore(out / "rows" / point.key / routing, fingerprint)
            evaluator = Evaluator.for_model(
                lm,
                bundle,
                dataset,
                batch_size=batch_size,
                max_tokens=max_tokens,
                profile=routing if routing != "merged" else None,
                seed=seed,
            )
            try:
                if baseline is None:
                    on_step("evaluating the unprocessed baseline")
                    baseline_store = ResultStore(out / "rows" / "baseline", baseline_fingerprint)
                    baseline = run_all(evaluator, baseline_store, conditions, [parse_method(NONE)])
                rows = run_all(evaluator, store, conditions, methods)
            finally:
                evaluator.close()
            results.extend(outcomes(point.key, routing, directions, rows, baseline))
    (out / "outcomes.json").write_text(json.dumps([asdict(o) for o in results], indent=2) + "\n")
    return results


def overall_gain(outcome: Outcome) -> float:
    return outcome.noisy_gain


def _gain_in(noise: str, outcome: Outcome) -> float:
    return outcome.gain_by_noise.get(noise, float("-inf"))


def pareto_front(results: Sequence[Outcome], gain: Callable[[Outcome], float] = overall_gain) -> list[Outcome]:
    """Configurations no other one beats on both clean cost (lower) and noisy ``gain`` (higher)."""
    front = []
    for candidate in results:
        dominated = any(
            other.clean_cost <= candidate.clean_cost
            and gain(other) >= gain(candidate)
            and (other.clean_cost, gain(other)) != (candidate.clean_cost, gain(candidate))
            for other in results
        )
        if not dominated:
            front.append(candidate)
    return sorted(front, key=lambda o: o.clean_cost)


def markdown(results: Sequence[Outcome], title: str) -> str:
    lines = [f"# {title}", "", "Points: WER percentage points. Gain > 0 means SEEN lowered the WER.", ""]
    header = "| bundle | routing | method | k total | clean cost | noisy gain | SEE AUC | pooled abs r |"
    lines += ["## Pareto front (clean cost against noisy gain)", "", header, "| --- " * 8 + "|"]
    for o in pareto_front(results):
        lines.append(
            f"| {o.bundle} | {o.routing} | {o.method} | {o.directions} | {o.clean_cost:+.2f} | "
            f"{o.noisy_gain:+.2f} | {o.see_auc:.3f} | {o.see_abs_r:.3f} |"
        )
    noises = sorted({noise for o in results for noise in o.gain_by_noise})
    for noise in noises:
        lines += ["", f"## Pareto front in {noise} noise", "", "| bundle | routing | method | clean cost | gain |"]
        lines.append("| --- " * 5 + "|")
        for o in pareto_front(results, functools.partial(_gain_in, noise)):
            gain = o.gain_by_noise.get(noise, float("nan"))
            lines.append(f"| {o.bundle} | {o.routing} | {o.method} | {o.clean_cost:+.2f} | {gain:+.2f} |")
    lines += ["", "## Every configuration", "", header, "| --- " * 8 + "|"]
    for o in sorted(results, key=lambda o: -o.noisy_gain):
        lines.append(
            f"| {o.bundle} | {o.routing} | {o.method} | {o.directions} | {o.clean_cost:+.2f} | "
            f"{o.noisy_gain:+.2f} | {o.see_auc:.3f} | {o.see_abs_r:.3f} |"
        )
    by_noise = "| bundle | routing | method | " + " | ".join(noises) + " |"
    lines += ["", "## Noisy gain per noise type", "", by_noise, "| --- " * (3 + len(noises)) + "|"]
    for o in sorted(results, key=lambda o: -o.noisy_gain):
        gains = " | ".join(f"{o.gain_by_noise.get(noise, float('nan')):+.2f}" for noise in noises)
        lines.append(f"| {o.bundle} | {o.routing} | {o.method} | {gains} |")
    return "\n".join(lines) + "\n"
