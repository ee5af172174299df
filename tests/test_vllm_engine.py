"""The vLLM engine against the transformers one: the same jobs give the same answers and the same noise report.

Needs vLLM (the ``vllm`` extra: vLLM's CPU build, which pins torch and transformers; see docs/service.md).
Without it this module fails to import, on purpose: a missing engine must not pass as a skip. A run that
knowingly has no vLLM sets ``SEEN_SKIP_VLLM_TESTS=1``, and the skip is then reported (``-ra``).

One tiny Qwen2-Audio (30 s window: vLLM's Qwen2-Audio takes 3000 mel frames; text head size 64: vLLM's CPU
attention refuses 16) is served by both backends; vLLM's engine starts once for the module (20-40 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

if os.environ.get("SEEN_SKIP_VLLM_TESTS") == "1":
    pytest.skip("SEEN_SKIP_VLLM_TESTS=1: the vLLM engine is not tested in this run", allow_module_level=True)
import vllm  # noqa: F401  # fails loudly when the extra is missing

from seen.adapters import load_audio_lm
from seen.bundle import NoiseBundle
from seen.hooks import SiteKind
from seen.policy import Control, NoisePolicy
from service.engine.backend import GenerateJob, GenerateOutcome, Sampling
from service.engine.transformers_backend import ModelBackend
from service.engine.vllm_backend import VllmBackend, check_vllm_support
from tests.conftest import speechlike, synthetic_bundle
from tests.tiny_models import build_qwen2_audio

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the tiny model needs next to nothing

ASK = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is said?"}]}]
ASK_TWO = [{"role": "user", "content": [{"type": "audio"}, {"type": "audio"}, {"type": "text", "text": "Both?"}]}]
TEXT_ONLY = [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_qwen2_audio(tmp_path_factory.mktemp("vllm") / "qwen2-audio", window_seconds=30, head_dim=64)


@pytest.fixture(scope="module")
def bundle(model_dir: Path) -> NoiseBundle:
    return synthetic_bundle(load_audio_lm(str(model_dir)), default="babble", clips=6)


@pytest.fixture(scope="module")
def backends(model_dir: Path, bundle: NoiseBundle) -> Iterator[tuple[ModelBackend, VllmBackend]]:
    policy = NoisePolicy(bundle)
    reference = ModelBackend(load_audio_lm(str(model_dir)), bundle, policy, model_name="tiny", see_method="exact")
    served = VllmBackend(load_audio_lm(str(model_dir)), bundle, policy, model_name="tiny", see_method="exact")
    yield reference, served
    served.close()
    reference.close()


def greedy(max_tokens: int, stop: tuple[str, ...] = ()) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=0.0, stop=stop)


def control(strength: float = 1.0, profile: str = "babble", *, enabled: bool = True) -> Control:
    return Control(enabled=enabled, strength=strength, profile=profile)


def mixed_jobs() -> list[GenerateJob]:
    """Different lambdas, profiles, limits, clip counts and lengths, and no audio at all, in one batch."""
    return [
        GenerateJob(ASK, [speechlike(1.3, 0)], control(1.0), sampling=greedy(12)),
        GenerateJob(ASK, [speechlike(3.1, 1)], control(enabled=False), sampling=greedy(7)),
        GenerateJob(ASK_TWO, [speechlike(2.0, 2), speechlike(0.5, 3)], control(0.5, "white"), sampling=greedy(9)),
        GenerateJob(ASK, [speechlike(29.5, 4)], control(1.5, "auto"), sampling=greedy(5)),
        GenerateJob(TEXT_ONLY, [], control(1.0), sampling=greedy(6)),
    ]


def assert_same(expected: GenerateOutcome, got: GenerateOutcome) -> None:
    assert got.text == expected.text
    assert got.finish_reason == expected.finish_reason
    assert (got.prompt_tokens, got.completion_tokens) == (expected.prompt_tokens, expected.completion_tokens)
    if expected.report is None:
        assert got.report is None
        return
    assert got.report is not None
    assert (got.report.profile, got.report.strength, got.report.see_method) == (
        expected.report.profile,
        expected.report.strength,
        expected.report.see_method,
    )
    assert got.report.see == pytest.approx(expected.report.see, abs=1e-5)
    assert got.report.residual_see == pytest.approx(expected.report.residual_see, abs=1e-5)
    assert got.report.see_by_profile == pytest.approx(expected.report.see_by_profile, abs=1e-5)


def test_same_jobs_give_the_same_answers_and_reports(backends: tuple[ModelBackend, VllmBackend]) -> None:
    reference, served = backends
    expected, got = reference.generate(mixed_jobs()), served.generate(mixed_jobs())
    for want, have in zip(expected, got, strict=True):
        assert_same(want, have)
    assert {outcome.finish_reason for outcome in got} >= {"length"}
    assert got[0].report is not None and got[0].report.residual_see == pytest.approx(0.0, abs=1e-6)


def test_vllm_decodes_while_the_exact_see_is_replayed(
    backends: tuple[ModelBackend, VllmBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay waits here until the request streams its first text: it can only if vLLM already has it."""
    reference, served = backends
    streamed = threading.Event()
    replay = served.model.replay

    def replay_after_first_text(*args: object) -> object:
        overlapped.append(streamed.wait(timeout=60))
        return replay(*args)

    overlapped: list[bool] = []
    monkeypatch.setattr(served.model, "replay", replay_after_first_text)
    clip = speechlike(2.0, 11)
    job = GenerateJob(ASK, [clip], control(1.0), sampling=greedy(8), sink=lambda _text: streamed.set())
    [have] = served.generate([job])
    assert overlapped == [True]
    [want] = reference.generate([GenerateJob(ASK, [clip], control(1.0), sampling=greedy(8))])
    assert_same(want, have)  # the report that arrived after the text is still the exact one


