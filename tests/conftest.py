"""Shared fixtures: tiny checkpoints of the three supported architectures, built once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from seen.adapters import AudioLM, load_audio_lm
from seen.bundle import NoiseBundle
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


@pytest.fixture(scope="session")
def service_bundle(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibrated bundle for the tiny Qwen2-Audio: white and babble profiles.

    Babble is the default because on this random model it is the profile that separates noise from speech.
    """
    lm = load_audio_lm(str(model_dirs["qwen2_audio"]))
    return synthetic_bundle(lm, default="babble", clips=10).save(tmp_path_factory.mktemp("bundle"))


def synthetic_bundle(lm: AudioLM, *, default: str, clips: int) -> NoiseBundle:
    """A bundle calibrated on synthetic speech with white and babble profiles, ``default`` non-empty."""
    from dataclasses import replace

    from calibration.pipeline import CalibrationConfig, ClipSet, calibrate
    from seen.basis import BasisOptions
    from seen.noise import generate_noise

    clean = ClipSet("clean", [speechlike(2.0 + 0.1 * i, seed=i) for i in range(clips)], "synthetic:speech")
    noises = [
        ClipSet(kind, [0.1 * generate_noise(kind, 32000, 16000, seed=i) for i in range(clips)], f"synthetic:{kind}")
        for kind in ("white", "babble")
    ]
    options = BasisOptions(alpha=0.99, delta=3.0, delta_mode="chance", center="per_set")
    bundle = calibrate(lm, clean, noises, CalibrationConfig(basis=options)).bundle
    assert sum(bundle.profiles[default].ranks) > 0, "the test bundle needs a non-empty default profile"
    return replace(bundle, default_profile=default)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
