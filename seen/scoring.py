"""Score clips against a bundle: the one place a model, a bundle and the patch are put together."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from seen.adapters import AudioLM, Clip, ModelBatch
from seen.bundle import NoiseBundle
from seen.hooks import SiteKind
from seen.patch import SeenPatch, SeeReport

CALIBRATION_PROMPT = "Transcribe the audio."
"""Text that accompanies each clip when a decoder site needs a prompt around the audio."""


class Scorer:
    """A model patched with a bundle's bases, checked against the bundle once at construction."""

    def __init__(self, lm: AudioLM, bundle: NoiseBundle) -> None:
        bundle.check_model(lm.identity())
        self.lm = lm
        self.bundle = bundle
        self.patch = SeenPatch(lm.model, bundle.paths, bundle.bases_by_profile())

    def batch(self, clips: Sequence[Clip]) -> ModelBatch:
        return site_batch(self.lm, clips, self.bundle.site)

    @torch.inference_mode()
    def score(self, clips: Sequence[Clip], batch_size: int = 8) -> SeeReport:
        """SEE of each clip (paper definition: no neutralization), stopping after the last critical layer."""
        if not clips:
            raise ValueError("nothing to score: no clips")
        reports = [
            self.score_batch(self.batch(clips[start : start + batch_size]))
            for start in range(0, len(clips), batch_size)
        ]
        return SeeReport(
            reports[0].profiles,
            torch.cat([report.per_layer for report in reports]),
            torch.cat([report.residual_per_layer for report in reports]),
        )

    @torch.inference_mode()
    def score_batch(self, batch: ModelBatch) -> SeeReport:
        """SEE of a batch already on the device, stopping after the last critical layer."""
        with self.patch.score(batch.layout(self.bundle.site)) as readout:
            self.lm.run_to_site(batch, self.bundle.site)
        return readout.report()


def site_batch(lm: AudioLM, clips: Sequence[Clip], site: SiteKind) -> ModelBatch:
    """Inputs for reaching a site: features alone for the encoder, a one-clip prompt each for the decoder."""
    if site.in_encoder:
        batch = lm.encoder_batch(clips)
    else:
        message = {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": CALIBRATION_PROMPT}]}
        batch = lm.chat_batch([[message]] * len(clips), clips)
    return batch.to(lm.device, lm.dtype)
