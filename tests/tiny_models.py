"""Tiny, random-initialised audio-language checkpoints of real transformers architectures, built offline.

Each ``build_*`` function writes a folder that loads exactly like a hub checkpoint::

    model = transformers.AutoModelForMultimodalLM.from_pretrained(folder)
    processor = transformers.AutoProcessor.from_pretrained(folder)        # Qwen2-Audio (and Voxtral, see below)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)        # all three
    feature_extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)  # all three

Tokenizers are byte level (256 byte symbols, no merges) plus the architecture's special tokens, so any
text round-trips. All numbers below were measured with transformers 5.23.0 / torch 2.13.0 (CPU) on these
tiny models (2 encoder layers, FFN 64 or 128) with two random 16 kHz clips of 1.3 s and 3.1 s
(20800 and 49600 samples); ``tests/test_tiny_models.py`` asserts the shapes, paths, formulas and
padding checks (the small numeric differences quoted below were measured by hand).

Conventions: ``n`` = samples of a clip at 16 kHz; ``L`` = its mel frames (hop 160, so ``L = ceil(n / 160)``
capped at the window); ``V`` = its valid audio-encoder frames; ``N`` = its ``<|AUDIO|>`` placeholder
tokens in ``input_ids``. For the test clips L = (130, 310), V = (65, 155), N = (32, 77) for both Qwen
models. The FFN activation is ``GELUActivation`` (an ``nn.Module`` instance per layer, so forward hooks
work) and it is applied as ``activation_fn(fc1(x))``, so its output has the FFN width in the last dim.
None of the three top-level models has ``audio_tower`` / ``language_model`` attribute aliases: everything
is under ``model.model``; ``model.get_decoder()`` returns ``model.model.language_model``.

Qwen2-Audio (``build_qwen2_audio``; ``Qwen2AudioForConditionalGeneration``)
    1. Audio encoder layers: ``model.model.audio_tower.layers[i]`` (``Qwen2AudioEncoderLayer``); FFN
       activation: ``model.model.audio_tower.layers[i].activation_fn``. LLM decoder layers:
       ``model.model.language_model.layers[i]`` (``Qwen2DecoderLayer``).
    2. activation_fn output: padded ``(B, max_source_positions, encoder_ffn_dim)``, here ``(2, 250, 64)``
       (real checkpoint: ``(B, 1500, 5120)``); every clip is padded to the fixed window. Valid frames per clip:
       ``V = (feature_attention_mask.sum(-1) - 1) // 2 + 1``. Verified: with the padded mel region from
       index ``2V + 1`` on replaced by noise, frames ``[0, V)`` of both layers are bit-identical and frame
       ``V`` changes (the encoder self-attention masks keys ``>= V``). Caveat: the conv stem (k3 s1, then
       k3 s2) makes frame ``V - 1`` read mel frames up to ``2V``, i.e. the first padded mel frame(s), and
       attention spreads that into all valid frames (about 1e-3 when the padding is replaced by noise).
       The processor's padding is deterministic (silence), so this is not a batching effect: a clip alone
       and in a batch of two give the same activations (max diff 7e-8).
    3. Processor (``Qwen2AudioProcessor``; pass ``audio=`` list and ``sampling_rate=16000``) output keys:
       ``input_ids``, ``attention_mask``, ``input_features`` ``(B, 128, 500)`` float32,
       ``feature_attention_mask`` ``(B, 500)`` int32 (``chunk_length * 100`` frames; 3000 for real
       checkpoints). Model forward audio kwargs: ``input_features``, ``feature_attention_mask``.
       ``model.model`` computes the lengths and calls ``audio_tower(input_features, attention_mask=mask4d)``:
       positional ``(B, 128, 500)`` plus ``attention_mask`` of shape ``(B, 1, 250, 250)``: bool with sdpa
       (``mask[:, 0, 0, :].sum(-1) == V``), additive float with eager (``mask[:, 0, 0, :].eq(0).sum(-1) == V``).
       The encoder raises unless the mel length equals ``max_source_positions * 2`` (= 500 here).
    4. Decoder layers return a plain tensor ``(B, T, hidden)``. Audio token id: ``config.audio_token_index``
       (alias ``config.audio_token_id``), top-level config.
    5. The processor expands each ``<|AUDIO|>`` to ``N = (V - 2) // 2 + 1`` (= ``V // 2``) tokens between
       ``<|audio_bos|>`` / ``<|audio_eos|>``; a stride-2 average pool joins encoder frames ``2k, 2k+1``
       into audio token ``k`` (an odd last frame is dropped).

Qwen2.5-Omni thinker (``build_qwen2_5_omni_thinker``; ``Qwen2_5OmniThinkerForConditionalGeneration``)
    ``AutoModelForMultimodalLM`` maps ``qwen2_5_omni_thinker`` to the thinker (through the image-text-to-text
    mapping it includes), so it loads with the Auto class. ``Qwen2_5OmniProcessor`` needs an image
    processor and a torchvision video processor, so the folder holds a tokenizer (with chat template and
    the ``audio_token``/``audio_bos_token``/... attributes the processor reads) and a
    ``WhisperFeatureExtractor(feature_size=128, chunk_length=30, return_attention_mask=True)``;
    ``AutoProcessor.from_pretrained`` on it returns the tokenizer. ``omni_audio_inputs`` does what the
    processor does for audio.
    1. Audio encoder layers: ``model.model.audio_tower.layers[i]`` (``Qwen2_5OmniAudioEncoderLayer``);
       activation: ``model.model.audio_tower.layers[i].activation_fn``. Decoder layers:
       ``model.model.language_model.layers[i]`` (``Qwen2_5OmniDecoderLayer``). (The vision tower is
       ``model.model.visual``.)
    2. activation_fn output: PACKED ``(sum_b V_b, encoder_ffn_dim)``, here ``(220, 64)``: clip 0's frames,
       then clip 1's, no padding. ``V = (feature_attention_mask.sum(-1) - 1) // 2 + 1`` (exact because the
       chunk size ``2 * n_window`` = 200 mel frames is even). Attention is block-diagonal over chunks of
       ``n_window * 2`` = 200 mel frames (100 encoder frames, 2 s), not over whole clips: perturbing clip 1's
       mel frames >= 205 changed exactly its packed frames 100..154 (packed rows 165..219). Padded mel frames
       never reach the encoder (changing them changes nothing, max diff 0.0); a clip alone vs. in a batch:
       max diff 0.0. Padding the features to the longest clip instead of 30 s changes values by ~1e-5 only.
    3. Feature extractor keys: ``input_features`` ``(B, 128, 3000)``, ``attention_mask`` ``(B, 3000)``
       int32; the processor renames the latter ``feature_attention_mask``. Model forward audio kwargs:
       ``input_features``, ``feature_attention_mask`` (or ``audio_feature_lengths``). ``model.model`` packs
       the valid frames and calls ``audio_tower(input_features=(128, sum_b L_b), feature_lens=L,
       aftercnn_lens=V)``: the first argument is positional, ``feature_lens`` and ``aftercnn_lens`` (both
       ``(B,)`` long) are keyword arguments, so a ``with_kwargs=True`` forward pre-hook reads ``V`` directly
       from ``kwargs["aftercnn_lens"]`` (the split sizes of the packed activation).
    4. Decoder layers return a plain tensor. Audio token id: ``config.audio_token_index`` (alias
       ``audio_token_id``); also ``audio_start_token_id`` / ``audio_end_token_id`` (``<|audio_bos|>`` /
       ``<|audio_eos|>``). The config also needs ``vision_start_token_id``: ``get_rope_index`` reads it on
       every forward with ``input_ids`` and ``attention_mask``, and the config class does not declare it (the
       real checkpoint's ``thinker_config`` has it).
    5. ``N = (V - 2) // 2 + 1`` per clip, same as Qwen2-Audio; the pool pairs never straddle chunks.

Voxtral (``build_voxtral``; ``VoxtralForConditionalGeneration``)
    ``VoxtralProcessor``/``MistralCommonBackend`` need ``mistral-common``, which is NOT installed:
    ``pip install "mistral-common[audio]"`` pulls no torch/torchvision, but it pins ``numpy<2.4`` on
    Python <= 3.12 (it would downgrade numpy 2.4.6 to 2.3.5) and installs pillow (which also turns on
    transformers' PIL image processors), so it was only tried in an isolated ``--target`` directory. The
    folder holds a hand-written ``tekken.json`` (v7, 40 special tokens with ``[AUDIO]`` = 24 and
    ``[BEGIN_AUDIO]`` = 25 as in the real file, 256 byte tokens, an ``audio`` section) and a
    ``WhisperFeatureExtractor(feature_size=128)``. Without mistral-common, ``AutoTokenizer`` converts
    ``tekken.json`` into a ``TokenizersBackend`` and ``AutoProcessor`` returns a ``VoxtralProcessor`` whose
    ``apply_chat_template`` cannot handle audio, so ``voxtral_audio_inputs`` builds the inputs. With
    mistral-common (checked through ``PYTHONPATH``), ``AutoProcessor`` gives ``VoxtralProcessor`` +
    ``MistralCommonBackend``, and ``apply_chat_template`` on audio (given as ``path``/``url``/``base64``,
    not arrays) produces exactly the same ``input_ids`` and ``input_features``
    (``test_voxtral_processor_matches_manual_inputs``, skipped when mistral-common is missing).
    ``max_source_positions`` can be shortened: ``build_voxtral(chunk_seconds=c)`` gives a ``c``-second
    window (default 30 = the real one). ``VoxtralProcessor`` hard-codes ``pad_to_multiple_of=480000`` and
    ``max_source_positions=3000`` (mel frames) in its class defaults, which are not saved, so with ``c != 30``
    pass
    ``processor_kwargs={"audio_kwargs": {"pad_to_multiple_of": 16000 * c, "max_source_positions": 100 * c}}``.
    The tokenizer side follows ``chunk_length_s`` in ``tekken.json``.
    1. Audio encoder layers: ``model.model.audio_tower.layers[i]`` (``VoxtralEncoderLayer``); activation:
       ``model.model.audio_tower.layers[i].activation_fn``. Decoder layers:
       ``model.model.language_model.layers[i]`` (``LlamaDecoderLayer``).
    2. activation_fn output: per CHUNK ``(total_chunks, 50 * c, intermediate_size)``, e.g. ``(2, 1500, 128)``
       for c = 30 (real: ``(chunks, 1500, 5120)``). Each clip is zero-padded to a multiple of ``c`` seconds
       and split into chunks, which are stacked along dim 0, so dim 0 counts chunks, not clips (c = 2: the
       3.1 s clip gives 2 chunks and ``input_features`` is ``(3, 128, 200)``). There is NO attention mask:
       every frame attends to the padding, so changing the padded mel region changes all frames, including
       the ones that cover real audio. Frames covering real audio in chunk j of a clip: about
       ``(m_j - 1) // 2 + 1`` with ``m_j = ceil(min(n - j * 16000 * c, 16000 * c) / 160)``, but the model
       treats all ``50 * c`` frames as valid. There is no ``feature_attention_mask``; lengths must come from
       the raw sample counts. Clips are featurised one by one and chunks are encoded independently, so a
       clip's encoder output does not depend on the rest of the batch.
    3. Processor / ``voxtral_audio_inputs`` keys: ``input_ids``, ``attention_mask`` (left padding with
       ``<pad>`` = 11), ``input_features`` ``(total_chunks, 128, 100 * c)``. Model forward audio kwarg:
       ``input_features`` only. ``audio_tower(input_features, return_dict=True)``: one positional tensor;
       no lengths reach it.
    4. Decoder layers return a plain tensor. Audio token id: ``config.audio_token_id`` (24;
       ``VoxtralProcessor`` hard-codes 24).
    5. Per clip: ``[BEGIN_AUDIO]`` followed by ``N = n_chunks * c * 25 / 2`` ``[AUDIO]`` tokens (375 per 30 s
       chunk, whatever the real duration); the encoder output ``(chunks, 50 c, d)`` is reshaped to
       ``(-1, 4 d)``, so audio token k = encoder frames ``4k .. 4k + 3``. Prompt layout:
       ``<s>[INST][BEGIN_AUDIO][AUDIO]*N<question>[/INST]``.

In ``generate`` the audio tower runs once (prefill) for all three; decode steps only run the LLM.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from demo.model import SPECIAL_TOKENS, byte_level_tokenizer, qwen2_audio_chat_template

SAMPLING_RATE = 16000
HOP_LENGTH = 160

# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def _init_model(model_class: Any, config: Any, seed: int) -> Any:
    """Instantiate ``model_class(config)`` with weights drawn from ``seed``, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config).eval()


