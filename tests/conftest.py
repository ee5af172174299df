"""Shared fixtures: tiny checkpoints of the three supported architectures, built once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from seen.adapters import AudioLM, load_audio_lm
from tests.tiny_models import build_qwen2_5_omni_thinker, build_qwen2_audio, build_voxtral

BUILDERS: dict[str, Callable[..., Path]] = {
    "qwen2_audio": build_qwen2_audio,
    "qwen2_5_omni": build_qwen2_5_omni_thinker,
    "voxtral": build_voxtral,
}
LIBRISPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "librispeech"


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="session")
def qwen2_audio_dir(model_dirs: dict[str, Path]) -> Path:
    return model_dirs["qwen2_audio"]


@pytest.fixture(params=sorted(BUILDERS))
def any_lm(request: pytest.FixtureRequest, model_dirs: dict[str, Path]) -> AudioLM:
    return load_audio_lm(str(model_dirs[request.param]))


def speechlike(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    """A deterministic clip with speech-like structure (harmonics under a syllabic envelope)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.5 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 5) * t) ** 2
    return (0.1 * voiced * envelope + 0.005 * rng.standard_normal(len(t))).astype(np.float32)