def test_each_request_gets_its_own_lambda_through_the_prefix_cache(backends: tuple[ModelBackend, VllmBackend]) -> None:
    """The same clip and prompt with other lambdas, one after another: vLLM's prefix cache keys on the embeddings."""
    reference, served = backends
    clip = speechlike(2.5, 7)
    for strength in (0.0, 2.0, 0.0, 1.0, 2.0):
        job = GenerateJob(ASK, [clip], control(strength, "white"), sampling=greedy(10))
        [want] = reference.generate([job])
        [have] = served.generate([GenerateJob(ASK, [clip], control(strength, "white"), sampling=greedy(10))])
        assert_same(want, have)


def test_stop_strings_and_max_tokens(backends: tuple[ModelBackend, VllmBackend]) -> None:
    reference, served = backends
    clip = speechlike(1.3, 0)
    [free] = served.generate([GenerateJob(ASK, [clip], control(), sampling=greedy(12))])
    stop = next(char for char in free.text[2:] if char.isprintable() and char != "\ufffd")
    jobs = [
        GenerateJob(ASK, [clip], control(), sampling=greedy(12, stop=(stop,))),
        GenerateJob(ASK, [clip], control(), sampling=greedy(3)),
    ]
    expected, got = reference.generate(jobs), served.generate(jobs)
    for want, have in zip(expected, got, strict=True):
        assert_same(want, have)
    assert got[0].finish_reason == "stop" and got[0].text == free.text[: free.text.index(stop)]
    assert got[1].finish_reason == "length" and got[1].completion_tokens == 3


def test_streamed_deltas_add_up_to_the_answer(backends: tuple[ModelBackend, VllmBackend]) -> None:
    reference, served = backends
    streams: dict[str, list[str]] = {"transformers": [], "vllm": []}
    outcomes = {}
    for name, backend in (("transformers", reference), ("vllm", served)):
        job = GenerateJob(ASK, [speechlike(1.3, 0)], control(), sampling=greedy(12), sink=streams[name].append)
        [outcomes[name]] = backend.generate([job])
    assert len(streams["vllm"]) > 1
    assert streams["vllm"] == streams["transformers"]
    assert outcomes["vllm"].text == outcomes["transformers"].text
    # A trailing incomplete character is held back; the router sends the rest with the last chunk.
    assert outcomes["vllm"].text.startswith("".join(streams["vllm"]))


def test_a_cancelled_request_is_aborted_and_the_engine_goes_on(backends: tuple[ModelBackend, VllmBackend]) -> None:
    reference, served = backends
    clip = speechlike(1.3, 0)
    job = GenerateJob(ASK, [clip], control(), sampling=Sampling(max_tokens=2000, temperature=1.0, seed=3))
    job.sink = lambda _delta: job.cancelled.set()  # the client leaves after the first text
    other = GenerateJob(ASK, [clip], control(), sampling=Sampling(max_tokens=30, temperature=1.0, seed=3))
    cancelled, finished = served.generate([job, other])
    assert cancelled.finish_reason == "cancelled"
    assert cancelled.completion_tokens < 10
    assert finished.finish_reason in {"stop", "length"}
    assert served._engine.get_num_unfinished_requests() == 0  # aborted in vLLM, not left running
    [after] = served.generate([GenerateJob(ASK, [clip], control(), sampling=greedy(5))])
    [want] = reference.generate([GenerateJob(ASK, [clip], control(), sampling=greedy(5))])
    assert_same(want, after)


