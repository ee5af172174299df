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

* A speech recognizer (Whisper: ``--transcribe``) is driven through ``/v1/audio/transcriptions``; a
  transcription takes no per-request SEEN switch, so SEEN on and off are two servers side by side.
* Each variant's time is broken down from the server's own metrics (sums over the measured requests):
  device time in the encoder (SEE passes included) and in decoding, and the rest (HTTP, JSON or
  multipart, base64, audio decoding, features, queue and report), so a ratio explains itself.

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
def serving(command: list[str], port: int, ready_path: str) -> Iterator[str]:
    """Run a server command until ``ready_path`` answers 200, yield its URL, stop it at the end.

    Its output goes to a temporary file (a pipe nobody reads would block a chatty server) and is shown if
    it exits before it is ready.
    """
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{' '.join(command[:4])} exited: {log.read()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"{' '.join(command[:4])} did not become ready in 600 s")
            yield url
        finally:
            process.terminate()
            process.wait(60)


@contextlib.contextmanager
def server(model: str, bundle: str, *extra: str) -> Iterator[str]:
    """``seen serve`` on the model and bundle, on a free loopback port."""
    port = _free_port()
    command = [sys.executable, "-m", "cli.main", "serve", "--model", model, "--bundle", bundle]
    command += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", "bench", "--log-level", "warning"]
    with serving([*command, *extra], port, "/ready") as url:
        yield url


