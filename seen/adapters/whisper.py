"""Whisper (``WhisperForConditionalGeneration``): a speech recognizer, not a chat model.

The encoder always runs on a 30 s window of log-mel frames (3000 mel frames, 1500 encoder frames):
clip b's audio covers ``(mel frames of b - 1) // 2 + 1`` encoder frames and the rest is the padding
the feature extractor adds. Whisper's encoder attends to that padding (it has no attention mask),
but every clip is padded to the window on its own, so a clip's activations do not depend on the
other clips of its batch; the padding frames are kept out of SEE by the frame layout.

The decoder's prompt is fixed by the task, not by text: ``<|startoftranscript|>`` then, on
multilingual checkpoints, the language and ``<|transcribe|>`` / ``<|translate|>``, then
``<|notimestamps|>``. Text parts of a conversation are ignored here; the service refuses chat
requests for this architecture (:attr:`AudioLM.answers_chat`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForSpeechSeq2Seq

from seen.adapters.base import AudioLM, Clip, Message, ModelBatch, SpeechTask
from seen.bundle import ModelIdentity
from seen.hooks import SiteKind
from seen.see import FrameLayout


class Whisper(AudioLM):
    architecture = "WhisperForConditionalGeneration"
    auto_model = AutoModelForSpeechSeq2Seq
    encoder_layers_path = "model.encoder.layers"
    decoder_layers_path = "model.decoder.layers"
    answers_chat = False

    @property
    def audio_config(self) -> Any:
        return self.model.config

    @property
    def text_config(self) -> Any:
        return self.model.config

    @property
    def multilingual(self) -> bool:
        return bool(getattr(self.model.generation_config, "is_multilingual", False))

    @property
    def languages(self) -> list[str]:
        """Language codes the checkpoint can be told to use (empty for English-only checkpoints)."""
        lang_to_id = getattr(self.model.generation_config, "lang_to_id", None) or {}
        return sorted(token.strip("<|>") for token in lang_to_id)

    def identity(self) -> ModelIdentity:
        config = self.model.config
        fingerprint = {
            "encoder_layers": int(config.encoder_layers),
            "encoder_d_model": int(config.d_model),
            "encoder_ffn_dim": int(config.encoder_ffn_dim),
            "num_mel_bins": int(config.num_mel_bins),
            "text_layers": int(config.decoder_layers),
            "text_hidden_size": int(config.d_model),
        }
        return ModelIdentity(self.architecture, fingerprint, self.source)

    def check_site(self, site: SiteKind) -> None:
        if not site.in_encoder:
            raise ValueError(
                f"Whisper has no audio positions in its decoder, so the {site.value} site does not apply; "
                "use an encoder site"
            )

    def site_path(self, site: SiteKind, layer: int) -> str:
        self.check_site(site)
        return super().site_path(site, layer)

    # -- audio -------------------------------------------------------------------------------------------

    def _layout(self, feature_mask: torch.Tensor) -> FrameLayout:
        valid = (feature_mask.sum(-1) - 1) // 2 + 1
        return FrameLayout.padded(valid, int(self.model.config.max_source_positions))

    def _encoder_batch(self, clips: Sequence[Clip]) -> ModelBatch:
        inputs = self.window_features(clips)
        return ModelBatch(inputs, self._layout(inputs["feature_attention_mask"]))

    def run_encoder(self, batch: ModelBatch) -> Any:
        return self.model.get_submodule("model.encoder")(batch.inputs["input_features"])

    def _audio_embeddings(self, batch: ModelBatch) -> list[torch.Tensor]:
        return list(self.run_encoder(batch).last_hidden_state)  # the decoder reads the whole window

    def run_to_site(self, batch: ModelBatch, site: SiteKind) -> None:
        self.check_site(site)
        self.run_encoder(batch)

    # -- transcription -----------------------------------------------------------------------------------

    def check_task(self, task: SpeechTask) -> None:
        """Refuse what the checkpoint cannot do, before any work is queued."""
        if task.task == "translate" and not self.multilingual:
            raise ValueError("this Whisper checkpoint is English-only: it transcribes English and cannot translate")
        if task.language is not None and self.multilingual and task.language not in self.languages:
            raise ValueError(
                f"language {task.language!r} is not one this checkpoint knows; known: {', '.join(self.languages)}"
            )
        if task.language is not None and not self.multilingual and task.language != "en":
            raise ValueError(f"this Whisper checkpoint is English-only; language {task.language!r} is not supported")

    def _chat_batch(
        self, conversations: Sequence[Sequence[Message]], clips: Sequence[Clip], speech: SpeechTask | None = None
    ) -> ModelBatch:
        if len(clips) != len(conversations):
            raise ValueError(
                f"Whisper transcribes one clip per request; got {len(clips)} clips for {len(conversations)} requests"
            )
        task = speech or SpeechTask()
        self.check_task(task)
        inputs = self.window_features(clips)
        return ModelBatch(inputs, self._layout(inputs["feature_attention_mask"]), speech=task)

    def prompt_length(self, batch: ModelBatch) -> int:
        """<|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>."""
        return 4 if self.multilingual else 2

    def prompt_tokens(self, batch: ModelBatch) -> list[int]:
        return [self.prompt_length(batch)] * int(batch.inputs["input_features"].shape[0])

    @property
    def max_new_tokens(self) -> int:
        return int(self.model.config.max_target_positions) - 4

    def generate(self, batch: ModelBatch, **generation: Any) -> torch.Tensor:
        """New tokens only; ``max_new_tokens`` is capped so that prompt plus answer fit the decoder's 448 positions."""
        task = batch.speech or SpeechTask()
        generation["max_new_tokens"] = min(
            int(generation.get("max_new_tokens", self.max_new_tokens)), self.max_new_tokens
        )
        options: dict[str, Any] = {"return_timestamps": False}
        if self.multilingual:
            options.update(task=task.task, language=task.language)
        return self.model.generate(input_features=batch.inputs["input_features"], **options, **generation)
