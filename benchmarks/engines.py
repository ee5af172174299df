"""The two engines and vLLM alone, side by side: req/s and latency by concurrency, with mixed answer lengths.

Variants, all on one random Qwen2-Audio (30 s window, so that vLLM's own audio path takes it; a small
audio encoder and an eight-layer language model, so that decoding dominates as in real audio LMs):

* ``transformers on/off``: ``seen serve`` with the transformers engine, SEEN on or off per request;
* ``vllm on/off``: ``seen serve --engine vllm``, SEEN on or off per request;
* ``vllm alone``: vLLM's own OpenAI server on the same folder, its own audio tower, no SEEN.

Every request has a clip of its own (the same length, a new seed: vLLM caches processed audio and encoder
outputs by the audio's hash, so a repeated clip would skip vLLM's audio work but not ours) and the same
prompt, greedy, with ``max_tokens`` cycling through ``LENGTHS`` so that answers differ in length (a random
model rarely ends early: the mean completion length is printed). For each
concurrency the variants take turns, a burst of requests each, for ``--rounds`` rounds (the order reversed
every round), so that drift on a shared machine hits all alike; req/s is the requests over the bursts' wall
time, p50/p95 over every request of the level.

Run in the vLLM environment: ``.venv-vllm/bin/python -m benchmarks.engines`` (``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.service_load import _free_port, server, serving, tiny_model

LENGTHS = (8, 16, 32, 64, 128)
TARGETS = (
    ("vllm off / vllm alone, req/s", "vllm off", "vllm alone", 0.9),
    ("vllm on / vllm off, req/s", "vllm on", "vllm off", 0.97),
    ("vllm on / transformers on, req/s", "vllm on", "transformers on", 2.0),
)


@contextlib.contextmanager
def vllm_alone(model: str, max_num_seqs: int) -> Iterator[str]:
    """vLLM's own OpenAI server on the model folder: its own audio tower, no SEEN."""
    port = _free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    command += ["--served-model-name", "bench", "--dtype", "float32", "--enforce-eager", "--seed", "0"]
    command += ["--max-model-len", "4096", "--max-num-seqs", str(max_num_seqs), "--limit-mm-per-prompt"]
    command += ['{"audio": 1}', "--host", "127.0.0.1", "--port", str(port), "--uvicorn-log-level", "warning"]
    with serving(command, port, "/health") as url:
        yield url


class Clips:
    """A new clip for every request: speech-like signal plus light babble, WAV in base64."""

    def __init__(self, seconds: float, rate: int = 16000) -> None:
        self.seconds, self.rate = seconds, rate
        self._seeds = itertools.count(1)

    def next(self) -> str:
        import soundfile as sf

        from seen.noise import generate_noise
        from tests.conftest import speechlike

        seed, samples = next(self._seeds), int(self.seconds * self.rate)
        clip = speechlike(self.seconds, seed=seed, rate=self.rate) + 0.02 * generate_noise(
            "babble", samples, self.rate, seed
        )
        buffer = io.BytesIO()
        sf.write(buffer, clip, self.rate, format="WAV")
        return base64.b64encode(buffer.getvalue()).decode()


def bodies(clips: Clips, count: int, seen: bool | None) -> list[dict[str, Any]]:
    extra = {} if seen is None else {"seen": {"enabled": seen}}
    requests = []
    for index in range(count):
        content = [
            {"type": "input_audio", "input_audio": {"data": clips.next(), "format": "wav"}},
            {"type": "text", "text": "What is said in the audio?"},
        ]
        requests.append(
            {
                "model": "bench",
                "messages": [{"role": "user", "content": content}],
                "max_tokens": LENGTHS[index % len(LENGTHS)],
                "temperature": 0,
                **extra,
            }
        )
    return requests


@dataclass
class Level:
    """One variant at one concurrency: every request's latency and completion length, and the bursts' wall time."""

    latencies: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    wall: float = 0.0


