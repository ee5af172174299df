"""The demo model's architecture: a small ``Qwen2AudioForConditionalGeneration`` with a byte-level tokenizer.

Everything is the real transformers classes, saved with ``save_pretrained``, so the demo checkpoint
loads through exactly the path a hub checkpoint takes (``AutoModelForMultimodalLM`` + ``AutoProcessor``).
The audio encoder has the sizes of the Whisper encoder whose weights it carries (:mod:`demo.encoder`)
and Qwen2-Audio's 30 s window; the language model is small, with heads of 64 (what vLLM's CPU attention
takes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

SAMPLE_RATE = 16000
HOP_LENGTH = 160

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")
"""Qwen2-Audio's special tokens, after the 256 byte tokens."""


def qwen2_audio_chat_template(default_system_prompt: str | None = None) -> str:
    """Qwen2-Audio-Instruct's chat template; an audio part is any part whose type is "audio".

    The released template opens with "You are a helpful assistant." when no system message is given;
    the demo model leaves it out (shorter sequences to train on).
    """
    system = (
        "{% if loop.first and message['role'] != 'system' %}"
        f"<|im_start|>system\n{default_system_prompt}<|im_end|>\n"
        "{% endif %}"
        if default_system_prompt
        else ""
    )
    return (
        "{% set audio_count = namespace(value=0) %}"
        "{% for message in messages %}"
        f"{system}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}"
        "{{ message['content'] }}<|im_end|>\n"
        "{% else %}"
        "{% for content in message['content'] %}"
        "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
        "{% set audio_count.value = audio_count.value + 1 %}"
        "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
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


CHAT_TEMPLATE = qwen2_audio_chat_template()
"""The demo model's template: Qwen2-Audio-Instruct's without its default system prompt."""


@dataclass(frozen=True)
class DemoArchitecture:
    """Sizes of the demo model; the defaults are the committed checkpoint's (the encoder's: Whisper tiny.en's)."""

    window_seconds: int = 30
    mel_bins: int = 80
    encoder_layers: int = 4
    encoder_dim: int = 384
    encoder_ffn: int = 1536
    encoder_heads: int = 6
    text_layers: int = 3
    text_dim: int = 256
    text_ffn: int = 768
    text_heads: int = 4

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _bytes_to_unicode() -> dict[int, str]:
    """Map each byte to the printable character byte-level BPE vocabularies use for it (GPT-2's table)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def byte_level_tokenizer(special_tokens: Sequence[str], named: dict[str, str], chat_template: str) -> Any:
    """A ``Qwen2Tokenizer`` with no merges: ids 0..255 are the bytes, then ``special_tokens`` in order.

    Any text round-trips, and no vocabulary has to be downloaded or learned.
    """
    from transformers import Qwen2Tokenizer

    table = _bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    for token in special_tokens:
        vocab.setdefault(token, len(vocab))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=[], padding_side="left", model_max_length=32768, extra_special_tokens=named
    )
    tokenizer.add_special_tokens({"extra_special_tokens": list(special_tokens)}, replace_extra_special_tokens=False)
    tokenizer.chat_template = chat_template
    return tokenizer


def build_processor(arch: DemoArchitecture) -> Any:
    """``Qwen2AudioProcessor``: the byte-level tokenizer and a Whisper feature extractor with the demo's window."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    named = {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
    tokenizer = byte_level_tokenizer(SPECIAL_TOKENS, named, CHAT_TEMPLATE)
    features = WhisperFeatureExtractor(
        feature_size=arch.mel_bins, sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH, chunk_length=arch.window_seconds
    )
    return Qwen2AudioProcessor(feature_extractor=features, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_model(arch: DemoArchitecture, tokenizer: Any) -> Any:
    """A freshly initialised ``Qwen2AudioForConditionalGeneration`` (seed the global RNG first)."""
    from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2AudioForConditionalGeneration, Qwen2Config

    end_of_text, end_of_turn = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    stop = [end_of_turn, end_of_text]
    config = Qwen2AudioConfig(
        audio_config=Qwen2AudioEncoderConfig(
            num_mel_bins=arch.mel_bins,
            encoder_layers=arch.encoder_layers,
            encoder_attention_heads=arch.encoder_heads,
            encoder_ffn_dim=arch.encoder_ffn,
            d_model=arch.encoder_dim,
            # The encoder wants exactly 2 * max_source_positions mel frames (its conv stem has stride 2).
            max_source_positions=arch.window_seconds * SAMPLE_RATE // HOP_LENGTH // 2,
        ),
        text_config=Qwen2Config(
            vocab_size=(len(tokenizer) + 15) // 16 * 16,
            hidden_size=arch.text_dim,
            intermediate_size=arch.text_ffn,
            num_hidden_layers=arch.text_layers,
            num_attention_heads=arch.text_heads,
            num_key_value_heads=arch.text_heads,
            max_position_embeddings=1024,
            bos_token_id=None,
            eos_token_id=stop,
            pad_token_id=end_of_text,
            # Qwen2-Audio keeps its LM head apart from the embeddings; saying so here lets vLLM, which reads
            # this flag, load the head instead of tying it (transformers never tied it).
            tie_word_embeddings=False,
        ),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config.eos_token_id = stop
    model.generation_config.pad_token_id = end_of_text
    model.generation_config.do_sample = False
    return model
