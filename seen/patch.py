"""The SEE/SEEN patch: one mechanism that scores and neutralizes activations at the critical layers.

A :class:`SeenPatch` is built once per model (bases cast to the model's dtype and device there)
and installed once (:meth:`SeenPatch.installed`); each forward runs inside :meth:`SeenPatch.scope`,
which carries the per-forward state: the frame layout, each clip's lambda and noise profile.
Hooks only touch that state on the device; the per-clip, per-layer SEE is read back once, after
the forward, by :meth:`SeeReadout.report`.

The bases of all noise profiles are concatenated per layer, so one matmul projects every frame
onto every profile: SEE is reported for each profile (the dominant noise type is the profile
with the highest SEE) while each clip is neutralized with its own profile and lambda. The edit
rebuilds only the columns of the profiles some clip in the batch uses (read from the host controls
before the forward), so scoring seven profiles costs one wider projection, not seven edits.

SEE at a layer is measured on the activations entering that layer's edit. With lambda = 0
everywhere (or :meth:`SeenPatch.score`) that is the paper's SEE of the raw input; with SEEN on,
later layers see activations already cleaned upstream. Run a score-only pass first when the
paper's SEE of SEEN-on requests is needed exactly.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from seen.hooks import ForwardStopped, Hook, hooks_installed, resolve_modules, split_output
from seen.see import (
    FrameLayout,
    frame_see,
    neutralize,
    noise_projection,
    pool_by_clip,
    residual_frame_see,
)


@dataclass(frozen=True)
class SeeMeasurement:
    """Per-clip SEE of one forward, on the host."""

    profiles: tuple[str, ...]
    per_layer: torch.Tensor  # (clips, layers, profiles) SEE entering each layer
    residual_per_layer: torch.Tensor  # (clips, layers) SEE left after each layer's edit, applied profile

    @property
    def see(self) -> torch.Tensor:
        """(clips, profiles) SEE averaged over the critical layers."""
        return self.per_layer.mean(dim=1)

    @property
    def residual(self) -> torch.Tensor:
        """(clips,) residual SEE averaged over the critical layers."""
        return self.residual_per_layer.mean(dim=1)


@dataclass
class _ForwardState:
    layout: FrameLayout
    frame_strength: torch.Tensor  # (N,)
    frame_profile: torch.Tensor  # (N,) int64
    see: torch.Tensor  # (clips, layers, profiles) on the device
    residual: torch.Tensor  # (clips, layers) on the device
    stop_after_last: bool
    edited_profiles: tuple[int, int] | None  # first and last profile any clip is edited with; None: no edit


class SeeReadout:
    """Handle on the device buffers of one scope; read them once, after the forward."""

    def __init__(self, state: _ForwardState, profiles: tuple[str, ...]) -> None:
        self._state = state
        self._profiles = profiles

    def report(self) -> SeeMeasurement:
        return SeeMeasurement(self._profiles, self._state.see.cpu(), self._state.residual.cpu())


class SeenPatch:
    """Hooks that score (SEE) and neutralize (SEEN) the activations of the critical layers."""

    def __init__(self, model: nn.Module, paths: Sequence[str], bases: Mapping[str, Sequence[torch.Tensor]]) -> None:
        if not bases:
            raise ValueError("SeenPatch needs at least one noise profile")
        self.paths = tuple(paths)
        self.profiles = tuple(bases)
        for name, layers in bases.items():
            if len(layers) != len(self.paths):
                raise ValueError(f"profile {name!r} has {len(layers)} bases for {len(self.paths)} layers")
        self._modules = resolve_modules(model, self.paths)
        reference = next(model.parameters())
        self._bases: list[torch.Tensor] = []
        self._membership: list[torch.Tensor] = []
        # Column offsets of each profile in a layer's stacked basis: profile p owns [offsets[p], offsets[p + 1]).
        self._offsets: list[list[int]] = []
        for layer in range(len(self.paths)):
            widths = [int(bases[name][layer].shape[1]) for name in self.profiles]
            self._offsets.append([0, *itertools.accumulate(widths)])
            stacked = torch.cat([bases[name][layer] for name in self.profiles], dim=1)
            owner = torch.repeat_interleave(torch.arange(len(widths)), torch.tensor(widths, dtype=torch.long))
            self._bases.append(stacked.to(device=reference.device, dtype=reference.dtype))
            self._membership.append(owner.to(reference.device))
        self._state: _ForwardState | None = None
        self._lock = threading.Lock()
        self._installed = False

    @contextmanager
    def installed(self) -> Iterator[SeenPatch]:
        """Keep the hooks on the model for the block (a server holds this for its lifetime).

        Outside a :meth:`scope` the hooks pass activations through untouched. On exit exactly these
        hooks are removed and the model is bit-for-bit the original again.
        """
        if self._installed:
            raise RuntimeError("this SeenPatch is already installed")
        with hooks_installed(self._modules, [self._hook(i) for i in range(len(self._modules))]):
            self._installed = True
            try:
                yield self
            finally:
                self._installed = False

    @property
    def device(self) -> torch.device:
        return self._bases[0].device

    def _hook(self, index: int) -> Hook:
        basis, owner, offsets = self._bases[index], self._membership[index], self._offsets[index]
        onehot = torch.nn.functional.one_hot(owner, len(self.profiles)).float()  # (K, profiles)
        is_last = index == len(self._bases) - 1

        def apply(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            state = self._state
            if state is None:
                return None
            acts, rebuild = split_output(output)
            flat = acts.reshape(-1, acts.shape[-1])
            if flat.shape[0] != state.layout.n_frames:
                return None  # not the forward this scope describes (e.g. a decode step)
            projection = noise_projection(flat, basis)
            per_profile = frame_see(flat, projection, onehot)
            state.see[:, index] = pool_by_clip(per_profile, state.layout)
            applied = per_profile.gather(1, state.frame_profile[:, None]).squeeze(1)
            state.residual[:, index] = pool_by_clip(residual_frame_see(applied, state.frame_strength), state.layout)
            if state.stop_after_last and is_last:
                raise ForwardStopped
            if state.edited_profiles is None:
                return None
            # Only the columns of the profiles some clip is edited with (one profile, usually) are
            # rebuilt; within them each frame is neutralized along its own clip's profile only.
            first, last = state.edited_profiles
            columns = slice(offsets[first], offsets[last + 1])
            if columns.start == columns.stop:
                return None
            column_strength = state.frame_strength[:, None] * (owner[None, columns] == state.frame_profile[:, None])
            edited = neutralize(flat, projection[:, columns], basis[:, columns], column_strength)
            return rebuild(edited.reshape(acts.shape))

        return apply

    @contextmanager
    def scope(
        self,
        layout: FrameLayout,
        strength: torch.Tensor,
        profile: torch.Tensor | None = None,
        *,
        stop_after_last: bool = False,
    ) -> Iterator[SeeReadout]:
        """Score and neutralize the forwards run in the block.

        ``strength`` (clips,) is each clip's lambda (0 leaves it untouched), ``profile`` (clips,)
        the index into :attr:`profiles` of the basis it is neutralized with (default: the first).
        With ``stop_after_last`` the forward ends after the last critical layer (score only).
        """
        if profile is None:
            profile = torch.zeros(layout.n_clips, dtype=torch.long)
        if strength.shape != (layout.n_clips,) or profile.shape != (layout.n_clips,):
            raise ValueError(f"strength and profile need one value per clip ({layout.n_clips})")
        edited_profiles = self._edited_profiles(strength, profile)
        layout = layout.to(self.device)
        strength = strength.to(self.device, torch.float32)
        profile = profile.to(self.device, torch.long)
        clip = layout.frame_clip.clamp_min(0)
        valid = (layout.frame_clip >= 0).float()
        state = _ForwardState(
            layout=layout,
            frame_strength=strength[clip] * valid,
            frame_profile=profile[clip],
            see=torch.zeros(layout.n_clips, len(self.paths), len(self.profiles), device=self.device),
            residual=torch.zeros(layout.n_clips, len(self.paths), device=self.device),
            stop_after_last=stop_after_last,
            edited_profiles=edited_profiles,
        )
        with self._lock, ExitStack() as stack:
            if not self._installed:
                stack.enter_context(self.installed())
            self._state = state
            try:
                yield SeeReadout(state, self.profiles)
            except ForwardStopped:
                pass
            finally:
                self._state = None

    def _edited_profiles(self, strength: torch.Tensor, profile: torch.Tensor) -> tuple[int, int] | None:
        """First and last profile any clip is edited with, or None when every lambda is 0.

        Read on the host once per forward, before it runs (callers build these controls on the host),
        so that the hooks rebuild only the columns in use and never need to look at them.
        """
        strength, profile = strength.cpu(), profile.cpu()
        if profile.numel() and (int(profile.min()) < 0 or int(profile.max()) >= len(self.profiles)):
            raise ValueError(f"profile indices must lie in [0, {len(self.profiles) - 1}], got {profile.tolist()}")
        used = profile[strength != 0]
        if used.numel() == 0:
            return None
        return int(used.min()), int(used.max())

    @contextmanager
    def score(self, layout: FrameLayout) -> Iterator[SeeReadout]:
        """Score only: no edit, and the forward stops after the last critical layer."""
        with self.scope(layout, torch.zeros(layout.n_clips), stop_after_last=True) as readout:
            yield readout
