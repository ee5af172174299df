"""The committed demo model and bundle: they listen, they degrade under noise, SEE tracks it, it is served by default.

Clips are synthesized fresh by held-out voices (CI installs espeak-ng; nothing here skips in CI except the
LibriSpeech check when ``../shared`` is absent).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch

from demo import DEMO_BUNDLE_DIR, DEMO_MODEL_DIR
from demo.clips import EXAMPLE_SENTENCE, with_example_noise
from demo.data import NO_AUDIO_ANSWER, SPOKEN_SECONDS, held_out_pairs, speak
from demo.encoder import (
    EncoderCache,
    read_whisper_encoder,
    top_feed_forward,
    transplant_whisper_encoder,
    unfreeze_top_feed_forward,
)
from demo.evaluate import answer, noisy
from demo.model import DemoArchitecture, build_model, build_processor
from demo.train import Heard, training_batch
from demo.train import main as train_main
from seen.adapters import AudioLM, load_audio_lm
from seen.audio import load_audio_file, split_into_windows
from seen.bundle import NoiseBundle
from seen.noise import generate_noise, mix_at_snr
from seen.scoring import PatchedModel
from service.app import create_app
from service.config import Settings
from tests.conftest import LIBRISPEECH
from tests.service_helpers import audio_part, running
from tests.tiny_whisper import random_whisper

pytestmark = pytest.mark.anyio
SNRS_FALLING = (20, 10, 0, -10)


@pytest.fixture(scope="module")
def demo_lm() -> AudioLM:
    return load_audio_lm(str(DEMO_MODEL_DIR), dtype="float32")


@pytest.fixture(scope="module")
def demo_scorer(demo_lm: AudioLM) -> PatchedModel:
    return PatchedModel(demo_lm, NoiseBundle.load(DEMO_BUNDLE_DIR))


@pytest.fixture(scope="module")
def held_out() -> tuple[list[np.ndarray], list[str]]:
    examples = speak(held_out_pairs(16, seed=31), SPOKEN_SECONDS)
    return [e.audio for e in examples], [e.sentence for e in examples]


def _mean_see(scorer: PatchedModel, clips: list[np.ndarray], profile: str) -> float:
    column = scorer.patch.profiles.index(profile)
    return float(scorer.score(clips, batch_size=16).see[:, column].mean())


def _check_rise(see_clean: float, see: list[float], kind: str, factor: float) -> None:
    """SEE over 20, 10, 0, -10 dB under the noise's own profile: rising from 10 dB down, ``factor`` x clean at -10.

    Clean and 20 dB are not ranked: on held-out voices babble at 20 dB sits at the clean level (the model card
    shows it), and the model does not lose a request there either.
    """
    assert all(a < b for a, b in itertools.pairwise(see[1:])), (kind, see)
    assert see[-1] > factor * see_clean, (kind, see_clean, see)


def test_the_committed_folder_is_a_complete_small_checkpoint() -> None:
    names = {path.name for path in DEMO_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "README.md", "training.json"} <= names
    assert (
        any("chat_template" in name for name in names)
        or "chat_template" in (DEMO_MODEL_DIR / "tokenizer_config.json").read_text()
    )
    size = sum(path.stat().st_size for folder in (DEMO_MODEL_DIR, DEMO_BUNDLE_DIR) for path in folder.rglob("*"))
    assert size < 30 * 1024 * 1024
    config = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert config["architectures"] == ["Qwen2AudioForConditionalGeneration"]


def test_it_answers_fresh_held_out_clips(demo_lm: AudioLM, held_out: tuple[list[np.ndarray], list[str]]) -> None:
    """Voices never heard in training; the model card reports the rate on 50 clips (0.98)."""
    clips, references = held_out
    answers = answer(demo_lm, clips)
    correct = sum(a == r for a, r in zip(answers, references, strict=True))
    assert correct >= 14, list(zip(answers, references, strict=True))
    wer = jiwer.wer(references, [a or "<empty>" for a in answers])
    assert wer < 0.05


def test_without_audio_it_says_so_instead_of_guessing(demo_lm: AudioLM) -> None:
    conversation = [{"role": "user", "content": [{"type": "text", "text": "What did the speaker ask for?"}]}]
    batch = demo_lm.chat_batch([conversation], []).to(demo_lm.device, demo_lm.dtype)
    with torch.inference_mode():
        tokens = demo_lm.generate(batch, max_new_tokens=60, do_sample=False)
    assert demo_lm.tokenizer.decode(tokens[0], skip_special_tokens=True).strip() == NO_AUDIO_ANSWER


def test_its_accuracy_falls_as_the_snr_falls(demo_lm: AudioLM, held_out: tuple[list[np.ndarray], list[str]]) -> None:
    clips, references = held_out
    accuracy = {
        snr: np.mean([a == r for a, r in zip(answer(demo_lm, noisy(clips, "white", snr, 5)), references, strict=True)])
        for snr in (20, 0, -10)
    }
    # Graded like a real audio-language model in white noise: 0.98, 0.56 and 0.00 in the model card.
    assert accuracy[20] > 0.8 and 0.2 < accuracy[0] < 0.9 and accuracy[-10] < 0.2, accuracy


def test_the_bundle_has_non_empty_bases_for_every_profile() -> None:
    bundle = NoiseBundle.load(DEMO_BUNDLE_DIR)
    assert set(bundle.profiles) == {"white", "pink", "babble", "engine", "wind", "merged"}
    for profile in bundle.profiles.values():
        assert sum(profile.ranks) >= 1 and profile.clips >= 50
    assert min(bundle.profiles["merged"].ranks) >= 1  # every critical layer has a direction in the default profile
    assert bundle.calibration["clean"]["clips"] == 50


@pytest.mark.parametrize(("kind", "factor"), [("white", 4.0), ("babble", 1.3)])
def test_see_rises_as_the_snr_falls(
    demo_scorer: PatchedModel, held_out: tuple[list[np.ndarray], list[str]], kind: str, factor: float
) -> None:
    """White noise moves this model's SEE far more than babble (x12 and x2 at -10 dB in the model card)."""
    clips, _ = held_out
    see = [_mean_see(demo_scorer, noisy(clips, kind, snr, seed=77), kind) for snr in SNRS_FALLING]
    _check_rise(_mean_see(demo_scorer, clips, kind), see, kind, factor)


