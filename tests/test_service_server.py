"""The real server in a subprocess (``seen serve`` and ``python -m service``), driven over loopback.

The OpenAI SDK talks to it as it would to OpenAI; raw ``httpx`` covers the service's own endpoints.
Separate processes check the graceful shutdown and the start-up refusals.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from demo.clips import EXAMPLE_SENTENCE
from seen.bundle import NoiseBundle
from tests.conftest import speechlike
from tests.service_helpers import (
    HOST,
    MODEL_NAME,
    READY_TIMEOUT_SECONDS,
    ROOT,
    Server,
    audio_bytes,
    audio_part,
    chat_body,
    environment,
    free_port,
    metric_value,
)

EXIT_TIMEOUT_SECONDS = 60.0
MAX_TOKENS_DEFAULT = 8
RATE = 16000
CHAT_ENDPOINT = "/v1/chat/completions"


def serve_command(model: Path, bundle: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "cli.main", "serve",
        "--model", str(model),
        "--bundle", str(bundle),
        "--served-model-name", MODEL_NAME,
        "--host", HOST,
        "--port", str(port),
        "--max-tokens-default", str(MAX_TOKENS_DEFAULT),
        "--device", "cpu",
        "--seen-enabled",  # most tests check what SEEN does; the served default (off) is tested on its own
        *extra,
    ]  # fmt: skip


def sdk_client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60.0)


def user_messages(clip: np.ndarray, text: str = "What is said?") -> list[ChatCompletionMessageParam]:
    content = [audio_part(clip, RATE), {"type": "text", "text": text}]
    return [cast(ChatCompletionMessageParam, {"role": "user", "content": content})]


def extra(model: Any) -> dict[str, Any]:
    """The fields an SDK object kept beyond OpenAI's schema."""
    fields = model.model_extra
    assert fields is not None
    return dict(fields)


def check_report(report: dict[str, Any], *, profile: str, enabled: bool, strength: float, clips: int = 1) -> None:
    assert 0.0 <= report["see"] <= 1.0
    assert report["profile"] == profile
    assert report["enabled"] is enabled
    assert report["strength"] == pytest.approx(strength)
    assert report["clips"] == clips
    assert report["per_layer"], "the report names no critical layer"
    for layer in report["per_layer"]:
        assert isinstance(layer["layer"], int)
        assert 0.0 <= layer["see"] <= 1.0
    assert set(report["see_by_profile"]) >= {"white", "babble"}
    assert report["see_by_profile"][profile] == pytest.approx(report["see"])


def check_clean_exit(server: Server, code: int) -> None:
    """The app's shutdown ran to its end, and the process reports a clean exit with code 0."""
    output = server.output()
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output
    assert code == 0, output


# -- the shared server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_profile(service_bundle: Path) -> str:
    """The profile the server neutralizes with when a request names none: the bundle's default."""
    return NoiseBundle.load(service_bundle).default_profile


@pytest.fixture(scope="module")
def default_strength(service_bundle: Path) -> float:
    return NoiseBundle.load(service_bundle).default_strength


