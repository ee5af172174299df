"""The HTTP API in-process (httpx on the ASGI app) on the tiny Qwen2-Audio and its calibrated bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seen.noise import generate_noise
from tests.conftest import speechlike
from tests.service_helpers import MODEL_NAME, audio_bytes, chat_body, metric_value, running, serving, settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def paths(model_dirs: dict[str, Path], service_bundle: Path) -> tuple[Path, Path]:
    return model_dirs["qwen2_audio"], service_bundle


async def test_chat_completion_returns_text_usage_and_noise_report(paths: tuple[Path, Path]) -> None:
    async with serving(*paths) as client:
        response = await client.post("/v1/chat/completions", json=chat_body(speechlike(2.0, 1), max_tokens=5))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL_NAME
    choice = body["choices"][0]
    assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 5 and usage["prompt_tokens"] > 10
    report = body["noise_report"]
    assert report["profile"] == "babble" and report["enabled"] and report["strength"] == 1.0
    assert report["see_method"] == "exact" and 0 < report["see"] <= 1
    assert set(report["see_by_profile"]) == {"white", "babble", "merged"}
    assert report["see"] == pytest.approx(report["see_by_profile"]["babble"])
    assert report["dominant_noise"] in ("white", "babble")
    assert [layer["see"] for layer in report["per_layer"]]
    assert report["residual_see"] < report["see"]  # lambda 1 removes the noise component


async def test_seen_off_leaves_the_residual_equal_to_the_input_see(paths: tuple[Path, Path]) -> None:
    clip = speechlike(2.0, 2)
    async with serving(*paths) as client:
        off = (await client.post("/v1/chat/completions", json=chat_body(clip, seen={"enabled": False}))).json()
        on = (await client.post("/v1/chat/completions", json=chat_body(clip, seen={"strength": 0.5}))).json()
    assert off["noise_report"]["enabled"] is False and off["noise_report"]["strength"] == 0.0
    assert off["noise_report"]["residual_see"] == pytest.approx(off["noise_report"]["see"], rel=1e-5)
    assert on["noise_report"]["see"] == pytest.approx(off["noise_report"]["see"], rel=1e-4)  # exact SEE either way
    assert on["noise_report"]["residual_see"] < on["noise_report"]["see"]


async def test_profile_auto_picks_the_dominant_profile(paths: tuple[Path, Path]) -> None:
    async with serving(*paths) as client:
        body = (
            await client.post("/v1/chat/completions", json=chat_body(speechlike(2.0, 3), seen={"profile": "auto"}))
        ).json()
    report = body["noise_report"]
    assert report["profile"] == report["dominant_noise"]
    specific = {name: value for name, value in report["see_by_profile"].items() if name != "merged"}
    assert report["profile"] == max(specific, key=specific.__getitem__)


async def test_streamed_completion_matches_the_chunk_shape(paths: tuple[Path, Path]) -> None:
    body = chat_body(speechlike(1.5, 4), max_tokens=6, stream=True, stream_options={"include_usage": True})
    async with serving(*paths) as client:
        response = await client.post("/v1/chat/completions", json=body)
        plain = (await client.post("/v1/chat/completions", json={**body, "stream": False})).json()
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    finals = [chunk for chunk in chunks if chunk["choices"] and chunk["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["noise_report"]["see"] == pytest.approx(plain["noise_report"]["see"])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert text == plain["choices"][0]["message"]["content"]  # greedy: the stream spells the same text


async def test_stop_sequence_cuts_the_text(paths: tuple[Path, Path]) -> None:
    async with serving(*paths) as client:
        full = (await client.post("/v1/chat/completions", json=chat_body(speechlike(1.0, 5), max_tokens=12))).json()
        text = full["choices"][0]["message"]["content"]
        stop = text[len(text) // 2 : len(text) // 2 + 1]
        assert stop, "the tiny model produced no text to cut"
        cut = await client.post("/v1/chat/completions", json=chat_body(speechlike(1.0, 5), max_tokens=12, stop=[stop]))
    cut_body = cut.json()
    assert cut_body["choices"][0]["message"]["content"] == text[: text.index(stop)]
    assert cut_body["choices"][0]["finish_reason"] == "stop"


async def test_transcription_formats(paths: tuple[Path, Path]) -> None:
    wav = audio_bytes(speechlike(2.0, 6))
    async with serving(*paths) as client:
        results = {}
        for fmt in ("json", "text", "verbose_json"):
            results[fmt] = await client.post(
                "/v1/audio/transcriptions",
                files={"file": ("clip.wav", wav, "audio/wav")},
                data={"model": MODEL_NAME, "response_format": fmt, "language": "en"},
            )
    assert all(r.status_code == 200 for r in results.values()), {k: r.text for k, r in results.items()}
    as_json, verbose = results["json"].json(), results["verbose_json"].json()
    assert isinstance(as_json["text"], str) and 0 <= as_json["noise_report"]["see"] <= 1
    assert results["text"].headers["content-type"].startswith("text/plain")
    assert results["text"].text == as_json["text"]
    assert verbose["task"] == "transcribe" and verbose["language"] == "en"
    assert verbose["duration"] == pytest.approx(2.0) and verbose["noise_report"] == as_json["noise_report"]


async def test_see_endpoint_scores_without_generating(paths: tuple[Path, Path]) -> None:
    clip = speechlike(2.0, 7)
    async with serving(*paths) as client:
        scored = await client.post("/v1/see", json=chat_body(clip, seen={"enabled": False}))
        chat = (await client.post("/v1/chat/completions", json=chat_body(clip, seen={"enabled": False}))).json()
        scrape = (await client.get("/metrics")).text
    assert scored.status_code == 200, scored.text
    report = scored.json()["noise_report"]
    assert scored.json()["object"] == "see.report" and scored.json()["audio_seconds"] == pytest.approx(2.0)
    assert report["residual_see"] is None and all(layer["residual_see"] is None for layer in report["per_layer"])
    assert report["see"] == pytest.approx(chat["noise_report"]["see"], rel=1e-4)
    assert metric_value(scrape, "seen_batch_size_requests_count", kind="score") == 1
    assert metric_value(scrape, "seen_generated_tokens_total") == chat["usage"]["completion_tokens"]


async def test_noisy_input_is_flagged_and_counted(paths: tuple[Path, Path]) -> None:
    noise = 0.1 * generate_noise("babble", 32000, 16000, seed=99)
    async with serving(*paths) as client:
        clean = (await client.post("/v1/see", json=chat_body(speechlike(2.0, 0)))).json()["noise_report"]
        noisy = (await client.post("/v1/see", json=chat_body(noise))).json()["noise_report"]
        scrape = (await client.get("/metrics")).text
    assert noisy["see"] > clean["see"] and noisy["threshold"] == clean["threshold"]
    assert noisy["noisy"] is True and clean["noisy"] is False
    assert metric_value(scrape, "seen_noisy_requests_total", noise_type=noisy["dominant_noise"]) == 1
    assert metric_value(scrape, "seen_input_see_ratio_count", profile="babble") == 2


async def test_adaptive_mode_leaves_clean_input_untouched(paths: tuple[Path, Path]) -> None:
    noise = 0.1 * generate_noise("babble", 32000, 16000, seed=98)
    calibration_clean = [speechlike(2.0 + 0.1 * i, seed=i) for i in range(10)]  # the bundle's clean set
    async with serving(*paths, adaptive=True) as client:
        scores = [(await client.post("/v1/see", json=chat_body(c))).json()["noise_report"] for c in calibration_clean]
        median = calibration_clean[int(np.argsort([r["see"] for r in scores])[5])]
        clean = (await client.post("/v1/chat/completions", json=chat_body(median))).json()
        noisy = (await client.post("/v1/chat/completions", json=chat_body(noise))).json()
    assert clean["noise_report"]["strength"] == 0.0
    assert clean["noise_report"]["residual_see"] == pytest.approx(clean["noise_report"]["see"], rel=1e-5)
    assert noisy["noise_report"]["strength"] > 0.5


async def test_several_audio_parts_are_averaged_and_long_audio_chunked(paths: tuple[Path, Path]) -> None:
    one, two = speechlike(1.0, 10), speechlike(1.5, 11)
    async with serving(*paths, chunk_long_audio=True, max_audio_seconds=20) as client:
        both = (await client.post("/v1/see", json=chat_body(one, two))).json()["noise_report"]
        first = (await client.post("/v1/see", json=chat_body(one))).json()["noise_report"]
        second = (await client.post("/v1/see", json=chat_body(two))).json()["noise_report"]
        window = client  # the tiny model's window is 5 s: 12 s becomes three parts, none dropped
        long = await window.post("/v1/see", json=chat_body(speechlike(12.0, 12)))
    assert both["clips"] == 2
    assert both["see"] == pytest.approx((first["see"] + second["see"]) / 2, rel=1e-4)
    assert long.status_code == 200 and long.json()["noise_report"]["clips"] == 3
    assert long.json()["audio_seconds"] == pytest.approx(12.0)


async def test_models_health_and_ready(paths: tuple[Path, Path]) -> None:
    async with serving(*paths) as client:
        models = (await client.get("/v1/models")).json()
        one = (await client.get(f"/v1/models/{MODEL_NAME}")).json()
        health, ready = await client.get("/health"), await client.get("/ready")
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL_NAME]
    assert one["noise_profiles"] == ["white", "babble", "merged"] and one["default_profile"] == "babble"
    assert health.status_code == 200 and ready.status_code == 200


async def test_text_only_chat_has_no_noise_report(paths: tuple[Path, Path]) -> None:
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3}
    async with serving(*paths) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200 and response.json()["noise_report"] is None


def test_see_buckets_resolve_clean_and_noisy_ranges(service_bundle: Path) -> None:
    from seen.bundle import NoiseBundle
    from service.metrics import see_buckets

    bundle = NoiseBundle.load(service_bundle)
    edges = see_buckets(bundle)
    profile = bundle.profiles["babble"]
    assert profile.see_clean is not None and profile.see_noise is not None
    for stats in (profile.see_clean, profile.see_noise):
        inside = [e for e in edges if stats.quantiles["p05"] <= e <= stats.quantiles["p99"]]
        assert len(inside) >= 4, (stats, edges)
    assert edges == sorted(edges) and edges[-1] == 1.0
    assert see_buckets(bundle, [0.1, 0.2]) == [0.1, 0.2]
    assert np.all(np.diff(edges) > 0)


@pytest.mark.parametrize("architecture", ["qwen2_5_omni", "voxtral"])
async def test_the_other_architectures_serve(architecture: str, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    from calibration.pipeline import CalibrationConfig, ClipSet, calibrate
    from seen.adapters import load_audio_lm
    from seen.basis import BasisOptions

    lm = load_audio_lm(str(model_dirs[architecture]))
    clean = ClipSet("clean", [speechlike(2.0 + 0.1 * i, seed=i) for i in range(6)], "synthetic:speech")
    noise = ClipSet("babble", [0.1 * generate_noise("babble", 32000, 16000, seed=i) for i in range(6)], "babble")
    options = BasisOptions(alpha=0.99, delta=0.9, center="per_set")
    calibrated = calibrate(lm, clean, [noise], CalibrationConfig(basis=options)).bundle
    assert sum(calibrated.profiles["merged"].ranks) > 0, "an empty basis would make the SEE checks trivial"
    bundle = calibrated.save(tmp_path / "bundle")
    one, two = speechlike(2.0, 50), speechlike(1.0, 51)
    async with serving(model_dirs[architecture], bundle) as client:
        chat = await client.post("/v1/chat/completions", json=chat_body(one, two, seen={"enabled": False}))
        first = (await client.post("/v1/see", json=chat_body(one))).json()["noise_report"]
        second = (await client.post("/v1/see", json=chat_body(two))).json()["noise_report"]
        stream = await client.post("/v1/chat/completions", json=chat_body(one, stream=True))
    assert chat.status_code == 200, chat.text
    report = chat.json()["noise_report"]
    assert report["clips"] == 2 and first["see"] != pytest.approx(second["see"], abs=1e-4)
    assert report["see"] == pytest.approx((first["see"] + second["see"]) / 2, abs=1e-5)
    assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")


async def test_readiness_queue_capacity_and_calibrated_ranges_are_exported(paths: tuple[Path, Path]) -> None:
    from prometheus_client import generate_latest

    from seen.bundle import NoiseBundle
    from service.app import create_app

    app = create_app(settings(*paths, max_queue_size=12))
    before = generate_latest(app.state.service.metrics.registry).decode()
    assert f'seen_ready{{model_name="{MODEL_NAME}"}} 0.0' in before  # exported, and 0 while the model loads
    async with running(app) as client:
        scrape = (await client.get("/metrics")).text
    assert metric_value(scrape, "seen_ready", model_name=MODEL_NAME) == 1
    assert metric_value(scrape, "seen_queue_capacity_requests", model_name=MODEL_NAME) == 12
    bundle = NoiseBundle.load(paths[1])
    thresholds = app.state.service.policy.thresholds
    for name, profile in bundle.profiles.items():
        assert profile.see_clean is not None and profile.see_noise is not None
        for condition, stats in (("clean", profile.see_clean), ("noise", profile.see_noise)):
            for quantile, value in stats.quantiles.items():
                labels = {"profile": name, "condition": condition, "percentile": quantile}
                assert metric_value(scrape, "seen_calibrated_see_ratio", **labels) == pytest.approx(value)
        assert metric_value(scrape, "seen_noisy_threshold_ratio", profile=name) == pytest.approx(thresholds[name])


async def test_clips_of_a_few_milliseconds_are_answered(paths: tuple[Path, Path]) -> None:
    """2 to 960 samples used to fail inside the processor (500); they are valid audio and are answered."""
    async with serving(*paths) as client:
        for samples in (2, 480, 960):
            clip = speechlike(1.0, samples)[:samples]
            chat = await client.post("/v1/chat/completions", json=chat_body(clip))
            files = {"file": ("a.wav", audio_bytes(clip), "audio/wav")}
            transcribed = await client.post("/v1/audio/transcriptions", data={"model": MODEL_NAME}, files=files)
            assert chat.status_code == 200, chat.text
            assert transcribed.status_code == 200, transcribed.text
            assert chat.json()["noise_report"]["clips"] == 1


async def test_noisy_input_is_answered_marked_or_refused_as_asked(paths: tuple[Path, Path]) -> None:
    clip = speechlike(1.0, 11)
    upload = {"file": ("a.wav", audio_bytes(clip), "audio/wav")}
    async with serving(*paths, noisy_threshold=0.0, on_noisy="refuse") as client:  # every clip counts as noisy
        refused = await client.post("/v1/chat/completions", json=chat_body(clip))
        streamed = await client.post("/v1/chat/completions", json=chat_body(clip, stream=True))
        transcription = await client.post("/v1/audio/transcriptions", data={"model": MODEL_NAME}, files=upload)
        answered = await client.post("/v1/chat/completions", json=chat_body(clip, seen={"on_noisy": "answer"}))
        marked = await client.post("/v1/chat/completions", json=chat_body(clip, seen={"on_noisy": "mark"}))
        scrape = (await client.get("/metrics")).text
    for response in (refused, streamed, transcription):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "noisy_audio" and "somewhere quieter" in error["message"]
    assert metric_value(scrape, "seen_rejected_requests_total", reason="noisy_audio") == 3
    assert answered.status_code == 200 and answered.json()["noisy_input"] is None
    assert answered.json()["noise_report"]["noisy"] is True
    assert marked.status_code == 200 and marked.json()["noisy_input"] is True
    async with serving(*paths, noisy_threshold=1.0, on_noisy="refuse") as client:  # nothing is noisy
        quiet = await client.post("/v1/chat/completions", json=chat_body(clip, seen={"on_noisy": "mark"}))
        clean = await client.post("/v1/chat/completions", json=chat_body(clip))
    assert quiet.status_code == 200 and quiet.json()["noisy_input"] is None
    assert clean.status_code == 200 and clean.json()["noise_report"]["noisy"] is False


async def test_the_served_default_scores_and_flags_without_editing(paths: tuple[Path, Path]) -> None:
    """SEEN is off unless asked for (the SEEN study found no configuration that helps real Whisper)."""
    from service.app import create_app
    from service.config import Settings

    model, bundle = paths
    app = create_app(Settings(model=str(model), bundle=str(bundle), served_model_name=MODEL_NAME))
    async with running(app) as client:
        plain = (await client.post("/v1/chat/completions", json=chat_body(speechlike(1.0, 3)))).json()
        asked = (
            await client.post("/v1/chat/completions", json=chat_body(speechlike(1.0, 3), seen={"enabled": True}))
        ).json()
    assert plain["noise_report"]["enabled"] is False and plain["noise_report"]["strength"] == 0.0
    assert plain["noise_report"]["residual_see"] == pytest.approx(plain["noise_report"]["see"], rel=1e-5)
    assert (
        asked["noise_report"]["enabled"] is True
        and asked["noise_report"]["residual_see"] < asked["noise_report"]["see"]
    )
