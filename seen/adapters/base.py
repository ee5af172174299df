"""What every audio-language model looks like to the rest of the project.

An adapter knows one architecture: where its layers are, how its processor turns audio and
messages into tensors, and which activation frames belong to which clip. Calibration and the
service only talk to :class:`AudioLM`; supporting another architecture is one subclass in this
folder plus its entry in :data:`seen.adapters.ADAPTERS`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from transformers import AutoModelForMultimodalLM

from seen.bundle import ModelIdentity
from seen.hooks import SiteKind
from seen.see import FrameLayout

Clip = NDArray[np.float32]
Message = Mapping[str, Any]
WORD_JOINER = "\u2060"
"""Invisible, and never part of a special token: inserted into control-token look-alikes in user text."""


@dataclass(frozen=True)
class SpeechTask:
    """What a speech recognizer is asked to do with a clip; audio LMs take the instruction as text instead."""

    task: Literal["transcribe", "translate"] = "transcribe"
    language: str | None = None
    """ISO 639-1 code; None lets a multilingual model detect it."""


@dataclass
class ModelBatch:
    """Model inputs for a batch, with the frame layout of every hook site kind."""

    inputs: dict[str, torch.Tensor]
    encoder_layout: FrameLayout
    decoder_layout: FrameLayout | None = None
    speech: SpeechTask | None = None

    def layout(self, site: SiteKind) -> FrameLayout:
        if site.in_encoder:
            return self.encoder_layout
        if self.decoder_layout is None:
            raise ValueError("this batch has no prompt, so decoder sites have no audio positions")
        return self.decoder_layout

    def to(self, device: torch.device | str, dtype: torch.dtype) -> ModelBatch:
        """Move inputs to the device; floating inputs (features) take the model's dtype."""
        moved = {
            key: value.to(device, dtype) if value.is_floating_point() else value.to(device)
            for key, value in self.inputs.items()
        }
        return ModelBatch(moved, self.encoder_layout, self.decoder_layout, self.speech)


