"""The SEE policy: every rule that decides what a request's noise report says.

From per-clip SEE (a :class:`seen.patch.SeeMeasurement`) and the bundle's calibration statistics, the
policy decides above which SEE a request is flagged noisy (:func:`derived_threshold`), how adaptive
mode ramps lambda between the clean and the noisy range, which profile a request is neutralized with
(``auto``: the dominant one), which noise type is dominant, and how a request's clips and layers are
averaged (:meth:`NoisePolicy.assess`). The service, ``seen score``, calibration and the evaluation all
use it, so offline and online give the same report for the same audio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from seen.bundle import MERGED_PROFILE, NoiseBundle, NoiseProfile
from seen.patch import SeeMeasurement

AUTO_PROFILE = "auto"
"""Request value for ``seen.profile`` that neutralizes with the dominant noise profile of each request."""


@dataclass(frozen=True)
class LayerAssessment:
    layer: int
    """Index of the critical layer in the model."""
    see: float
    """SEE entering the layer, for the applied profile."""
    residual_see: float | None
    """SEE left after the layer's neutralization (None: not run)."""


@dataclass(frozen=True)
class NoiseAssessment:
    """What was measured about the noise in one request's audio, and what the policy concludes from it.

    The service returns it as the ``noise_report`` of every answer; ``seen score`` prints it; the
    evaluation records it. Every field is decided here and nowhere else.
    """

    see: float
    """Signal Embedding Energy of the input for the applied profile, in [0, 1]."""
    residual_see: float | None
    """SEE left after neutralization, averaged over the critical layers; None when only scored."""
    see_method: str
    """'exact' (the paper's definition) or 'inline' (measured during SEEN)."""
    see_by_profile: dict[str, float]
    """SEE of the input under every profile of the bundle."""
    per_layer: list[LayerAssessment]
    profile: str
    """Noise profile the audio was (or would be) neutralized with."""
    enabled: bool
    """Whether SEEN was applied."""
    strength: float
    """Lambda applied (after adaptive scaling)."""
    noisy: bool | None
    """SEE above the noisy threshold; None when the bundle gives none."""
    threshold: float | None
    """The noisy threshold used for this profile."""
    dominant_noise: str | None
    """Profile with the highest SEE among the specific noise types, when the bundle has several profiles."""
    clips: int
    """Audio parts (or window-long chunks) the values are averaged over."""
    silent_clips: int = 0
    """Of those, clips that are digital silence (a muted microphone): served, but their SEE says nothing."""


@dataclass(frozen=True)
class Control:
    """A request's resolved SEEN settings (request fields over server defaults)."""

    enabled: bool
    strength: float
    profile: str  # a bundle profile or AUTO_PROFILE
    adaptive: bool = False
    """Ramp lambda by the request's SEE between the clean and the noisy calibration range."""
    on_noisy: str = "answer"
    """What to do with audio the report calls noisy: one of :data:`NOISY_ACTIONS`."""

    @property
    def applied_strength(self) -> float:
        return self.strength if self.enabled else 0.0

    def action(self, report: NoiseAssessment | None) -> str:
        """'answer', 'mark' (answer, flagged as noisy input) or 'refuse', for a request with this report."""
        if report is None or not report.noisy or self.on_noisy == "answer":
            return "answer"
        return self.on_noisy


NOISY_ACTIONS = ("answer", "mark", "refuse")
"""answer: as usual (the report still says ``noisy``); mark: answer, and say it was noisy input in the
answer itself; refuse: no answer, a 4xx asking the caller to repeat the audio somewhere quieter."""


def derived_threshold(profile: NoiseProfile) -> float | None:
    """Midway between the clean p95 and the noise p05 when they separate, else the clean p99."""
    clean, noise = profile.see_clean, profile.see_noise
    if clean is None:
        return None
    if noise is not None and noise.quantiles["p05"] > clean.quantiles["p95"]:
        return (clean.quantiles["p95"] + noise.quantiles["p05"]) / 2
    return clean.quantiles["p99"]