def _body(clip_b64: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    content = [
        {"type": "input_audio", "input_audio": {"data": clip_b64, "format": "wav"}},
        {"type": "text", "text": "What is said in the audio?"},
    ]
    return {"model": "bench", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}


def _transcription(wav: bytes) -> dict[str, Any]:
    """A multipart transcription request, in the same dict form as a JSON body (keys ``files`` and ``data``)."""
    return {"files": {"file": ("clip.wav", wav, "audio/wav")}, "data": {"model": "bench"}}


async def _timed(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    if "files" in body:
        response = await client.post(path, files=body["files"], data=body["data"])
    else:
        response = await client.post(path, json=body)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
    return elapsed, response.json()


async def _worker(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], tickets: Iterator[int], out: list[float]
) -> None:
    for _ in tickets:
        out.append((await _timed(client, path, body))[0])


async def load(url: str, path: str, body: dict[str, Any], requests_per_level: int) -> None:
    print(f"\nload ({path}, SEEN on):")
    print(f"{'concurrency':>11} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await _timed(client, path, body)
        for concurrency in CONCURRENCY:
            total = max(requests_per_level, 2 * concurrency)
            latencies: list[float] = []
            tickets = iter(range(total))  # shared: the workers together send ``total`` requests
            start = time.perf_counter()
            await asyncio.gather(*(_worker(client, path, body, tickets, latencies) for _ in range(concurrency)))
            wall = time.perf_counter() - start
            p50, p95 = np.percentile(latencies, [50, 95]) * 1000
            print(f"{concurrency:>11} {total:>8} {total / wall:>8.2f} {p50:>8.1f} {p95:>8.1f}")


Variant = tuple[str, str, dict[str, Any]]  # server URL, path, body


async def _device_seconds(client: httpx.AsyncClient, url: str) -> tuple[float, float]:
    """Sums of the server's encoder and generation histograms so far."""
    from prometheus_client.parser import text_string_to_metric_families

    sums = {"seen_encoder_duration_seconds_sum": 0.0, "seen_generation_duration_seconds_sum": 0.0}
    for family in text_string_to_metric_families((await client.get(f"{url}/metrics")).text):
        for sample in family.samples:
            if sample.name in sums:
                sums[sample.name] += sample.value
    return sums["seen_encoder_duration_seconds_sum"], sums["seen_generation_duration_seconds_sum"]


@dataclasses.dataclass
class Compared:
    """Each variant's latencies, and its mean time per request split into device encoder and decoding (seconds)."""

    times: dict[str, list[float]]
    encoder: dict[str, float]
    decoding: dict[str, float]


async def compare(variants: dict[str, Variant], rounds: int) -> Compared:
    """Latency of each variant, interleaved request by request; checks equal answers (completion lengths, or
    transcripts) and prints where each variant's time went (device encoder, device decoding, the rest)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, set[int]] = {name: set() for name in variants}
    texts: dict[str, set[str]] = {name: set() for name in variants}
    device: dict[str, list[float]] = {name: [0.0, 0.0] for name in variants}
    async with httpx.AsyncClient(timeout=600) as client:
        for url, path, body in variants.values():
            await _timed(client, f"{url}{path}", body)
        for index in range(rounds):
            order = list(variants) if index % 2 == 0 else list(reversed(variants))
            for name in order:
                url, path, body = variants[name]
                before = await _device_seconds(client, url)
                elapsed, answer = await _timed(client, f"{url}{path}", body)
                after = await _device_seconds(client, url)
                times[name].append(elapsed)
                device[name][0] += after[0] - before[0]
                device[name][1] += after[1] - before[1]
                if "usage" in answer:
                    tokens[name].add(answer["usage"]["completion_tokens"])
                elif "text" in answer:
                    texts[name].add(answer["text"])
    lengths = {name: sorted(values) for name, values in tokens.items() if values}
    if len({tuple(values) for values in lengths.values()}) > 1:
        print(f"  warning: completion lengths differ between variants: {lengths}")
    transcripts = {name: values for name, values in texts.items() if values}
    if len({frozenset(values) for values in transcripts.values()}) > 1:
        print(f"  warning: transcripts differ between variants: {transcripts}")
    for name in variants:
        total = sum(times[name]) / rounds * 1000
        encoder, decoding = (value / rounds * 1000 for value in device[name])
        rest = total - encoder - decoding
        print(
            f"  {name:>5}: {total:8.1f} ms = encoder {encoder:7.1f} + decoding {decoding:7.1f}"
            f" + rest {rest:7.1f} (mean)"
        )
    return Compared(
        times,
        {name: device[name][0] / rounds for name in variants},
        {name: device[name][1] / rounds for name in variants},
    )


def ratio_line(label: str, numerator: list[float], denominator: list[float]) -> str:
    paired = statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))
    medians = statistics.median(numerator) / statistics.median(denominator)
    top, bottom = statistics.median(numerator) * 1000, statistics.median(denominator) * 1000
    return (
        f"{label}: median {top:.1f} ms vs {bottom:.1f} ms"
        f" -> ratio of medians {medians:.3f}, median paired ratio {paired:.3f}"
    )


def tiny_model(folder: Path, **build_options: Any) -> tuple[str, str]:
    """The tests' offline Qwen2-Audio (``build_options`` size it) and a bundle calibrated on synthetic clips."""
    from calibration.pipeline import CalibrationConfig, ClipSet, calibrate
    from seen.adapters import load_audio_lm
    from seen.basis import BasisOptions
    from tests.conftest import speechlike
    from tests.tiny_models import build_qwen2_audio

    model = build_qwen2_audio(folder / "model", **build_options)
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
    parser.add_argument("--clip", help="an audio file to send instead of the synthetic clip (e.g. real speech)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds per ratio")
    parser.add_argument(
        "--transcribe", action="store_true", help="a speech recognizer (Whisper): drive /v1/audio/transcriptions"
    )
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
    if args.clip:  # real audio, decoded the service's way, so that answers mean something
        from seen.audio import decode_audio

        clip = decode_audio(Path(args.clip).read_bytes(), rate, format=Path(args.clip).suffix)
        args.seconds = len(clip) / rate
    else:
        noise = generate_noise("babble", int(args.seconds * rate), rate, 1)
        clip = speechlike(args.seconds, seed=1, rate=rate) + 0.02 * noise
    buffer = io.BytesIO()
    sf.write(buffer, clip, rate, format="WAV")
    clip_b64 = base64.b64encode(buffer.getvalue()).decode()
    on = _body(clip_b64, args.max_tokens, seen={"enabled": True})
    off = _body(clip_b64, args.max_tokens, seen={"enabled": False})
    print(f"model {args.model}, {args.seconds:g} s clip, max_tokens {args.max_tokens}, device {args.device}")
    print(f"python {sys.version.split()[0]}, cpus {os.cpu_count()}")
    common = ["--device", args.device, "--max-batch-size", "16", "--max-queue-size", "256"]
    common += ["--max-tokens-default", str(args.max_tokens)]
    if args.transcribe:
        await run_transcriptions(args, buffer.getvalue(), on, common)
        return
    with server(args.model, args.bundle, *common, "--seen-enabled") as url:
        await load(url, "/v1/chat/completions", on, args.requests)
        variants: dict[str, Variant] = {
            "on": (url, "/v1/chat/completions", on),
            "off": (url, "/v1/chat/completions", off),
            "see": (url, "/v1/see", on),
        }
        await side_by_side(variants, args.rounds, "/v1/see / chat (SEEN on)", critical_share(args.model, args.bundle))
    with server(args.model, args.bundle, *common, "--seen-enabled", "--see-method", "inline") as url:
        print(f"\nside by side at concurrency 1, {args.rounds} interleaved rounds (SEE method inline):")
        inline = {name: (url, path, body) for name, (_, path, body) in variants.items() if name != "see"}
        times = (await compare(inline, args.rounds)).times
        print("  " + ratio_line(f"SEEN on / off (target <= {TARGET_SEEN_RATIO})", times["on"], times["off"]))


def critical_share(model: str, bundle: str) -> tuple[int, int]:
    """Encoder layers the exact-SEE replay runs (the bundle's first critical layer to its last) and all of them."""
    import json

    layers = json.loads((Path(bundle) / "manifest.json").read_text())["site"]["layers"]
    config = json.loads((Path(model) / "config.json").read_text())
    encoder = config.get("audio_config", config)
    return layers[-1] - layers[0] + 1, int(encoder["encoder_layers"])


async def side_by_side(variants: dict[str, Variant], rounds: int, see_label: str, replayed: tuple[int, int]) -> None:
    """SEEN on / off and /v1/see / SEEN on, interleaved at concurrency 1 with the default (exact) SEE method.

    Beside SEEN on / off goes its bound: 1 + the replayed layers' share of the unedited request's encoder time
    over that request's time + 0.02 (the replay's cost; the edit itself is in the 0.02). It assumes every row
    replayed: where the encoder masks its padding the replay runs fewer, and the bound is loose."""
    print(f"\nside by side at concurrency 1, {rounds} interleaved rounds (SEE method exact):")
    compared = await compare(variants, rounds)
    times = compared.times
    print("  " + ratio_line(f"SEEN on / off (target <= {TARGET_SEEN_RATIO})", times["on"], times["off"]))
    share = replayed[0] / replayed[1]
    bound = 1 + share * compared.encoder["off"] / statistics.mean(times["off"]) + 0.02
    layers = f"{replayed[0]}/{replayed[1]}"
    print(f"  bound for exact SEE (every row replayed): 1 + {layers} encoder layers' share + 0.02 = {bound:.3f}")
    print("  " + ratio_line(see_label, times["see"], times["on"]))


async def run_transcriptions(args: argparse.Namespace, wav: bytes, see_body: dict[str, Any], common: list[str]) -> None:
    """A speech recognizer: transcriptions on two servers (SEEN on, SEEN off) side by side, and /v1/see."""
    body = _transcription(wav)
    with (
        server(args.model, args.bundle, *common, "--seen-enabled") as on_url,
        server(args.model, args.bundle, *common, "--no-seen-enabled") as off_url,
    ):
        await load(on_url, "/v1/audio/transcriptions", body, args.requests)
        variants: dict[str, Variant] = {
            "on": (on_url, "/v1/audio/transcriptions", body),
            "off": (off_url, "/v1/audio/transcriptions", body),
            "see": (on_url, "/v1/see", see_body),
        }
        label = "/v1/see / transcription (SEEN on; target <= 0.25)"
        await side_by_side(variants, args.rounds, label, critical_share(args.model, args.bundle))


if __name__ == "__main__":
    main()