def encoder_frames(mel_lengths: torch.Tensor) -> torch.Tensor:
    """Valid audio-encoder frames ``V`` for ``L`` valid mel frames (Whisper-style stride-2 conv stem)."""
    return (mel_lengths - 1) // 2 + 1


def qwen_audio_tokens(mel_lengths: torch.Tensor) -> torch.Tensor:
    """``<|AUDIO|>`` tokens per clip for Qwen2-Audio / Qwen2.5-Omni: ``(V - 2) // 2 + 1``."""
    return (encoder_frames(mel_lengths) - 2) // 2 + 1


# --------------------------------------------------------------------------------------------------
# Qwen2-Audio
# --------------------------------------------------------------------------------------------------

QWEN2_AUDIO_SPECIAL_TOKENS = SPECIAL_TOKENS

#: Qwen2-Audio-7B-Instruct's template, with its default system prompt.
QWEN2_AUDIO_CHAT_TEMPLATE = qwen2_audio_chat_template("You are a helpful assistant.")


def build_qwen2_audio(
    folder: Path,
    *,
    seed: int = 0,
    window_seconds: int = 5,
    head_dim: int = 16,
    text_layers: int = 2,
    text_heads: int = 2,
) -> Path:
    """Write a tiny ``Qwen2AudioForConditionalGeneration`` with its ``Qwen2AudioProcessor`` to ``folder``.

    Audio encoder: 2 layers, d_model 32, FFN 64, 128 mel bins, by default a 5 s window (``max_source_positions=250``,
    feature extractor ``chunk_length=5``: 500 mel frames, 250 encoder frames, at most 125 audio tokens).
    Text model: Qwen2 with 2 layers, by default hidden 32 (2 heads of 16), vocabulary 272 (262 tokenizer
    entries). ``build_qwen2_audio(folder, window_seconds=30, head_dim=64)`` is the variant vLLM can serve
    (``tests/test_vllm_engine.py``). Generation stops at
    ``<|im_end|>`` or ``<|endoftext|>``.

    Args:
        folder: Output directory (created if needed).
        seed: Seed for the random weights.
        window_seconds: The audio window (feature extractor ``chunk_length``; ``max_source_positions`` follows).
            vLLM's Qwen2-Audio needs the real 30 s (3000 mel frames).
        head_dim: The text model's attention head size (hidden ``text_heads * head_dim``, FFN twice that).
            vLLM's CPU attention takes 32, 64 or 128, not the default 16.
        text_layers: The text model's layers (larger for benchmarks whose language model must dominate).
        text_heads: The text model's attention heads (a quarter of them, at least one, for keys and values).

    Returns:
        ``folder`` as a ``Path``.
    """
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    folder = Path(folder)
    tokenizer = byte_level_tokenizer(
        QWEN2_AUDIO_SPECIAL_TOKENS,
        {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"},
        QWEN2_AUDIO_CHAT_TEMPLATE,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN2_AUDIO_SPECIAL_TOKENS}
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=SAMPLING_RATE, hop_length=HOP_LENGTH, chunk_length=window_seconds
    )
    processor = Qwen2AudioProcessor(
        feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=QWEN2_AUDIO_CHAT_TEMPLATE
    )
    stop = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    config = Qwen2AudioConfig(
        audio_config=Qwen2AudioEncoderConfig(
            num_mel_bins=128,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            d_model=32,
            # The encoder requires exactly max_source_positions * 2 mel frames (conv1 stride 1, conv2 stride 2).
            max_source_positions=window_seconds * SAMPLING_RATE // HOP_LENGTH // 2,
        ),
        text_config=Qwen2Config(
            vocab_size=272,
            hidden_size=text_heads * head_dim,
            intermediate_size=2 * text_heads * head_dim,
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads,
            num_key_value_heads=max(1, text_heads // 4),
            max_position_embeddings=4096,
            bos_token_id=None,
            eos_token_id=stop,
            pad_token_id=ids["<|endoftext|>"],
            tie_word_embeddings=False,
        ),
        audio_token_index=ids["<|AUDIO|>"],
    )
    model = _init_model(Qwen2AudioForConditionalGeneration, config, seed)
    model.generation_config.eos_token_id = stop
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(folder)
    _qwen2_audio_hub_keys(folder)
    processor.save_pretrained(folder)
    return folder


def _qwen2_audio_hub_keys(folder: Path) -> None:
    """Store the text model's weights under the released checkpoint's names (``language_model.model.*``).

    transformers 5.19 (the range vLLM 0.32 pins) saves them as ``language_model.model.model.*``: it reloads
    that itself, but vLLM cannot; 5.23 and later save the released names, which every version loads.
    """
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(path)
    doubled = "language_model.model.model."
    if any(name.startswith(doubled) for name in weights):
        renamed = {name.replace(doubled, "language_model.model.", 1): value for name, value in weights.items()}
        save_file(renamed, path, metadata={"format": "pt"})


# --------------------------------------------------------------------------------------------------
# Qwen2.5-Omni thinker
# --------------------------------------------------------------------------------------------------

QWEN2_5_OMNI_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
)

