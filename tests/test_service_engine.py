"""Concurrency, micro-batching and metrics of the running service; settings from the environment."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from service.config import Settings
from tests.conftest import speechlike
from tests.service_helpers import MODEL_NAME, chat_body, metric_value, serving

pytestmark = pytest.mark.anyio


@pytest.fixture
def paths(model_dirs: dict[str, Path], service_bundle: Path) -> tuple[Path, Path]:
    return model_dirs["qwen2_audio"], service_bundle


async def test_overload_answers_every_request_and_the_metrics_count_them(paths: tuple[Path, Path]) -> None:
    sent = 24
    async with serving(*paths, max_queue_size=4, max_batch_size=2, batch_wait_seconds=0.01) as client:
        bodies = [chat_body(speechlike(1.0 + 0.05 * i, i), max_tokens=30) for i in range(sent)]
        responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))
        scrape = (await client.get("/metrics")).text
    statuses = [r.status_code for r in responses]
    assert len(responses) == sent and set(statuses) <= {200, 503}
    ok, refused = statuses.count(200), statuses.count(503)
    assert ok >= 4 and refused >= 1, statuses  # the queue of 4 overflowed and was still served
    endpoint = "/v1/chat/completions"
    assert metric_value(scrape, "seen_requests_total", endpoint=endpoint, status="200") == ok
    assert metric_value(scrape, "seen_requests_total", endpoint=endpoint, status="503") == refused
    assert metric_value(scrape, "seen_rejected_requests_total", reason="queue_full") == refused
    assert metric_value(scrape, "seen_request_duration_seconds_count", endpoint=endpoint) == sent
    assert metric_value(scrape, "seen_queue_wait_seconds_count") == ok
    assert metric_value(scrape, "seen_batch_size_requests_sum", kind="generate") == ok
    # audio is counted for answered requests only: the refused ones never reached the model
    assert metric_value(scrape, "seen_audio_duration_seconds_count", endpoint="chat") == ok
    tokens = sum(r.json()["usage"]["completion_tokens"] for r in responses if r.status_code == 200)
    assert metric_value(scrape, "seen_generated_tokens_total") == tokens
    assert metric_value(scrape, "seen_requests_in_flight") == 1  # the scrape itself
    assert metric_value(scrape, "seen_queue_depth_requests") == 0


async def test_a_batch_gives_each_clip_the_see_it_gets_alone(paths: tuple[Path, Path]) -> None:
    clips = [speechlike(1.0 + 0.4 * i, 20 + i) for i in range(4)]
    async with serving(*paths, max_batch_size=4, batch_wait_seconds=0.3) as client:
        alone = []
        for clip in clips:
            alone.append((await client.post("/v1/chat/completions", json=chat_body(clip))).json())
        together = await asyncio.gather(*(client.post("/v1/chat/completions", json=chat_body(c)) for c in clips))
        scores = await asyncio.gather(*(client.post("/v1/see", json=chat_body(c)) for c in clips))
        scrape = (await client.get("/metrics")).text
    assert metric_value(scrape, "seen_batch_size_requests_count", kind="generate") == len(clips) + 1
    assert metric_value(scrape, "seen_batch_size_requests_sum", kind="generate") == 2 * len(clips)
    assert metric_value(scrape, "seen_batch_size_requests_count", kind="score") == 1
    values = [report["noise_report"]["see"] for report in alone]
    assert len({round(v, 6) for v in values}) == len(clips)  # different clips, different SEE
    for single, batched, scored in zip(alone, together, scores, strict=True):
        for key in ("see", "residual_see"):
            assert batched.json()["noise_report"][key] == pytest.approx(single["noise_report"][key], abs=1e-5)
        assert scored.json()["noise_report"]["see"] == pytest.approx(single["noise_report"]["see"], abs=1e-5)


async def test_requests_with_different_sampling_are_run_apart(paths: tuple[Path, Path]) -> None:
    clip = speechlike(1.0, 30)
    async with serving(*paths, max_batch_size=4, batch_wait_seconds=0.3) as client:
        greedy, sampled = await asyncio.gather(
            client.post("/v1/chat/completions", json=chat_body(clip, max_tokens=6)),
            client.post("/v1/chat/completions", json=chat_body(clip, max_tokens=6, temperature=0.9, seed=1)),
        )
        again = await client.post("/v1/chat/completions", json=chat_body(clip, max_tokens=6, temperature=0.9, seed=1))
        scrape = (await client.get("/metrics")).text
    assert greedy.status_code == sampled.status_code == 200
    assert metric_value(scrape, "seen_batch_size_requests_count", kind="generate") == 3  # two groups, then one
    assert again.json()["choices"] == sampled.json()["choices"]  # the seed reproduces the sample


async def test_a_scrape_passes_promtool(paths: tuple[Path, Path]) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package 'prometheus') is required; .ci/run installs it"
    async with serving(*paths) as client:
        await client.post("/v1/chat/completions", json=chat_body(speechlike(1.0, 40)))
        await client.post("/v1/see", json=chat_body(speechlike(1.0, 41)))
        await client.post("/v1/see", json={"model": "nope"})
        scrape = (await client.get("/metrics")).text
    checked = subprocess.run([promtool, "check", "metrics"], input=scrape, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for name in (
        "seen_input_see_ratio_bucket",
        "seen_residual_see_ratio_bucket",
        "seen_encoder_duration_seconds_bucket",
        "seen_generation_duration_seconds_bucket",
        "seen_build_info",
    ):
        assert metric_value(scrape, name, model_name="tiny-qwen2-audio") > 0, name


def test_settings_come_from_the_environment_and_a_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "seen.toml"
    config.write_text('model = "from-file"\nbundle = "bundle-from-file"\nmax_batch_size = 3\napi_keys = ["a"]\n')
    monkeypatch.setenv("SEEN_CONFIG_FILE", str(config))
    monkeypatch.setenv("SEEN_MAX_BATCH_SIZE", "5")
    monkeypatch.setenv("SEEN_API_KEYS", "k1, k2")
    monkeypatch.setenv("SEEN_SEE_BUCKETS", "0.1,0.2,0.5")
    settings = Settings(port=9000)
    assert settings.model == "from-file" and settings.bundle == "bundle-from-file"
    assert settings.max_batch_size == 5 and settings.port == 9000
    assert settings.api_keys == ["k1", "k2"] and settings.see_buckets == [0.1, 0.2, 0.5]
    assert settings.model_name == "from-file"
    monkeypatch.setenv("SEEN_SEE_BUCKETS", "0.5,0.2")
    with pytest.raises(ValueError, match="strictly increasing"):
        Settings()
    monkeypatch.setenv("SEEN_CONFIG_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(FileNotFoundError, match=r"missing\.toml"):
        Settings()


def test_a_settings_file_given_as_an_argument_changes_nothing_global(tmp_path: Path) -> None:
    import os

    config = tmp_path / "seen.toml"
    config.write_text('model = "from-file"\nbundle = "bundle-from-file"\nmax_batch_size = 3\n')
    settings = Settings.load(str(config), port=9001)
    assert settings.model == "from-file" and settings.max_batch_size == 3 and settings.port == 9001
    assert isinstance(settings, Settings) and "SEEN_CONFIG_FILE" not in os.environ
    assert Settings().model != "from-file"  # the next settings object does not see the file
    with pytest.raises(FileNotFoundError, match=r"missing\.toml is not a file"):
        Settings.load(str(tmp_path / "missing.toml"))


def test_device_and_dtype_have_one_meaning_everywhere() -> None:
    import torch

    from seen.adapters import resolve_device, resolve_dtype

    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("auto", "cuda:0") is torch.bfloat16
    assert resolve_dtype("checkpoint", "cpu") == "auto" and resolve_dtype("float16", "cpu") is torch.float16
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_incremental_decoding_streams_whole_characters_and_adds_up(model_dirs: dict[str, Path]) -> None:
    """Byte-level tokens split 'é' and emoji over several ids: no delta carries half a character."""
    from transformers import AutoTokenizer

    from service.engine.streaming import IncrementalDecoder

    tokenizer = AutoTokenizer.from_pretrained(model_dirs["qwen2_audio"])
    text = "café, naïve 🚗 déjà vu"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # multi-byte characters take several tokens
    decoder = IncrementalDecoder(lambda tokens: tokenizer.decode(list(tokens), skip_special_tokens=True))
    deltas = [decoder.push([token]) for token in ids]
    assert "".join(deltas) == text
    assert not any("\ufffd" in delta for delta in deltas)
    assert sum(1 for delta in deltas if delta == "") >= 4  # held back inside multi-byte characters


async def test_a_full_queue_refuses_before_any_audio_is_decoded(
    paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission comes first: under overload even undecodable audio gets the 503, not a 400 after decoding."""
    from service.app import create_app
    from service.engine.engine import Engine
    from tests.service_helpers import running, settings

    app = create_app(settings(*paths))
    async with running(app) as client:
        monkeypatch.setattr(Engine, "at_capacity", property(lambda self: True))
        garbage = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": [garbage]}]}
        response = await client.post("/v1/chat/completions", json=body)
        scored = await client.post("/v1/see", json=body)
    for refused in (response, scored):
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
        assert refused.headers["retry-after"]


def test_the_server_listens_on_this_machine_unless_told() -> None:
    """Only the container image opens the port to the network (its environment sets SEEN_HOST=0.0.0.0)."""
    from dockerfile_parse import DockerfileParser

    assert Settings(model="m", bundle="b").host == "127.0.0.1"
    dockerfile = DockerfileParser(path=str(Path(__file__).resolve().parents[1] / "Dockerfile"))
    assert "SEEN_HOST=0.0.0.0" in dockerfile.content
