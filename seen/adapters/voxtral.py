"""Voxtral (``VoxtralForConditionalGeneration``).

Audio is padded to a whole number of windows (30 s in the released model) and cut into chunks;
the encoder sees (chunks, window frames, D) with no mask at all, so the valid frames come from
the audio length: a clip of n samples has ``n // hop`` mel frames and ``(mel - 1) // 2 + 1``
encoder frames, spread over its chunks in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from seen.adapters.base import AudioLM, Clip, Message, ModelBatch
from seen.see import FrameLayout

MAX_CLIP_SECONDS = 1800.0
"""Longest audio accepted per clip: Voxtral chunks long audio itself (its card states 30-40 minutes)."""


class Voxtral(AudioLM):
    architecture = "VoxtralForConditionalGeneration"

    @property
    def max_clip_seconds(self) -> float:
        return MAX_CLIP_SECONDS

    @property
    def _window_samples(self) -> int:
        return int(self.feature_extractor.n_samples)

    def _window_frames(self) -> int:
        return int(self.audio_config.max_source_positions)

    def _chunk_layout(self, clips: Sequence[Clip]) -> FrameLayout:
        window = self._window_frames()
        frame_clip = []
        for index, clip in enumerate(clips):
            valid = (len(clip) // self.feature_extractor.hop_length - 1) // 2 + 1
            for chunk in range(-(-len(clip) // self._window_samples)):
                in_chunk = min(window, max(0, valid - chunk * window))
                frame_clip.append(torch.where(torch.arange(window) < in_chunk, index, -1))
        return FrameLayout(torch.cat(frame_clip), len(clips))

    def _encoder_batch(self, clips: Sequence[Clip]) -> ModelBatch:
        chunks = []
        for clip in clips:
            padded_length = -(-len(clip) // self._window_samples) * self._window_samples
            padded = np.pad(clip, (0, padded_length - len(clip)))
            windows = padded.reshape(-1, self._window_samples)
            features = self.feature_extractor(
                list(windows), sampling_rate=self.sample_rate, padding="max_length", return_tensors="pt"
            )
            chunks.append(features["input_features"])
        return ModelBatch({"input_features": torch.cat(chunks)}, self._chunk_layout(clips))

    def run_encoder(self, batch: ModelBatch) -> None:
        self.model.get_audio_features(batch.inputs["input_features"])

    def _chat_batch(self, conversations: Sequence[Sequence[Message]], clips: Sequence[Clip]) -> ModelBatch:
        if self.processor is None:
            raise RuntimeError(
                "Voxtral prompts need its processor (pip install 'mistral-common[audio]') and a tekken.json"
            )
        audio = iter(clips)
        filled = [
            [
                {
                    **message,
                    "content": [
                        {"type": "audio", "audio": next(audio)} if part.get("type") == "audio" else part
                        for part in message["content"]
                    ]
                    if isinstance(message["content"], list)
                    else message["content"],
                }
                for message in messages
            ]
            for messages in conversations
        ]
        inputs = self.processor.apply_chat_template(filled, add_generation_prompt=True, return_tensors="pt")
        tensors = {key: value for key, value in inputs.items() if isinstance(value, torch.Tensor)}
        return ModelBatch(tensors, self._chunk_layout(clips), self.decoder_layout(tensors["input_ids"]))