#: Audio/text subset of Qwen2.5-Omni's template (the real one also renders images and videos).
QWEN2_5_OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)


def build_qwen2_5_omni_thinker(folder: Path, *, seed: int = 0) -> Path:
    """Write a tiny ``Qwen2_5OmniThinkerForConditionalGeneration`` with tokenizer and feature extractor.

    Audio encoder: 2 layers, d_model 32, FFN 64, 128 mel bins, ``n_window=100`` (2 s attention chunks, as
    in the real model). Vision encoder: 1 block, hidden 16 (required by the class, unused). Text model:
    2 layers, hidden 32, vocabulary 272, M-RoPE sections (2, 3, 3). The feature extractor is the real one's
    (30 s, ``return_attention_mask=True``); no processor is saved because ``Qwen2_5OmniProcessor`` needs
    torchvision. Use :func:`omni_audio_inputs` to build model inputs.

    Args:
        folder: Output directory (created if needed).
        seed: Seed for the random weights.

    Returns:
        ``folder`` as a ``Path``.
    """
    from transformers import (
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    folder = Path(folder)
    tokenizer = byte_level_tokenizer(
        QWEN2_5_OMNI_SPECIAL_TOKENS,
        {
            "audio_token": "<|AUDIO|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
            "image_token": "<|IMAGE|>",
            "video_token": "<|VIDEO|>",
            "vision_bos_token": "<|vision_bos|>",
            "vision_eos_token": "<|vision_eos|>",
        },
        QWEN2_5_OMNI_CHAT_TEMPLATE,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN2_5_OMNI_SPECIAL_TOKENS}
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=SAMPLING_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=30,
        return_attention_mask=True,
    )
    stop = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    # Not declared by the config class, but present in the real checkpoint's thinker_config and read by
    # get_rope_index on every forward that has input_ids and attention_mask.
    vision_ids: dict[str, Any] = {
        "vision_start_token_id": ids["<|vision_bos|>"],
        "vision_end_token_id": ids["<|vision_eos|>"],
    }
    config = Qwen2_5OmniThinkerConfig(
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "d_model": 32,
            "max_source_positions": 1500,
            "n_window": 100,
            "output_dim": 32,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": 32,
            "fullatt_block_indexes": [0],
        },
        text_config={
            "vocab_size": 272,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            "eos_token_id": stop,
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": False,
        },
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        user_token_id=tokenizer.convert_tokens_to_ids("u"),
        **vision_ids,
    )
    model = _init_model(Qwen2_5OmniThinkerForConditionalGeneration, config, seed)
    model.generation_config.eos_token_id = stop
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    feature_extractor.save_pretrained(folder)
    return folder


