"""The patched model: the one place a model, a bundle and the SEE/SEEN patch are put together.

:class:`PatchedModel` checks the bundle against the model, builds the patch, and owns batch building
for scoring and generation, so engines and tools never touch model internals (token ids, generation
config, submodules): they hand it clips and conversations and get SEE reports and tokens back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from seen.adapters import AudioLM, Clip, Message, ModelBatch, SpeechTask
from seen.bundle import NoiseBundle
from seen.hooks import SiteKind
from seen.patch import SeeMeasurement, SeenPatch, SeeReadout
from seen.see import FrameLayout

CALIBRATION_PROMPT = "Transcribe the audio."
"""Text that accompanies each clip when a decoder site needs a prompt around the audio."""


class PatchedModel:
    """A model patched with a bundle's bases, checked against the bundle once at construction."""

    def __init__(self, lm: AudioLM, bundle: NoiseBundle) -> None:
        bundle.check_model(lm.identity())
        self.lm = lm
        self.bundle = bundle
        # Hook paths come from the adapter (the site and layers are the bundle's identity; its stored paths only
        # record where they were when calibrated): module layouts move between transformers versions.
        paths = [lm.site_path(bundle.site, layer) for layer in bundle.layers]
        self.patch = SeenPatch(lm.model, paths, bundle.bases_by_profile())

    # -- what engines need from the model --------------------------------------------------------------

    @property
    def encoder(self) -> nn.Module:
        """The audio encoder module (for timing it)."""
        return self.lm.model.get_submodule(self.lm.encoder_path)

    def end_token_ids(self) -> set[int]:
        """Tokens that end an answer: the generation config's end tokens and its pad token."""
        return self.lm.end_token_ids()

    def pad_token_id(self) -> int:
        return self.lm.pad_token_id()

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.lm.tokenizer.decode(list(token_ids), skip_special_tokens=True))

    # -- batches --------------------------------------------------------------------------------------

    def batch(self, clips: Sequence[Clip]) -> ModelBatch:
        """Inputs that reach the bundle's site, on the model's device."""
        return site_batch(self.lm, clips, self.bundle.site)

    def chat_batch(
        self, conversations: Sequence[Sequence[Message]], clips: Sequence[Clip], speech: SpeechTask | None = None
    ) -> ModelBatch:
        """Prompts (or a recognizer's task prompt) with their audio, on the model's device."""
        return self.lm.chat_batch(conversations, clips, speech).to(self.lm.device, self.lm.dtype)

    def prompt_length(self, batch: ModelBatch) -> int:
        return self.lm.prompt_length(batch)

    def prompt_tokens(self, batch: ModelBatch) -> list[int]:
        return self.lm.prompt_tokens(batch)

    # -- scoring --------------------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, clips: Sequence[Clip], batch_size: int = 8) -> SeeMeasurement:
        """SEE of each clip (paper definition: no neutralization), stopping after the last critical layer."""
        if not clips:
            raise ValueError("nothing to score: no clips")
        starts = range(0, len(clips), batch_size)
        reports = [self.score_batch(self.batch(clips[start : start + batch_size])) for start in starts]
        return SeeMeasurement(
            reports[0].profiles,
            torch.cat([report.per_layer for report in reports]),
            torch.cat([report.residual_per_layer for report in reports]),
        )

    @torch.inference_mode()
    def score_batch(self, batch: ModelBatch) -> SeeMeasurement:
        """SEE of a batch already on the device, stopping after the last critical layer."""
        with self.patch.score(batch.layout(self.bundle.site)) as readout:
            self.lm.run_to_site(batch, self.bundle.site)
        return readout.report()

    # -- the paper's SEE of an edited forward, from its own critical layers ------------------------------

    @property
    def replays_critical_layers(self) -> bool:
        """Exact SEE can be had by replaying the critical encoder layers (encoder sites); else a score pass."""
        return self.bundle.site.in_encoder

    @contextmanager
    def recording_critical_layers(self) -> Iterator[CriticalLayerCalls]:
        """Record the calls of the encoder layers from the first critical one to the last (first forward only).

        The input of the first critical layer is unedited (edits happen at the critical sites, inside it
        and after), so :meth:`replay` can recompute the unedited activations of every critical layer from
        it: the paper's SEE without a second run of the layers before it (the mel front end included).
        """
        layers = range(self.bundle.layers[0], self.bundle.layers[-1] + 1)
        calls = CriticalLayerCalls([self.lm.site_path(SiteKind.ENCODER_RESIDUAL, layer) for layer in layers])
        modules = [self.lm.model.get_submodule(path) for path in calls.paths]
        handles = [
            module.register_forward_pre_hook(calls.recorder(index), with_kwargs=True)
            for index, module in enumerate(modules)
        ]
        try:
            yield calls
        finally:
            for handle in handles:
                handle.remove()

    @torch.inference_mode()
    def replay(self, batch: ModelBatch, calls: CriticalLayerCalls) -> SeeMeasurement:
        """The paper's SEE of ``batch`` (no edit), from the recorded inputs of its critical layers."""
        if not calls.complete:
            raise RuntimeError("the critical encoder layers were not all called in the recorded forward")
        modules = [self.lm.model.get_submodule(path) for path in calls.paths]
        layout, hidden = batch.layout(self.bundle.site), calls.first_input()
        rows = calls.attended_rows(layout, hidden)
        if rows is not None:
            layout, hidden = layout.first_frames(rows, hidden.shape[1]), hidden[:, :rows]
        with self.patch.score(layout) as readout:
            for module, (args, kwargs) in zip(modules, calls.calls, strict=True):
                args, kwargs = calls.with_hidden(args, kwargs, hidden, cut_mask=rows is not None)
                output = module(*args, **kwargs)  # the patch stops it after the last critical site
                hidden = output[0] if isinstance(output, tuple) else output
        return readout.report()

    # -- generation -----------------------------------------------------------------------------------

    @contextmanager
    def neutralizing(
        self, batch: ModelBatch, strength: torch.Tensor, profile: torch.Tensor
    ) -> Iterator[SeeReadout | None]:
        """Forwards in the block neutralize each clip with its lambda and profile (no audio: no patch)."""
        if batch.encoder_layout.n_clips == 0:
            with nullcontext():
                yield None
            return
        with self.patch.scope(batch.layout(self.bundle.site), strength, profile) as readout:
            yield readout

    def generate(self, batch: ModelBatch, stop: Sequence[str] = (), **generation: Any) -> torch.Tensor:
        """New tokens only, (batch, new tokens), ending early at ``stop`` strings; inside :meth:`neutralizing`
        SEEN applies."""
        if stop:
            generation.update(stop_strings=list(stop), tokenizer=self.lm.tokenizer)
        return self.lm.generate(batch, **generation)


