"""Whisper as the fourth architecture: SEE layouts, batching, tasks, and the service's routes, on tiny checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from calibration.pipeline import CalibrationConfig, ClipSet, calibrate
from conversion.whisper import convert_whisper
from seen.adapters import AudioLM, SpeechTask, load_audio_lm
from seen.basis import BasisOptions
from seen.hooks import SiteKind
from seen.noise import generate_noise
from seen.scoring import PatchedModel
from tests.conftest import speechlike, synthetic_bundle
from tests.service_helpers import MODEL_NAME, audio_bytes, chat_body, metric_value, serving
from tests.tiny_whisper import build_whisper_ct2


@pytest.fixture(scope="module")
def whisper_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("whisper")
    folders = {}
    for name, multilingual in (("english", False), ("multilingual", True)):
        source, _ = build_whisper_ct2(root / f"{name}-ct2", multilingual=multilingual, dtype=torch.float32)
        folders[name] = convert_whisper([source], root / name).folder
    return folders


@pytest.fixture(scope="module")
def english(whisper_dirs: dict[str, Path]) -> AudioLM:
    return load_audio_lm(str(whisper_dirs["english"]))


@pytest.fixture(scope="module")
def whisper_bundle(english: AudioLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_bundle(english, default="white", clips=8).save(tmp_path_factory.mktemp("whisper-bundle"))


def test_padding_never_enters_see_and_batching_does_not_change_it(english: AudioLM, whisper_bundle: Path) -> None:
    from seen.bundle import NoiseBundle

    scorer = PatchedModel(english, NoiseBundle.load(whisper_bundle))
    short, long = speechlike(1.3, 3), speechlike(3.1, 4)
    together = scorer.score([short, long])
    alone = torch.cat([scorer.score([short]).per_layer, scorer.score([long]).per_layer])
    torch.testing.assert_close(together.per_layer, alone, rtol=1e-5, atol=1e-6)
    layout = english.encoder_batch([short, long]).encoder_layout
    assert layout.n_frames == 2 * 1500
    assert np.bincount(layout.frame_clip[layout.frame_clip >= 0].numpy()).tolist() == [65, 155]


def test_decoder_sites_are_refused(english: AudioLM) -> None:
    with pytest.raises(ValueError, match="no audio positions in its decoder"):
        english.site_path(SiteKind.DECODER_HIDDEN, 0)


def test_tasks_the_checkpoint_cannot_do_are_refused(english: AudioLM, whisper_dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="English-only: it transcribes English and cannot translate"):
        english.check_task(SpeechTask("translate"))
    with pytest.raises(ValueError, match="English-only; language 'de'"):
        english.check_task(SpeechTask("transcribe", "de"))
    english.check_task(SpeechTask("transcribe", "en"))
    multilingual = load_audio_lm(str(whisper_dirs["multilingual"]))
    assert multilingual.languages == ["de", "en", "fr"]
    multilingual.check_task(SpeechTask("translate", "de"))
    with pytest.raises(ValueError, match="language 'xx' is not one this checkpoint knows; known: de, en, fr"):
        multilingual.check_task(SpeechTask("transcribe", "xx"))


@pytest.mark.parametrize("name", ["english", "multilingual"])
def test_generation_returns_new_tokens_after_the_task_prompt(name: str, whisper_dirs: dict[str, Path]) -> None:
    lm = load_audio_lm(str(whisper_dirs[name]))
    task = SpeechTask("transcribe", "en")
    batch = lm.chat_batch(
        [[{"role": "user", "content": [{"type": "audio"}]}]] * 2, [speechlike(1.0, 1), speechlike(2.0, 2)], task
    )
    tokens = lm.generate(batch, max_new_tokens=5, do_sample=False)
    assert tokens.shape[0] == 2 and 1 <= tokens.shape[1] <= 5
    assert lm.prompt_length(batch) == (4 if name == "multilingual" else 2)
    special = {lm.tokenizer.convert_tokens_to_ids(t) for t in ("<|startoftranscript|>", "<|notimestamps|>")}
    assert not special & set(tokens[:, 0].tolist()), "the decoder prompt must not be returned as answer tokens"
    with pytest.raises(ValueError, match="one clip per request"):
        lm.chat_batch([[{"role": "user", "content": [{"type": "audio"}, {"type": "audio"}]}]], [speechlike(1.0, 1)] * 2)


@pytest.mark.anyio
async def test_whisper_is_served_with_noise_reports(whisper_dirs: dict[str, Path], whisper_bundle: Path) -> None:
    clip = speechlike(2.0, 5)
    form = {"model": MODEL_NAME}
    async with serving(whisper_dirs["english"], whisper_bundle, max_tokens_default=6) as client:
        transcribed = await client.post(
            "/v1/audio/transcriptions", data=form, files={"file": ("a.wav", audio_bytes(clip), "audio/wav")}
        )
        verbose = await client.post(
            "/v1/audio/transcriptions",
            data={**form, "response_format": "verbose_json", "language": "en"},
            files={"file": ("a.wav", audio_bytes(clip), "audio/wav")},
        )
        scored = await client.post("/v1/see", json=chat_body(clip))
        chat = await client.post("/v1/chat/completions", json=chat_body(clip))
        translate = await client.post(
            "/v1/audio/translations", data=form, files={"file": ("a.wav", audio_bytes(clip), "audio/wav")}
        )
        german = await client.post(
            "/v1/audio/transcriptions",
            data={**form, "language": "de"},
            files={"file": ("a.wav", audio_bytes(clip), "audio/wav")},
        )
        long = await client.post(
            "/v1/audio/transcriptions",
            data=form,
            files={"file": ("a.wav", audio_bytes(speechlike(31.0, 6)), "audio/wav")},
        )
        metrics = (await client.get("/metrics")).text
    assert transcribed.status_code == 200, transcribed.text
    report = transcribed.json()["noise_report"]
    assert report["profile"] == "white" and 0 < report["see"] <= 1 and report["residual_see"] < report["see"]
    assert verbose.json()["task"] == "transcribe" and verbose.json()["language"] == "en"
    assert scored.status_code == 200 and scored.json()["noise_report"]["see"] == pytest.approx(report["see"], rel=1e-4)
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "chat_not_supported"
    assert "/v1/audio/transcriptions" in chat.json()["error"]["message"]
    assert translate.status_code == 400 and "cannot translate" in translate.json()["error"]["message"]
    assert german.status_code == 400 and german.json()["error"]["param"] == "language"
    # 31 s: two 30 s windows, each transcribed in a row of its own, one text and one report for both
    assert long.status_code == 200, long.text
    assert long.json()["noise_report"]["clips"] == 2 and long.json()["text"]
    assert metric_value(metrics, "seen_requests_total", endpoint="/v1/audio/transcriptions", status="200") == 3
    assert metric_value(metrics, "seen_requests_total", endpoint="/v1/chat/completions", status="400") == 1


@pytest.mark.anyio
async def test_multilingual_whisper_translates(whisper_dirs: dict[str, Path], tmp_path: Path) -> None:
    lm = load_audio_lm(str(whisper_dirs["multilingual"]))
    clean = ClipSet("clean", [speechlike(2.0 + 0.1 * i, seed=i) for i in range(6)], "synthetic:speech")
    noise = ClipSet("white", [0.1 * generate_noise("white", 32000, 16000, seed=i) for i in range(6)], "synthetic:white")
    options = BasisOptions(alpha=0.99, delta=3.0, delta_mode="chance", center="per_set")
    bundle = calibrate(lm, clean, [noise], CalibrationConfig(basis=options)).bundle.save(tmp_path / "bundle")
    async with serving(whisper_dirs["multilingual"], bundle, max_tokens_default=4) as client:
        response = await client.post(
            "/v1/audio/translations",
            data={"model": MODEL_NAME, "response_format": "verbose_json"},
            files={"file": ("a.wav", audio_bytes(speechlike(1.5, 7)), "audio/wav")},
        )
    assert response.status_code == 200, response.text
    assert response.json()["task"] == "translate" and response.json()["noise_report"]["see"] >= 0


def test_evaluation_passes_the_language_to_a_recognizer(english: AudioLM, whisper_bundle: Path) -> None:
    from evaluation.dataset import Dataset, Item
    from evaluation.runner import Evaluator
    from seen.bundle import NoiseBundle

    dataset = Dataset("tiny", "transcription", [Item("a", speechlike(1.0, 1), "Transcribe.", "hello")], "x")
    bundle = NoiseBundle.load(whisper_bundle)
    with pytest.raises(ValueError, match="English-only; language 'de'"):
        Evaluator.for_model(english, bundle, dataset, language="de")
    evaluator = Evaluator.for_model(english, bundle, dataset, language="en")
    try:
        assert evaluator.speech == SpeechTask("transcribe", "en")
    finally:
        evaluator.close()


@torch.inference_mode()
def test_audio_embeddings_are_the_states_the_decoder_cross_attends_to(english: AudioLM) -> None:
    clips = [speechlike(1.3, 3), speechlike(3.1, 4)]
    batch = english.chat_batch([[]] * 2, clips, SpeechTask())
    read: list[torch.Tensor] = []
    decoder = english.model.get_submodule("model.decoder")
    handle = decoder.register_forward_pre_hook(
        lambda _m, _a, kwargs: read.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        english.generate(batch, max_new_tokens=1, do_sample=False)
    finally:
        handle.remove()
    embeddings = english.audio_embeddings(english.encoder_batch(clips))
    assert [tuple(rows.shape) for rows in embeddings] == [(1500, english.model.config.d_model)] * 2
    torch.testing.assert_close(torch.stack(embeddings), read[0])