def omni_audio_inputs(
    tokenizer: Any, feature_extractor: Any, texts: Sequence[str], clips: Sequence[np.ndarray]
) -> dict[str, torch.Tensor]:
    """Do what ``Qwen2_5OmniProcessor`` does for text + audio (without needing torchvision).

    Each ``<|AUDIO|>`` in ``texts`` (one per clip, in order) is expanded to :func:`qwen_audio_tokens` copies;
    the features are padded to the extractor's window, and its ``attention_mask`` is returned as
    ``feature_attention_mask``.

    Returns:
        ``input_ids``, ``attention_mask``, ``input_features`` and ``feature_attention_mask`` tensors.
    """
    features = feature_extractor(
        list(clips),
        sampling_rate=SAMPLING_RATE,
        padding="max_length",
        return_attention_mask=True,
        return_tensors="pt",
    )
    counts = iter(qwen_audio_tokens(features["attention_mask"].sum(-1)).tolist())
    audio_token = tokenizer.audio_token
    expanded = []
    for text in texts:
        pieces = text.split(audio_token)
        out = pieces[0]
        for piece in pieces[1:]:
            out += audio_token * next(counts) + piece
        expanded.append(out)
    if next(counts, None) is not None:
        raise ValueError("more clips than audio placeholders in texts")
    encoded = tokenizer(expanded, padding=True, return_tensors="pt")
    return {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "input_features": features["input_features"],
        "feature_attention_mask": features["attention_mask"],
    }