async def burst(
    client: httpx.AsyncClient, url: str, requests: list[dict[str, Any]], concurrency: int, level: Level
) -> None:
    tickets = iter(requests)

    async def worker() -> None:
        for body in tickets:
            start = time.perf_counter()
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            level.latencies.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
            level.tokens.append(response.json()["usage"]["completion_tokens"])

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    level.wall += time.perf_counter() - start


async def measure(
    variants: dict[str, tuple[str, bool | None]], clips: Clips, concurrency: list[int], requests: int, rounds: int
) -> dict[tuple[str, int], Level]:
    results: dict[tuple[str, int], Level] = {}
    async with httpx.AsyncClient(timeout=1200) as client:
        for url, seen in variants.values():  # warm-up, not counted
            await burst(client, url, bodies(clips, 2, seen), 2, Level())
        for level in concurrency:
            count = max(requests, 2 * level)
            for round_ in range(rounds):
                order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
                for name in order:
                    url, seen = variants[name]
                    measured = results.setdefault((name, level), Level())
                    await burst(client, url, bodies(clips, count, seen), level, measured)
            print(f"  concurrency {level} measured", flush=True)
    return results


def report(results: dict[tuple[str, int], Level], names: list[str], concurrency: list[int]) -> None:
    print(f"\n{'variant':>16} {'conc.':>5} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'tokens':>6}")
    for level in concurrency:
        for name in names:
            measured = results[(name, level)]
            p50, p95 = np.percentile(measured.latencies, [50, 95]) * 1000
            rate = len(measured.latencies) / measured.wall
            tokens = float(np.mean(measured.tokens))
            count = len(measured.latencies)
            print(f"{name:>16} {level:>5} {count:>8} {rate:>7.2f} {p50:>8.0f} {p95:>8.0f} {tokens:>6.1f}")
    print("\nratios of req/s (target in brackets):")
    for label, top, bottom, target in TARGETS:
        cells = []
        for level in concurrency:
            a, b = results[(top, level)], results[(bottom, level)]
            cells.append(f"c{level} {(len(a.latencies) / a.wall) / (len(b.latencies) / b.wall):.2f}")
        print(f"  {label} [>= {target}]: {', '.join(cells)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,4,16,32", help="comma-separated levels (default 1,4,16,32)")
    parser.add_argument("--requests", type=int, default=16, help="requests per burst (at least 2x the level)")
    parser.add_argument("--rounds", type=int, default=2, help="bursts per variant and level, interleaved")
    parser.add_argument("--seconds", type=float, default=2.0, help="clip length (default 2 s)")
    parser.add_argument("--text-layers", type=int, default=8, help="language model layers (default 8)")
    parser.add_argument("--text-heads", type=int, default=8, help="heads of 64 (default 8: hidden 512)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="both engines' micro-batch (default 16)")
    args = parser.parse_args()
    concurrency = [int(value) for value in args.concurrency.split(",")]
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    common = ["--device", "cpu", "--seen-enabled", "--max-batch-size", str(args.max_batch_size)]
    common += ["--max-queue-size", "256", "--max-running-requests", "64"]
    with tempfile.TemporaryDirectory() as scratch:
        size = {"window_seconds": 30, "head_dim": 64, "text_layers": args.text_layers, "text_heads": args.text_heads}
        model, bundle = tiny_model(Path(scratch), **size)
        print(f"model: random Qwen2-Audio, 30 s window, text {args.text_layers} layers x {64 * args.text_heads}")
        print(f"clip {args.seconds:g} s, max_tokens cycling {LENGTHS}, greedy; cpus {os.cpu_count()}")
        with (
            server(model, bundle, *common) as transformers_url,
            server(model, bundle, *common, "--engine", "vllm") as vllm_url,
            vllm_alone(model, 64) as alone_url,
        ):
            variants: dict[str, tuple[str, bool | None]] = {
                "transformers on": (transformers_url, True),
                "transformers off": (transformers_url, False),
                "vllm on": (vllm_url, True),
                "vllm off": (vllm_url, False),
                "vllm alone": (alone_url, None),
            }
            results = asyncio.run(measure(variants, Clips(args.seconds), concurrency, args.requests, args.rounds))
    report(results, list(variants), concurrency)


if __name__ == "__main__":
    main()
