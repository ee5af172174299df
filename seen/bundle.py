"""The noise-basis bundle: ``manifest.json`` (what the bases are for) + ``bases.safetensors`` (the bases).

A bundle is made by calibration (or imported), read by the server, and refuses to be used with a
model it was not made for. Tensors are stored as ``{profile}/{layer}`` of shape (D, k) float32;
everything else is JSON. No pickle is involved anywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seen import __version__
from seen.hooks import SiteKind

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
BASES_FILE = "bases.safetensors"
MERGED_PROFILE = "merged"
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


class BundleError(ValueError):
    """A bundle that is missing, damaged, or made for another model."""


@dataclass(frozen=True)
class SeeStats:
    """Distribution of clip-level SEE over a calibration set; monitoring thresholds come from it."""

    count: int
    mean: float
    std: float
    minimum: float
    maximum: float
    quantiles: dict[str, float]

    @staticmethod
    def of(values: torch.Tensor) -> SeeStats:
        values = values.double().flatten()
        if values.numel() == 0:
            raise ValueError("SEE statistics need at least one value")
        quantiles = torch.quantile(values, torch.tensor(_QUANTILES, dtype=torch.float64))
        return SeeStats(
            count=int(values.numel()),
            mean=float(values.mean()),
            std=float(values.std(unbiased=False)),
            minimum=float(values.min()),
            maximum=float(values.max()),
            quantiles={f"p{round(q * 100):02d}": float(v) for q, v in zip(_QUANTILES, quantiles, strict=True)},
        )


@dataclass(frozen=True)
class NoiseProfile:
    """One noise type's bases (one (D, k_l) matrix per critical layer) and its calibration record."""

    name: str
    bases: list[torch.Tensor]
    clips: int = 0
    data_fingerprint: str = ""
    see_clean: SeeStats | None = None
    see_noise: SeeStats | None = None

    @property
    def ranks(self) -> list[int]:
        return [int(basis.shape[1]) for basis in self.bases]


@dataclass(frozen=True)
class ModelIdentity:
    """Which model a bundle belongs to: the architecture and the config fields the bases depend on."""

    architecture: str
    fingerprint: dict[str, int]
    source: str = ""

    def mismatches(self, other: ModelIdentity) -> list[str]:
        problems = []
        if self.architecture != other.architecture:
            problems.append(f"architecture: bundle {self.architecture}, model {other.architecture}")
        for key in sorted(set(self.fingerprint) | set(other.fingerprint)):
            mine, theirs = self.fingerprint.get(key), other.fingerprint.get(key)
            if mine != theirs:
                problems.append(f"{key}: bundle {mine}, model {theirs}")
        return problems


@dataclass(frozen=True)
class NoiseBundle:
    """Everything the server needs to score and neutralize one model's activations."""

    model: ModelIdentity
    site: SiteKind
    layers: list[int]
    paths: list[str]
    profiles: dict[str, NoiseProfile]
    default_profile: str = MERGED_PROFILE
    default_strength: float = 1.0
    calibration: dict[str, Any] = field(default_factory=dict)
    bases_sha256: str = ""
    """Checksum of ``bases.safetensors`` when loaded from disk: the bundle's identity in logs and metrics."""

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.paths):
            raise BundleError(f"{len(self.layers)} layers but {len(self.paths)} hook paths")
        if not self.profiles:
            raise BundleError("a bundle needs at least one noise profile")
        if self.default_profile not in self.profiles:
            raise BundleError(f"default profile {self.default_profile!r} is not one of {sorted(self.profiles)}")
        for profile in self.profiles.values():
            if len(profile.bases) != len(self.layers):
                raise BundleError(
                    f"profile {profile.name!r} has {len(profile.bases)} bases for {len(self.layers)} layers"
                )

    @property
    def empty(self) -> bool:
        """True when no profile has any direction: SEE is then 0 for every input."""
        return all(sum(profile.ranks) == 0 for profile in self.profiles.values())

    def check_model(self, model: ModelIdentity) -> None:
        """Refuse a model the bases were not calibrated for, naming each difference."""
        problems = self.model.mismatches(model)
        if problems:
            raise BundleError("bundle does not match the model: " + "; ".join(problems))

    def bases_by_profile(self) -> dict[str, list[torch.Tensor]]:
        return {name: profile.bases for name, profile in self.profiles.items()}

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{name}/{layer}": basis.detach().float().contiguous().cpu()
            for name, profile in self.profiles.items()
            for layer, basis in zip(self.layers, profile.bases, strict=True)
        }
        save_file(tensors, folder / BASES_FILE, metadata={"format_version": str(FORMAT_VERSION)})
        manifest = {
            "format_version": FORMAT_VERSION,
            "seen_version": __version__,
            "model": asdict(self.model),
            "site": {"kind": self.site.value, "layers": self.layers, "paths": self.paths},
            "default_profile": self.default_profile,
            "default_strength": self.default_strength,
            "profiles": {
                name: {
                    "ranks": profile.ranks,
                    "clips": profile.clips,
                    "data_fingerprint": profile.data_fingerprint,
                    "see_clean": asdict(profile.see_clean) if profile.see_clean else None,
                    "see_noise": asdict(profile.see_noise) if profile.see_noise else None,
                }
                for name, profile in self.profiles.items()
            },
            "calibration": self.calibration,
            "bases_sha256": _sha256(folder / BASES_FILE),
        }
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        return folder

    @staticmethod
    def load(folder: str | Path) -> NoiseBundle:
        folder = Path(folder)
        manifest_path, bases_path = folder / MANIFEST_FILE, folder / BASES_FILE
        for path in (manifest_path, bases_path):
            if not path.is_file():
                raise BundleError(f"not a noise bundle: {path} is missing")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise BundleError(f"{manifest_path} is not valid JSON: {error}") from error
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"{manifest_path}: format_version {version!r}, this build reads {FORMAT_VERSION}")
        if manifest.get("bases_sha256") != _sha256(bases_path):
            raise BundleError(f"{bases_path} is damaged: its checksum differs from the manifest's")
        try:
            tensors = load_file(bases_path)
            return _from_manifest(manifest, tensors)
        except (SafetensorError, KeyError, TypeError, ValueError) as error:
            raise BundleError(f"{folder} is not a valid noise bundle: {error}") from error


def _from_manifest(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> NoiseBundle:
    layers = [int(layer) for layer in manifest["site"]["layers"]]
    profiles = {}
    for name, record in manifest["profiles"].items():
        stats = {key: SeeStats(**record[key]) if record.get(key) else None for key in ("see_clean", "see_noise")}
        profiles[name] = NoiseProfile(
            name=name,
            bases=[tensors[f"{name}/{layer}"] for layer in layers],
            clips=int(record.get("clips", 0)),
            data_fingerprint=str(record.get("data_fingerprint", "")),
            see_clean=stats["see_clean"],
            see_noise=stats["see_noise"],
        )
    model = manifest["model"]
    return NoiseBundle(
        model=ModelIdentity(
            model["architecture"], {k: int(v) for k, v in model["fingerprint"].items()}, model["source"]
        ),
        site=SiteKind(manifest["site"]["kind"]),
        layers=layers,
        paths=list(manifest["site"]["paths"]),
        profiles=profiles,
        default_profile=manifest["default_profile"],
        default_strength=float(manifest["default_strength"]),
        calibration=manifest.get("calibration", {}),
        bases_sha256=str(manifest["bases_sha256"]),
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
