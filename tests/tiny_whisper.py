"""Tiny Whisper checkpoints in CTranslate2's ``WhisperSpec`` format, written offline by the tests.

:func:`build_whisper_ct2` turns a random-initialised transformers ``WhisperForConditionalGeneration``
into a faster-whisper folder (``model.bin``, ``config.json``, ``tokenizer.json``) by fusing the
projections the way CTranslate2's converter does. It is written independently of
``conversion.whisper`` (which splits them again), so a round trip checks the converter against an
independent statement of the format.

Sizes: d_model 64, 2 heads (head_dim 32), 2 encoder and 2 decoder layers, FFN 128, 80 mel bins, the
real 30 s window (1500 encoder frames), 64 decoder positions. ``multilingual`` picks the vocabulary
size OpenAI's rule reads: 51865 entries (multilingual) or 51864 (English-only). The tokenizer is byte
level (ids 0..255) plus Whisper's special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from conversion.ctranslate2 import write_model_bin
from demo.model import byte_level_tokenizer

LANGUAGES = ("en", "de", "fr")
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    *(f"<|{code}|>" for code in LANGUAGES),
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
)


def random_whisper(*, multilingual: bool, seed: int = 0) -> Any:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=51865 if multilingual else 51864,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=64,
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # a random k_proj has no bias to lose; give the fused biases real values
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.02)
    return model


def _fused(state: dict[str, torch.Tensor], prefix: str, names: tuple[str, ...], kind: str) -> torch.Tensor:
    if kind == "weight":
        return torch.cat([state[f"{prefix}.{name}.weight"] for name in names])
    parts = [
        state[f"{prefix}.{name}.bias"]
        if f"{prefix}.{name}.bias" in state
        else torch.zeros_like(state[f"{prefix}.q_proj.bias"])
        for name in names
    ]
    return torch.cat(parts)


def ct2_variables(model: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The ``WhisperSpec`` variables of a transformers Whisper model."""
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    config = model.config
    out: dict[str, torch.Tensor] = {
        "decoder/num_heads": torch.tensor([config.decoder_attention_heads], dtype=torch.int16).reshape(()),
        "encoder/num_heads": torch.tensor([config.encoder_attention_heads], dtype=torch.int16).reshape(()),
    }

    def linear(source: str, target: str) -> None:
        out[f"{target}/weight"] = state[f"{source}.weight"]
        out[f"{target}/bias"] = state[f"{source}.bias"]

    def norm(source: str, target: str) -> None:
        out[f"{target}/gamma"] = state[f"{source}.weight"]
        out[f"{target}/beta"] = state[f"{source}.bias"]

    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    out["encoder/position_encodings/encodings"] = state["model.encoder.embed_positions.weight"]
    for side, count in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        for layer in range(count):
            source, target = f"model.{side}.layers.{layer}", f"{side}/layer_{layer}"
            attn = f"{source}.self_attn"
            out[f"{target}/self_attention/linear_0/weight"] = _fused(
                state, attn, ("q_proj", "k_proj", "v_proj"), "weight"
            )
            out[f"{target}/self_attention/linear_0/bias"] = _fused(state, attn, ("q_proj", "k_proj", "v_proj"), "bias")
            linear(f"{attn}.out_proj", f"{target}/self_attention/linear_1")
            norm(f"{source}.self_attn_layer_norm", f"{target}/self_attention/layer_norm")
            if side == "decoder":
                cross = f"{source}.encoder_attn"
                linear(f"{cross}.q_proj", f"{target}/attention/linear_0")
                out[f"{target}/attention/linear_1/weight"] = _fused(state, cross, ("k_proj", "v_proj"), "weight")
                out[f"{target}/attention/linear_1/bias"] = _fused(state, cross, ("k_proj", "v_proj"), "bias")
                linear(f"{cross}.out_proj", f"{target}/attention/linear_2")
                norm(f"{source}.encoder_attn_layer_norm", f"{target}/attention/layer_norm")
            linear(f"{source}.fc1", f"{target}/ffn/linear_0")
            linear(f"{source}.fc2", f"{target}/ffn/linear_1")
            norm(f"{source}.final_layer_norm", f"{target}/ffn/layer_norm")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
    out["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"]
    out["decoder/position_encodings/encodings"] = state["model.decoder.embed_positions.weight"]
    return {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in sorted(out.items())}


def write_tokenizer(folder: Path) -> dict[str, int]:
    tokenizer = byte_level_tokenizer(SPECIAL_TOKENS, {}, "")
    tokenizer.save_pretrained(folder)
    for extra in ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (folder / extra).unlink(missing_ok=True)
    return {token: int(tokenizer.convert_tokens_to_ids(token)) for token in SPECIAL_TOKENS}


def build_whisper_ct2(
    folder: Path, *, multilingual: bool = False, dtype: torch.dtype = torch.float16, seed: int = 0, parts: int = 1
) -> tuple[Path, Any]:
    """Write a CTranslate2 Whisper folder; returns it and the transformers model it was made from.

    With ``parts`` > 1 the ``model.bin`` bytes are cut into ``model.bin.part1`` ... in the same folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    model = random_whisper(multilingual=multilingual, seed=seed)
    ids = write_tokenizer(folder)
    write_model_bin(
        folder / "model.bin",
        "WhisperSpec",
        3,
        ct2_variables(model, dtype),
        {"decoder/projection/weight": "decoder/embeddings/weight"},
    )
    config = {
        "alignment_heads": [[1, 0], [1, 1]],
        "lang_ids": [ids[f"<|{code}|>"] for code in LANGUAGES],
        "suppress_ids": [ids["<|startoflm|>"], ids["<|startofprev|>"]],
        "suppress_ids_begin": [ids["<|endoftext|>"]],
    }
    (folder / "config.json").write_text(json.dumps(config))
    if parts > 1:
        data = (folder / "model.bin").read_bytes()
        (folder / "model.bin").unlink()
        size = -(-len(data) // parts)
        for index in range(parts):
            (folder / f"model.bin.part{index + 1}").write_bytes(data[index * size : (index + 1) * size])
    return folder, model