class CriticalLayerCalls:
    """The positional and keyword arguments of each critical encoder layer's first call in a forward."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def recorder(self, index: int) -> Any:
        def record(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if len(self.calls) == index:  # later forwards (decode steps) never reach the encoder anyway
                self.calls.append((args, dict(kwargs)))

        return record

    @property
    def complete(self) -> bool:
        return len(self.calls) == len(self.paths)

    def first_input(self) -> torch.Tensor:
        args, kwargs = self.calls[0]
        return args[0] if args else kwargs["hidden_states"]

    def attended_rows(self, layout: FrameLayout, hidden: torch.Tensor) -> int | None:
        """How many leading rows a replay needs, when fewer than all: up to the batch's last valid frame.

        That holds when the recorded attention mask keeps every later row out of the valid rows' attention
        (Qwen2-Audio masks its window's padding, in transformers and in vLLM): the valid rows' activations
        are then the same without the padding, and a short request in a 30 s window replays a tenth of it.
        Whisper attends to its padding (no mask): None, every row. Called once per replay, off the hooks,
        so its host synchronisation costs nothing on the hot path.
        """
        if hidden.dim() != 3:  # packed frames (Qwen2.5-Omni): nothing padded to cut
            return None
        clips, total = hidden.shape[0], hidden.shape[1]
        mask = self._mask(*self.calls[0])
        padded = layout.n_clips == clips and layout.n_frames == clips * total
        if mask is None or mask.dim() != 4 or mask.shape[-2:] != (total, total) or not padded:
            return None
        attended = (layout.padded_rows(total) >= 0).any(0).nonzero()
        rows = int(attended.max()) + 1 if attended.numel() else 1
        if rows == total:
            return None
        hidden_keys = mask[..., :rows, rows:]
        blocked = ~hidden_keys if hidden_keys.dtype == torch.bool else hidden_keys <= torch.finfo(mask.dtype).min / 2
        return rows if bool(blocked.all()) else None

    @staticmethod
    def _mask(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        return mask if isinstance(mask, torch.Tensor) else None

    @staticmethod
    def with_hidden(
        args: tuple[Any, ...], kwargs: dict[str, Any], hidden: torch.Tensor, cut_mask: bool = False
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """A recorded call's arguments with other hidden states in place of the recorded ones; ``cut_mask``: they
        are the first rows only (:meth:`attended_rows`), and the attention mask is cut to them."""
        mask = CriticalLayerCalls._mask(args, kwargs)
        if cut_mask and mask is not None:
            rows = hidden.shape[1]
            mask = mask[..., :rows, :rows]
            if len(args) > 1:
                args = (args[0], mask, *args[2:])
            else:
                kwargs = {**kwargs, "attention_mask": mask}
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}


def site_batch(lm: AudioLM, clips: Sequence[Clip], site: SiteKind) -> ModelBatch:
    """Inputs for reaching a site: features alone for the encoder, a one-clip prompt each for the decoder."""
    if site.in_encoder:
        batch = lm.encoder_batch(clips)
    else:
        message = {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": CALIBRATION_PROMPT}]}
        batch = lm.chat_batch([[message]] * len(clips), clips)
    return batch.to(lm.device, lm.dtype)
