"""The demo's audio encoder: a converted Whisper encoder, moved into the Qwen2-Audio tower and frozen
(or, at most, its top layer's feed-forward block lightly tuned).

Qwen2-Audio's audio encoder is Whisper's with an average pool before its last layer norm, under the same
module names, so a Whisper encoder's tensors load into it one to one (:func:`transplant_whisper_encoder`).

Frozen, the encoder's output for a training clip never changes, so training computes it once per clip
(:class:`EncoderCache`) instead of once per step. It does so on a short window: the model pads every clip
to 30 s and masks the padding out of the encoder's attention, so the rows of a clip that fits the short
window are the ones the full window gives (``tests/test_demo_model.py`` checks this against the model's own
audio path), at a fraction of the cost. When the top layer's feed-forward block learns, the cache stops
just before it (:func:`top_feed_forward` finishes the tower per step): everything below it, attention
included, stays frozen and cached.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from demo.model import HOP_LENGTH, SAMPLE_RATE
from seen.adapters.qwen2_audio import encoder_attention_mask

WHISPER_ENCODER_PREFIX = "model.encoder."


@dataclass(frozen=True)
class WhisperEncoder:
    """A converted Whisper checkpoint's encoder: its tensors (tower names) and where they came from."""

    state: dict[str, torch.Tensor]
    config: dict[str, Any]
    provenance: dict[str, Any]

    @property
    def dims(self) -> dict[str, int]:
        """The Qwen2-Audio encoder sizes that take these tensors."""
        config = self.config
        return {
            "mel_bins": config["num_mel_bins"],
            "encoder_layers": config["encoder_layers"],
            "encoder_dim": config["d_model"],
            "encoder_ffn": config["encoder_ffn_dim"],
            "encoder_heads": config["encoder_attention_heads"],
        }


def read_whisper_encoder(folder: Path) -> WhisperEncoder:
    """The encoder half of a Whisper folder written by ``seen convert`` (or ``save_pretrained``)."""
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "whisper":
        raise ValueError(f"{folder} holds a {config.get('model_type')!r} checkpoint, not a Whisper one")
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    state = {
        name.removeprefix(WHISPER_ENCODER_PREFIX): tensor
        for name, tensor in tensors.items()
        if name.startswith(WHISPER_ENCODER_PREFIX)
    }
    if not state:
        raise ValueError(f"{weights} has no {WHISPER_ENCODER_PREFIX}* tensors")
    conversion = folder / "conversion.json"
    provenance = {
        "folder": folder.name,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "conversion": json.loads(conversion.read_text()) if conversion.exists() else None,
    }
    return WhisperEncoder(state, config, provenance)


def transplant_whisper_encoder(model: Any, encoder: WhisperEncoder) -> None:
    """Load the Whisper encoder into ``model``'s audio tower (every tensor, strictly) and freeze the tower."""
    tower = model.get_submodule("model.audio_tower")
    dtype = next(tower.parameters()).dtype
    tower.load_state_dict({name: tensor.to(dtype) for name, tensor in encoder.state.items()}, strict=True)
    tower.requires_grad_(False)
    tower.eval()


def unfreeze_top_feed_forward(model: Any) -> list[torch.nn.Parameter]:
    """Let the top encoder layer's feed-forward block (with its layer norm) and the tower's last layer norm
    learn; the parameters that now do."""
    tower = model.get_submodule("model.audio_tower")
    top = tower.layers[-1]
    modules = (top.final_layer_norm, top.fc1, top.fc2, tower.layer_norm)
    parameters = [parameter for module in modules for parameter in module.parameters()]
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


