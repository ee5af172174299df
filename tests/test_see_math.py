"""Properties of the SEE maths and of the noise-basis recipe on constructed activations."""

from __future__ import annotations

import math

import pytest
import torch

from seen.basis import BasisOptions, energy_rank, localize, noise_basis, select_critical
from seen.see import FrameLayout, frame_see, neutralize, pool_by_clip, pool_rows_by_clip, residual_frame_see


def _orthonormal(width: int, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(width, count, generator=generator, dtype=torch.float64))
    return q


def _rows(directions: torch.Tensor, scales: list[float], n: int, seed: int) -> torch.Tensor:
    """n rows spanning ``directions`` with exactly orthogonal coefficient columns of the given scales."""
    coefficients = _orthonormal(n, len(scales), seed) * torch.tensor(scales, dtype=torch.float64)
    return coefficients @ directions.T


def _principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cosines = torch.linalg.svdvals(a.double().T @ b.double()).clamp(-1, 1)
    return torch.arccos(cosines)


def test_planted_noise_subspace_is_recovered_and_semantic_direction_excluded() -> None:
    axes = _orthonormal(64, 6, seed=1)
    semantic, noise_only, shared = axes[:, :3], axes[:, 3:5], axes[:, 5:6]
    clean = _rows(torch.cat([semantic, shared], 1), [9.0, 7.0, 5.0, 3.0], n=40, seed=2)
    noise = _rows(torch.cat([noise_only, shared], 1), [8.0, 6.0, 4.0], n=40, seed=3)

    result = noise_basis(clean, noise, BasisOptions(alpha=0.999, delta=0.1))

    assert result.k == 2
    assert torch.allclose(result.basis.T @ result.basis, torch.eye(2), atol=1e-5)
    assert _principal_angles(result.basis, noise_only).max() < 1e-3
    # The direction noise shares with speech is excluded: it is orthogonal to what was kept.
    assert (result.basis.double().T @ shared).abs().max() < 1e-6


def test_alpha_limits_the_directions_to_the_energy_share() -> None:
    singular_values = torch.tensor([3.0, 2.0, 1.0, 0.1])  # energies 9, 4, 1, 0.01 of 14.01
    assert energy_rank(singular_values, 0.6) == 1
    assert energy_rank(singular_values, 0.9) == 2
    assert energy_rank(singular_values, 0.99) == 3
    assert energy_rank(singular_values, 1.0) == 4


def test_chance_relative_delta_scales_with_width() -> None:
    options = BasisOptions(delta=7.2, delta_mode="chance")
    assert options.cosine_threshold(5120) == pytest.approx(0.1, rel=0.01)
    assert options.cosine_threshold(128) == pytest.approx(7.2 / math.sqrt(128))
    with pytest.raises(ValueError, match="cosine"):
        BasisOptions(delta=2.0)


def test_centering_changes_what_is_kept() -> None:
    axes = _orthonormal(32, 3, seed=4)
    offset = 20.0 * axes[:, 0]
    clean = _rows(axes[:, 1:2], [3.0], n=20, seed=5) + offset
    noise = _rows(axes[:, 2:3], [3.0], n=20, seed=6) + offset
    raw = noise_basis(clean, noise, BasisOptions(alpha=0.95))
    centered = noise_basis(clean, noise, BasisOptions(alpha=0.95, center="clean_mean"))
    assert raw.k == 0  # the shared offset dominates both sets, as in the paper's literal recipe
    assert centered.k == 1
    assert _principal_angles(centered.basis, axes[:, 2:3]).max() < 0.05


def test_localization_on_constructed_profiles() -> None:
    layers = [10, 11, 12, 13, 14]
    profiles = select_critical(layers, [5.0, 4.0, 3.0, 2.0, 1.0], [0.9, 0.8, 0.5, 0.4, 0.3])
    assert [p.layer for p in profiles if p.selected] == [13, 14]
    # A layer below both means starts the critical set even when a later one is not.
    profiles = select_critical(layers, [1.0, 5.0, 5.0, 0.5, 0.5], [0.1, 0.9, 0.9, 0.2, 0.2])
    assert [p.layer for p in profiles if p.selected] == layers
    # When no layer qualifies, only the last is used.
    profiles = select_critical(layers, [1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 0.4, 0.3, 0.2, 0.1])
    assert [p.layer for p in profiles if p.selected] == [14]


