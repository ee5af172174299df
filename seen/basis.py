"""Noise bases from pooled activations: layer localization and the noise subspace per layer.

Inputs are the clip-level activations the calibration collects: for each candidate layer, ``S``
(clean clips x D) and ``N`` (noise clips x D), each row the mean activation over a clip's valid
frames. The recipe is the paper's (arXiv 2601.07331, section 3); every choice it leaves open is
an explicit option in :class:`BasisOptions` and is recorded in the bundle manifest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch

Centering = Literal["none", "clean_mean", "per_set"]
DeltaMode = Literal["absolute", "chance"]
BasisMethod = Literal["svd", "contrastive", "paired"]


@dataclass(frozen=True)
class BasisOptions:
    """How noise directions are chosen; defaults are the paper's literal recipe."""

    alpha: float = 0.95
    """Energy fraction (sum of sigma^2) the kept singular directions of each set must hold."""
    delta: float = 0.1
    """A noise direction is kept when its largest |cosine| with any semantic direction is below this."""
    delta_mode: DeltaMode = "absolute"
    """``absolute``: delta is a cosine. ``chance``: delta is a multiple of 1/sqrt(D), the RMS cosine of
    a random direction with a fixed one, so one setting means the same at every width (the paper's
    0.1 at D = 5120 is 7.2 times chance)."""
    center: Centering = "none"
    """``none``: SVD of the raw rows (paper). ``clean_mean``: subtract the clean mean from both sets,
    which removes the shared activation offset. ``per_set``: each set minus its own mean (PCA)."""
    max_directions: int | None = None
    """Upper bound on k per layer (largest noise singular values first); None keeps all that pass."""
    method: BasisMethod = "svd"
    """``svd``: the paper's noise singular directions far from every clean one (alpha, delta, center apply).
    ``contrastive``: generalized eigenvectors of the noise and clean covariances, the directions whose
    noise variance most exceeds their clean variance (those with a ratio above 1). ``paired``: principal
    directions of the change that noise makes to the same clean clips (noisy mix minus clean, pooled)."""
    regularization: float = 0.1
    """``contrastive``: the clean covariance gets this fraction of its mean eigenvalue added on the diagonal,
    so that directions the few calibration clips never visit do not divide by zero."""
    paired_snr_db: float = 5.0
    """``paired``: the SNR at which calibration noise is mixed into the clean clips."""

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.delta <= 0.0:
            raise ValueError(f"delta must be positive, got {self.delta}")
        if self.delta_mode == "absolute" and self.delta > 1.0:
            raise ValueError(f"an absolute delta is a cosine in (0, 1], got {self.delta}")
        if self.max_directions is not None and self.max_directions < 0:
            raise ValueError(f"max_directions must be >= 0, got {self.max_directions}")
        if self.method not in ("svd", "contrastive", "paired"):
            raise ValueError(f"unknown basis method {self.method!r}; use svd, contrastive or paired")
        if self.regularization <= 0.0:
            raise ValueError(f"regularization must be positive, got {self.regularization}")

    def cosine_threshold(self, width: int) -> float:
        """The cosine below which a noise direction counts as free of meaning, for width D."""
        return self.delta if self.delta_mode == "absolute" else self.delta / math.sqrt(width)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class LayerBasis:
    """A layer's noise basis and the numbers that explain it."""

    basis: torch.Tensor  # (D, k) float32, orthonormal columns; k may be 0
    semantic_rank: int
    noise_rank: int
    max_cosines: torch.Tensor  # (noise_rank,) largest |cos| of each noise direction with the semantic ones

    @property
    def k(self) -> int:
        return int(self.basis.shape[1])


@dataclass(frozen=True)
class LayerProfile:
    """Localization statistics of one candidate layer."""

    layer: int
    distance: float  # M_l = ||S_l - N_l||_F
    consistency: float  # D_l = cos(vec S_l, vec N_l)
    selected: bool


def energy_rank(singular_values: torch.Tensor, alpha: float) -> int:
    """Smallest r such that the top r singular values hold a fraction alpha of sum(sigma^2)."""
    energy = singular_values.double().square()
    total = float(energy.sum())
    if total <= 0.0:
        return 0
    cumulative = torch.cumsum(energy, 0) / total
    reached = torch.nonzero(cumulative >= alpha - 1e-12)
    return int(reached[0, 0]) + 1 if len(reached) else int(energy.numel())


