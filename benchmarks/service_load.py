"""Throughput and latency of the running service, and what SEEN and ``/v1/see`` cost per request.

Why this is built the way it is:

* The server is the real one (``seen serve`` in a subprocess, uvicorn on loopback) and the client
  an ``httpx.AsyncClient``, so a figure includes everything a caller pays: HTTP, JSON, base64 and
  audio decoding, the queue, feature extraction, the device work and the response.
* Load: for each concurrency, that many workers send the same chat request back to back until
  the request count is reached; requests per second over the wall time, p50/p95 of latency.
* Ratios are measured side by side at concurrency 1, variants interleaved request by request (the
  order flipped every round) so drift on a shared machine hits both alike; the median of the
  per-round ratios is printed with the ratio of medians. Generation is greedy with a fixed
  ``max_tokens``; completion lengths are checked to be equal, since a shorter answer would make
  SEEN look cheaper than it is.
* SEEN on versus off is measured once per SEE method (a server each): ``exact`` runs a score-only
  pass before the SEEN pass; ``inline`` measures SEE during it.

Run as ``python -m benchmarks.service_load --model M --bundle B`` or ``--tiny`` (builds the tiny
offline Qwen2-Audio of the tests and calibrates a bundle for it in a temporary folder).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from seen.noise import generate_noise

CONCURRENCY = (1, 4, 16)
TARGET_SEEN_RATIO = 1.03


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(model: str, bundle: str, *extra: str) -> Iterator[str]:
    port = _free_port()
    command = [sys.executable, "-m", "cli.main", "serve", "--model", model, "--bundle", bundle]
    command += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", "bench", "--log-level", "warning"]
    process = subprocess.Popen([*command, *extra], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {process.stderr.read() if process.stderr else ''}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("server did not become ready in 600 s")
        yield url
    finally:
        process.terminate()
        process.wait(60)


def _body(clip_b64: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    content = [
        {"type": "input_audio", "input_audio": {"data": clip_b64, "format": "wav"}},
        {"type": "text", "text": "What is said in the audio?"},
    ]
    return {"model": "bench", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}


async def _timed(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    response = await client.post(path, json=body)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
    return elapsed, response.json()


async def _worker(client: httpx.AsyncClient, body: dict[str, Any], tickets: Iterator[int], out: list[float]) -> None:
    for _ in tickets:
        out.append((await _timed(client, "/v1/chat/completions", body))[0])


async def load(url: str, body: dict[str, Any], requests_per_level: int) -> None:
    print("\nload (chat completions, SEEN on):")
    print(f"{'concurrency':>11} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await _timed(client, "/v1/chat/completions", body)
        for concurrency in CONCURRENCY:
            total = max(requests_per_level, 2 * concurrency)
            latencies: list[float] = []
            tickets = iter(range(total))  # shared: the workers together send ``total`` requests
            start = time.perf_counter()
            await asyncio.gather(*(_worker(client, body, tickets, latencies) for _ in range(concurrency)))
            wall = time.perf_counter() - start
            p50, p95 = np.percentile(latencies, [50, 95]) * 1000
            print(f"{concurrency:>11} {total:>8} {total / wall:>8.2f} {p50:>8.1f} {p95:>8.1f}")


async def compare(url: str, variants: dict[str, tuple[str, dict[str, Any]]], rounds: int) -> dict[str, list[float]]:
    """Latency of each variant, interleaved request by request; checks equal completion lengths."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, set[int]] = {name: set() for name in variants}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for path, body in variants.values():
            await _timed(client, path, body)
        for index in range(rounds):
            order = list(variants) if index % 2 == 0 else list(reversed(variants))
            for name in order:
                path, body = variants[name]
                elapsed, answer = await _timed(client, path, body)
                times[name].append(elapsed)
                if "usage" in answer:
                    tokens[name].add(answer["usage"]["completion_tokens"])
    lengths = {name: sorted(values) for name, values in tokens.items() if values}
    if len({tuple(values) for values in lengths.values()}) > 1:
        print(f"  warning: completion lengths differ between variants: {lengths}")
    return times


