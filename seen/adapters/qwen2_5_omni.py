"""Qwen2.5-Omni thinker (``Qwen2_5OmniThinkerForConditionalGeneration``).

The encoder packs the valid frames of all clips into one (sum of frames, D) tensor with no batch
axis; clip b contributes ``(L_b - 1) // 2 + 1`` frames, L_b its valid mel length. The full
processor needs torchvision, so prompts are built from the tokenizer's chat template and the
audio placeholder is expanded here, as the processor would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from seen.adapters.base import AudioLM, Clip, Message, ModelBatch, SpeechTask
from seen.see import FrameLayout


def _encoder_frames(mel_lengths: torch.Tensor) -> torch.Tensor:
    return (mel_lengths - 1) // 2 + 1


class Qwen25OmniThinker(AudioLM):
    architecture = "Qwen2_5OmniThinkerForConditionalGeneration"

    def __init__(self, model: Any, processor: Any, tokenizer: Any, feature_extractor: Any, source: str) -> None:
        super().__init__(model, processor, tokenizer, feature_extractor, source)
        if hasattr(model, "audio_tower"):  # transformers < 5.20: the towers beside the text model, not inside it
            self.encoder_layers_path = "audio_tower.layers"
            self.decoder_layers_path = "model.layers"

    def _encoder_batch(self, clips: Sequence[Clip]) -> ModelBatch:
        inputs = self.window_features(clips)
        return ModelBatch(inputs, FrameLayout.packed(_encoder_frames(inputs["feature_attention_mask"].sum(-1))))

    def run_encoder(self, batch: ModelBatch) -> Any:
        return self.model.get_audio_features(
            batch.inputs["input_features"], feature_attention_mask=batch.inputs["feature_attention_mask"]
        )

    def _audio_embeddings(self, batch: ModelBatch) -> list[torch.Tensor]:
        features = self.run_encoder(batch)
        packed = getattr(features, "last_hidden_state", features)  # the tower ends in its own projection
        tokens = (_encoder_frames(batch.inputs["feature_attention_mask"].sum(-1)) - 2) // 2 + 1
        return list(packed.split(tokens.tolist()))

    def _chat_batch(
        self, conversations: Sequence[Sequence[Message]], clips: Sequence[Clip], speech: SpeechTask | None = None
    ) -> ModelBatch:
        audio_token = self.tokenizer.convert_ids_to_tokens(self.audio_token_id)
        features = self.window_features(clips) if clips else {}
        frames = _encoder_frames(features["feature_attention_mask"].sum(-1)) if clips else torch.zeros(0)
        tokens_per_clip = iter(((frames - 2) // 2 + 1).tolist())
        prompts = []
        for messages in conversations:
            template = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
            pieces = template.split(audio_token)
            prompt = pieces[0] + "".join(audio_token * next(tokens_per_clip) + piece for piece in pieces[1:])
            prompts.append(prompt)
        text = self.tokenizer(prompts, return_tensors="pt", padding=True)
        inputs = {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"], **features}
        encoder_layout = FrameLayout.packed(frames) if clips else FrameLayout(torch.zeros(0, dtype=torch.long), 0)
        return ModelBatch(inputs, encoder_layout, self.decoder_layout(inputs["input_ids"]))
