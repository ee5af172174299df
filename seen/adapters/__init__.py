"""Model adapters and the one loading path for audio-language models.

Adding an architecture: subclass :class:`AudioLM` in a module of this folder and list the class in
:data:`ADAPTERS`, keyed by its transformers class name.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoProcessor, AutoTokenizer

from seen.adapters.base import AudioLM, Clip, Message, ModelBatch, SpeechTask
from seen.adapters.qwen2_5_omni import Qwen25OmniThinker
from seen.adapters.qwen2_audio import Qwen2Audio
from seen.adapters.voxtral import Voxtral
from seen.adapters.whisper import Whisper

ADAPTERS: dict[str, type[AudioLM]] = {
    cls.architecture: cls for cls in (Qwen2Audio, Qwen25OmniThinker, Voxtral, Whisper)
}

__all__ = [
    "ADAPTERS",
    "AudioLM",
    "Clip",
    "Message",
    "ModelBatch",
    "SpeechTask",
    "load_audio_lm",
    "resolve_device",
    "resolve_dtype",
]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto``: the first GPU when there is one, else the CPU; anything else as torch reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from error


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype | str:
    """``auto``: bfloat16 on a GPU, float32 elsewhere; ``checkpoint``: the dtype the weights are stored in.

    The one meaning of these words for the command line, the service and the loaders.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if resolve_device(device).type == "cuda" else torch.float32
    if dtype == "checkpoint":
        return "auto"  # transformers' word for the stored dtype
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, checkpoint, float32, bfloat16 or float16")
    return resolved


def load_audio_lm(source: str, *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto") -> AudioLM:
    """Load a model folder or hub id with its preprocessing, in eval mode, on ``device`` (see :func:`resolve_dtype`)."""
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load model {source!r}: not a model folder and not reachable on the hub") from error
    architecture = (getattr(config, "architectures", None) or [""])[0]
    adapter = ADAPTERS.get(architecture)
    if adapter is None:
        raise ValueError(
            f"model {source!r} is a {architecture or 'model of unknown architecture'}; supported: {sorted(ADAPTERS)}"
        )
    target = resolve_device(device)
    model = adapter.auto_model.from_pretrained(source, dtype=resolve_dtype(dtype, target))
    model.to(target).eval()
    processor: Any = None
    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, ImportError, TypeError):
        processor = None  # e.g. Qwen2.5-Omni's processor needs torchvision: drive tokenizer + extractor directly
    tokenizer = getattr(processor, "tokenizer", None) or AutoTokenizer.from_pretrained(source)
    feature_extractor = getattr(processor, "feature_extractor", None) or AutoFeatureExtractor.from_pretrained(source)
    return adapter(model, processor, tokenizer, feature_extractor, source)
