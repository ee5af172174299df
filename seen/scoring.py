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

CALIBRATION_PROMPT = "Transcribe the audio."
"""Text that accompanies each clip when a decoder site needs a prompt around the audio."""


class PatchedModel:
    """A model patched with a bundle's bases, checked against the bundle once at construction."""

    def __init__(self, lm: AudioLM, bundle: NoiseBundle) -> None:
        bundle.check_model(lm.identity())
        self.lm = lm
        self.bundle = bundle
        self.patch = SeenPatch(lm.model, bundle.paths, bundle.bases_by_profile())

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


def site_batch(lm: AudioLM, clips: Sequence[Clip], site: SiteKind) -> ModelBatch:
    """Inputs for reaching a site: features alone for the encoder, a one-clip prompt each for the decoder."""
    if site.in_encoder:
        batch = lm.encoder_batch(clips)
    else:
        message = {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": CALIBRATION_PROMPT}]}
        batch = lm.chat_batch([[message]] * len(clips), clips)
    return batch.to(lm.device, lm.dtype)
