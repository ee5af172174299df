"""Signal Embedding Energy (SEE) and its neutralization (SEEN): the per-request maths.

For activations ``A`` (frames x D) at one layer and that layer's orthonormal noise basis
``Q`` (D x k), with ``Z = A Q``:

* SEE of a frame is ``||Z_t||^2 / ||A_t||^2``, the share of its energy in the noise directions;
  a clip's SEE is the mean over its valid frames, and a request's SEE is the mean over the
  critical layers (layers whose basis is empty count as 0).
* SEEN replaces ``A`` by ``A - lambda Z Q^T``. Because ``Q`` is orthonormal, the residual SEE
  follows in closed form: the projection shrinks by ``(1 - lambda)`` and the frame energy by
  ``(2 lambda - lambda^2) ||Z_t||^2``. No second projection is needed.

Everything here is plain tensor code with no host synchronisation, so it can run inside
forward hooks on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_EPS = 1e-12


@dataclass(frozen=True)
class FrameLayout:
    """Which clip each activation frame belongs to, for one forward.

    Activations arrive padded (clips x T x D), packed (frames x D) or chunked; flattened to
    (N, D) they all map to clips through ``frame_clip`` (-1 marks padding frames that must not
    enter SEE). Built once per forward, before the model runs.
    """

    frame_clip: torch.Tensor  # (N,) int64, clip index or -1
    n_clips: int

    @property
    def n_frames(self) -> int:
        return int(self.frame_clip.shape[0])

    def to(self, device: torch.device | str) -> FrameLayout:
        return FrameLayout(self.frame_clip.to(device), self.n_clips)

    @staticmethod
    def padded(valid_frames: torch.Tensor, total_frames: int) -> FrameLayout:
        """Layout of a (clips, total_frames, D) tensor whose clip b has valid_frames[b] frames."""
        n_clips = int(valid_frames.shape[0])
        positions = torch.arange(total_frames, device=valid_frames.device)
        clip = torch.arange(n_clips, device=valid_frames.device)[:, None].expand(n_clips, total_frames)
        valid = positions[None, :] < valid_frames[:, None]
        return FrameLayout(torch.where(valid, clip, -1).reshape(-1), n_clips)

    def padded_rows(self, total_frames: int) -> torch.Tensor:
        """A padded layout's membership as (clips, total_frames)."""
        return self.frame_clip.view(self.n_clips, total_frames)

    def first_frames(self, frames: int, total_frames: int) -> FrameLayout:
        """The layout of each clip's first ``frames`` frames, from a padded layout of ``total_frames`` each."""
        return FrameLayout(self.padded_rows(total_frames)[:, :frames].reshape(-1), self.n_clips)

    @staticmethod
    def packed(frames_per_clip: torch.Tensor) -> FrameLayout:
        """Layout of a (sum of frames, D) tensor holding the clips one after another."""
        n_clips = int(frames_per_clip.shape[0])
        clips = torch.arange(n_clips, device=frames_per_clip.device)
        return FrameLayout(torch.repeat_interleave(clips, frames_per_clip), n_clips)


def noise_projection(acts: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``Z = A Q`` for (N, D) activations and a (D, k) basis already in the activations' dtype."""
    return acts @ basis


def frame_see(acts: torch.Tensor, projection: torch.Tensor, membership: torch.Tensor | None = None) -> torch.Tensor:
    """Per-frame energy share ``||Z_t||^2 / ||A_t||^2`` in float32, in [0, 1].

    With ``membership`` (k, P), a one-hot map of basis columns to noise profiles, the share is
    computed for every profile at once: (N,) becomes (N, P).
    """
    energy = torch.linalg.vector_norm(acts, dim=-1, dtype=torch.float32).square().clamp_min(_EPS)
    squared = projection.float().square()
    noise_energy = squared.sum(-1) if membership is None else squared @ membership
    scale = energy if membership is None else energy[:, None]
    return (noise_energy / scale).clamp(0.0, 1.0)


def residual_frame_see(see: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """SEE left after ``A - lambda Z Q^T``, from the input SEE and per-frame lambda (exact for orthonormal Q)."""
    kept = (1.0 - strength).square() * see
    remaining_energy = 1.0 - (2.0 * strength - strength.square()) * see
    return (kept / remaining_energy.clamp_min(_EPS)).clamp(0.0, 1.0)


def neutralize(
    acts: torch.Tensor, projection: torch.Tensor, basis: torch.Tensor, strength: torch.Tensor
) -> torch.Tensor:
    """SEEN: ``A - lambda Z Q^T``; ``strength`` is lambda per frame (N, 1) or per frame and column (N, k).

    One fused ``addmm``: the (N, D) reconstruction is never materialised, so the edit costs one pass
    over the activations instead of three.
    """
    return torch.addmm(acts, projection * strength.to(acts.dtype), basis.T, alpha=-1)


def pool_by_clip(values: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
    """Mean of per-frame values over each clip's valid frames: (N, ...) -> (n_clips, ...)."""
    valid = (layout.frame_clip >= 0).to(values.dtype)
    index = layout.frame_clip.clamp_min(0)
    weights = valid.reshape(-1, *([1] * (values.ndim - 1)))
    sums = values.new_zeros(layout.n_clips, *values.shape[1:]).index_add_(0, index, values * weights)
    counts = values.new_zeros(layout.n_clips).index_add_(0, index, valid)
    return sums / counts.clamp_min(1.0).reshape(-1, *([1] * (values.ndim - 1)))


def pool_rows_by_clip(acts: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
    """Mean activation vector of each clip over its valid frames: (N, D) -> (n_clips, D), float32."""
    return pool_by_clip(acts.to(torch.float32), layout)