# --------------------------------------------------------------------------------------------------
# Voxtral
# --------------------------------------------------------------------------------------------------

#: Tekken pre-tokenisation regex (Mistral NeMo / Voxtral).
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Special-token ranks as in Voxtral's tekken.json (the rest are ``<SPECIAL_i>`` fillers).
MISTRAL_SPECIAL_TOKENS = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    3: "[INST]",
    4: "[/INST]",
    5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]",
    8: "[/TOOL_RESULTS]",
    9: "[TOOL_CALLS]",
    10: "[IMG]",
    11: "<pad>",
    12: "[IMG_BREAK]",
    13: "[IMG_END]",
    14: "[PREFIX]",
    15: "[MIDDLE]",
    16: "[SUFFIX]",
    17: "[SYSTEM_PROMPT]",
    18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]",
    24: "[AUDIO]",
    25: "[BEGIN_AUDIO]",
    32: "[ARGS]",
    33: "[CALL_ID]",
    34: "[TRANSCRIBE]",
}
NUM_MISTRAL_SPECIAL_TOKENS = 40
VOXTRAL_BOS, VOXTRAL_EOS, VOXTRAL_INST, VOXTRAL_END_INST, VOXTRAL_PAD = 1, 2, 3, 4, 11
VOXTRAL_AUDIO, VOXTRAL_BEGIN_AUDIO = 24, 25
#: Mel frames per audio token: 16000 / 12.5 Hz / hop 160 (= 4 encoder frames stacked by the projector).
VOXTRAL_MEL_FRAMES_PER_TOKEN = 8


