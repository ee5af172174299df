"""Resource safety on the real server (a subprocess over loopback): no request can hold the device.

A timed-out request, a departed streaming client and a departed plain client stop their generation at the
next token; a prompt over the limit, an oversized streamed body, a missing key, a body or headers that stop
arriving are refused before any of it reaches the device; and a request cut off by the shutdown grace
period gets the error envelope while the exit code says so.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import speechlike
from tests.service_helpers import HOST, MODEL_NAME, Server, chat_body, free_port, metric_value
from tests.test_service_server import CHAT_ENDPOINT, serve_command

KEY = "resource-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = 4000  # tokens: well over ten seconds of decoding for the tiny model on a CPU
QUICK_SECONDS = 5.0  # a small request on an idle server answers well within this, even on a busy machine
STOPPED = 0.75 * LONG
"""A cancelled request generated fewer tokens than this: it stopped, instead of running to max_tokens (a
timeout after 2 s leaves it a few hundred to a couple of thousand tokens, depending on the machine's load)."""


@pytest.fixture(scope="module")
def guarded(
    model_dirs: dict[str, Path], service_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    port = free_port()
    command = serve_command(model_dirs["qwen2_audio"], service_bundle, port)
    command += ["--request-timeout-seconds", "2", "--body-read-timeout-seconds", "1"]
    command += ["--header-read-timeout-seconds", "1", "--max-audio-bytes", "500000", "--api-keys", KEY]
    command += ["--max-prompt-tokens", "200"]
    server = Server.start(command, port, tmp_path_factory.mktemp("guarded") / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _generated_tokens(server: Server) -> float:
    return metric_value(httpx.get(f"{server.url}/metrics").text, "seen_generated_tokens_total")


def _device_is_free(server: Server) -> float:
    """Seconds a small request takes: the device has nothing else left to do if it is quick."""
    started = time.perf_counter()
    response = httpx.post(
        f"{server.url}{CHAT_ENDPOINT}", json=chat_body(speechlike(0.5, seed=9)), headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


def test_a_timed_out_request_stops_its_generation(guarded: Server) -> None:
    before = _generated_tokens(guarded)
    body = chat_body(speechlike(1.0, seed=1), max_tokens=LONG)
    response = httpx.post(f"{guarded.url}{CHAT_ENDPOINT}", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    assert _device_is_free(guarded) < QUICK_SECONDS
    assert _generated_tokens(guarded) - before < STOPPED  # stopped, not run to max_tokens


def test_a_departed_streaming_client_stops_its_generation(guarded: Server) -> None:
    before = _generated_tokens(guarded)
    body = chat_body(speechlike(1.0, seed=2), max_tokens=LONG, stream=True)
    with httpx.stream("POST", f"{guarded.url}{CHAT_ENDPOINT}", json=body, headers=AUTH, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
    assert _device_is_free(guarded) < QUICK_SECONDS
    assert _generated_tokens(guarded) - before < STOPPED


def test_a_departed_plain_client_stops_its_generation(guarded: Server) -> None:
    before = _generated_tokens(guarded)
    body = chat_body(speechlike(1.0, seed=3), max_tokens=LONG)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{guarded.url}{CHAT_ENDPOINT}", json=body, headers=AUTH, timeout=0.7)
    assert _device_is_free(guarded) < QUICK_SECONDS
    assert _generated_tokens(guarded) - before < STOPPED


def test_a_prompt_over_the_limit_is_refused_before_queueing(guarded: Server) -> None:
    for text in ("a " * 400, "a" * 48000):
        body = chat_body(speechlike(0.5, seed=4), text=text, max_tokens=1)
        response = httpx.post(f"{guarded.url}{CHAT_ENDPOINT}", json=body, headers=AUTH, timeout=60)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "prompt_too_long" and "200" in error["message"]


def test_a_streamed_body_over_the_limit_is_refused(guarded: Server) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "' + MODEL_NAME.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(400):
            yield b"a" * 10_000  # 4 MB in all, no Content-Length
        yield b'"}]}'

    response = httpx.post(f"{guarded.url}{CHAT_ENDPOINT}", content=chunks(), headers=AUTH, timeout=60)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"


def _raw(server: Server, data: bytes, wait: float) -> bytes:
    """Send bytes on a fresh connection and read what comes back within ``wait`` seconds."""
    with socket.create_connection((HOST, server.port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                return received + b"<closed>"
            received += chunk
        return received


def test_the_key_is_checked_before_the_body_is_read(guarded: Server) -> None:
    head = f"POST {CHAT_ENDPOINT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    # 400 kB announced, 10 bytes sent: the 401 comes at once, without waiting for the rest
    answer = _raw(guarded, (head + "Content-Length: 400000\r\n\r\n{not json").encode(), wait=5)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"missing_api_key"' in answer
    response = httpx.post(f"{guarded.url}{CHAT_ENDPOINT}", content=b"{not json", timeout=10)
    assert response.status_code == 401  # not 422: nobody unauthenticated learns about the schema


def test_a_body_or_headers_that_stop_arriving_free_the_connection(guarded: Server) -> None:
    head = f"POST {CHAT_ENDPOINT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
    started = time.monotonic()
    answer = _raw(guarded, (head + "Content-Length: 1000\r\n\r\n" + '{"model": ').encode(), wait=10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"body_timeout"' in answer and time.monotonic() - started < 5
    started = time.monotonic()
    answer = _raw(guarded, head.encode(), wait=10)  # the headers never end
    assert answer == b"<closed>" and time.monotonic() - started < 5
    assert _device_is_free(guarded) < QUICK_SECONDS


def test_requests_cut_off_by_the_grace_period_get_the_envelope_and_the_exit_code_says_so(
    model_dirs: dict[str, Path], service_bundle: Path, tmp_path: Path
) -> None:
    port = free_port()
    command = serve_command(model_dirs["qwen2_audio"], service_bundle, port, "--shutdown-grace-seconds", "1")
    server = Server.start(command, port, tmp_path / "server.log")
    answers: list[httpx.Response] = []
    try:
        server.wait_ready()
        body = chat_body(speechlike(1.0, seed=5), max_tokens=LONG)
        thread = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{server.url}{CHAT_ENDPOINT}", json=body, timeout=60))
        )
        thread.start()
        deadline = time.monotonic() + 30
        while metric_value(httpx.get(f"{server.url}/metrics").text, "seen_requests_in_flight") < 2:
            assert time.monotonic() < deadline, "the request never reached the server"
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        thread.join(30)
        code = server.process.wait(30)
    finally:
        server.stop()
    assert len(answers) == 1
    assert answers[0].status_code == 503, answers[0].text
    assert answers[0].json()["error"]["code"] == "shutting_down"
    assert code == 1
    assert "cut off 1 requests" in server.output() and "Traceback" not in server.output()