def principal_directions(rows: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Top right-singular vectors (D, r) holding alpha of the energy, and all singular values."""
    _, singular_values, vh = torch.linalg.svd(rows.double(), full_matrices=False)
    rank = energy_rank(singular_values, alpha)
    return vh[:rank].T.contiguous(), singular_values


UNION_TOLERANCE = 1e-3
"""Singular values of the stacked bases at or below this are directions already held by the others."""


def union_basis(bases: Sequence[torch.Tensor], tolerance: float = UNION_TOLERANCE) -> torch.Tensor:
    """An orthonormal (D, r) basis of the sum of the subspaces spanned by orthonormal (D, k_i) ``bases``.

    The left singular vectors of ``[Q_1 ... Q_m]`` (float64) whose singular value exceeds
    ``tolerance``. Every column of the stack has unit norm, so the singular values say how much of
    the stack's span each direction is: a direction only one basis holds has sigma near 1, one that
    two bases share sigma near sqrt(2), and a direction that is a combination of the others sigma 0.
    For two subspaces at principal angle theta the pair gives sigma = sqrt(1 +- cos theta), so a
    direction is counted once when two bases differ on it by less than theta ~ sqrt(2) x tolerance
    (0.08 degrees at the default): shared directions are never double-counted, the rank is the rank
    of the union, and the result is orthonormal to float32 precision, whatever the inputs' k.
    """
    if not bases:
        raise ValueError("union_basis needs at least one basis")
    widths = {int(basis.shape[0]) for basis in bases}
    if len(widths) != 1 or any(basis.ndim != 2 for basis in bases):
        raise ValueError(f"the bases differ in width: {[tuple(basis.shape) for basis in bases]}")
    stacked = torch.cat([basis.double() for basis in bases], dim=1)
    if stacked.shape[1] == 0:
        return torch.zeros(widths.pop(), 0)
    left, singular_values, _ = torch.linalg.svd(stacked, full_matrices=False)
    rank = int((singular_values > tolerance).sum())
    return left[:, :rank].float().contiguous()


def _center(clean: torch.Tensor, noise: torch.Tensor, center: Centering) -> tuple[torch.Tensor, torch.Tensor]:
    if center == "clean_mean":
        offset = clean.mean(0, keepdim=True)
        return clean - offset, noise - offset
    if center == "per_set":
        return clean - clean.mean(0, keepdim=True), noise - noise.mean(0, keepdim=True)
    return clean, noise


def noise_basis(clean: torch.Tensor, noise: torch.Tensor, options: BasisOptions) -> LayerBasis:
    """Noise directions of one layer: ``Q_l`` of the paper, or one of the alternatives of ``options.method``.

    For ``paired``, ``noise`` holds the differences (noisy mix minus clean) of the same clips.
    """
    if clean.ndim != 2 or noise.ndim != 2 or clean.shape[1] != noise.shape[1]:
        raise ValueError(f"expected (n, D) clean and noise rows of one width, got {clean.shape} and {noise.shape}")
    if clean.shape[0] == 0 or noise.shape[0] == 0:
        raise ValueError("noise_basis needs at least one clean and one noise row")
    if options.method == "contrastive":
        return _contrastive_basis(clean.double(), noise.double(), options)
    if options.method == "paired":
        return _paired_basis(clean.double(), noise.double(), options)
    clean, noise = _center(clean.double(), noise.double(), options.center)
    semantic, _ = principal_directions(clean, options.alpha)
    noise_dirs, _ = principal_directions(noise, options.alpha)
    if semantic.shape[1] == 0:
        max_cosines = torch.zeros(noise_dirs.shape[1], dtype=torch.float64)
    else:
        max_cosines = (noise_dirs.T @ semantic).abs().amax(dim=1)
    keep = max_cosines < options.cosine_threshold(clean.shape[1])
    kept = noise_dirs[:, keep]  # right-singular vectors: already orthonormal, largest sigma first
    if options.max_directions is not None:
        kept = kept[:, : options.max_directions]
    return LayerBasis(
        basis=kept.float().contiguous(),
        semantic_rank=int(semantic.shape[1]),
        noise_rank=int(noise_dirs.shape[1]),
        max_cosines=max_cosines.float(),
    )


def _capped(directions: torch.Tensor, options: BasisOptions) -> torch.Tensor:
    if options.max_directions is not None:
        directions = directions[:, : options.max_directions]
    return directions


def _contrastive_basis(clean: torch.Tensor, noise: torch.Tensor, options: BasisOptions) -> LayerBasis:
    """Top generalized eigenvectors of (noise covariance, regularized clean covariance), orthonormalized.

    Whitening by the clean covariance turns the generalized problem into an ordinary symmetric one;
    the eigenvectors are then mapped back and made orthonormal (QR keeps their order), since SEE and
    SEEN need an orthonormal basis.
    """
    width = clean.shape[1]
    clean_cov = torch.cov(clean.T, correction=0) if clean.shape[0] > 1 else torch.zeros(width, width, dtype=clean.dtype)
    noise_cov = torch.cov(noise.T, correction=0) if noise.shape[0] > 1 else torch.zeros(width, width, dtype=noise.dtype)
    # The noise set's mean offset from clean speech is itself a noise direction: include it as variance.
    shift = (noise.mean(0) - clean.mean(0))[:, None]
    noise_cov = noise_cov + shift @ shift.T
    floor = options.regularization * max(float(torch.trace(clean_cov)) / width, 1e-12)
    values, vectors = torch.linalg.eigh(clean_cov + floor * torch.eye(width, dtype=clean.dtype))
    whiten = vectors / values.sqrt()[None, :]
    ratios, rotated = torch.linalg.eigh(whiten.T @ noise_cov @ whiten)
    order = torch.argsort(ratios, descending=True)
    ratios, directions = ratios[order], whiten @ rotated[:, order]
    directions = _capped(directions[:, ratios > 1.0], options)
    basis = torch.linalg.qr(directions)[0] if directions.shape[1] else directions
    return LayerBasis(basis.float().contiguous(), 0, int((ratios > 1.0).sum()), torch.zeros(basis.shape[1]))


def _paired_basis(clean: torch.Tensor, differences: torch.Tensor, options: BasisOptions) -> LayerBasis:
    """Principal directions (uncentered: the mean shift counts) of what noise did to the same clips."""
    directions, _ = principal_directions(differences, options.alpha)
    directions = _capped(directions, options)
    semantic, _ = principal_directions(clean, options.alpha)
    cosines = (directions.T @ semantic).abs().amax(dim=1) if semantic.shape[1] else torch.zeros(directions.shape[1])
    return LayerBasis(directions.float().contiguous(), int(semantic.shape[1]), directions.shape[1], cosines.float())


def localize(clean: list[torch.Tensor], noise: list[torch.Tensor], layers: list[int]) -> list[LayerProfile]:
    """The paper's layer localization over candidate layers given in order.

    ``M_l`` pairs clean row i with noise row i, so both sets are cut to their common size first
    (callers interleave noise types so that the cut keeps every type). The first critical layer is
    the smallest l with ``M_l`` below and ``D_l`` below their means over layers; it and every later
    layer are selected. When no layer meets both, only the last layer is selected.
    """
    if not (len(clean) == len(noise) == len(layers)) or not layers:
        raise ValueError("localize needs one clean and one noise matrix per candidate layer")
    pairs = min(clean[0].shape[0], noise[0].shape[0])
    distances, consistencies = [], []
    for clean_rows, noise_rows in zip(clean, noise, strict=True):
        s, n = clean_rows[:pairs].double(), noise_rows[:pairs].double()
        distances.append(float(torch.linalg.matrix_norm(s - n)))
        consistencies.append(float(torch.nn.functional.cosine_similarity(s.flatten(), n.flatten(), dim=0)))
    return select_critical(layers, distances, consistencies)


def select_critical(layers: list[int], distances: list[float], consistencies: list[float]) -> list[LayerProfile]:
    """Pick the critical set from M_l and D_l profiles (see :func:`localize`)."""
    mean_distance = sum(distances) / len(distances)
    mean_consistency = sum(consistencies) / len(consistencies)
    first = next(
        (
            i
            for i, (m, d) in enumerate(zip(distances, consistencies, strict=True))
            if m < mean_distance and d < mean_consistency
        ),
        len(layers) - 1,
    )
    return [
        LayerProfile(layer=layer, distance=m, consistency=d, selected=i >= first)
        for i, (layer, m, d) in enumerate(zip(layers, distances, consistencies, strict=True))
    ]
