"""Tests for the tiny offline checkpoints in ``tests/tiny_models.py``.

Each test builds a checkpoint into ``tmp_path``, loads it back through the Auto classes, runs one forward
pass on two clips of different lengths and a 3-token ``generate``, and checks the shapes, module paths and
valid-length formulas documented in ``tests/tiny_models.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoFeatureExtractor, AutoModelForMultimodalLM, AutoProcessor, AutoTokenizer

from tests.tiny_models import (
    SAMPLING_RATE,
    VOXTRAL_AUDIO,
    VOXTRAL_BEGIN_AUDIO,
    build_qwen2_5_omni_thinker,
    build_qwen2_audio,
    build_voxtral,
    encoder_frames,
    omni_audio_inputs,
    qwen_audio_tokens,
    voxtral_audio_inputs,
)

CLIP_SECONDS = (1.3, 3.1)
MEL_FRAMES = [130, 310]  # ceil(samples / 160)
ENCODER_FRAMES = [65, 155]  # (L - 1) // 2 + 1
QWEN_AUDIO_TOKENS = [32, 77]  # (V - 2) // 2 + 1
QUESTION = "What is this sound?"
CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": [{"type": "audio", "audio": "clip"}, {"type": "text", "text": QUESTION}]}
]


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(round(SAMPLING_RATE * s))).astype(np.float32) for s in CLIP_SECONDS]


class Recorder:
    """Forward hooks on every audio FFN activation, the first decoder layer and the audio tower."""

    def __init__(self, model: Any) -> None:
        # Module layout of the transformers installed: towers inside the model (5.20 on) or beside it (before).
        inner = model if hasattr(model, "audio_tower") else model.model
        tower = inner.audio_tower
        text_layers = model.model.layers if hasattr(model, "audio_tower") else model.model.language_model.layers
        self.activations: list[torch.Tensor] = []
        self.decoder_outputs: list[Any] = []
        self.tower_calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        for layer in tower.layers:
            layer.activation_fn.register_forward_hook(lambda _m, _i, out: self.activations.append(out.detach()))
        text_layers[0].register_forward_hook(lambda _m, _i, out: self.decoder_outputs.append(out))
        tower.register_forward_pre_hook(
            lambda _m, args, kwargs: self.tower_calls.append((args, kwargs)), with_kwargs=True
        )

    def clear(self) -> None:
        self.activations.clear()
        self.decoder_outputs.clear()
        self.tower_calls.clear()


def _run(model: Any, recorder: Recorder, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Forward once and return the activation_fn outputs of all audio layers."""
    recorder.clear()
    with torch.no_grad():
        model(**inputs)
    return list(recorder.activations)


def _generate(model: Any, recorder: Recorder, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    recorder.clear()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)
    assert len(recorder.tower_calls) == 1  # the audio tower only runs on the prefill step
    return out