@pytest.fixture(scope="module")
def server(
    model_dirs: dict[str, Path], service_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    running = Server.start(serve_command(model_dirs["qwen2_audio"], service_bundle, port), port, log)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def sdk(server: Server) -> Iterator[openai.OpenAI]:
    client = sdk_client(server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        yield client


def test_chat_completion_with_audio_reports_noise(sdk: openai.OpenAI, default_profile: str) -> None:
    messages = user_messages(speechlike(1.5, seed=11))
    completion = sdk.chat.completions.create(
        model=MODEL_NAME,
        messages=messages,
        max_tokens=6,
        extra_body={"seen": {"enabled": True, "strength": 1.0}},
    )
    assert completion.object == "chat.completion"
    assert completion.model == MODEL_NAME
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert isinstance(choice.message.content, str)
    assert choice.message.role == "assistant"
    assert choice.finish_reason in {"stop", "length"}
    usage = completion.usage
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens > 10  # the audio's placeholder tokens are part of the prompt
    assert 1 <= usage.completion_tokens <= 6
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 6

    report = extra(completion)["noise_report"]
    assert report == completion.to_dict()["noise_report"]
    check_report(report, profile=default_profile, enabled=True, strength=1.0)
    assert report["residual_see"] == pytest.approx(0.0, abs=1e-4)  # lambda 1 removes the whole noise component

    # The same audio without SEEN, and at half strength: the input's SEE is the same, what is left differs.
    off = sdk.chat.completions.create(
        model=MODEL_NAME,
        messages=messages,
        max_tokens=2,
        extra_body={"seen": {"enabled": False}},
    )
    off_report = extra(off)["noise_report"]
    check_report(off_report, profile=default_profile, enabled=False, strength=0.0)
    assert off_report["see"] == pytest.approx(report["see"], abs=1e-5)
    assert off_report["residual_see"] == pytest.approx(off_report["see"], abs=1e-5)
    half = sdk.chat.completions.create(
        model=MODEL_NAME,
        messages=messages,
        max_tokens=2,
        extra_body={"seen": {"strength": 0.5}},
    )
    half_report = extra(half)["noise_report"]
    check_report(half_report, profile=default_profile, enabled=True, strength=0.5)
    assert 0.0 < half_report["residual_see"] < half_report["see"]

    # A profile named by the request wins over the default; the input's SEE is then that profile's.
    other = next(name for name in ("white", "babble") if name != default_profile)
    named = sdk.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=2, extra_body={"seen": {"profile": other}}
    )
    named_report = extra(named)["noise_report"]
    assert named_report["profile"] == other
    assert named_report["see"] == pytest.approx(report["see_by_profile"][other], abs=1e-5)
    assert named_report["see_by_profile"] == pytest.approx(report["see_by_profile"], abs=1e-5)


def test_streamed_completion_matches_the_plain_one(
    sdk: openai.OpenAI, default_profile: str, default_strength: float
) -> None:
    messages = user_messages(speechlike(1.2, seed=5), "Describe the audio.")
    plain = sdk.chat.completions.create(model=MODEL_NAME, messages=messages)
    stream = sdk.chat.completions.create(
        model=MODEL_NAME,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert len({chunk.id for chunk in chunks}) == 1
    assert all(chunk.object == "chat.completion.chunk" and chunk.model == MODEL_NAME for chunk in chunks)
    with_choices = [chunk for chunk in chunks if chunk.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    deltas = [chunk.choices[0].delta.content for chunk in with_choices]
    assert all(delta is None or isinstance(delta, str) for delta in deltas)
    text = "".join(delta or "" for delta in deltas)
    assert isinstance(plain.choices[0].message.content, str)
    assert text == plain.choices[0].message.content  # greedy decoding: the stream spells the same completion

    finished = [chunk for chunk in with_choices if chunk.choices[0].finish_reason is not None]
    assert len(finished) == 1
    final = finished[0]
    assert final.choices[0].finish_reason == plain.choices[0].finish_reason
    report = extra(final)["noise_report"]
    check_report(report, profile=default_profile, enabled=True, strength=default_strength)  # the server's defaults
    assert report["see"] == pytest.approx(extra(plain)["noise_report"]["see"], abs=1e-5)

    usage_chunk = chunks[-1]
    assert usage_chunk is not final
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None and plain.usage is not None
    assert usage_chunk.usage.completion_tokens == plain.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == plain.usage.prompt_tokens
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + usage_chunk.usage.completion_tokens
    assert 1 <= usage_chunk.usage.completion_tokens <= MAX_TOKENS_DEFAULT  # no max_tokens: the server's default
    if final.choices[0].finish_reason == "length":
        assert usage_chunk.usage.completion_tokens == MAX_TOKENS_DEFAULT
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_transcriptions(sdk: openai.OpenAI, default_profile: str, default_strength: float) -> None:
    seconds = 1.25
    wav = audio_bytes(speechlike(seconds, seed=1), RATE)
    verbose = sdk.audio.transcriptions.create(model=MODEL_NAME, file=("clip.wav", wav), response_format="verbose_json")
    assert isinstance(verbose.text, str)
    assert verbose.duration == pytest.approx(seconds, abs=0.01)
    assert verbose.language == "unknown"
    check_report(extra(verbose)["noise_report"], profile=default_profile, enabled=True, strength=default_strength)

    text = sdk.audio.transcriptions.create(model=MODEL_NAME, file=("clip.wav", wav), response_format="text")
    assert isinstance(text, str)
    assert text == verbose.text

    plain = sdk.audio.transcriptions.create(model=MODEL_NAME, file=("clip.wav", wav))
    assert plain.text == verbose.text
    assert extra(plain)["noise_report"]["see"] == pytest.approx(extra(verbose)["noise_report"]["see"], abs=1e-5)


def test_see_ready_and_metrics(
    http: httpx.Client, sdk: openai.OpenAI, default_profile: str, default_strength: float
) -> None:
    seconds = 1.5
    response = http.post("/v1/see", json=chat_body(speechlike(seconds, seed=3)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "see.report"
    assert body["model"] == MODEL_NAME
    assert body["audio_seconds"] == pytest.approx(seconds, abs=0.01)
    assert body["noise_report"]["residual_see"] is None  # scored only, nothing neutralized
    check_report(body["noise_report"], profile=default_profile, enabled=True, strength=default_strength)

    ready = http.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model": MODEL_NAME}

    def chat_successes() -> float:
        return metric_value(http.get("/metrics").text, "seen_requests_total", endpoint=CHAT_ENDPOINT, status="200")

    before = chat_successes()
    for seed in (21, 22):
        sdk.chat.completions.create(
            model=MODEL_NAME,
            messages=user_messages(speechlike(0.8, seed=seed)),
            max_tokens=2,
        )

    scrape = http.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    text = scrape.text
    assert "seen_requests_total" in text
    assert f'model_name="{MODEL_NAME}"' in text
    assert metric_value(text, "seen_requests_total", model_name=MODEL_NAME) >= 3
    successes = metric_value(text, "seen_requests_total", endpoint=CHAT_ENDPOINT, status="200")
    assert successes >= 2
    assert successes >= before + 2
    assert metric_value(text, "seen_requests_total", endpoint="/v1/see", status="200") >= 1
    assert metric_value(text, "seen_build_info", model_name=MODEL_NAME) == 1


# -- processes of their own -------------------------------------------------------------------------


@dataclass
class Outcome:
    response: httpx.Response | None = None
    events: list[str] | None = None
    error: BaseException | None = None


def post_chat(url: str, body: dict[str, Any], outcome: Outcome) -> None:
    try:
        outcome.response = httpx.post(f"{url}{CHAT_ENDPOINT}", json=body, timeout=EXIT_TIMEOUT_SECONDS)
    except BaseException as error:
        outcome.error = error


def stream_chat(url: str, body: dict[str, Any], outcome: Outcome) -> None:
    try:
        with httpx.stream("POST", f"{url}{CHAT_ENDPOINT}", json=body, timeout=EXIT_TIMEOUT_SECONDS) as response:
            outcome.response = response
            outcome.events = [line for line in response.iter_lines() if line]
    except BaseException as error:
        outcome.error = error


def test_sigterm_lets_in_flight_requests_finish(
    model_dirs: dict[str, Path], service_bundle: Path, tmp_path: Path
) -> None:
    port = free_port()
    server = Server.start(serve_command(model_dirs["qwen2_audio"], service_bundle, port), port, tmp_path / "server.log")
    try:
        server.wait_ready()
        long_tokens = 1000  # seconds of decoding on a CPU: still running when the signal comes
        plain, streamed = Outcome(), Outcome()
        threads = [
            threading.Thread(
                target=post_chat, args=(server.url, chat_body(speechlike(1.0, seed=2), max_tokens=long_tokens), plain)
            ),
            threading.Thread(
                target=stream_chat,
                args=(server.url, chat_body(speechlike(1.0, seed=4), max_tokens=long_tokens, stream=True), streamed),
            ),
        ]
        for thread in threads:
            thread.start()
        server.wait_in_flight(3)  # both requests, plus the scrape that reads the gauge
        server.process.send_signal(signal.SIGTERM)
        assert all(thread.is_alive() for thread in threads), "a request finished before the signal"

        # While draining, the server takes no new connection.
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{server.url}/health", timeout=1.0)
            except httpx.ConnectError:
                break
            assert time.monotonic() < deadline, "the server still accepts connections after SIGTERM"
            time.sleep(0.05)
        draining = any(thread.is_alive() for thread in threads)

        for thread in threads:
            thread.join(EXIT_TIMEOUT_SECONDS)
        assert not any(thread.is_alive() for thread in threads)
        assert plain.error is None, plain.error
        assert plain.response is not None
        assert plain.response.status_code == 200, plain.response.text
        result = plain.response.json()
        usage = result["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        finish = result["choices"][0]["finish_reason"]
        assert finish in {"stop", "length"}
        if finish == "length":
            assert usage["completion_tokens"] == long_tokens
        assert isinstance(result["choices"][0]["message"]["content"], str)

        assert streamed.error is None, streamed.error
        assert streamed.response is not None and streamed.response.status_code == 200
        assert streamed.events is not None
        assert streamed.events[-1] == "data: [DONE]"  # the stream ran to its end, not cut at shutdown
        assert not any('"error"' in event for event in streamed.events)

        code = server.process.wait(EXIT_TIMEOUT_SECONDS)
        assert draining, "the in-flight requests were done before the server stopped listening"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health", timeout=2.0)
        check_clean_exit(server, code)
    finally:
        server.stop()


def test_python_m_service_reads_the_environment(
    model_dirs: dict[str, Path], service_bundle: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = environment(
        SEEN_MODEL=str(model_dirs["qwen2_audio"]),
        SEEN_BUNDLE=str(service_bundle),
        SEEN_PORT=str(port),
        SEEN_HOST=HOST,
        SEEN_SERVED_MODEL_NAME=MODEL_NAME,
        SEEN_DEVICE="cpu",
        SEEN_MAX_TOKENS_DEFAULT="3",
    )
    server = Server.start([sys.executable, "-m", "service"], port, tmp_path / "server.log", env)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            models = http.get("/v1/models")
            assert models.status_code == 200
            cards = models.json()["data"]
            assert [card["id"] for card in cards] == [MODEL_NAME]
            assert set(cards[0]["noise_profiles"]) >= {"white", "babble"}
            assert cards[0]["default_profile"] == NoiseBundle.load(service_bundle).default_profile
            assert http.get(f"/v1/models/{MODEL_NAME}").status_code == 200
            missing = http.get("/v1/models/another-model")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "model_not_found"

        sdk = sdk_client(server)
        try:
            assert [model.id for model in sdk.models.list()] == [MODEL_NAME]
            completion = sdk.chat.completions.create(
                model=MODEL_NAME,
                messages=user_messages(speechlike(0.8, seed=8)),
            )
        finally:
            sdk.close()
        assert completion.usage is not None
        assert 1 <= completion.usage.completion_tokens <= 3  # SEEN_MAX_TOKENS_DEFAULT
        if completion.choices[0].finish_reason == "length":
            assert completion.usage.completion_tokens == 3
        check_clean_exit(server, server.stop())
    finally:
        server.stop()


def test_serve_refuses_a_bundle_made_for_another_model(
    model_dirs: dict[str, Path], service_bundle: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    command = [
        sys.executable, "-m", "cli.main", "serve",
        "--model", str(model_dirs["voxtral"]),
        "--bundle", str(service_bundle),
        "--host", HOST,
        "--port", str(port),
        "--device", "cpu",
    ]  # fmt: skip
    server = Server.start(command, port, log)
    try:
        code = server.process.wait(READY_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        server.stop()
        pytest.fail(f"the server kept running with a bundle of another model; its log:\n{server.output()}")
    output = server.output()
    assert code != 0, output
    assert code == 1, output  # serve(): 1 when the model could not be loaded
    assert "bundle does not match the model" in output
    assert "VoxtralForConditionalGeneration" in output  # the refusal names the difference


def test_serve_rejects_a_missing_bundle(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve", "--model", "X", "--bundle", str(missing)],
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_SECONDS,
    )
    assert result.returncode == 2, result.stderr
    assert "seen serve: error:" in result.stderr
    assert "not a noise bundle" in result.stderr
    assert "Traceback" not in result.stderr


def test_seen_serve_with_no_model_option_serves_the_demo_model(tmp_path: Path) -> None:
    """The README's quick start: no model or bundle option, the bundled example clip, a transcription."""
    port = free_port()
    command = [sys.executable, "-m", "cli.main", "serve", "--host", HOST, "--port", str(port), "--device", "cpu"]
    server = Server.start(command, port, tmp_path / "server.log")
    try:
        server.wait_ready()
        example = ROOT / "demo" / "assets" / "examples" / "request.wav"
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            reply = http.post(
                "/v1/audio/transcriptions",
                data={"model": "qwen2-audio-demo"},
                files={"file": ("request.wav", example.read_bytes(), "audio/wav")},
            )
        assert reply.status_code == 200, reply.text
        assert reply.json()["text"] == EXAMPLE_SENTENCE
        assert reply.json()["noise_report"]["noisy"] is False  # a clean request: below the calibrated threshold
        check_clean_exit(server, server.stop())
    finally:
        server.stop()
