"""CTranslate2 ``WhisperSpec`` checkpoints (faster-whisper's format) to transformers Whisper folders.

The output loads with ``AutoModelForMultimodalLM`` / ``WhisperForConditionalGeneration`` and
``AutoProcessor`` like a hub checkpoint: ``model.safetensors``, ``config.json``, the processor (feature
extractor with the checkpoint's mel count, tokenizer from its ``tokenizer.json``), a generation config
with what the CTranslate2 ``config.json`` says, and ``conversion.json`` recording where it came from.

Variable mapping (``L`` = layer index; CTranslate2 ``gamma``/``beta`` are LayerNorm weight/bias)::

    encoder/conv{1,2}                      -> model.encoder.conv{1,2}
    encoder/position_encodings/encodings   -> model.encoder.embed_positions.weight
    encoder/layer_L/self_attention/linear_0 (fused q,k,v) -> self_attn.{q,k,v}_proj (k has no bias)
    */self_attention/linear_1              -> self_attn.out_proj
    */self_attention/layer_norm            -> self_attn_layer_norm
    decoder/layer_L/attention/linear_0     -> encoder_attn.q_proj
    decoder/layer_L/attention/linear_1 (fused k,v) -> encoder_attn.{k,v}_proj
    decoder/layer_L/attention/linear_2     -> encoder_attn.out_proj
    decoder/layer_L/attention/layer_norm   -> encoder_attn_layer_norm
    */ffn/linear_{0,1}, */ffn/layer_norm   -> fc1, fc2, final_layer_norm
    {encoder,decoder}/layer_norm           -> model.{encoder,decoder}.layer_norm
    decoder/embeddings/weight              -> model.decoder.embed_tokens.weight (proj_out is tied to it)
    decoder/position_encodings/encodings   -> model.decoder.embed_positions.weight

Weights keep the checkpoint's float dtype (float16 for the packaged models); the loaders cast to
the dtype asked for. Int8-quantized checkpoints are refused: their scales cannot be undone exactly.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from conversion.ctranslate2 import FLOAT_DTYPES, Checkpoint, CheckpointError, model_files, read_model_bin

WHISPER_SPEC = "WhisperSpec"
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


@dataclass(frozen=True)
class ConversionResult:
    folder: Path
    sha256: str
    multilingual: bool
    dtype: str
    parameters: int


def _folders_with(folders: Sequence[Path], name: str) -> Path:
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"no {name} beside the checkpoint in {', '.join(str(f) for f in folders)}")


def _layer_count(checkpoint: Checkpoint, side: str) -> int:
    layers = {int(m.group(2)) for name in checkpoint.variables if (m := _LAYER.match(name)) and m.group(1) == side}
    if not layers or layers != set(range(max(layers) + 1)):
        raise CheckpointError(f"{checkpoint.files[0]}: {side} layers {sorted(layers)} are not 0..n-1")
    return len(layers)


def _split(tensor: torch.Tensor, parts: int, name: str) -> list[torch.Tensor]:
    if tensor.shape[0] % parts:
        raise CheckpointError(f"fused projection {name} has {tensor.shape[0]} rows, not a multiple of {parts}")
    return list(torch.chunk(tensor, parts, dim=0))


def _attention(ckpt: Checkpoint, source: str, target: str, fused: int, out_index: int) -> dict[str, torch.Tensor]:
    """One attention block; ``fused`` = 3 (q,k,v in linear_0) or 2 (q in linear_0, k,v in linear_1)."""
    weights: dict[str, torch.Tensor] = {}
    if fused == 3:
        names = ("q_proj", "k_proj", "v_proj")
        w = _split(ckpt.get(f"{source}/linear_0/weight"), 3, f"{source}/linear_0")
        b = _split(ckpt.get(f"{source}/linear_0/bias"), 3, f"{source}/linear_0")
    else:
        names = ("q_proj", "k_proj", "v_proj")
        kv_w = _split(ckpt.get(f"{source}/linear_1/weight"), 2, f"{source}/linear_1")
        kv_b = _split(ckpt.get(f"{source}/linear_1/bias"), 2, f"{source}/linear_1")
        w = [ckpt.get(f"{source}/linear_0/weight"), *kv_w]
        b = [ckpt.get(f"{source}/linear_0/bias"), *kv_b]
    for name, weight, bias in zip(names, w, b, strict=True):
        weights[f"{target}.{name}.weight"] = weight
        if name == "k_proj":
            if bool(bias.float().abs().max() > 0):
                raise CheckpointError(f"{source}: the key projection has a bias, which Whisper's k_proj does not")
            continue
        weights[f"{target}.{name}.bias"] = bias
    weights[f"{target}.out_proj.weight"] = ckpt.get(f"{source}/linear_{out_index}/weight")
    weights[f"{target}.out_proj.bias"] = ckpt.get(f"{source}/linear_{out_index}/bias")
    return weights


def _norm(ckpt: Checkpoint, source: str, target: str) -> dict[str, torch.Tensor]:
    return {f"{target}.weight": ckpt.get(f"{source}/gamma"), f"{target}.bias": ckpt.get(f"{source}/beta")}


def _linear(ckpt: Checkpoint, source: str, target: str) -> dict[str, torch.Tensor]:
    return {f"{target}.weight": ckpt.get(f"{source}/weight"), f"{target}.bias": ckpt.get(f"{source}/bias")}


def whisper_state_dict(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """transformers ``WhisperForConditionalGeneration`` weights from a ``WhisperSpec`` checkpoint."""
    state: dict[str, torch.Tensor] = {}
    for conv in ("conv1", "conv2"):
        state.update(_linear(ckpt, f"encoder/{conv}", f"model.encoder.{conv}"))
    state["model.encoder.embed_positions.weight"] = ckpt.get("encoder/position_encodings/encodings")
    for layer in range(_layer_count(ckpt, "encoder")):
        source, target = f"encoder/layer_{layer}", f"model.encoder.layers.{layer}"
        state.update(_attention(ckpt, f"{source}/self_attention", f"{target}.self_attn", 3, 1))
        state.update(_norm(ckpt, f"{source}/self_attention/layer_norm", f"{target}.self_attn_layer_norm"))
        state.update(_linear(ckpt, f"{source}/ffn/linear_0", f"{target}.fc1"))
        state.update(_linear(ckpt, f"{source}/ffn/linear_1", f"{target}.fc2"))
        state.update(_norm(ckpt, f"{source}/ffn/layer_norm", f"{target}.final_layer_norm"))
    state.update(_norm(ckpt, "encoder/layer_norm", "model.encoder.layer_norm"))
    state["model.decoder.embed_tokens.weight"] = ckpt.get("decoder/embeddings/weight")
    state["model.decoder.embed_positions.weight"] = ckpt.get("decoder/position_encodings/encodings")
    for layer in range(_layer_count(ckpt, "decoder")):
        source, target = f"decoder/layer_{layer}", f"model.decoder.layers.{layer}"
        state.update(_attention(ckpt, f"{source}/self_attention", f"{target}.self_attn", 3, 1))
        state.update(_norm(ckpt, f"{source}/self_attention/layer_norm", f"{target}.self_attn_layer_norm"))
        state.update(_attention(ckpt, f"{source}/attention", f"{target}.encoder_attn", 2, 2))
        state.update(_norm(ckpt, f"{source}/attention/layer_norm", f"{target}.encoder_attn_layer_norm"))
        state.update(_linear(ckpt, f"{source}/ffn/linear_0", f"{target}.fc1"))
        state.update(_linear(ckpt, f"{source}/ffn/linear_1", f"{target}.fc2"))
        state.update(_norm(ckpt, f"{source}/ffn/layer_norm", f"{target}.final_layer_norm"))
    state.update(_norm(ckpt, "decoder/layer_norm", "model.decoder.layer_norm"))
    return {name: tensor.contiguous() for name, tensor in state.items()}


def _check_spec(ckpt: Checkpoint) -> torch.dtype:
    if ckpt.spec != WHISPER_SPEC:
        raise CheckpointError(f"{ckpt.files[0]} is a CTranslate2 {ckpt.spec}; this converter reads {WHISPER_SPEC} only")
    if any(name.endswith("weight_scale") for name in ckpt.variables):
        raise CheckpointError(
            f"{ckpt.files[0]} is int8-quantized (it has weight_scale variables): quantized weights cannot be "
            "converted exactly; use a float16, bfloat16 or float32 checkpoint"
        )
    dtypes = {tensor.dtype for tensor in ckpt.variables.values() if tensor.dim() >= 2}
    unsupported = dtypes - set(FLOAT_DTYPES)
    if unsupported or len(dtypes) != 1:
        raise CheckpointError(
            f"{ckpt.files[0]}: weight dtypes {sorted(str(d) for d in dtypes)}; "
            "expected one of float32, float16, bfloat16"
        )
    return dtypes.pop()


def _token_id(tokenizer: Any, token: str, path: Path) -> int:
    token_id = tokenizer.get_vocab().get(token)
    if token_id is None:
        raise CheckpointError(f"{path}: the tokenizer has no {token} token; not a Whisper tokenizer")
    return int(token_id)


def _build_configs(
    ckpt: Checkpoint, ct2_config: dict[str, Any], tokenizer: Any, tokenizer_path: Path
) -> tuple[Any, Any, bool]:
    from transformers import GenerationConfig, WhisperConfig

    vocab, d_model = ckpt.get("decoder/embeddings/weight").shape
    n_mels = int(ckpt.get("encoder/conv1/weight").shape[1])
    multilingual = vocab >= 51865  # OpenAI's rule: English-only releases have 51864 entries
    ids = {
        name: _token_id(tokenizer, name, tokenizer_path)
        for name in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|transcribe|>", "<|translate|>")
    }
    eos, start = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=n_mels,
        d_model=int(d_model),
        encoder_layers=_layer_count(ckpt, "encoder"),
        decoder_layers=_layer_count(ckpt, "decoder"),
        encoder_attention_heads=ckpt.scalar("encoder/num_heads"),
        decoder_attention_heads=ckpt.scalar("decoder/num_heads"),
        encoder_ffn_dim=int(ckpt.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(ckpt.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(ckpt.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(ckpt.get("decoder/position_encodings/encodings").shape[0]),
        pad_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=start,
        tie_word_embeddings=True,
        architectures=["WhisperForConditionalGeneration"],
    )
    lang_ids = [int(i) for i in ct2_config.get("lang_ids", [])] if multilingual else []
    lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids}
    generation = GenerationConfig(
        decoder_start_token_id=start,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        max_length=config.max_target_positions,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        alignment_heads=[list(pair) for pair in ct2_config.get("alignment_heads", [])],
        no_timestamps_token_id=ids["<|notimestamps|>"],
        return_timestamps=False,
        is_multilingual=multilingual,
        lang_to_id=lang_to_id,
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]} if multilingual else {},
        forced_decoder_ids=None,
    )
    return config, generation, multilingual


def convert_whisper(sources: Sequence[Path], out: Path, *, overwrite: bool = False) -> ConversionResult:
    """Convert the checkpoint found in ``sources`` (one folder, or the folders holding its parts) into ``out``.

    The folder is written under a temporary name beside ``out`` and renamed at the end, so a failed
    conversion leaves nothing at ``out``.
    """
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    folders = [Path(source) for source in sources]
    for folder in folders:
        if not folder.is_dir():
            raise CheckpointError(f"{folder} is not a folder (expected a CTranslate2 model folder)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    files = model_files(folders)
    config_path = _folders_with(folders, "config.json")
    tokenizer_path = _folders_with(folders, "tokenizer.json")
    try:
        ct2_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(ct2_config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object (suppress_ids, lang_ids, ...)")
    ckpt = read_model_bin(files)
    dtype = _check_spec(ckpt)
    try:
        tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_path))
    except Exception as error:  # tokenizers raises its own exception types for a damaged file
        raise CheckpointError(f"{tokenizer_path} is not a readable tokenizer.json: {error}") from error
    state = whisper_state_dict(ckpt)
    config, generation, multilingual = _build_configs(ckpt, ct2_config, tokenizer, tokenizer_path)
    # The encoder reads exactly 2 * max_source_positions mel frames (hop 160 at 16 kHz): 30 s for every release.
    window_seconds = config.max_source_positions * 2 * 160 // 16000
    feature_extractor = WhisperFeatureExtractor(
        feature_size=config.num_mel_bins, chunk_length=window_seconds, return_attention_mask=True
    )
    processor = WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)

    dtype_name = str(dtype).removeprefix("torch.")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        save_file(state, staging / "model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(staging)
        generation.save_pretrained(staging)
        processor.save_pretrained(staging)
        record = {
            "source_format": f"CTranslate2 {ckpt.spec} revision {ckpt.revision}",
            "source_files": [str(path) for path in files],
            "model_bin_sha256": ckpt.sha256,
            "dtype": dtype_name,
            "multilingual": multilingual,
        }
        (staging / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
        for path in staging.iterdir():
            path.chmod(0o644)
        staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary model folder
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    parameters = sum(t.numel() for t in state.values())
    return ConversionResult(out, ckpt.sha256, multilingual, dtype_name, parameters)