def test_qwen2_audio(tmp_path: Path, clips: list[np.ndarray]) -> None:
    folder = build_qwen2_audio(tmp_path / "qwen2_audio")
    model = AutoModelForMultimodalLM.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(model).__name__ == "Qwen2AudioForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2AudioProcessor"
    assert type(AutoTokenizer.from_pretrained(folder)).__name__ == "Qwen2Tokenizer"
    assert type(AutoFeatureExtractor.from_pretrained(folder)).__name__ == "WhisperFeatureExtractor"
    assert len(processor.tokenizer) <= model.config.text_config.vocab_size
    audio_id = model.config.audio_token_id
    assert audio_id == model.config.audio_token_index == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")

    text = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n{QUESTION}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    inputs = processor(text=[text, text], audio=clips, sampling_rate=SAMPLING_RATE, padding=True, return_tensors="pt")
    assert set(inputs) == {"input_ids", "attention_mask", "input_features", "feature_attention_mask"}
    assert inputs["input_features"].shape == (2, 128, 500)
    assert inputs["feature_attention_mask"].shape == (2, 500)
    mel = inputs["feature_attention_mask"].sum(-1)
    valid = encoder_frames(mel)
    assert mel.tolist() == MEL_FRAMES and valid.tolist() == ENCODER_FRAMES
    assert (inputs["input_ids"] == audio_id).sum(-1).tolist() == qwen_audio_tokens(mel).tolist() == QWEN_AUDIO_TOKENS
    inputs = dict(inputs)

    recorder = Recorder(model)
    with torch.no_grad():
        logits = model(**inputs).logits
    seq = inputs["input_ids"].shape[1]
    assert logits.shape == (2, seq, 272)
    activations = list(recorder.activations)
    assert [a.shape for a in activations] == [(2, 250, 64)] * 2  # padded (B, max_source_positions, ffn)
    (decoder_out,) = recorder.decoder_outputs
    assert isinstance(decoder_out, torch.Tensor) and decoder_out.shape == (2, seq, 32)
    ((args, kwargs),) = recorder.tower_calls
    assert args[0].shape == (2, 128, 500)
    mask = kwargs["attention_mask"]
    assert mask.dtype == torch.bool and mask.shape == (2, 1, 250, 250)
    assert mask[:, 0, 0, :].sum(-1).tolist() == ENCODER_FRAMES

    # Noise in the mel padding beyond every valid frame's conv receptive field (index >= 2V + 1) leaves
    # frames [0, V) bit-identical and changes frame V: the encoder attention masks exactly V frames.
    features = inputs["input_features"].clone()
    for b, v in enumerate(ENCODER_FRAMES):
        features[b, :, 2 * v + 1 :] = 3 * torch.randn_like(features[b, :, 2 * v + 1 :])
    for before, after in zip(activations, _run(model, recorder, {**inputs, "input_features": features}), strict=True):
        diff = (before - after).abs().amax(-1)
        for b, v in enumerate(ENCODER_FRAMES):
            assert diff[b, :v].max() == 0 and diff[b, v] > 0

    _generate(model, recorder, inputs)


