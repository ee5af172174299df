"""Calibration: clean and noise clips in, a noise-basis bundle out.

One pass records each clip's mean activation at every candidate layer (the model runs only as far
as the last candidate layer), the paper's localization picks the critical layers, each noise
profile gets its bases, and a second, score-only pass measures the SEE distribution of the
calibration sets with the real patch. Runs without gradients, in eval mode, batch by batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import torch

from seen.adapters import AudioLM, Clip
from seen.basis import BasisOptions, LayerBasis, LayerProfile, localize, noise_basis
from seen.bundle import MERGED_PROFILE, NoiseBundle, NoiseProfile, SeeStats
from seen.hooks import ActivationRecorder, SiteKind
from seen.noise import mix_components
from seen.scoring import PatchedModel, site_batch

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ClipSet:
    """Clips of one kind (clean speech, or one noise type) and a fingerprint of where they came from."""

    name: str
    clips: list[Clip]
    fingerprint: str = ""


@dataclass(frozen=True)
class CalibrationConfig:
    """What the calibration does beyond the data; every field lands in the manifest."""

    site: SiteKind = SiteKind.ENCODER_FFN
    layers: list[int] | None = None
    """Critical layers to use instead of localization."""
    basis: BasisOptions = field(default_factory=BasisOptions)
    batch_size: int = 8
    default_strength: float = 1.0


@dataclass(frozen=True)
class CalibrationResult:
    bundle: NoiseBundle
    localization: list[LayerProfile]
    layer_bases: dict[str, list[LayerBasis]]


@torch.inference_mode()
def record_pooled(
    lm: AudioLM, clips: Sequence[Clip], paths: Sequence[str], site: SiteKind, batch_size: int, progress: Progress
) -> list[torch.Tensor]:
    """(clips x D) float32 mean activations per path, on the host."""
    recorder = ActivationRecorder(lm.model, paths)
    per_batch = []
    for start in range(0, len(clips), batch_size):
        chunk = clips[start : start + batch_size]
        batch = site_batch(lm, chunk, site)
        pooled = recorder.record(batch.layout(site), partial(lm.run_to_site, batch, site))
        per_batch.append([layer.cpu() for layer in pooled])
        progress(len(chunk))
    return [torch.cat([batch[i] for batch in per_batch]) for i in range(len(paths))]


def _interleave(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Round-robin the rows of several sets so that any prefix holds every set."""
    order = sorted(
        ((index, set_index) for set_index, set_rows in enumerate(rows) for index in range(len(set_rows))),
    )
    return torch.stack([rows[set_index][index] for index, set_index in order])


@dataclass(frozen=True)
class CalibrationRows:
    """Pooled activations of the calibration sets at every candidate layer of one site kind.

    Recording is the expensive part of a calibration; bases for any options and layers are cheap to build
    from these rows, so a sweep records each site once and builds many bundles from it.
    """

    site: SiteKind
    candidates: list[int]
    paths: list[str]
    clean: list[torch.Tensor]
    noise: dict[str, list[torch.Tensor]]
    paired: dict[str, list[torch.Tensor]] | None = None
    """(noisy mix - clean) rows per noise set, when recorded (the ``paired`` basis method needs them)."""


def _check_sets(clean: ClipSet, noises: Sequence[ClipSet]) -> None:
    if not clean.clips:
        raise ValueError("the clean set is empty: calibration needs clean speech clips")
    for noise in noises:
        if not noise.clips:
            raise ValueError(f"the noise set {noise.name!r} is empty")
    names = [noise.name for noise in noises]
    if not noises or len(set(names)) != len(names) or MERGED_PROFILE in names:
        raise ValueError(f"need one or more noise sets with distinct names other than {MERGED_PROFILE!r}: {names}")


def record_rows(
    lm: AudioLM,
    clean: ClipSet,
    noises: Sequence[ClipSet],
    config: CalibrationConfig,
    progress: Progress = lambda _: None,
    *,
    paired: bool | None = None,
) -> CalibrationRows:
    """Record the clean and noise sets (and, for the paired method, their mixes) at the candidate layers."""
    _check_sets(clean, noises)
    site = config.site
    count = lm.layer_count(site)
    candidates = list(range(count))
    if config.layers is not None:
        bad = [layer for layer in config.layers if not 0 <= layer < count]
        if bad or not config.layers:
            raise ValueError(f"layers {config.layers} must be a non-empty subset of 0..{count - 1}")
        candidates = sorted(set(config.layers))
    paths = [lm.site_path(site, layer) for layer in candidates]
    clean_rows = record_pooled(lm, clean.clips, paths, site, config.batch_size, progress)
    noise_rows = {n.name: record_pooled(lm, n.clips, paths, site, config.batch_size, progress) for n in noises}
    paired_rows = None
    if paired if paired is not None else config.basis.method == "paired":
        paired_rows = {n.name: _paired_differences(lm, clean, n, clean_rows, paths, config, progress) for n in noises}
    return CalibrationRows(site, candidates, paths, clean_rows, noise_rows, paired_rows)


def calibrate(
    lm: AudioLM,
    clean: ClipSet,
    noises: Sequence[ClipSet],
    config: CalibrationConfig,
    progress: Progress = lambda _: None,
) -> CalibrationResult:
    """Build the bundle; ``progress`` is told how many clips each step has just processed."""
    rows = record_rows(lm, clean, noises, config, progress)
    return calibrate_from_rows(lm, rows, clean, noises, config, progress)


