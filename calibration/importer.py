"""Import noise bases published as a ``torch.save`` list of (D x k_l) matrices, one per layer."""

from __future__ import annotations

from pathlib import Path

import torch

from seen.adapters import AudioLM
from seen.bundle import NoiseBundle, NoiseProfile
from seen.hooks import SiteKind

ORTHONORMAL_TOLERANCE = 1e-3


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


def bundle_from_bases(
    lm: AudioLM,
    bases: list[torch.Tensor],
    start_layer: int,
    *,
    site: SiteKind = SiteKind.ENCODER_FFN,
    profile: str = "paper",
    source: str = "",
) -> NoiseBundle:
    """A bundle for ``lm`` whose layers start at ``start_layer``, after checking width and orthonormality."""
    count, width = lm.layer_count(site), lm.site_width(site)
    layers = list(range(start_layer, start_layer + len(bases)))
    if start_layer < 0 or layers[-1] >= count:
        raise ValueError(f"{len(bases)} bases from layer {start_layer} do not fit the model's {count} layers")
    for layer, basis in zip(layers, bases, strict=True):
        if basis.ndim != 2 or basis.shape[0] != width:
            raise ValueError(f"basis for layer {layer} has shape {tuple(basis.shape)}; the model needs ({width}, k)")
        gram = basis.T @ basis
        error = float((gram - torch.eye(gram.shape[0])).abs().max()) if gram.numel() else 0.0
        if error > ORTHONORMAL_TOLERANCE:
            raise ValueError(f"basis for layer {layer} is not orthonormal (max |Q^T Q - I| = {error:.2e})")
    return NoiseBundle(
        model=lm.identity(),
        site=site,
        layers=layers,
        paths=[lm.site_path(site, layer) for layer in layers],
        profiles={profile: NoiseProfile(name=profile, bases=bases)},
        default_profile=profile,
        calibration={"layer_selection": "imported", "imported_from": source, "start_layer": start_layer},
    )
