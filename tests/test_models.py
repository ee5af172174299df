"""The patch on real architectures (tiny random checkpoints loaded through the users' loading path)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from seen.adapters import AudioLM
from seen.hooks import SiteKind
from seen.patch import SeenPatch
from seen.scoring import PatchedModel
from seen.see import frame_see
from tests.conftest import speechlike

MESSAGE = {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What was said?"}]}


def _random_bases(lm: AudioLM, site: SiteKind, k: int = 3) -> tuple[list[str], dict[str, list[torch.Tensor]]]:
    generator = torch.Generator().manual_seed(5)
    count, width = lm.layer_count(site), lm.site_width(site)
    paths = [lm.site_path(site, layer) for layer in range(count)]
    bases = {
        name: [torch.linalg.qr(torch.randn(width, k, generator=generator))[0] for _ in paths]
        for name in ("white", "babble")
    }
    return paths, bases


def _clips() -> list:
    return [speechlike(1.3, seed=1), speechlike(3.1, seed=2), speechlike(0.7, seed=3)]


@torch.inference_mode()
def test_zero_strength_and_removal_leave_generation_bit_identical(any_lm: AudioLM) -> None:
    batch = any_lm.chat_batch([[MESSAGE]] * 2, _clips()[:2])
    before = any_lm.model(**batch.inputs).logits
    paths, bases = _random_bases(any_lm, SiteKind.ENCODER_FFN)
    patch = SeenPatch(any_lm.model, paths, bases)
    with patch.installed():
        with patch.scope(batch.encoder_layout, torch.zeros(2)):
            assert torch.equal(any_lm.model(**batch.inputs).logits, before)
        with patch.scope(batch.encoder_layout, torch.ones(2)):
            assert not torch.equal(any_lm.model(**batch.inputs).logits, before)
    assert sum(len(m._forward_hooks) for m in any_lm.model.modules()) == 0
    assert torch.equal(any_lm.model(**batch.inputs).logits, before)


@torch.inference_mode()
@pytest.mark.parametrize("site", list(SiteKind))
def test_batched_see_equals_one_clip_at_a_time(any_lm: AudioLM, site: SiteKind) -> None:
    clips = _clips()
    paths, bases = _random_bases(any_lm, site)
    patch = SeenPatch(any_lm.model, paths, bases)

    def see(clip_list: list) -> torch.Tensor:
        batch = any_lm.chat_batch([[MESSAGE]] * len(clip_list), clip_list)
        with patch.scope(batch.layout(site), torch.full((len(clip_list),), 0.5)) as readout:
            any_lm.model(**batch.inputs)
        report = readout.report()
        return torch.cat([report.per_layer, report.residual_per_layer[..., None]], dim=-1)

    batched = see(clips)
    alone = torch.cat([see([clip]) for clip in clips])
    assert torch.all((batched >= 0) & (batched <= 1))
    assert batched.abs().sum() > 0
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


@torch.inference_mode()
def test_lambda_one_empties_the_noise_subspace_at_the_layer(any_lm: AudioLM) -> None:
    batch = any_lm.encoder_batch(_clips()[:2])
    paths, bases = _random_bases(any_lm, SiteKind.ENCODER_FFN)
    patch = SeenPatch(any_lm.model, paths, bases)
    passed_on: list[torch.Tensor] = []
    with patch.installed():
        module = any_lm.model.get_submodule(paths[0])
        handle = module.register_forward_hook(lambda _m, _i, out: passed_on.append(out.detach().clone()))
        try:
            with patch.scope(batch.encoder_layout, torch.ones(2)) as readout:
                any_lm.run_encoder(batch)
        finally:
            handle.remove()
    flat = passed_on[0].reshape(-1, passed_on[0].shape[-1])
    valid = batch.encoder_layout.frame_clip >= 0
    residual = frame_see(flat[valid], flat[valid] @ bases["white"][0])
    assert readout.report().per_layer[:, 0, 0].min() > 1e-4
    assert residual.max() < 1e-8


@torch.inference_mode()
def test_generation_runs_with_seen_on_and_decode_steps_pass_through(any_lm: AudioLM) -> None:
    batch = any_lm.chat_batch([[MESSAGE]] * 2, _clips()[:2])
    for site in SiteKind:
        paths, bases = _random_bases(any_lm, site)
        patch = SeenPatch(any_lm.model, paths, bases)
        with patch.scope(batch.layout(site), torch.ones(2), torch.tensor([0, 1])) as readout:
            tokens = any_lm.generate(batch, max_new_tokens=4, do_sample=False)
        assert tokens.shape == (2, 4)
        assert readout.report().residual.max() < 1e-5


def test_clips_longer_than_the_window_are_refused(any_lm: AudioLM) -> None:
    too_long = speechlike(any_lm.max_clip_seconds + 0.5, seed=4)
    with pytest.raises(ValueError, match="audio window"):
        any_lm.encoder_batch([too_long])


def test_voxtral_prompt_matches_the_processor_layout(model_dirs: dict) -> None:
    """The adapter's Voxtral prompt equals the layout mistral-common produces (as rebuilt in tiny_models)."""
    from seen.adapters import load_audio_lm
    from tests.tiny_models import voxtral_audio_inputs

    lm = load_audio_lm(str(model_dirs["voxtral"]))
    clips = _clips()[:2]
    message = {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What was said?"}]}
    batch = lm.chat_batch([[message]] * 2, clips)
    expected = voxtral_audio_inputs(lm.tokenizer, lm.feature_extractor, clips, "What was said?")
    for key in ("input_ids", "attention_mask", "input_features"):
        torch.testing.assert_close(batch.inputs[key], expected[key], rtol=0, atol=0)


@torch.inference_mode()
def test_very_short_clips_are_heard_then_silence(any_lm: AudioLM) -> None:
    """A 2-sample or 50 ms clip is valid audio: it is padded with silence to the shortest the processor accepts."""
    import numpy as np

    tiny, short = np.full(2, 0.1, dtype=np.float32), speechlike(0.05, seed=4)
    batch = any_lm.chat_batch([[MESSAGE]] * 2, [tiny, short])
    assert batch.encoder_layout.n_clips == 2 and bool((batch.encoder_layout.frame_clip >= 0).any())
    tokens = any_lm.generate(batch, max_new_tokens=2, do_sample=False)
    assert tokens.shape[0] == 2
    padded = any_lm.padded_short([short])[0]
    assert len(padded) == round(any_lm.min_clip_seconds * any_lm.sample_rate)
    assert np.array_equal(padded[: len(short)], short) and not padded[len(short) :].any()


def test_control_tokens_typed_by_a_user_stay_plain_text(any_lm: AudioLM) -> None:
    """``<|im_end|>`` in user text must not end the turn; an audio placeholder in text must not become audio."""
    special = sorted(any_lm._special_tokens)
    assert special, "the tokenizer has special tokens to protect"
    injected = {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": " ".join(special)}]}
    plain = any_lm.chat_batch([[injected]], [speechlike(1.0, 1)])
    reference = any_lm.chat_batch([[MESSAGE]], [speechlike(1.0, 1)])
    special_ids = {any_lm.tokenizer.convert_tokens_to_ids(token) for token in special}
    ids, reference_ids = plain.inputs["input_ids"][0].tolist(), reference.inputs["input_ids"][0].tolist()
    count = {token: ids.count(token) for token in special_ids}
    assert count == {token: reference_ids.count(token) for token in special_ids}  # only the template's own
    assert plain.encoder_layout.n_clips == 1
    assert any_lm.escape_text("a <|im_end|> b").replace("\u2060", "") == "a <|im_end|> b"


@torch.inference_mode()
def test_audio_embeddings_are_the_rows_the_language_model_reads(any_lm: AudioLM) -> None:
    """What an external engine is handed equals what the model itself puts at the audio tokens, SEEN on."""
    clips = _clips()
    batch = any_lm.chat_batch([[MESSAGE]] * 3, clips)
    read: list[torch.Tensor] = []
    language_model = any_lm.model.get_decoder()
    handle = language_model.register_forward_pre_hook(
        lambda _m, _a, kwargs: read.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    paths, bases = _random_bases(any_lm, SiteKind.ENCODER_FFN)
    patch = SeenPatch(any_lm.model, paths, bases)
    try:
        with patch.scope(batch.encoder_layout, torch.ones(3)):
            any_lm.model(**batch.inputs)
            embeddings = any_lm.audio_embeddings(batch)
        plain = any_lm.audio_embeddings(batch)
    finally:
        handle.remove()
    audio_positions = batch.inputs["input_ids"] == any_lm.audio_token_id
    assert [len(rows) for rows in embeddings] == audio_positions.sum(-1).tolist()
    for row, rows in enumerate(embeddings):
        torch.testing.assert_close(rows, read[0][row][audio_positions[row]])
    assert not torch.allclose(plain[0], embeddings[0])  # the patch acts on the embeddings handed out


def _two_layer_model(lm: AudioLM, site: SiteKind) -> PatchedModel:
    """Random bases on the last two layers of ``site``: the first critical layer is not the first layer."""
    from calibration.importer import bundle_from_bases

    generator = torch.Generator().manual_seed(7)
    bases = [torch.linalg.qr(torch.randn(lm.site_width(site), 3, generator=generator))[0] for _ in range(2)]
    return PatchedModel(lm, bundle_from_bases(lm, bases, lm.layer_count(site) - 2, site=site))


@torch.inference_mode()
@pytest.mark.parametrize("site", [s for s in SiteKind if s.in_encoder])
def test_replaying_the_critical_layers_gives_the_papers_see_of_an_edited_forward(
    any_lm: AudioLM, site: SiteKind
) -> None:
    model = _two_layer_model(any_lm, site)
    batch = model.chat_batch([[MESSAGE]] * 3, _clips())
    exact = model.score_batch(batch)
    with model.patch.installed():
        with (
            model.recording_critical_layers() as calls,
            model.neutralizing(batch, torch.ones(3), torch.zeros(3, dtype=torch.long)) as readout,
        ):
            any_lm.model(**batch.inputs)
        assert readout is not None
        replayed = model.replay(batch, calls)
    torch.testing.assert_close(replayed.per_layer, exact.per_layer, rtol=1e-5, atol=1e-6)
    inline = readout.report().per_layer
    assert (inline[:, 1] - exact.per_layer[:, 1]).abs().max() > 1e-5  # the edit reached the second layer


@torch.inference_mode()
def test_the_replay_runs_only_the_rows_the_valid_frames_attend_to(any_lm: AudioLM) -> None:
    """Qwen2-Audio masks its window's padding, so the replay cuts it and still gives the paper's SEE; a model
    whose valid frames attend to the padding (or that packs its frames) replays them all."""
    model = _two_layer_model(any_lm, SiteKind.ENCODER_RESIDUAL)
    batch = model.chat_batch([[MESSAGE]] * 3, _clips())
    exact = model.score_batch(batch)
    with model.patch.installed():
        with model.recording_critical_layers() as calls:
            any_lm.model(**batch.inputs)
        recorded = calls.first_input().shape
        replayed_shapes: list[torch.Size] = []
        first = any_lm.model.get_submodule(calls.paths[0])
        handle = first.register_forward_pre_hook(lambda _m, args: replayed_shapes.append(args[0].shape))
        try:
            replayed = model.replay(batch, calls)
        finally:
            handle.remove()
    torch.testing.assert_close(replayed.per_layer, exact.per_layer, rtol=1e-5, atol=1e-6)
    if any_lm.architecture == "Qwen2AudioForConditionalGeneration":
        valid = (batch.encoder_layout.padded_rows(recorded[1]) >= 0).sum(-1)
        assert replayed_shapes == [torch.Size([3, int(valid.max()), recorded[2]])] and valid.max() < recorded[1]
    else:
        assert replayed_shapes == [recorded]


@torch.inference_mode()
def test_a_bundle_hooks_its_layers_wherever_this_transformers_keeps_them(any_lm: AudioLM) -> None:
    """The site and layers are a bundle's identity; its stored paths are where they were at calibration (module
    layouts moved between transformers versions), so a bundle written under another layout scores the same."""
    model = _two_layer_model(any_lm, SiteKind.ENCODER_FFN)
    moved = dataclasses.replace(model.bundle, paths=[f"elsewhere.{path}" for path in model.bundle.paths])
    batch = model.chat_batch([[MESSAGE]] * 3, _clips())
    torch.testing.assert_close(
        PatchedModel(any_lm, moved).score_batch(batch).per_layer, model.score_batch(batch).per_layer
    )