class AudioLM:
    """A loaded audio-language model, its preprocessing, and the architecture's specifics."""

    architecture: ClassVar[str]
    auto_model: ClassVar[Any] = AutoModelForMultimodalLM
    """The transformers auto class that loads this architecture."""
    min_clip_seconds: ClassVar[float] = 0.1
    """Shorter clips are padded with silence to this length: below it the processors give no audio frame."""
    answers_chat: ClassVar[bool] = True
    """False for speech recognizers, which transcribe whatever the question (the service refuses chat for them)."""
    encoder_layers_path: str = "model.audio_tower.layers"
    """Where the encoder's layers are (an adapter may set it per instance for its transformers' layout)."""
    decoder_layers_path: str = "model.language_model.layers"

    def __init__(self, model: nn.Module, processor: Any, tokenizer: Any, feature_extractor: Any, source: str) -> None:
        self.model: Any = model  # a transformers PreTrainedModel; its config attributes are dynamic
        self.processor = processor
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.source = source

    # -- identity and hook sites ------------------------------------------------------------------------

    @property
    def audio_config(self) -> Any:
        return self.model.config.audio_config

    @property
    def text_config(self) -> Any:
        return self.model.config.text_config

    @property
    def context_tokens(self) -> int:
        """Positions the language model was trained for: the most a prompt may hold."""
        config = self.text_config
        return int(getattr(config, "max_position_embeddings", None) or config.max_target_positions)

    def count_text_tokens(self, text: str) -> int:
        """Tokens the text alone takes in a prompt (chat markup and audio tokens are extra)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def identity(self) -> ModelIdentity:
        """The config fields the bases depend on; a bundle is refused when any differs."""
        audio, text = self.audio_config, self.text_config
        fingerprint = {
            "encoder_layers": int(audio.encoder_layers),
            "encoder_d_model": int(audio.d_model),
            "encoder_ffn_dim": int(audio.encoder_ffn_dim),
            "num_mel_bins": int(audio.num_mel_bins),
            "text_layers": int(text.num_hidden_layers),
            "text_hidden_size": int(text.hidden_size),
        }
        return ModelIdentity(self.architecture, fingerprint, self.source)

    @property
    def encoder_path(self) -> str:
        """The audio encoder module (parent of its layers)."""
        return self.encoder_layers_path.rsplit(".", 1)[0]

    def layer_count(self, site: SiteKind) -> int:
        path = self.encoder_layers_path if site.in_encoder else self.decoder_layers_path
        return len(self.model.get_submodule(path))

    def site_path(self, site: SiteKind, layer: int) -> str:
        if site is SiteKind.ENCODER_FFN:
            return f"{self.encoder_layers_path}.{layer}.activation_fn"
        if site is SiteKind.ENCODER_ATTENTION:
            return f"{self.encoder_layers_path}.{layer}.self_attn"
        if site is SiteKind.ENCODER_RESIDUAL:
            return f"{self.encoder_layers_path}.{layer}"
        return f"{self.decoder_layers_path}.{layer}"

    def site_width(self, site: SiteKind) -> int:
        if site is SiteKind.ENCODER_FFN:
            return int(self.audio_config.encoder_ffn_dim)
        if site.in_encoder:
            return int(self.audio_config.d_model)
        return int(self.text_config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- audio -------------------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def max_clip_seconds(self) -> float:
        """Longest clip the encoder sees in one window; longer audio must be refused or chunked."""
        return float(self.feature_extractor.chunk_length)

    def padded_short(self, clips: Sequence[Clip]) -> list[Clip]:
        """Clips shorter than :attr:`min_clip_seconds` followed by silence up to it (a 50 ms clip is valid audio:
        the model hears it, then silence); longer clips unchanged."""
        need = round(self.min_clip_seconds * self.sample_rate)
        return [np.pad(clip, (0, need - len(clip))) if len(clip) < need else clip for clip in clips]

    def check_clips(self, clips: Sequence[Clip]) -> None:
        """Refuse what the feature extractor would otherwise truncate or choke on."""
        for index, clip in enumerate(clips):
            if clip.ndim != 1 or len(clip) == 0:
                raise ValueError(f"clip {index} must be a non-empty mono signal, got shape {tuple(clip.shape)}")
            seconds = len(clip) / self.sample_rate
            if seconds > self.max_clip_seconds:
                raise ValueError(
                    f"clip {index} is {seconds:.2f} s long; this model's audio window is {self.max_clip_seconds:g} s"
                )

    def window_features(self, clips: Sequence[Clip]) -> dict[str, torch.Tensor]:
        """Log-mel features padded to the window, with the mask of real mel frames."""
        features = self.feature_extractor(
            list(clips),
            sampling_rate=self.sample_rate,
            return_attention_mask=True,
            padding="max_length",
            return_tensors="pt",
        )
        return {"input_features": features["input_features"], "feature_attention_mask": features["attention_mask"]}

    def encoder_batch(self, clips: Sequence[Clip]) -> ModelBatch:
        """Features for a batch of clips, ready for :meth:`run_encoder`."""
        if not clips:
            raise ValueError("an encoder batch needs at least one clip")
        self.check_clips(clips)
        return self._encoder_batch(self.padded_short(clips))

    def _encoder_batch(self, clips: Sequence[Clip]) -> ModelBatch:
        raise NotImplementedError

    def run_encoder(self, batch: ModelBatch) -> Any:
        """Run the audio encoder alone (hooks may stop it after the layers they need); returns its output."""
        raise NotImplementedError

    def audio_embeddings(self, batch: ModelBatch) -> list[torch.Tensor]:
        """Per clip, the (tokens, hidden) rows the language model reads in place of the clip's audio.

        The audio half of a request (encoder, then projector) under whatever patch is installed, so with
        SEEN on the rows are already neutralized. An engine that runs the language model itself (vLLM)
        takes them as precomputed audio embeddings. For Whisper they are the encoder states its decoder
        cross-attends to.
        """
        with torch.inference_mode():
            return self._audio_embeddings(batch)

    def _audio_embeddings(self, batch: ModelBatch) -> list[torch.Tensor]:
        raise NotImplementedError

    def run_to_site(self, batch: ModelBatch, site: SiteKind) -> None:
        """Run as far as the given site kind needs: the encoder alone, or the prompt's prefill."""
        if site.in_encoder:
            self.run_encoder(batch)
        else:
            self.model(**batch.inputs, use_cache=False)

    # -- prompts -----------------------------------------------------------------------------------------

    @property
    def audio_token_id(self) -> int:
        return int(self.model.config.audio_token_id)

    @functools.cached_property
    def _special_tokens(self) -> list[str]:
        tokenizer = self.tokenizer
        names = set(getattr(tokenizer, "all_special_tokens", []))
        added = getattr(tokenizer, "added_tokens_decoder", {})
        if callable(added):  # Mistral's tokenizer before transformers 5.20: a method that refuses; specials above
            added = {}
        names |= {token.content for token in added.values() if token.special}
        return sorted((name for name in names if len(name) > 1), key=len, reverse=True)

    def escape_text(self, text: str) -> str:
        """Text in which no special token of the tokenizer can be recognised (``<|im_end|>`` typed by a user
        would otherwise end the turn): a word joiner after each one's first character keeps it plain text."""
        for token in self._special_tokens:
            if token in text:
                text = text.replace(token, token[0] + WORD_JOINER + token[1:])
        return text

    def _escaped(self, conversation: Sequence[Message]) -> list[Message]:
        messages: list[Message] = []
        for message in conversation:
            content = message.get("content")
            if isinstance(content, str):
                content = self.escape_text(content)
            elif isinstance(content, list):
                content = [
                    {**part, "text": self.escape_text(part["text"])} if part.get("type") == "text" else part
                    for part in content
                ]
            messages.append({**message, "content": content})
        return messages

    def chat_batch(
        self, conversations: Sequence[Sequence[Message]], clips: Sequence[Clip], speech: SpeechTask | None = None
    ) -> ModelBatch:
        """Prompts with the model's own chat template; audio parts are ``{"type": "audio"}``.

        ``clips`` are the conversations' audio parts in order, across the batch. ``speech`` is read by
        speech recognizers only (an audio LM's instruction is in the conversation's text). Text is what the
        user typed: special tokens in it are escaped (:meth:`escape_text`), never control tokens.
        """
        self.check_clips(clips)
        escaped = [self._escaped(conversation) for conversation in conversations]
        return self._chat_batch(escaped, self.padded_short(clips), speech)

    def _chat_batch(
        self, conversations: Sequence[Sequence[Message]], clips: Sequence[Clip], speech: SpeechTask | None = None
    ) -> ModelBatch:
        raise NotImplementedError

    def check_task(self, task: SpeechTask) -> None:
        """Refuse a speech task the model cannot do (audio LMs follow their text instruction: nothing to check)."""

    def prompt_length(self, batch: ModelBatch) -> int:
        """Tokens before the first generated one, in the ids generation's stopping criteria see."""
        return int(batch.inputs["input_ids"].shape[1])

    def prompt_tokens(self, batch: ModelBatch) -> list[int]:
        """Prompt tokens per row, for usage accounting."""
        return [int(count) for count in batch.inputs["attention_mask"].sum(dim=1).tolist()]

    def decoder_layout(self, input_ids: torch.Tensor) -> FrameLayout:
        """Audio-token positions of a prompt, by clip: each run of audio tokens is one clip, in order."""
        is_audio = (input_ids == self.audio_token_id).reshape(-1)
        previous = torch.cat([is_audio.new_zeros(1), is_audio[:-1]])
        run_start = is_audio & ~previous
        clip = torch.cumsum(run_start.long(), 0) - 1
        return FrameLayout(torch.where(is_audio, clip, -1), int(run_start.sum()))

    def end_token_ids(self) -> set[int]:
        """Tokens that end an answer: the generation config's end tokens, and its pad token."""
        config = self.model.generation_config
        eos = config.eos_token_id
        ends = {int(t) for t in ([] if eos is None else eos if isinstance(eos, list) else [eos])}
        return ends | {self.pad_token_id()}

    def pad_token_id(self) -> int:
        """The pad token generation fills finished rows with (the first end token when none is set)."""
        config = self.model.generation_config
        if config.pad_token_id is not None:
            return int(config.pad_token_id)
        eos = config.eos_token_id
        ends = [] if eos is None else eos if isinstance(eos, list) else [eos]
        return int(min(ends, default=0))

    def generate(self, batch: ModelBatch, **generation: Any) -> torch.Tensor:
        """New tokens only, (batch, new tokens), for a prompt batch."""
        output = self.model.generate(**batch.inputs, **generation)
        return output[:, batch.inputs["input_ids"].shape[1] :]
