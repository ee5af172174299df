"""Forward hooks on named modules: registration that cleans up after itself, and activation recording.

Both the calibration (which records clip-level activations) and the serving patch (which scores
and neutralizes them) go through :func:`hooks_installed`, so there is one way hooks get on and off
a model: exactly the handles registered here are removed, in ``finally``, even when a hook raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

import torch
from torch import nn

from seen.see import FrameLayout, pool_rows_by_clip

Hook = Callable[[nn.Module, Any, Any], Any]
PreHook = Callable[[nn.Module, Any], Any]


class SiteKind(StrEnum):
    """Where in the model activations are read and edited."""

    ENCODER_FFN = "encoder_ffn"
    """The FFN activation (after fc1 and its nonlinearity) of each audio-encoder layer: the paper's site."""
    ENCODER_ATTENTION = "encoder_attention"
    """The self-attention output of each audio-encoder layer, before it is added to the residual stream."""
    ENCODER_RESIDUAL = "encoder_residual"
    """The output of each audio-encoder layer: the residual stream the next layer reads."""
    DECODER_HIDDEN = "decoder_hidden"
    """The output hidden states of each LLM decoder layer, at the audio-token positions of the prompt."""

    @property
    def in_encoder(self) -> bool:
        """Encoder sites see the encoder's frames (one layout per batch) and need only the encoder to run."""
        return self is not SiteKind.DECODER_HIDDEN


class ForwardStopped(Exception):
    """Raised by the last hook of a scope to end a forward early (score-only and calibration runs)."""


def resolve_modules(model: nn.Module, paths: Sequence[str]) -> list[nn.Module]:
    """Look each dotted path up once, failing loudly with the path that matched nothing."""
    modules = []
    for path in paths:
        try:
            modules.append(model.get_submodule(path))
        except AttributeError as error:
            raise LookupError(
                f"hook point {path!r} does not exist in {type(model).__name__}: the bundle or adapter "
                "names a layer this model does not have"
            ) from error
    return modules


@contextmanager
def hooks_installed(
    modules: Sequence[nn.Module], hooks: Sequence[Hook], pre_hooks: Sequence[PreHook] | None = None
) -> Iterator[None]:
    """Register one forward hook (and optionally one pre-hook) per module for the duration of the block."""
    handles = []
    try:
        for module, hook in zip(modules, hooks, strict=True):
            handles.append(module.register_forward_hook(hook))
        for module, pre_hook in zip(modules, pre_hooks or [], strict=pre_hooks is not None):
            handles.append(module.register_forward_pre_hook(pre_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def split_output(output: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """The activation tensor inside a module output, and how to put an edited one back."""
    if isinstance(output, torch.Tensor):
        return output, lambda edited: edited
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0], lambda edited: (edited, *output[1:])
    raise TypeError(f"cannot read activations from a module output of type {type(output).__name__}")


class ActivationRecorder:
    """Collects each clip's mean activation at every given module, for one forward at a time.

    Pooling happens on the device inside the hook, so memory holds (clips x D) per layer, never
    the frames. The forward is stopped after the last module, since nothing later is needed.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self._modules = resolve_modules(model, self.paths)
        self._layout: FrameLayout | None = None
        self._pooled: list[torch.Tensor | None] = [None] * len(self.paths)

    def _hook(self, index: int) -> Hook:
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            acts, _ = split_output(output)
            layout = self._layout
            assert layout is not None, "ActivationRecorder hook fired outside record()"
            flat = acts.reshape(-1, acts.shape[-1])
            if flat.shape[0] != layout.n_frames:
                return
            self._pooled[index] = pool_rows_by_clip(flat, layout)
            if index == len(self._modules) - 1:
                raise ForwardStopped

        return record

    def record(self, layout: FrameLayout, run_forward: Callable[[], object]) -> list[torch.Tensor]:
        """Run ``run_forward`` once and return the (clips x D) float32 means per module, on the device."""
        self._layout = layout
        self._pooled = [None] * len(self._modules)
        try:
            with hooks_installed(self._modules, [self._hook(i) for i in range(len(self._modules))]):
                run_forward()
        except ForwardStopped:
            pass
        finally:
            self._layout = None
        missing = [path for path, pooled in zip(self.paths, self._pooled, strict=True) if pooled is None]
        if missing:
            raise RuntimeError(f"the forward never reached {missing[0]} with the expected frame layout")
        return [pooled for pooled in self._pooled if pooled is not None]