def _write_tekken(path: Path, *, chunk_length_s: float) -> None:
    """Write a minimal Tekken v7 tokenizer file: 40 special tokens, 256 byte tokens, an audio section."""
    special_tokens = [
        {"rank": rank, "token_str": MISTRAL_SPECIAL_TOKENS.get(rank, f"<SPECIAL_{rank}>"), "is_control": True}
        for rank in range(NUM_MISTRAL_SPECIAL_TOKENS)
    ]
    vocab = []
    for b in range(256):
        char = chr(b)
        vocab.append(
            {
                "rank": b,
                "token_bytes": base64.b64encode(bytes([b])).decode("ascii"),
                "token_str": char if b < 128 and char.isprintable() else None,
            }
        )
    data = {
        "config": {
            "pattern": TEKKEN_PATTERN,
            "num_vocab_tokens": 256,
            "default_vocab_size": 256 + NUM_MISTRAL_SPECIAL_TOKENS,
            "default_num_special_tokens": NUM_MISTRAL_SPECIAL_TOKENS,
            "version": "v7",
        },
        "vocab": vocab,
        "special_tokens": special_tokens,
        "audio": {
            "sampling_rate": SAMPLING_RATE,
            "frame_rate": 12.5,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": HOP_LENGTH, "window_size": 400},
            "chunk_length_s": chunk_length_s,
        },
    }
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def build_voxtral(folder: Path, *, seed: int = 0, chunk_seconds: int = 30) -> Path:
    """Write a tiny ``VoxtralForConditionalGeneration`` with ``tekken.json`` and a Whisper feature extractor.

    Audio encoder: 2 layers, hidden 32, FFN 128 (the projector stacks 4 frames, so FFN must be 4x hidden),
    128 mel bins, a ``chunk_seconds`` window (``max_source_positions = 50 * chunk_seconds``). Text model:
    Llama with 2 layers, hidden 32, vocabulary 296 = 40 special + 256 bytes.

    Args:
        folder: Output directory (created if needed).
        seed: Seed for the random weights.
        chunk_seconds: Audio chunk length in seconds; 30 matches real checkpoints (and ``VoxtralProcessor``'s
            hard-coded defaults). Must be even so that a chunk holds a whole number of audio tokens.

    Returns:
        ``folder`` as a ``Path``.
    """
    from transformers import (
        VoxtralConfig,
        VoxtralEncoderConfig,
        VoxtralForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    if chunk_seconds <= 0 or chunk_seconds % 2:
        raise ValueError(f"chunk_seconds must be a positive even number, got {chunk_seconds}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mel_frames = chunk_seconds * SAMPLING_RATE // HOP_LENGTH
    config = VoxtralConfig(
        audio_config=VoxtralEncoderConfig(
            hidden_size=32,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_mel_bins=128,
            max_source_positions=mel_frames // 2,
        ),
        text_config={
            "model_type": "llama",
            "vocab_size": 256 + NUM_MISTRAL_SPECIAL_TOKENS,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 8192,
            "bos_token_id": VOXTRAL_BOS,
            "eos_token_id": VOXTRAL_EOS,
            "pad_token_id": VOXTRAL_PAD,
        },
        audio_token_id=VOXTRAL_AUDIO,
    )
    model = _init_model(VoxtralForConditionalGeneration, config, seed)
    model.generation_config.bos_token_id = VOXTRAL_BOS
    model.generation_config.eos_token_id = VOXTRAL_EOS
    model.generation_config.pad_token_id = VOXTRAL_PAD
    model.save_pretrained(folder)
    WhisperFeatureExtractor(
        feature_size=128, sampling_rate=SAMPLING_RATE, hop_length=HOP_LENGTH, chunk_length=chunk_seconds
    ).save_pretrained(folder)
    _write_tekken(folder / "tekken.json", chunk_length_s=float(chunk_seconds))
    return folder


def voxtral_audio_inputs(
    tokenizer: Any, feature_extractor: Any, clips: Sequence[np.ndarray], question: str
) -> dict[str, torch.Tensor]:
    """Build what ``VoxtralProcessor.apply_chat_template`` gives for one ``[audio, text]`` user turn per clip.

    Token layout (as produced by mistral-common): ``<s>[INST][BEGIN_AUDIO][AUDIO]*N<question>[/INST]``, left
    padded with ``<pad>``; each clip is zero-padded to a multiple of the extractor's ``chunk_length`` and its
    mel chunks are stacked along dim 0 of ``input_features``.

    Returns:
        ``input_ids``, ``attention_mask`` and ``input_features`` tensors.
    """
    chunk_samples = feature_extractor.n_samples
    chunk_frames = feature_extractor.nb_max_frames
    question_ids = list(tokenizer(question, add_special_tokens=False)["input_ids"])
    rows, features = [], []
    for clip in clips:
        n_chunks = max(1, math.ceil(len(clip) / chunk_samples))
        n_tokens = n_chunks * chunk_frames // VOXTRAL_MEL_FRAMES_PER_TOKEN
        rows.append(
            [VOXTRAL_BOS, VOXTRAL_INST, VOXTRAL_BEGIN_AUDIO]
            + [VOXTRAL_AUDIO] * n_tokens
            + question_ids
            + [VOXTRAL_END_INST]
        )
        mel = feature_extractor(
            clip,
            sampling_rate=SAMPLING_RATE,
            padding=True,
            truncation=False,
            pad_to_multiple_of=chunk_samples,
            return_tensors="pt",
        )["input_features"]
        features.append(mel.reshape(feature_extractor.feature_size, -1, chunk_frames).transpose(0, 1))
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([[VOXTRAL_PAD] * (width - len(row)) + row for row in rows])
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "input_features": torch.cat(features)}