@pytest.mark.skipif(not LIBRISPEECH.is_dir(), reason=f"LibriSpeech clips not found at {LIBRISPEECH}")
@pytest.mark.parametrize("kind", ["white", "babble"])
def test_see_rises_on_real_human_speech_too(demo_scorer: PatchedModel, kind: str) -> None:
    """Real read English (the language model only heard espeak-ng): SEE must follow the noise there too."""
    files = sorted((LIBRISPEECH / "wav").glob("*.wav"))[:12]
    windows = [
        window
        for path in files
        for window in split_into_windows(load_audio_file(path, 16000), 16000, demo_scorer.lm.max_clip_seconds)
        if window.size >= 8000
    ]

    def mixed(snr: float) -> list[np.ndarray]:
        return [mix_at_snr(w, generate_noise(kind, w.size, 16000, seed=i), snr) for i, w in enumerate(windows)]

    see = [_mean_see(demo_scorer, mixed(snr), kind) for snr in SNRS_FALLING]
    _check_rise(_mean_see(demo_scorer, windows, kind), see, kind, 2.0)


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Whisper (30 s window) saved as ``seen convert`` writes one."""
    folder = tmp_path_factory.mktemp("whisper")
    random_whisper(multilingual=False).save_pretrained(folder)
    return folder


def test_the_training_script_runs_end_to_end(tiny_whisper_dir: Path, tmp_path: Path) -> None:
    assert train_main(["--smoke", "--whisper", str(tiny_whisper_dir), "--out", str(tmp_path / "model")]) == 0
    report = json.loads((tmp_path / "model" / "training.json").read_text())
    assert report["recipe"]["steps"] == 4 and report["evaluation"]["held_out_voices"]["count"] == 4
    lm = load_audio_lm(str(tmp_path / "model"))
    assert lm.max_clip_seconds == 30.0 and lm.dtype == torch.float32
    # the audio tower carries the Whisper encoder's weights, unchanged by training but for what the recipe tunes
    whisper = read_whisper_encoder(tiny_whisper_dir)
    tower = lm.model.get_submodule("model.audio_tower").state_dict()
    assert report["audio_encoder"]["whisper"]["sha256"] == whisper.provenance["sha256"]
    top = f"layers.{len(lm.model.get_submodule('model.audio_tower').layers) - 1}"
    tuned_modules = (f"{top}.final_layer_norm", f"{top}.fc1", f"{top}.fc2", "layer_norm")
    tuned = report["recipe"]["tune_top_feed_forward"]
    assert report["audio_encoder"]["frozen"] is not tuned
    for name, tensor in whisper.state.items():
        if tuned and name.rsplit(".", 1)[0] in tuned_modules:
            assert not torch.equal(tower[name], tensor.to(torch.float16).float()), name
        else:
            torch.testing.assert_close(tower[name], tensor.to(torch.float16).float())


def test_the_encoder_cache_gives_the_rows_of_the_models_own_audio_path(tiny_whisper_dir: Path) -> None:
    """The cache runs a short window; the model pads to 30 s and masks the padding: the rows must agree."""
    encoder = read_whisper_encoder(tiny_whisper_dir)
    arch = replace(DemoArchitecture(), **encoder.dims, text_layers=1)
    processor = build_processor(arch)
    model = build_model(arch, processor.tokenizer).eval()
    transplant_whisper_encoder(model, encoder)
    rng = np.random.default_rng(0)
    clips = [rng.normal(0, 0.1, size).astype(np.float32) for size in (16000, 40000, 71000)]
    cached = EncoderCache(model, processor, 5).encode(clips)
    conversation = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "hi"}]}]
    inputs = processor(
        text=[processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)] * len(clips),
        audio=clips,
        sampling_rate=16000,
        return_tensors="pt",
        padding=True,
    )
    states: list[torch.Tensor] = []
    tower = model.get_submodule("model.audio_tower")
    handle = tower.register_forward_hook(lambda _m, _a, output: states.append(output.last_hidden_state))
    with torch.inference_mode():
        model(**inputs)
    handle.remove()
    audio_tokens = (inputs["input_ids"] == model.config.audio_token_id).sum(-1).tolist()
    assert [len(rows) for rows in cached] == audio_tokens  # one row per audio token the processor expands
    for clip_rows, full in zip(cached, states[0], strict=True):
        torch.testing.assert_close(clip_rows, full[: len(clip_rows)], atol=1e-4, rtol=1e-4)
    # Stopped before the top feed-forward block, and finished by top_feed_forward: the same rows again.
    before = EncoderCache(model, processor, 5, before_top_feed_forward=True).encode(clips)
    assert [len(positions) // 2 for positions in before] == [len(rows) for rows in cached]  # two per row
    padded = torch.nn.utils.rnn.pad_sequence(before, batch_first=True)
    with torch.inference_mode():
        finished, counts = top_feed_forward(model, padded, torch.tensor([len(states) for states in before]))
    assert counts.tolist() == audio_tokens
    for clip_rows, rows, count in zip(cached, finished, counts.tolist(), strict=True):
        torch.testing.assert_close(rows[:count], clip_rows, atol=1e-4, rtol=1e-4)


def test_light_tuning_trains_only_the_top_feed_forward_block(tiny_whisper_dir: Path) -> None:
    encoder = read_whisper_encoder(tiny_whisper_dir)
    arch = replace(DemoArchitecture(), **encoder.dims, text_layers=1)
    processor = build_processor(arch)
    model = build_model(arch, processor.tokenizer)
    transplant_whisper_encoder(model, encoder)
    tuned = unfreeze_top_feed_forward(model)
    tower = model.get_submodule("model.audio_tower")
    trainable = {name for name, parameter in tower.named_parameters() if parameter.requires_grad}
    top = f"layers.{arch.encoder_layers - 1}"
    modules = (f"{top}.final_layer_norm", f"{top}.fc1", f"{top}.fc2", "layer_norm")
    assert trainable == {f"{module}.{kind}" for module in modules for kind in ("weight", "bias")}
    assert sum(parameter.numel() for parameter in tuned) == sum(tower.get_parameter(name).numel() for name in trainable)


def test_token_noise_corrupts_only_the_answers_input_tokens(tiny_whisper_dir: Path) -> None:
    """The labels stay the true answer and the prompt stays intact; only answer inputs become letters."""
    encoder = read_whisper_encoder(tiny_whisper_dir)
    arch = replace(DemoArchitecture(), **encoder.dims, text_layers=1)
    processor = build_processor(arch)
    model = build_model(arch, processor.tokenizer).eval()
    rows = Heard(torch.randn(5, arch.encoder_dim), "turn on the radio")
    batch = ([rows, None], ["What did the speaker ask for?"] * 2, ["turn on the radio", NO_AUDIO_ANSWER])
    embed = model.get_input_embeddings()
    with torch.inference_mode():
        clean, _, _ = training_batch(model, processor, *batch)
        noisy_, _, _ = training_batch(model, processor, *batch, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(clean["labels"], noisy_["labels"])
    answer_positions = clean["labels"] != -100
    changed = (clean["inputs_embeds"] != noisy_["inputs_embeds"]).any(-1)
    assert not (changed & ~answer_positions).any()
    assert 0.2 < changed[answer_positions].float().mean() < 0.6
    letters = embed(torch.tensor(list(b"abcdefghijklmnopqrstuvwxyz ")))
    for row, position in changed.nonzero().tolist():
        assert (noisy_["inputs_embeds"][row, position] == letters).all(-1).any()


async def test_the_service_serves_the_demo_model_when_no_model_is_set() -> None:
    settings = Settings()
    assert (Path(settings.model), Path(settings.bundle)) == (DEMO_MODEL_DIR, DEMO_BUNDLE_DIR)
    examples = DEMO_MODEL_DIR.parent / "examples"
    async with running(create_app(settings)) as client:
        models = (await client.get("/v1/models")).json()["data"]
        assert [m["id"] for m in models] == ["qwen2-audio-demo"]
        clean_clip = load_audio_file(examples / "request.wav", 16000)
        clips = {
            "clean": clean_clip,
            "white 0 dB": load_audio_file(examples / "request-white-0db.wav", 16000),
            "white -10 dB": with_example_noise(clean_clip, -10.0),  # the README's -10 dB example
        }
        reports, answers = {}, {}
        for name, clip in clips.items():
            content = [audio_part(clip), {"type": "text", "text": "What did the speaker ask for?"}]
            body = {"model": "qwen2-audio-demo", "messages": [{"role": "user", "content": content}]}
            reply = (await client.post("/v1/chat/completions", json=body)).json()
            reports[name], answers[name] = reply["noise_report"], reply["choices"][0]["message"]["content"]
    clean, at_0, at_minus_10 = reports["clean"], reports["white 0 dB"], reports["white -10 dB"]
    # served as is (score and flag): SEEN is off unless asked for, and the report says so
    assert clean["enabled"] is False and clean["residual_see"] == pytest.approx(clean["see"], rel=1e-5)
    assert clean["profile"] == "merged" and clean["noisy"] is False
    # What the README shows: at 0 dB the model still hears the request and the report stays below its threshold;
    # at -10 dB the answer is wrong, the white profile's SEE has risen several-fold and the request is flagged.
    assert answers["clean"] == answers["white 0 dB"] == EXAMPLE_SENTENCE != answers["white -10 dB"]
    assert at_0["noisy"] is False and at_0["see"] < at_0["threshold"]
    assert at_minus_10["see_by_profile"]["white"] > 3 * clean["see_by_profile"]["white"]
    assert at_minus_10["see"] > 2 * clean["see"] and at_minus_10["noisy"] is True


def test_settings_refuse_a_model_without_its_bundle() -> None:
    with pytest.raises(ValueError, match="needs its bundle"):
        Settings(model="some/model")
    with pytest.raises(ValueError, match="needs the model"):
        Settings(bundle="some/bundle")
