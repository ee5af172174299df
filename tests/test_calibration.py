"""Calibration end to end on a tiny Qwen2-Audio, the bundle format, and the paper-basis import."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from calibration.data import calibration_segments, load_clip_set
from calibration.importer import bundle_from_bases, read_basis_list
from calibration.pipeline import CalibrationConfig, ClipSet, calibrate
from seen.adapters import load_audio_lm
from seen.basis import BasisOptions
from seen.bundle import BundleError, ModelIdentity, NoiseBundle
from seen.hooks import SiteKind
from seen.noise import generate_noise
from seen.scoring import PatchedModel
from tests.conftest import LIBRISPEECH, speechlike

RELAXED = BasisOptions(alpha=0.99, delta=3.0, delta_mode="chance", center="per_set")


def _noise_set(kind: str, count: int = 10) -> ClipSet:
    clips = [0.1 * generate_noise(kind, 16000 * 2, 16000, seed=i) for i in range(count)]
    return ClipSet(kind, clips, f"synthetic:{kind}")


@pytest.fixture(scope="module")
def calibrated(model_dirs: dict[str, Path]) -> tuple:
    lm = load_audio_lm(str(model_dirs["qwen2_audio"]))
    clean = ClipSet("clean", [speechlike(2.0 + 0.1 * i, seed=i) for i in range(10)], "synthetic:speech")
    result = calibrate(lm, clean, [_noise_set("white"), _noise_set("babble")], CalibrationConfig(basis=RELAXED))
    return lm, result


def test_calibration_builds_orthonormal_bases_and_statistics(calibrated: tuple) -> None:
    lm, result = calibrated
    bundle = result.bundle
    assert set(bundle.profiles) == {"white", "babble", "merged"}
    assert bundle.layers == [p.layer for p in result.localization if p.selected]
    assert not bundle.empty
    for profile in bundle.profiles.values():
        for basis in profile.bases:
            assert basis.shape[0] == lm.site_width(SiteKind.ENCODER_FFN)
            torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-5, rtol=0)
        assert profile.see_clean is not None and profile.see_noise is not None
        assert 0.0 <= profile.see_clean.minimum <= profile.see_clean.maximum <= 1.0
    assert bundle.profiles["white"].clips == 10 and bundle.profiles["merged"].clips == 20
    assert bundle.calibration["options"]["center"] == "per_set"


def test_bundle_round_trip_and_refusals(calibrated: tuple, tmp_path: Path) -> None:
    lm, result = calibrated
    folder = result.bundle.save(tmp_path / "bundle")
    loaded = NoiseBundle.load(folder)
    assert loaded.layers == result.bundle.layers and loaded.paths == result.bundle.paths
    for name, profile in result.bundle.profiles.items():
        for original, restored in zip(profile.bases, loaded.profiles[name].bases, strict=True):
            assert torch.equal(original, restored)
        assert loaded.profiles[name].see_clean == profile.see_clean
    # Scores through a reloaded bundle equal scores through the one in memory.
    clips = [speechlike(1.5, seed=40)]
    assert torch.equal(PatchedModel(lm, loaded).score(clips).see, PatchedModel(lm, result.bundle).score(clips).see)

    wider = ModelIdentity(lm.identity().architecture, {**lm.identity().fingerprint, "encoder_ffn_dim": 5120})
    with pytest.raises(BundleError, match="encoder_ffn_dim: bundle 64, model 5120"):
        loaded.check_model(wider)

    damaged = tmp_path / "damaged"
    result.bundle.save(damaged)
    data = bytearray((damaged / "bases.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (damaged / "bases.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="damaged"):
        NoiseBundle.load(damaged)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version 99"):
        NoiseBundle.load(folder)
    with pytest.raises(BundleError, match="missing"):
        NoiseBundle.load(tmp_path / "nowhere")


def test_bundle_for_another_architecture_is_refused(calibrated: tuple, model_dirs: dict[str, Path]) -> None:
    _, result = calibrated
    omni = load_audio_lm(str(model_dirs["qwen2_5_omni"]))
    with pytest.raises(BundleError, match="architecture: bundle Qwen2AudioForConditionalGeneration"):
        PatchedModel(omni, result.bundle)


def test_explicit_layers_and_decoder_site(model_dirs: dict[str, Path]) -> None:
    lm = load_audio_lm(str(model_dirs["qwen2_5_omni"]))
    clean = ClipSet("clean", [speechlike(1.0 + 0.1 * i, seed=i) for i in range(6)])
    config = CalibrationConfig(site=SiteKind.DECODER_HIDDEN, layers=[1], basis=RELAXED, batch_size=4)
    result = calibrate(lm, clean, [_noise_set("pink", 6)], config)
    assert result.bundle.layers == [1]
    assert result.bundle.paths == [lm.site_path(SiteKind.DECODER_HIDDEN, 1)]
    assert result.bundle.calibration["layer_selection"] == "explicit"
    with pytest.raises(ValueError, match=r"subset of 0\.\.1"):
        calibrate(lm, clean, [_noise_set("pink", 6)], CalibrationConfig(layers=[7]))
    with pytest.raises(ValueError, match="empty"):
        calibrate(lm, ClipSet("clean", []), [_noise_set("pink", 2)], CalibrationConfig())


def test_import_round_trip(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    lm = load_audio_lm(str(model_dirs["qwen2_audio"]))
    generator = torch.Generator().manual_seed(0)
    published = [torch.linalg.qr(torch.randn(64, k, generator=generator))[0] for k in (3, 0)]
    torch.save(published, tmp_path / "bases.pt")
    bundle = bundle_from_bases(lm, read_basis_list(tmp_path / "bases.pt"), start_layer=1 - 1)
    loaded = NoiseBundle.load(bundle.save(tmp_path / "imported"))
    assert loaded.layers == [0, 1]
    assert loaded.paths == ["model.audio_tower.layers.0.activation_fn", "model.audio_tower.layers.1.activation_fn"]
    for original, restored in zip(published, loaded.profiles["paper"].bases, strict=True):
        assert torch.equal(original, restored)
    PatchedModel(lm, loaded).score([speechlike(1.0, seed=1)])
    with pytest.raises(ValueError, match="do not fit"):
        bundle_from_bases(lm, published, start_layer=1)
    with pytest.raises(ValueError, match="not orthonormal"):
        bundle_from_bases(lm, [2 * published[0]], start_layer=0)
    with pytest.raises(ValueError, match=r"shape \(32, 2\)"):
        bundle_from_bases(lm, [torch.zeros(32, 2)], start_layer=0)


def test_import_refuses_pickled_objects(tmp_path: Path) -> None:
    torch.save({"object": datetime.timedelta(days=1)}, tmp_path / "evil.pt")  # any non-tensor global
    with pytest.raises(ValueError, match="weights_only=True"):
        read_basis_list(tmp_path / "evil.pt")


def test_long_clips_are_split_not_truncated(tmp_path: Path) -> None:
    clip = np.ones(16000 * 12, dtype=np.float32) * 0.1
    segments = calibration_segments(clip, 16000, 5.0)
    assert [len(s) for s in segments] == [80000, 80000, 32000]
    assert [len(s) for s in calibration_segments(clip[:83000], 16000, 5.0)] == [80000]  # 0.19 s tail dropped
    sf.write(tmp_path / "a.wav", clip, 16000)
    loaded = load_clip_set("clean", tmp_path, 16000, 5.0)
    assert len(loaded.clips) == 3 and loaded.fingerprint.endswith(":1files")


def test_the_clip_fingerprint_is_of_the_audio_not_the_file(tmp_path: Path) -> None:
    """libsndfile stamps float WAVs with the time they were written: the same audio must fingerprint alike."""
    clip = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    for folder, gain in (("a", 1.0), ("b", 1.0), ("c", 2.0)):
        (tmp_path / folder).mkdir()
        time.sleep(1.1)  # a later second in each file's PEAK chunk
        sf.write(tmp_path / folder / "x.wav", clip * gain, 16000, subtype="FLOAT")
    assert (tmp_path / "a" / "x.wav").read_bytes() != (tmp_path / "b" / "x.wav").read_bytes()
    first, again, louder = (load_clip_set("clean", tmp_path / f, 16000, 5.0).fingerprint for f in "abc")
    assert first == again != louder


@pytest.mark.skipif(not LIBRISPEECH.is_dir(), reason=f"LibriSpeech clips not found at {LIBRISPEECH}")
def test_calibration_on_real_speech(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    lm = load_audio_lm(str(model_dirs["qwen2_audio"]))
    clean = load_clip_set("clean", LIBRISPEECH / "wav", lm.sample_rate, lm.max_clip_seconds)
    assert len(clean.clips) >= 50
    noise = _noise_set("babble", 20)
    result = calibrate(lm, clean, [noise], CalibrationConfig(basis=RELAXED, batch_size=16))
    bundle = NoiseBundle.load(result.bundle.save(tmp_path / "bundle"))
    stats = bundle.profiles["babble"]
    assert stats.see_clean is not None and stats.see_clean.count == len(clean.clips)
    assert bundle.calibration["clean"]["fingerprint"] == clean.fingerprint


@pytest.mark.parametrize("method", ["contrastive", "paired"])
@pytest.mark.parametrize("site", [SiteKind.ENCODER_RESIDUAL, SiteKind.ENCODER_ATTENTION])
def test_other_basis_methods_and_encoder_sites_calibrate_and_serve_through_the_patch(
    model_dirs: dict[str, Path], tmp_path: Path, method: str, site: SiteKind
) -> None:
    lm = load_audio_lm(str(model_dirs["qwen2_audio"]))
    clean = ClipSet("clean", [speechlike(1.5 + 0.1 * i, seed=i) for i in range(6)])
    noise = ClipSet("white", [0.1 * generate_noise("white", 24000, 16000, seed=i) for i in range(6)])
    options = BasisOptions(method=method, max_directions=2)  # type: ignore[arg-type]
    bundle = calibrate(lm, clean, [noise], CalibrationConfig(site=site, basis=options, layers=[0, 1])).bundle
    loaded = NoiseBundle.load(bundle.save(tmp_path / "bundle"))
    assert loaded.site is site and loaded.calibration["options"]["method"] == method
    assert all(0 < k <= 2 for k in loaded.profiles["white"].ranks)
    assert loaded.paths[0].endswith("self_attn" if site is SiteKind.ENCODER_ATTENTION else "layers.0")
    report = PatchedModel(lm, loaded).score([speechlike(1.0, 9), 0.2 * generate_noise("white", 16000, 16000, seed=50)])
    assert bool((report.see >= 0).all() and (report.see <= 1).all())