class NoisePolicy:
    """Thresholds, adaptive ramps and profile choice, fixed once from the bundle and settings."""

    def __init__(self, bundle: NoiseBundle, *, noisy_threshold: float | None = None) -> None:
        self.profiles = tuple(bundle.profiles)
        self.default_profile = bundle.default_profile
        self.layers = list(bundle.layers)
        self.thresholds = {
            name: noisy_threshold if noisy_threshold is not None else derived_threshold(profile)
            for name, profile in bundle.profiles.items()
        }
        self._ramps: dict[str, tuple[float, float]] = {}
        for name, profile in bundle.profiles.items():
            clean, noise = profile.see_clean, profile.see_noise
            if clean is not None and noise is not None:
                low = clean.quantiles["p95"]
                self._ramps[name] = (low, max(noise.quantiles["p50"], low + 1e-6))
        self._candidates = [p for p in self.profiles if p != MERGED_PROFILE] or list(self.profiles)

    def check_adaptive(self) -> None:
        """Adaptive lambda ramps between the calibration sets' SEE: refuse a bundle without their statistics."""
        missing = sorted(set(self.profiles) - set(self._ramps))
        if missing:
            raise ValueError(f"adaptive mode needs calibration SEE statistics; the bundle has none for {missing}")

    def check_noisy_action(self, action: str) -> None:
        """Marking or refusing noisy input needs a noisy threshold for every profile."""
        if action not in NOISY_ACTIONS:
            raise ValueError(f"unknown action for noisy input {action!r}; allowed: {', '.join(NOISY_ACTIONS)}")
        missing = sorted(name for name, threshold in self.thresholds.items() if threshold is None)
        if action != "answer" and missing:
            raise ValueError(
                f"on_noisy={action!r} needs a noisy threshold, and the bundle gives none for {missing}: "
                "set SEEN_NOISY_THRESHOLD or calibrate with clean and noise clips"
            )

    def check_profile(self, name: str) -> None:
        if name != AUTO_PROFILE and name not in self.profiles:
            allowed = ", ".join([*self.profiles, AUTO_PROFILE])
            raise ValueError(f"unknown noise profile {name!r}; this bundle has: {allowed}")

    def dominant(self, see_by_profile: torch.Tensor) -> int:
        """Index of the profile with the highest SEE, among the specific noise types when there are any.

        This is all ``auto`` routing uses: the bases (through each profile's SEE of the request) and
        which profile is ``merged``. ``merged`` covers every type at once (calibrated: from all noise
        clips together; imported: the exact union of the types' subspaces, :func:`seen.basis.union_basis`,
        whose SEE is at least every type's), so it names no type and is never a candidate when there
        are others. No calibration statistic enters the choice, so
        an imported bundle, which has none, routes like a calibrated one; only the noisy flag and
        adaptive lambda need the statistics. SEE is compared raw: of energy spread evenly over the
        D dimensions a type with k directions holds k/D, a head start that is negligible for k << D.
        """
        candidates = [self.profiles.index(name) for name in self._candidates]
        return candidates[int(see_by_profile[candidates].argmax())]

    def profile_index(self, control: Control, see_by_profile: torch.Tensor | None) -> int:
        if control.profile != AUTO_PROFILE:
            return self.profiles.index(control.profile)
        if see_by_profile is None:
            raise RuntimeError("profile 'auto' needs the input's SEE before neutralization")
        return self.dominant(see_by_profile)

    def strength(self, control: Control, profile: int, see: float | None) -> float:
        """Lambda for one request: the requested one, ramped by SEE in adaptive mode."""
        if not control.enabled or not control.adaptive:
            return control.applied_strength
        if see is None:
            raise RuntimeError("adaptive mode needs the input's SEE before neutralization")
        low, high = self._ramps[self.profiles[profile]]
        return control.strength * min(1.0, max(0.0, (see - low) / (high - low)))

    def assess_scored(
        self, see: SeeMeasurement, clips: Sequence[int], control: Control, *, silent_clips: int = 0
    ) -> NoiseAssessment:
        """The report of a score-only pass: the profile and lambda the request would be neutralized with."""
        rows = torch.tensor(list(clips), dtype=torch.long)
        by_profile = see.see[rows].mean(dim=0)
        profile = self.profile_index(control, by_profile)
        strength = self.strength(control, profile, float(by_profile[profile]))
        return self.assess(
            see,
            None,
            clips,
            profile=profile,
            control=control,
            strength=strength,
            method="exact",
            silent_clips=silent_clips,
        )

    def assess(
        self,
        see: SeeMeasurement,
        residual: SeeMeasurement | None,
        clips: Sequence[int],
        *,
        profile: int,
        control: Control,
        strength: float,
        method: str,
        silent_clips: int = 0,
    ) -> NoiseAssessment:
        """Average one request's clips (rows ``clips`` of the reports) into its noise report.

        ``residual`` is the SEEN pass; without one (score only) the residual fields are null.
        """
        rows = torch.tensor(list(clips), dtype=torch.long)
        per_layer = see.per_layer[rows].mean(dim=0)  # (layers, profiles)
        residual_layers: list[float | None] = [None] * len(self.layers)
        residual_mean = None
        if residual is not None:
            values = residual.residual_per_layer[rows].mean(dim=0)  # (layers,)
            residual_layers, residual_mean = list(values.tolist()), float(values.mean())
        by_profile = per_layer.mean(dim=0)
        value = float(by_profile[profile])
        name = self.profiles[profile]
        threshold = self.thresholds[name]
        return NoiseAssessment(
            see=value,
            residual_see=residual_mean,
            see_method=method,
            see_by_profile={p: float(v) for p, v in zip(self.profiles, by_profile.tolist(), strict=True)},
            per_layer=[
                LayerAssessment(layer=layer, see=float(s), residual_see=r)
                for layer, s, r in zip(self.layers, per_layer[:, profile].tolist(), residual_layers, strict=True)
            ],
            profile=name,
            enabled=control.enabled,
            strength=strength,
            noisy=None if threshold is None else value > threshold,
            threshold=threshold,
            dominant_noise=self.profiles[self.dominant(by_profile)] if len(self.profiles) > 1 else None,
            clips=len(rows),
            silent_clips=silent_clips,
        )