def top_feed_forward(model: Any, states: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tower's work after the cache's stop point (``before_top_feed_forward``): the top layer's
    feed-forward block, the average pool and the last layer norm. Takes (clips x positions x width) and each
    clip's valid positions; gives the rows and each clip's row count (what the tower's output would hold)."""
    tower = model.get_submodule("model.audio_tower")
    top = tower.layers[-1]
    # Position by position, so only the valid positions run it, not the batch's padding;
    # the padding stays zero and pools only into rows past each clip's count.
    valid = torch.arange(states.shape[1])[None, :] < positions[:, None]
    kept = states[valid]
    finished = kept + top.fc2(top.activation_fn(top.fc1(top.final_layer_norm(kept))))
    hidden = states.masked_scatter(valid.unsqueeze(-1), finished)
    pooled = tower.avg_pooler(hidden.transpose(1, 2)).transpose(1, 2)
    return tower.layer_norm(pooled), positions // 2


class _ReachedTopFeedForward(Exception):
    """Stops the cache's forward where its states are taken: the rest of the tower would be wasted work."""

    def __init__(self, states: torch.Tensor) -> None:
        super().__init__("stopped before the top feed-forward block")
        self.states = states


def _stop_before_top_feed_forward(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
    raise _ReachedTopFeedForward(args[0])


class EncoderCache:
    """The frozen tower's output rows for clips of at most ``seconds``, computed on a window of that length.

    With ``before_top_feed_forward`` it gives instead the top layer's input to its feed-forward block,
    one state per position (two per output row), for :func:`top_feed_forward` to finish.
    """

    def __init__(self, model: Any, processor: Any, seconds: int, *, before_top_feed_forward: bool = False) -> None:
        from transformers import WhisperFeatureExtractor
        from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

        tower = model.get_submodule("model.audio_tower")
        frames = round(seconds * SAMPLE_RATE / HOP_LENGTH)
        positions = frames // 2
        if positions > tower.config.max_source_positions:
            raise ValueError(f"a {seconds} s cache window is longer than the model's own")
        config = copy.deepcopy(tower.config)
        config.max_source_positions = positions
        self._tower = Qwen2AudioEncoder(config).to(next(tower.parameters()).dtype)
        state = {name: tensor.clone() for name, tensor in tower.state_dict().items()}
        state["embed_positions.weight"] = state["embed_positions.weight"][:positions]
        self._tower.load_state_dict(state)
        self._tower.requires_grad_(False).eval()
        if before_top_feed_forward:
            self._tower.layers[-1].final_layer_norm.register_forward_pre_hook(_stop_before_top_feed_forward)
        full = processor.feature_extractor
        self._features = WhisperFeatureExtractor(
            feature_size=full.feature_size, sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH, chunk_length=seconds
        )
        # The last few frames of the short window see its edge; a clip has to end before them.
        self._max_samples = seconds * SAMPLE_RATE - 4 * HOP_LENGTH

    @torch.inference_mode()
    def encode(self, clips: Sequence[np.ndarray], batch_size: int = 32) -> list[torch.Tensor]:
        """Per clip, its (rows, encoder width) output, as the model's audio path gives it (before the projector),
        or its (positions, encoder width) states before the top feed-forward block."""
        too_long = [index for index, clip in enumerate(clips) if clip.size > self._max_samples]
        if too_long:
            raise ValueError(f"clips {too_long[:5]} are longer than the cache window allows ({self._max_samples})")
        rows: list[torch.Tensor] = []
        for start in range(0, len(clips), batch_size):
            part = list(clips[start : start + batch_size])
            inputs = self._features(
                part, sampling_rate=SAMPLE_RATE, return_attention_mask=True, padding="max_length", return_tensors="pt"
            )
            features, feature_mask = inputs["input_features"], inputs["attention_mask"]
            positions, row_counts = self._tower._get_feat_extract_output_lengths(feature_mask.sum(-1))
            mask = encoder_attention_mask(self._tower.config, features, feature_mask, features.dtype)
            try:
                states, counts = self._tower(features, attention_mask=mask).last_hidden_state, row_counts
            except _ReachedTopFeedForward as reached:
                states, counts = reached.states, positions
            rows += [state[:count].clone() for state, count in zip(states, counts.tolist(), strict=True)]
        return rows
