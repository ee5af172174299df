"""Import noise bases published as ``torch.save`` lists of (D x k_l) matrices, one per layer.

The paper publishes one such file per noise type for a model. Each file becomes one profile of the
bundle; with several files the bundle also gets ``merged``, per layer an orthonormal basis of the
union of the per-type subspaces (:func:`seen.basis.union_basis`), and ``merged`` is its default.
The per-type profiles keep the names ``auto`` routing chooses among (:class:`seen.policy.NoisePolicy`
never picks ``merged``, whose SEE is at least every type's).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from seen.adapters import AudioLM
from seen.basis import UNION_TOLERANCE, union_basis
from seen.bundle import MERGED_PROFILE, NoiseBundle, NoiseProfile
from seen.hooks import SiteKind

ORTHONORMAL_TOLERANCE = 1e-3
RESERVED_PROFILES = (MERGED_PROFILE, "auto")
"""Names an imported file cannot take: the merged profile, and the request value for auto routing."""


@dataclass(frozen=True)
class ImportedBases:
    """One published file's bases, the profile they become, and where they came from."""

    profile: str
    bases: list[torch.Tensor]
    source: str = ""
    sha256: str = ""


def read_basis_list(path: str | Path) -> list[torch.Tensor]:
    """The file's tensors, loaded without pickle execution (``weights_only=True``)."""
    try:
        loaded = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ... for foreign content
        raise ValueError(f"{path} is not a tensor file that loads with weights_only=True: {error}") from error
    if isinstance(loaded, torch.Tensor) and loaded.ndim == 3:
        loaded = list(loaded)
    if not isinstance(loaded, list | tuple) or not loaded or not all(isinstance(t, torch.Tensor) for t in loaded):
        raise ValueError(f"{path} must hold a non-empty list of (D x k) tensors, got {type(loaded).__name__}")
    return [tensor.float() for tensor in loaded]


def read_basis_file(profile: str, path: str | Path) -> ImportedBases:
    """A published file as one profile, with its SHA-256 (of the bytes read, not of the tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"basis file {path} does not exist")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ImportedBases(profile=profile, bases=read_basis_list(path), source=str(path), sha256=digest)


def check_profile_names(names: Sequence[str]) -> None:
    """Refuse empty, duplicate and reserved profile names before any file or model is read."""
    seen: set[str] = set()
    for name in names:
        if not name or name != name.strip():
            raise ValueError(f"profile name {name!r} must be non-empty without surrounding spaces")
        if name in seen:
            raise ValueError(f"two files would both become profile {name!r}; name them with NAME=FILE")
        if name in RESERVED_PROFILES and (len(names) > 1 or name != MERGED_PROFILE):
            reason = "the union of the imported profiles" if name == MERGED_PROFILE else "the request value for routing"
            raise ValueError(f"profile name {name!r} is reserved ({reason}); choose another name")
        seen.add(name)


def bundle_from_imports(
    lm: AudioLM,
    imports: Sequence[ImportedBases],
    start_layer: int,
    *,
    site: SiteKind = SiteKind.ENCODER_FFN,
    tolerance: float = UNION_TOLERANCE,
) -> NoiseBundle:
    """A bundle for ``lm`` with one profile per file (plus ``merged`` for several), layers from ``start_layer``.

    Every file must hold the same number of layers, each basis as wide as the model's site and
    orthonormal; k may differ between files and layers.
    """
    if not imports:
        raise ValueError("import needs at least one basis file")
    check_profile_names([item.profile for item in imports])
    first = imports[0]
    for item in imports[1:]:
        if len(item.bases) != len(first.bases):
            raise ValueError(
                f"{_label(item)} holds {len(item.bases)} layer bases but {_label(first)} holds {len(first.bases)}: "
                "every file must cover the same layers"
            )
    count, width = lm.layer_count(site), lm.site_width(site)
    layers = list(range(start_layer, start_layer + len(first.bases)))
    if start_layer < 0 or layers[-1] >= count:
        raise ValueError(f"{len(first.bases)} bases from layer {start_layer} do not fit the model's {count} layers")
    for item in imports:
        for layer, basis in zip(layers, item.bases, strict=True):
            where = f"basis for layer {layer}" + (f" in {_label(item)}" if item.source else "")
            if basis.ndim != 2 or basis.shape[0] != width:
                raise ValueError(f"{where} has shape {tuple(basis.shape)}; the model needs ({width}, k)")
            gram = basis.T @ basis
            error = float((gram - torch.eye(gram.shape[0])).abs().max()) if gram.numel() else 0.0
            if error > ORTHONORMAL_TOLERANCE:
                raise ValueError(f"{where} is not orthonormal (max |Q^T Q - I| = {error:.2e})")
    profiles = {
        item.profile: NoiseProfile(name=item.profile, bases=item.bases, data_fingerprint=_fingerprint(item))
        for item in imports
    }
    calibration: dict[str, object] = {
        "layer_selection": "imported",
        "start_layer": start_layer,
        "imported_from": {
            item.profile: {"path": item.source, "sha256": item.sha256, "ranks": profiles[item.profile].ranks}
            for item in imports
        },
    }
    default = first.profile
    if len(imports) > 1:
        merged = [union_basis([item.bases[i] for item in imports], tolerance) for i in range(len(layers))]
        profiles[MERGED_PROFILE] = NoiseProfile(name=MERGED_PROFILE, bases=merged)
        calibration["merged"] = {
            "from": [item.profile for item in imports],
            "method": "per layer, left singular vectors of the stacked bases [Q_1 ... Q_m] with sigma > tolerance",
            "singular_value_tolerance": tolerance,
        }
        default = MERGED_PROFILE
    return NoiseBundle(
        model=lm.identity(),
        site=site,
        layers=layers,
        paths=[lm.site_path(site, layer) for layer in layers],
        profiles=profiles,
        default_profile=default,
        calibration=calibration,
    )


def bundle_from_bases(
    lm: AudioLM,
    bases: list[torch.Tensor],
    start_layer: int,
    *,
    site: SiteKind = SiteKind.ENCODER_FFN,
    profile: str = "paper",
    source: str = "",
) -> NoiseBundle:
    """A one-profile bundle for ``lm`` from ``start_layer``, after checking width and orthonormality."""
    return bundle_from_imports(lm, [ImportedBases(profile, bases, source)], start_layer, site=site)


def _label(item: ImportedBases) -> str:
    return item.source or f"profile {item.profile!r}"


def _fingerprint(item: ImportedBases) -> str:
    return f"sha256:{item.sha256}" if item.sha256 else ""