def calibrate_from_rows(
    lm: AudioLM,
    rows: CalibrationRows,
    clean: ClipSet,
    noises: Sequence[ClipSet],
    config: CalibrationConfig,
    progress: Progress = lambda _: None,
) -> CalibrationResult:
    """Localize (or take ``config.layers``, a subset of the recorded candidates), build bases, measure SEE."""
    names = [noise.name for noise in noises]
    if config.site is not rows.site:
        raise ValueError(f"rows were recorded at {rows.site.value}, not {config.site.value}")
    if config.layers is not None and not set(config.layers) <= set(rows.candidates):
        raise ValueError(f"layers {config.layers} were not all recorded (recorded: {rows.candidates})")
    if config.basis.method == "paired" and rows.paired is None:
        raise ValueError("the paired basis method needs rows recorded with their paired mixes")
    wanted = rows.candidates if config.layers is None else sorted(set(config.layers))
    index = [rows.candidates.index(layer) for layer in wanted]
    candidates, paths = wanted, [rows.paths[i] for i in index]
    clean_rows = [rows.clean[i] for i in index]
    merged_rows = [_interleave([rows.noise[name][i] for name in names]) for i in index]
    # The paired basis learns from what each noise does to the same clean clips: (mix - clean) rows.
    source = rows.paired if config.basis.method == "paired" and rows.paired is not None else rows.noise
    basis_rows = {name: [source[name][i] for i in index] for name in names}
    basis_merged = [_interleave([basis_rows[name][j] for name in names]) for j in range(len(index))]

    if config.layers is None:
        localization = localize(clean_rows, merged_rows, candidates)
    else:
        localization = [LayerProfile(layer, float("nan"), float("nan"), True) for layer in candidates]
    selected = [i for i, profile in enumerate(localization) if profile.selected]

    layer_bases = {
        name: [noise_basis(clean_rows[i], rows_[i], config.basis) for i in selected]
        for name, rows_ in [*basis_rows.items(), (MERGED_PROFILE, basis_merged)]
    }
    bundle = NoiseBundle(
        model=lm.identity(),
        site=config.site,
        layers=[candidates[i] for i in selected],
        paths=[paths[i] for i in selected],
        profiles={
            name: NoiseProfile(name=name, bases=[basis.basis for basis in bases]) for name, bases in layer_bases.items()
        },
        default_profile=MERGED_PROFILE,
        default_strength=config.default_strength,
    )
    record = {
        "options": config.basis.to_dict(),
        "layer_selection": "explicit" if config.layers is not None else "localized",
        "localization": [
            {"layer": p.layer, "distance": p.distance, "consistency": p.consistency, "selected": p.selected}
            for p in localization
        ],
        "directions": {
            name: [
                {"layer": layer, "k": b.k, "semantic_rank": b.semantic_rank, "noise_rank": b.noise_rank}
                for layer, b in zip(bundle.layers, bases, strict=True)
            ]
            for name, bases in layer_bases.items()
        },
        "clean": {"clips": len(clean.clips), "fingerprint": clean.fingerprint},
        "noise": {n.name: {"clips": len(n.clips), "fingerprint": n.fingerprint} for n in noises},
    }
    bundle = replace(bundle, calibration=record)
    bundle = _with_statistics(lm, bundle, clean, noises, config, progress)
    return CalibrationResult(bundle, localization, layer_bases)


def _paired_differences(
    lm: AudioLM,
    clean: ClipSet,
    noise: ClipSet,
    clean_rows: list[torch.Tensor],
    paths: Sequence[str],
    config: CalibrationConfig,
    progress: Progress,
) -> list[torch.Tensor]:
    """Pooled activations of each clean clip mixed with a noise clip, minus those of the clip as mixed."""
    mixes = [
        mix_components(clip, noise.clips[index % len(noise.clips)], config.basis.paired_snr_db)
        for index, clip in enumerate(clean.clips)
    ]
    mixed = record_pooled(lm, [m.mixture for m in mixes], paths, config.site, config.batch_size, progress)
    if any(m.scale != 1.0 for m in mixes):  # the mix was scaled down to avoid clipping: compare like with like
        clean_rows = record_pooled(lm, [m.clean for m in mixes], paths, config.site, config.batch_size, progress)
    return [mix - reference for mix, reference in zip(mixed, clean_rows, strict=True)]


def _with_statistics(
    lm: AudioLM,
    bundle: NoiseBundle,
    clean: ClipSet,
    noises: Sequence[ClipSet],
    config: CalibrationConfig,
    progress: Progress,
) -> NoiseBundle:
    """Score the calibration sets with the new bases and record their SEE distributions."""
    scorer = PatchedModel(lm, bundle)
    profile_index = {name: i for i, name in enumerate(scorer.patch.profiles)}
    clean_see = scorer.score(clean.clips, config.batch_size).see
    progress(len(clean.clips))
    noise_see = {}
    for noise in noises:
        noise_see[noise.name] = scorer.score(noise.clips, config.batch_size).see
        progress(len(noise.clips))
    profiles = {}
    for name, profile in bundle.profiles.items():
        column = profile_index[name]
        members = [n for n in noises if name in (n.name, MERGED_PROFILE)]
        own_noise = torch.cat([noise_see[n.name][:, column] for n in members])
        profiles[name] = NoiseProfile(
            name=name,
            bases=profile.bases,
            clips=sum(len(n.clips) for n in members),
            data_fingerprint=",".join(n.fingerprint for n in members),
            see_clean=SeeStats.of(clean_see[:, column]),
            see_noise=SeeStats.of(own_noise),
        )
    return replace(bundle, profiles=profiles)