def test_qwen2_5_omni_thinker(tmp_path: Path, clips: list[np.ndarray]) -> None:
    folder = build_qwen2_5_omni_thinker(tmp_path / "omni")
    model = AutoModelForMultimodalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    feature_extractor = AutoFeatureExtractor.from_pretrained(folder)
    assert type(model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    assert type(feature_extractor).__name__ == "WhisperFeatureExtractor"
    # No processor_config.json (Qwen2_5OmniProcessor needs torchvision): AutoProcessor falls back to the tokenizer.
    assert type(AutoProcessor.from_pretrained(folder)).__name__ == type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert len(tokenizer) <= model.config.text_config.vocab_size
    audio_id = model.config.audio_token_id
    assert audio_id == model.config.audio_token_index == tokenizer.audio_token_id
    assert model.config.audio_start_token_id == tokenizer.convert_tokens_to_ids("<|audio_bos|>")

    text = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    assert isinstance(text, str)
    assert f"<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>{QUESTION}<|im_end|>\n" in text
    inputs = omni_audio_inputs(tokenizer, feature_extractor, [text, text], clips)
    assert inputs["input_features"].shape == (2, 128, 3000)
    mel = inputs["feature_attention_mask"].sum(-1)
    assert mel.tolist() == MEL_FRAMES and encoder_frames(mel).tolist() == ENCODER_FRAMES
    assert (inputs["input_ids"] == audio_id).sum(-1).tolist() == QWEN_AUDIO_TOKENS

    recorder = Recorder(model)
    with torch.no_grad():
        logits = model(**inputs).logits
    seq = inputs["input_ids"].shape[1]
    assert logits.shape == (2, seq, 272)
    activations = list(recorder.activations)
    total = sum(ENCODER_FRAMES)
    assert [a.shape for a in activations] == [(total, 64)] * 2  # packed (sum of valid frames, ffn)
    (decoder_out,) = recorder.decoder_outputs
    assert isinstance(decoder_out, torch.Tensor) and decoder_out.shape == (2, seq, 32)
    ((args, kwargs),) = recorder.tower_calls
    assert args[0].shape == (128, sum(MEL_FRAMES))
    assert kwargs["feature_lens"].tolist() == MEL_FRAMES
    assert kwargs["aftercnn_lens"].tolist() == ENCODER_FRAMES

    # Mel padding never reaches the encoder.
    features = inputs["input_features"].clone()
    for b, frames in enumerate(MEL_FRAMES):
        features[b, :, frames:] = 3 * torch.randn_like(features[b, :, frames:])
    for before, after in zip(activations, _run(model, recorder, {**inputs, "input_features": features}), strict=True):
        assert torch.equal(before, after)
    # Attention is local to 200-mel-frame chunks: touching clip 1's second chunk changes only its frames 100+.
    features = inputs["input_features"].clone()
    features[1, :, 205 : MEL_FRAMES[1]] += 1.0
    after = _run(model, recorder, {**inputs, "input_features": features})[-1]
    changed = torch.nonzero((activations[-1] - after).abs().amax(-1) > 0).flatten()
    assert changed.tolist() == list(range(ENCODER_FRAMES[0] + 100, total))

    _generate(model, recorder, inputs)


def _check_voxtral(model: Any, inputs: dict[str, torch.Tensor], clips: list[np.ndarray], chunk_seconds: int) -> None:
    frames = 50 * chunk_seconds
    chunks = [max(1, int(np.ceil(len(c) / (SAMPLING_RATE * chunk_seconds)))) for c in clips]
    assert set(inputs) == {"input_ids", "attention_mask", "input_features"}
    assert inputs["input_features"].shape == (sum(chunks), 128, 2 * frames)
    audio_tokens = [n * frames // 4 for n in chunks]
    assert (inputs["input_ids"] == model.config.audio_token_id).sum(-1).tolist() == audio_tokens
    assert (inputs["input_ids"] == VOXTRAL_BEGIN_AUDIO).sum(-1).tolist() == [1, 1]

    recorder = Recorder(model)
    with torch.no_grad():
        logits = model(**inputs).logits
    seq = inputs["input_ids"].shape[1]
    assert logits.shape == (2, seq, 296)
    activations = list(recorder.activations)
    assert [a.shape for a in activations] == [(sum(chunks), frames, 128)] * 2  # per chunk, padded
    (decoder_out,) = recorder.decoder_outputs
    assert isinstance(decoder_out, torch.Tensor) and decoder_out.shape == (2, seq, 32)
    ((args, kwargs),) = recorder.tower_calls
    assert [a.shape for a in args] == [inputs["input_features"].shape] and set(kwargs) == {"return_dict"}

    # No attention mask: noise in the padding of each clip's first chunk changes its frames covering real audio.
    features = inputs["input_features"].clone()
    first_chunk = np.cumsum([0, *chunks[:-1]])
    mel = [min(len(c), SAMPLING_RATE * chunk_seconds) // 160 for c in clips]
    for row, frames_with_audio in zip(first_chunk, mel, strict=True):
        if frames_with_audio + 3 < 2 * frames:
            features[row, :, frames_with_audio + 3 :] += 3 * torch.randn_like(features[row, :, frames_with_audio + 3 :])
    after = _run(model, recorder, {**inputs, "input_features": features})[-1]
    for row, frames_with_audio in zip(first_chunk, mel, strict=True):
        valid = (frames_with_audio - 1) // 2 + 1
        if frames_with_audio + 3 < 2 * frames:
            assert (activations[-1][row, :valid] - after[row, :valid]).abs().max() > 0

    _generate(model, recorder, inputs)


@pytest.mark.parametrize("chunk_seconds", [30, 2])
def test_voxtral(tmp_path: Path, clips: list[np.ndarray], chunk_seconds: int) -> None:
    folder = build_voxtral(tmp_path / "voxtral", chunk_seconds=chunk_seconds)
    model = AutoModelForMultimodalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    feature_extractor = AutoFeatureExtractor.from_pretrained(folder)
    assert type(model).__name__ == "VoxtralForConditionalGeneration"
    assert type(feature_extractor).__name__ == "WhisperFeatureExtractor"
    assert model.config.audio_token_id == VOXTRAL_AUDIO
    assert tokenizer.convert_ids_to_tokens([1, 11, VOXTRAL_AUDIO, VOXTRAL_BEGIN_AUDIO]) == [
        "<s>",
        "<pad>",
        "[AUDIO]",
        "[BEGIN_AUDIO]",
    ]
    assert len(tokenizer) == model.config.text_config.vocab_size
    inputs = voxtral_audio_inputs(tokenizer, feature_extractor, clips, QUESTION)
    _check_voxtral(model, inputs, clips, chunk_seconds)