def test_localize_computes_frobenius_distance_and_flattened_cosine() -> None:
    clean = [torch.ones(3, 4), torch.ones(3, 4)]
    noise = [torch.ones(4, 4) * 2, -torch.ones(5, 4)]  # unequal counts: cut to 3 pairs
    profiles = localize(clean, noise, [0, 1])
    assert profiles[0].distance == pytest.approx(math.sqrt(12))
    assert profiles[0].consistency == pytest.approx(1.0)
    assert profiles[1].distance == pytest.approx(math.sqrt(12 * 4))
    assert profiles[1].consistency == pytest.approx(-1.0)


def test_see_is_a_share_and_lambda_one_removes_it() -> None:
    torch.manual_seed(0)
    acts = torch.randn(50, 32)
    basis = _orthonormal(32, 4, seed=7).float()
    projection = acts @ basis
    see = frame_see(acts, projection)
    assert see.min() >= 0 and see.max() <= 1
    expected = (projection.square().sum(-1) / acts.square().sum(-1)).float()
    assert torch.allclose(see, expected, atol=1e-6)

    for strength in (0.0, 0.25, 0.5, 1.0, 1.7):
        lam = torch.full((50, 1), strength)
        edited = neutralize(acts, projection, basis, lam)
        measured = frame_see(edited, edited @ basis)
        predicted = residual_frame_see(see, lam.squeeze(1))
        assert torch.allclose(measured, predicted, atol=1e-5)
    edited = neutralize(acts, projection, basis, torch.ones(50, 1))
    assert frame_see(edited, edited @ basis).max() < 1e-10
    assert torch.equal(neutralize(acts, projection, basis, torch.zeros(50, 1)), acts)


def test_pooling_ignores_padding_frames() -> None:
    layout = FrameLayout.padded(torch.tensor([2, 3]), total_frames=4)
    assert layout.frame_clip.tolist() == [0, 0, -1, -1, 1, 1, 1, -1]
    values = torch.tensor([1.0, 3.0, 100.0, 100.0, 2.0, 4.0, 6.0, 100.0])
    assert pool_by_clip(values, layout).tolist() == [2.0, 4.0]
    rows = torch.stack([values, -values], 1)
    assert pool_rows_by_clip(rows, layout).tolist() == [[2.0, -2.0], [4.0, -4.0]]
    packed = FrameLayout.packed(torch.tensor([1, 2]))
    assert packed.frame_clip.tolist() == [0, 1, 1]


# -- the alternative basis builders ---------------------------------------------------------------------


def _rows_with_extra_variance(direction: torch.Tensor, n: int, seed: int, scale: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(n, direction.numel(), generator=generator, dtype=torch.float64)
    return base + scale * torch.randn(n, 1, generator=generator, dtype=torch.float64) * direction[None, :]


def test_contrastive_basis_finds_the_direction_only_noise_varies_along() -> None:
    from seen.basis import BasisOptions, noise_basis

    width = 32
    direction = torch.zeros(width, dtype=torch.float64)
    direction[7] = 1.0
    clean = _rows_with_extra_variance(direction, 2000, 1, 0.0)
    noise = _rows_with_extra_variance(direction, 2000, 2, 6.0)
    layer = noise_basis(clean, noise, BasisOptions(method="contrastive", max_directions=2))
    assert layer.k == 2
    torch.testing.assert_close(layer.basis.T @ layer.basis, torch.eye(2), atol=1e-5, rtol=0)
    assert abs(float(layer.basis[:, 0].double() @ direction)) > 0.95
    # the same distribution on both sides: no direction has clearly more noise than clean variance
    same = noise_basis(clean, _rows_with_extra_variance(direction, 2000, 3, 0.0), BasisOptions(method="contrastive"))
    assert same.noise_rank < width // 2


def test_paired_basis_is_the_principal_change_noise_makes() -> None:
    from seen.basis import BasisOptions, noise_basis

    width = 16
    direction = torch.zeros(width, dtype=torch.float64)
    direction[3], direction[4] = 0.6, 0.8
    generator = torch.Generator().manual_seed(4)
    clean = torch.randn(40, width, generator=generator, dtype=torch.float64)
    differences = 2.0 * direction[None, :] + 0.05 * torch.randn(40, width, generator=generator, dtype=torch.float64)
    layer = noise_basis(clean, differences, BasisOptions(method="paired", max_directions=1))
    assert layer.k == 1 and abs(float(layer.basis[:, 0].double() @ direction)) > 0.99


def test_unknown_basis_method_is_refused() -> None:
    from seen.basis import BasisOptions

    with pytest.raises(ValueError, match="unknown basis method 'lda'"):
        BasisOptions(method="lda")  # type: ignore[arg-type]