def test_a_later_batch_joins_the_running_one(backends: tuple[ModelBackend, VllmBackend]) -> None:
    """Continuous batching: a short request handed over while a long one runs finishes first, with its own answer."""
    reference, served = backends
    clip = speechlike(1.3, 0)
    started = threading.Event()
    long = GenerateJob(ASK, [clip], control(), sampling=Sampling(max_tokens=400, temperature=1.0, seed=3))

    def paced(_delta: str) -> None:  # >= 8 s for 400 tokens, however fast the engine: no race with the short one
        started.set()
        time.sleep(0.02)

    long.sink = paced
    [long_answer] = served.start_generate([long])
    assert started.wait(60)
    [short_answer] = served.start_generate([GenerateJob(ASK, [clip], control(), sampling=greedy(4))])
    short = short_answer.result(timeout=60)
    assert not long_answer.done()  # the short one did not wait for the long one's end
    [want] = reference.generate([GenerateJob(ASK, [clip], control(), sampling=greedy(4))])
    assert_same(want, short)
    assert long_answer.result(timeout=120).completion_tokens > short.completion_tokens


@pytest.mark.parametrize(
    ("architecture", "site", "refusal"),
    [
        ("WhisperForConditionalGeneration", SiteKind.ENCODER_FFN, "encoder-decoder.*use engine=transformers"),
        ("VoxtralForConditionalGeneration", SiteKind.ENCODER_FFN, "raw audio only.*use engine=transformers"),
        (
            "Qwen2_5OmniThinkerForConditionalGeneration",
            SiteKind.ENCODER_FFN,
            "mel features only.*use engine=transformers",
        ),
        ("Qwen2AudioForConditionalGeneration", SiteKind.DECODER_HIDDEN, "applies SEEN in the audio encoder only"),
    ],
)
def test_what_vllm_cannot_serve_is_refused_before_loading(architecture: str, site: SiteKind, refusal: str) -> None:
    bundle = SimpleNamespace(model=SimpleNamespace(architecture=architecture), site=site)
    with pytest.raises(ValueError, match=refusal):
        check_vllm_support(bundle)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bundle_dir(bundle: NoiseBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle.save(tmp_path_factory.mktemp("vllm-bundle"))


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_service_answers_the_same_on_both_engines(model_dir: Path, bundle_dir: Path) -> None:
    """``engine=vllm`` through the app: load, warm-up, a chat answer and a stream equal to the transformers engine's."""
    from tests.service_helpers import chat_body, serving

    body = chat_body(speechlike(1.3, 0), max_tokens=8, temperature=0)
    answers, scrapes = {}, {}
    for engine in ("transformers", "vllm"):
        async with serving(model_dir, bundle_dir, engine=engine) as client:
            assert (await client.get("/ready")).status_code == 200
            answer = (await client.post("/v1/chat/completions", json=body)).json()
            streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
            assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
            answers[engine] = answer
            scrapes[engine] = (await client.get("/metrics")).text
    assert answers["vllm"]["choices"] == answers["transformers"]["choices"]
    assert answers["vllm"]["usage"] == answers["transformers"]["usage"]
    assert answers["vllm"]["noise_report"]["see"] == pytest.approx(
        answers["transformers"]["noise_report"]["see"], abs=1e-5
    )
    # one scrape: the service's families and vLLM's engine families, each once, and promtool accepts it
    helps = [line.split()[2] for line in scrapes["vllm"].splitlines() if line.startswith("# HELP ")]
    assert len(helps) == len(set(helps))
    assert any(name.startswith("vllm:") for name in helps) and any(name.startswith("seen_") for name in helps)
    assert not any(name.startswith("vllm:") for name in scrapes["transformers"].split())
    from tests.test_deploy_live import dashboard_expressions, metric_names

    on_dashboard = {name for e in dashboard_expressions() for name in metric_names(e) if name.startswith("vllm:")}
    exported = {line.split("{")[0].split()[0] for line in scrapes["vllm"].splitlines() if line.startswith("vllm:")}
    assert on_dashboard and on_dashboard <= exported, on_dashboard - exported
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package 'prometheus') is required; .ci/run installs it"
    checked = subprocess.run([promtool, "check", "metrics"], input=scrapes["vllm"], capture_output=True, text=True)
    # vLLM's own naming (vllm:* with a colon, which promtool's lint reserves for recording rules, and a
    # histogram named *_total) draws lint findings on its families only; the scrape parses, and the
    # service's own families pass every lint.
    findings = [line for line in (checked.stdout + checked.stderr).splitlines() if line.strip()]
    assert [line for line in findings if not line.startswith("vllm:")] == []


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_demo_model_is_served_on_the_vllm_engine() -> None:
    """No model option, ``engine=vllm``: the embedded demo model, its example answered as on transformers."""
    from demo.clips import EXAMPLE_SENTENCE
    from service.app import create_app
    from service.config import Settings
    from tests.service_helpers import running

    example = Path(__file__).resolve().parents[1] / "demo" / "assets" / "examples" / "request.wav"
    async with running(create_app(Settings(engine="vllm"))) as client:
        assert [m["id"] for m in (await client.get("/v1/models")).json()["data"]] == ["qwen2-audio-demo"]
        files = {"file": ("request.wav", example.read_bytes(), "audio/wav")}
        reply = await client.post("/v1/audio/transcriptions", files=files, data={"model": "qwen2-audio-demo"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["text"] == EXAMPLE_SENTENCE
    assert reply.json()["noise_report"]["noisy"] is False


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_backpressure_and_timeouts_behave_as_on_the_transformers_engine(
    model_dir: Path, bundle_dir: Path
) -> None:
    """One request running and one waiting at most: the rest get 503 + Retry-After; a request past its timeout
    gets 504 and is aborted in vLLM, which then serves the next request as before."""
    import asyncio

    from service.app import create_app
    from tests.service_helpers import chat_body, running, serving, settings

    body = chat_body(speechlike(1.3, 0), max_tokens=200, temperature=0)
    limits = {"max_running_requests": 1, "max_queue_size": 1, "max_batch_size": 1, "retry_after_seconds": 3}
    async with serving(model_dir, bundle_dir, engine="vllm", **limits) as client:
        responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(6)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1 and set(statuses) == {200, 503}, statuses
    refused = next(response for response in responses if response.status_code == 503)
    assert refused.json()["error"]["code"] == "queue_full" and refused.headers["retry-after"] == "3"
    answered = [response.json()["usage"]["completion_tokens"] for response in responses if response.status_code == 200]
    assert answered == [200] * len(answered)  # this prompt runs to any limit: the one below is long

    app = create_app(settings(model_dir, bundle_dir, engine="vllm", request_timeout_seconds=0.5))
    async with running(app) as client:
        timed_out = await client.post("/v1/chat/completions", json={**body, "max_tokens": 4000})
        assert timed_out.status_code == 504 and timed_out.json()["error"]["code"] == "timeout"
        backend = app.state.service.engine.backend
        for _ in range(100):  # the loop sees the cancelled job at its next step and aborts it in vLLM
            if backend._engine.get_num_unfinished_requests() == 0:
                break
            await asyncio.sleep(0.05)
        assert backend._engine.get_num_unfinished_requests() == 0
        quick = await client.post("/v1/chat/completions", json={**body, "max_tokens": 2})
        assert quick.status_code == 200 and quick.json()["usage"]["completion_tokens"] == 2


def test_sigterm_lets_a_running_vllm_request_finish(model_dir: Path, bundle_dir: Path, tmp_path: Path) -> None:
    """The drain on the vLLM engine: a long answer in flight at SIGTERM is completed, then the process exits 0."""
    import signal

    from tests.service_helpers import Server, chat_body, environment, free_port
    from tests.test_service_server import EXIT_TIMEOUT_SECONDS, Outcome, check_clean_exit, post_chat, serve_command

    port = free_port()
    command = serve_command(model_dir, bundle_dir, port, "--engine", "vllm")
    server = Server.start(command, port, tmp_path / "server.log", environment(VLLM_CPU_KVCACHE_SPACE="1"))
    try:
        server.wait_ready()
        outcome = Outcome()
        body = chat_body(speechlike(1.3, 0), max_tokens=1500, temperature=0)
        thread = threading.Thread(target=post_chat, args=(server.url, body, outcome))
        thread.start()
        server.wait_in_flight(2)  # the request, plus the scrape that reads the gauge
        server.process.send_signal(signal.SIGTERM)
        assert thread.is_alive(), "the request finished before the signal"
        thread.join(EXIT_TIMEOUT_SECONDS)
        assert outcome.error is None and outcome.response is not None, outcome.error
        assert outcome.response.status_code == 200, outcome.response.text
        assert outcome.response.json()["usage"]["completion_tokens"] == 1500
        check_clean_exit(server, server.process.wait(EXIT_TIMEOUT_SECONDS))
    finally:
        server.stop()
