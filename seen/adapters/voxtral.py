"""Voxtral (``VoxtralForConditionalGeneration``).

Audio is padded to a whole number of windows (30 s in the released model) and cut into chunks;
the encoder sees (chunks, window frames, D) with no mask at all, so the valid frames come from
the audio length: a clip of n samples has ``n // hop`` mel frames and ``(mel - 1) // 2 + 1``
encoder frames, spread over its chunks in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from seen.adapters.base import AudioLM, Clip, Message, ModelBatch, SpeechTask
from seen.see import FrameLayout

MEL_FRAMES_PER_TOKEN = 8
"""Two conv strides of 2, then four encoder frames stacked into one projector input."""
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

    def run_encoder(self, batch: ModelBatch) -> Any:
        return self.model.get_audio_features(batch.inputs["input_features"])

    def _audio_embeddings(self, batch: ModelBatch) -> list[torch.Tensor]:
        # every window of a clip is read whole, padding included, as the prompt's audio tokens say
        tokens_per_window = int(self.feature_extractor.nb_max_frames) // MEL_FRAMES_PER_TOKEN
        owners = batch.encoder_layout.frame_clip.view(-1, self._window_frames()).amax(dim=1)
        owners = torch.cummax(owners, 0).values  # an all-padding last window belongs to the clip before it
        windows_per_clip = torch.bincount(owners, minlength=batch.encoder_layout.n_clips)
        projected = self.run_encoder(batch).pooler_output
        return list(projected.split((windows_per_clip * tokens_per_window).tolist()))

    def _token(self, text: str) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(text))

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _chat_batch(
        self, conversations: Sequence[Sequence[Message]], clips: Sequence[Clip], speech: SpeechTask | None = None
    ) -> ModelBatch:
        """Mistral's instruct layout, as mistral-common writes it for Voxtral.

        ``<s>[INST][BEGIN_AUDIO][AUDIO]*n text[/INST]answer</s>[INST]...``, left-padded; a system
        message is put before the first user turn's content. Built here from the tokenizer so that
        serving Voxtral does not depend on mistral-common.
        """
        tokens_per_window = int(self.feature_extractor.nb_max_frames) // MEL_FRAMES_PER_TOKEN
        audio = iter(clips)
        rows = []
        for messages in conversations:
            row = [self._token("<s>")]
            system = "".join(str(m["content"]) for m in messages if m["role"] == "system")
            for message in (m for m in messages if m["role"] != "system"):
                content = message["content"]
                parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
                if message["role"] == "assistant":
                    row += [ids for part in parts for ids in self._encode(part.get("text", ""))]
                    row.append(self._token("</s>"))
                    continue
                row.append(self._token("[INST]"))
                if system:
                    row += self._encode(system + "\n\n")
                    system = ""
                for part in parts:
                    if part.get("type") == "audio":
                        windows = -(-len(next(audio)) // self._window_samples)
                        row += [self._token("[BEGIN_AUDIO]")] + [self.audio_token_id] * windows * tokens_per_window
                    else:
                        row += self._encode(part.get("text", ""))
                row.append(self._token("[/INST]"))
            rows.append(row)
        width = max(len(row) for row in rows)
        pad = self._token("<pad>")
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows])
        attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        layout = FrameLayout(torch.zeros(0, dtype=torch.long), 0)
        if clips:
            encoded = self._encoder_batch(clips)
            inputs["input_features"] = encoded.inputs["input_features"]
            layout = encoded.encoder_layout
        return ModelBatch(inputs, layout, self.decoder_layout(input_ids))