def ratio_line(label: str, numerator: list[float], denominator: list[float]) -> str:
    paired = statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))
    medians = statistics.median(numerator) / statistics.median(denominator)
    top, bottom = statistics.median(numerator) * 1000, statistics.median(denominator) * 1000
    return (
        f"{label}: median {top:.1f} ms vs {bottom:.1f} ms"
        f" -> ratio of medians {medians:.3f}, median paired ratio {paired:.3f}"
    )


def tiny_model(folder: Path) -> tuple[str, str]:
    from calibration.pipeline import CalibrationConfig, ClipSet, calibrate
    from seen.adapters import load_audio_lm
    from seen.basis import BasisOptions
    from tests.conftest import speechlike
    from tests.tiny_models import build_qwen2_audio

    model = build_qwen2_audio(folder / "model")
    lm = load_audio_lm(str(model))
    clean = ClipSet("clean", [speechlike(2.0 + 0.1 * i, seed=i) for i in range(10)], "synthetic:speech")
    noise = ClipSet("babble", [0.1 * generate_noise("babble", 32000, 16000, seed=i) for i in range(10)], "babble")
    options = BasisOptions(alpha=0.99, delta=3.0, delta_mode="chance", center="per_set")
    bundle = calibrate(lm, clean, [noise], CalibrationConfig(basis=options)).bundle
    return str(model), str(dataclasses.replace(bundle, default_profile="babble").save(folder / "bundle"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or hub id")
    parser.add_argument("--bundle", help="its noise bundle")
    parser.add_argument("--tiny", action="store_true", help="build and use the tiny offline test model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=2.0, help="clip length (default 2 s)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds per ratio")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if args.tiny:
            args.model, args.bundle = tiny_model(Path(scratch))
        if not args.model or not args.bundle:
            parser.error("give --model and --bundle, or --tiny")
        asyncio.run(run(args))


async def run(args: argparse.Namespace) -> None:
    import base64
    import io

    import soundfile as sf

    from tests.conftest import speechlike

    rate = 16000
    clip = speechlike(args.seconds, seed=1, rate=rate) + 0.02 * generate_noise(
        "babble", int(args.seconds * rate), rate, 1
    )
    buffer = io.BytesIO()
    sf.write(buffer, clip, rate, format="WAV")
    clip_b64 = base64.b64encode(buffer.getvalue()).decode()
    on = _body(clip_b64, args.max_tokens, seen={"enabled": True})
    off = _body(clip_b64, args.max_tokens, seen={"enabled": False})
    print(f"model {args.model}, {args.seconds:g} s clip, max_tokens {args.max_tokens}, device {args.device}")
    print(f"python {sys.version.split()[0]}, cpus {os.cpu_count()}")
    common = ["--device", args.device, "--max-batch-size", "16", "--max-queue-size", "256"]
    with server(args.model, args.bundle, *common) as url:
        await load(url, on, args.requests)
        print(f"\nside by side at concurrency 1, {args.rounds} interleaved rounds (SEE method exact):")
        variants = {"on": ("/v1/chat/completions", on), "off": ("/v1/chat/completions", off), "see": ("/v1/see", on)}
        times = await compare(url, variants, args.rounds)
        print("  " + ratio_line(f"SEEN on / off (target <= {TARGET_SEEN_RATIO})", times["on"], times["off"]))
        print("  " + ratio_line("/v1/see / chat (SEEN on)", times["see"], times["on"]))
    with server(args.model, args.bundle, *common, "--see-method", "inline") as url:
        print(f"\nside by side at concurrency 1, {args.rounds} interleaved rounds (SEE method inline):")
        times = await compare(url, {"on": variants["on"], "off": variants["off"]}, args.rounds)
        print("  " + ratio_line(f"SEEN on / off (target <= {TARGET_SEEN_RATIO})", times["on"], times["off"]))


if __name__ == "__main__":
    main()
