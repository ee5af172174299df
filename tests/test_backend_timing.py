"""What a batch's Timing says: every second of device work counted once, as encoder or as generation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from seen.adapters import load_audio_lm
from seen.policy import Control, NoisePolicy
from service.engine.backend import GenerateJob, Sampling
from service.engine.transformers_backend import ModelBackend
from tests.conftest import speechlike, synthetic_bundle

ASK = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is said?"}]}]
REPLAY_SECONDS = 0.4


def test_the_exact_see_replay_counts_as_encoder_time_only(
    qwen2_audio_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm = load_audio_lm(str(qwen2_audio_dir))
    bundle = synthetic_bundle(lm, default="babble", clips=4)
    backend = ModelBackend(lm, bundle, NoisePolicy(bundle), model_name="tiny", see_method="exact")
    replay = backend.model.replay

    def slow_replay(*args: Any) -> Any:
        time.sleep(REPLAY_SECONDS)
        return replay(*args)

    monkeypatch.setattr(backend.model, "replay", slow_replay)
    control = Control(enabled=True, strength=1.0, profile="babble")
    job = GenerateJob(ASK, [speechlike(1.0, 0)], control, sampling=Sampling(max_tokens=4, temperature=0.0))
    started = time.perf_counter()
    [outcome] = backend.generate([job])
    wall = time.perf_counter() - started
    backend.close()
    assert outcome.report is not None and outcome.report.see_method == "exact"
    timing = outcome.timing
    assert timing.encoder_seconds >= REPLAY_SECONDS
    assert timing.encoder_seconds + timing.generation_seconds <= wall
    assert timing.generation_seconds < wall - REPLAY_SECONDS
