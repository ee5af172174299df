"""Qwen2-Audio (``Qwen2AudioForConditionalGeneration``).

The encoder always runs on the full window (30 s in the released model): the hook sees
(clips, window frames, D) and clip b has ``(feature_attention_mask[b].sum() - 1) // 2 + 1`` valid
frames; the rest is padding that is computed but masked out of attention and out of SEE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.masking_utils import create_bidirectional_mask

from seen.adapters.base import AudioLM, Clip, Message, ModelBatch, SpeechTask
from seen.see import FrameLayout


def encoder_attention_mask(
    tower_config: Any, features: torch.Tensor, feature_mask: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """The audio tower's attention mask, hiding each clip's padding frames: Qwen2AudioModel.forward builds it
    inline, and anything that runs the encoder alone needs it too."""
    valid = Qwen2Audio._valid_frames(feature_mask)
    window_frames = (features.shape[-1] - 1) // 2 + 1
    frame_mask = (torch.arange(window_frames, device=valid.device)[None, :] < valid[:, None]).long()
    return create_bidirectional_mask(
        config=tower_config,
        inputs_embeds=torch.zeros(features.shape[0], window_frames, 1, dtype=dtype, device=features.device),
        attention_mask=frame_mask,
    )


class Qwen2Audio(AudioLM):
    architecture = "Qwen2AudioForConditionalGeneration"

    @staticmethod
    def _valid_frames(feature_mask: torch.Tensor) -> torch.Tensor:
        return (feature_mask.sum(-1) - 1) // 2 + 1

    def _layout(self, features: torch.Tensor, feature_mask: torch.Tensor) -> FrameLayout:
        window_frames = (features.shape[-1] - 1) // 2 + 1
        return FrameLayout.padded(self._valid_frames(feature_mask), window_frames)

    def _encoder_batch(self, clips: Sequence[Clip]) -> ModelBatch:
        inputs = self.window_features(clips)
        return ModelBatch(inputs, self._layout(inputs["input_features"], inputs["feature_attention_mask"]))

    def run_encoder(self, batch: ModelBatch) -> Any:
        features = batch.inputs["input_features"]
        tower: Any = self.model.get_submodule("model.audio_tower")
        mask = encoder_attention_mask(tower.config, features, batch.inputs["feature_attention_mask"], self.dtype)
        return tower(features, attention_mask=mask)

    def _audio_embeddings(self, batch: ModelBatch) -> list[torch.Tensor]:
        states = self.run_encoder(batch).last_hidden_state
        projected = self.model.get_submodule("model.multi_modal_projector")(states)
        tokens = (self._valid_frames(batch.inputs["feature_attention_mask"]) - 2) // 2 + 1
        return [rows[:count] for rows, count in zip(projected, tokens.tolist(), strict=True)]

    def _chat_batch(
        self, conversations: Sequence[Sequence[Message]], clips: Sequence[Clip], speech: SpeechTask | None = None
    ) -> ModelBatch:
        prompts = [
            self.processor.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
            for messages in conversations
        ]
        inputs = self.processor(
            text=prompts, audio=list(clips) or None, sampling_rate=self.sample_rate, return_tensors="pt", padding=True
        )
        tensors = {key: value for key, value in inputs.items() if isinstance(value, torch.Tensor)}
        if "input_features" in tensors:
            encoder_layout = self._layout(tensors["input_features"], tensors["feature_attention_mask"])
        else:
            encoder_layout = FrameLayout(torch.zeros(0, dtype=torch.long), 0)
        return ModelBatch(tensors, encoder_layout, self.decoder_layout(tensors["input_ids"]))
