"""Wall-time overhead of the SEEN patch on a full-size Qwen2-Audio encoder forward.

Why this is built the way it is:

* The model is the released encoder's shape (32 layers, d_model 1280, FFN 5120, one 30 s window of
  1500 frames; ``--width 512 --ffn 2048 --heads 8 --layers 6 --hooked 3`` is Whisper base's) with random
  weights: timing depends on shapes, not on trained values, and no checkpoint
  is needed. The hooks sit on the FFN activations of the last ``--hooked`` layers, as in serving.
* What is timed is what a served request pays: building the frame layout, entering the scope, the
  forward with the hooks, and ``readout.report()``, the one host sync after the forward. Installing
  the hooks is not timed: a server installs them once for its lifetime.
* The variants are measured interleaved in one process, in rounds that run each variant once, after
  warm-up rounds. Forward time drifts (other load on a shared machine, clocks, allocator state) by
  more than the few percent to resolve; interleaving makes the drift hit every variant alike so it
  cancels in the ratios. The per-round ("paired") ratio is the estimate least sensitive to drift.
  The order within a round cycles through every permutation, so each variant holds each position
  equally often over a cycle (6 rounds for 3 variants): with the order only reversed every other
  round the middle variant was always in the middle, and a position effect read as a difference.
* On a shared machine a forward can still swing by more than the overhead from one forward to the
  next. So on CPU the patch's hook bodies are also timed inside the same forwards (a hook registered
  before and one after each SEEN hook; microseconds in all): their share of the rest of the forward
  needs no second forward to compare with, and is the direct lower bound of the overhead (it leaves
  out the scope set-up, the readout and any cache effects). On CUDA hooks only enqueue work, so the
  share is not measured there.

Run as ``python -m benchmarks.encoder_overhead [--device cpu|cuda] [--dtype float32|bfloat16] ...``.
On CPU the number of timed rounds defaults to the whole permutation cycles that fit in ``--budget-s``
after warm-up (at least one). The verdict rests on the paired ratio's bootstrap 95 % interval: PASS
when all of it is within the target, FAIL when all of it is above, UNRESOLVED when the run is too
noisy to tell.

Over 300 lines on purpose: a self-contained script (model construction, interleaved timing, direct
cost, statistics, verdict) that must run unchanged on a lent GPU machine.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn
from transformers import Qwen2AudioEncoderConfig
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from seen.hooks import resolve_modules
from seen.patch import SeeMeasurement, SeenPatch
from seen.see import FrameLayout

TARGET_RATIO = 1.03
WINDOW_FRAMES = 1500  # encoder frames of one 30 s window (3000 mel frames, conv2 stride 2)
FFN_DIM = 5120  # the default --ffn: Qwen2-Audio-7B's encoder
PROFILES = ("merged", "white", "pink", "brown", "babble", "engine", "wind")


@dataclass
class Variant:
    """One measured configuration: how to run a forward, and the patch to hold installed while it runs."""

    label: str
    run: Callable[[], SeeMeasurement | None]
    patch: SeenPatch | None = None
    hook_timer: HookTimer | None = None
    times: list[float] = field(default_factory=list)
    hook_times: list[float] = field(default_factory=list)
    forward_times: list[float] = field(default_factory=list)


class HookTimer:
    """Seconds inside the hooks on ``modules`` (between :meth:`bracketing`'s two hooks) and inside ``outer``.

    ``outer`` is the encoder: the timed run minus its forward is the host work around the forward
    (frame layout, scope, readout), which the hook bodies leave out.
    """

    def __init__(self, modules: Sequence[nn.Module], outer: nn.Module) -> None:
        self._modules = list(modules)
        self._outer = outer
        self._start = self._outer_start = 0.0
        self.total = self.forward = 0.0

    def _begin(self, _module: nn.Module, _inputs: Any, _output: Any) -> None:
        self._start = time.perf_counter()

    def _end(self, _module: nn.Module, _inputs: Any, _output: Any) -> None:
        self.total += time.perf_counter() - self._start

    def _outer_begin(self, _module: nn.Module, _inputs: Any) -> None:
        self._outer_start = time.perf_counter()

    def _outer_end(self, _module: nn.Module, _inputs: Any, _output: Any) -> None:
        self.forward += time.perf_counter() - self._outer_start

    @contextmanager
    def bracketing(self) -> Iterator[HookTimer]:
        """Register around the hooks already on the modules (enter after ``patch.installed()``)."""
        handles = [
            self._outer.register_forward_pre_hook(self._outer_begin, prepend=True),
            self._outer.register_forward_hook(self._outer_end),
        ]
        try:
            for module in self._modules:
                handles.append(module.register_forward_hook(self._begin, prepend=True))
                handles.append(module.register_forward_hook(self._end))
            self.total = self.forward = 0.0
            yield self
        finally:
            for handle in handles:
                handle.remove()


def build_encoder(
    layers: int, device: torch.device, dtype: torch.dtype, width: int = 1280, heads: int = 20, ffn: int = FFN_DIM
) -> tuple[Qwen2AudioEncoder, str]:
    """Random-initialised encoder (the released size by default, ``layers`` deep), eval mode, on ``device``."""
    config = Qwen2AudioEncoderConfig(
        encoder_layers=layers,
        d_model=width,
        encoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        num_mel_bins=128,
        max_source_positions=WINDOW_FRAMES,
    )
    try:
        encoder = Qwen2AudioEncoder._from_config(config, attn_implementation="sdpa")
    except (ValueError, ImportError):
        encoder = Qwen2AudioEncoder._from_config(config)
    encoder = encoder.to(device=device, dtype=dtype).eval()
    return encoder, str(encoder.config._attn_implementation)


def random_bases(
    profiles: Sequence[str], n_layers: int, k: int, generator: torch.Generator, ffn: int = FFN_DIM
) -> dict[str, list[torch.Tensor]]:
    """One random orthonormal (ffn x k) basis per profile and hooked layer (float32, host)."""
    return {
        name: [torch.linalg.qr(torch.randn(ffn, k, generator=generator)).Q for _ in range(n_layers)]
        for name in profiles
    }


def plain_forward(encoder: nn.Module, features: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        encoder(features, attention_mask=None)

    return run


def patched_forward(
    encoder: nn.Module, patch: SeenPatch, features: torch.Tensor, valid_frames: torch.Tensor
) -> Callable[[], SeeMeasurement]:
    strength = torch.ones(valid_frames.shape[0])  # SEEN on: lambda 1 for every clip

    def run() -> SeeMeasurement:
        layout = FrameLayout.padded(valid_frames, WINDOW_FRAMES)
        with patch.scope(layout, strength=strength) as readout:
            encoder(features, attention_mask=None)
        return readout.report()

    return run


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(variant: Variant, device: torch.device) -> tuple[float, float, float, SeeMeasurement | None]:
    """Seconds of one run of ``variant``, of its hook bodies and of the encoder forward alone.

    Hooks are installed outside the timed region.
    """
    with ExitStack() as stack:
        if variant.patch is not None:
            stack.enter_context(variant.patch.installed())
        timer = stack.enter_context(variant.hook_timer.bracketing()) if variant.hook_timer is not None else None
        gc.collect()
        synchronize(device)
        start = time.perf_counter()
        report = variant.run()
        synchronize(device)
        seconds = time.perf_counter() - start
        if timer is None:
            return seconds, 0.0, seconds, report
        return seconds, timer.total, timer.forward, report


def check_report(report: SeeMeasurement | None, label: str, clips: int, layers: int, profiles: int) -> None:
    """Fail loudly if the hooks did not fire: a patch that never runs would look free."""
    if report is None:
        raise RuntimeError(f"{label}: no SEE report")
    if tuple(report.per_layer.shape) != (clips, layers, profiles) or not bool((report.per_layer > 0).all()):
        raise RuntimeError(f"{label}: hooks did not score every layer (SEE {report.per_layer.tolist()})")


def run_round(
    variants: Sequence[Variant], device: torch.device, order: Sequence[int], record: bool
) -> list[SeeMeasurement | None]:
    """Run every variant once, in ``order``; reports come back in ``variants`` order."""
    reports: dict[int, SeeMeasurement | None] = {}
    for index in order:
        seconds, hook_seconds, forward_seconds, reports[index] = timed(variants[index], device)
        if record:
            variants[index].times.append(seconds)
            variants[index].hook_times.append(hook_seconds)
            variants[index].forward_times.append(forward_seconds)
    return [reports[index] for index in range(len(variants))]


def paired_interval(ratios: np.ndarray, seed: int = 0, resamples: int = 10_000) -> tuple[float, float]:
    """Bootstrap 95 % interval of the median per-round ratio (rounds resampled with replacement)."""
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(ratios, size=(resamples, ratios.size), replace=True), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(low), float(high)


def verdict(low: float, high: float) -> str:
    if high <= TARGET_RATIO:
        return "PASS"
    return "FAIL" if low > TARGET_RATIO else "UNRESOLVED"


def print_table(variants: Sequence[Variant]) -> None:
    baseline = np.asarray(variants[0].times)
    header = f"{'variant':<34}{'median ms':>11}{'p10 ms':>11}{'p90 ms':>11}{'ratio':>8}{'paired':>8}  95% interval"
    print(header)
    verdicts = []
    for variant in variants:
        times = np.asarray(variant.times)
        p10, median, p90 = np.percentile(times * 1e3, [10, 50, 90])
        ratio = float(np.median(times) / np.median(baseline))
        paired = float(np.median(times / baseline))
        low, high = paired_interval(times / baseline)
        figures = f"{median:>11.1f}{p10:>11.1f}{p90:>11.1f}{ratio:>8.4f}{paired:>8.4f}"
        print(f"{variant.label:<34}{figures}  {low:.4f}-{high:.4f}")
        if variant is not variants[0]:
            verdicts.append(f"{variant.label.split()[0]} {paired:.4f} [{low:.4f}, {high:.4f}] {verdict(low, high)}")
    print(
        "ratio = median(variant) / median(a); paired = median over rounds of variant / (a) of the same round, "
        "with its bootstrap 95% interval"
    )
    rounds = zip(*(variant.times for variant in variants), strict=True)
    print("per round (ms, a/b/c): " + "  ".join("/".join(f"{t * 1e3:.0f}" for t in times) for times in rounds))
    print(f"target: paired ratio <= {TARGET_RATIO:.2f} -> " + ", ".join(verdicts))
    if variants[0].hook_timer is None:
        return
    plain_host = float(np.median(np.asarray(variants[0].times) - np.asarray(variants[0].forward_times)))
    print(
        "direct cost, measured inside the same runs (immune to drift between forwards): the hook bodies, "
        f"plus the host work around the forward beyond the plain run's ({plain_host * 1e3:.2f} ms):"
    )
    for variant in variants[1:]:
        hooks, times, forwards = (np.asarray(v) for v in (variant.hook_times, variant.times, variant.forward_times))
        host = times - forwards - plain_host
        share = float(np.median((hooks + host) / (forwards - hooks)))
        print(
            f"  {variant.label:<32} hooks {np.median(hooks) * 1e3:.1f} ms + host {np.median(host) * 1e3:.2f} ms per "
            f"run = {share:.2%} of the rest of the forward -> ratio {1 + share:.4f}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds, best a multiple of 6 (default: 60 on cuda; on cpu what fits in --budget-s)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default: 5 on cuda, 1 on cpu)")
    parser.add_argument("--budget-s", type=float, default=210.0, help="cpu: seconds of timed rounds to aim for")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--width", type=int, default=1280, help="d_model (default: Qwen2-Audio-7B's encoder)")
    parser.add_argument("--heads", type=int, default=20, help="attention heads")
    parser.add_argument("--ffn", type=int, default=FFN_DIM, help="FFN width")
    parser.add_argument("--hooked", type=int, default=9, help="hook the FFN activation of the last N layers")
    parser.add_argument("--k", type=int, default=10, help="basis columns per profile and layer")
    parser.add_argument("--batch", type=int, default=1, help="30 s clips per forward")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    args = parser.parse_args(argv)
    if not 0 < args.hooked <= args.layers:
        parser.error("--hooked must be between 1 and --layers")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)

    with torch.inference_mode():
        build_start = time.perf_counter()
        encoder, attention = build_encoder(args.layers, device, dtype, args.width, args.heads, args.ffn)
        build_s = time.perf_counter() - build_start
        paths = [f"layers.{i}.activation_fn" for i in range(args.layers - args.hooked, args.layers)]
        single = SeenPatch(encoder, paths, random_bases(PROFILES[:1], len(paths), args.k, generator, args.ffn))
        bundle = SeenPatch(encoder, paths, random_bases(PROFILES, len(paths), args.k, generator, args.ffn))
        on_cpu = device.type == "cpu"
        hook_timer = HookTimer(resolve_modules(encoder, paths), encoder) if on_cpu else None
        features = torch.randn(args.batch, 128, 2 * WINDOW_FRAMES, generator=generator).to(device, dtype)
        valid_frames = torch.tensor([WINDOW_FRAMES] * args.batch)
        variants = [
            Variant(
                "(a) no patch", plain_forward(encoder, features), hook_timer=HookTimer([], encoder) if on_cpu else None
            ),
            Variant(
                f"(b) SEEN, 1 profile (k={args.k})",
                patched_forward(encoder, single, features, valid_frames),
                single,
                hook_timer,
            ),
            Variant(
                f"(c) SEEN, {len(PROFILES)} profiles (k={args.k} each)",
                patched_forward(encoder, bundle, features, valid_frames),
                bundle,
                hook_timer,
            ),
        ]

        print(
            f"config: device={device} dtype={args.dtype} torch={torch.__version__} "
            f"transformers={transformers.__version__} threads={torch.get_num_threads()} "
            f"interop_threads={torch.get_num_interop_threads()} attention={attention}"
        )
        if device.type == "cuda":
            print(f"gpu: {torch.cuda.get_device_name(device)}")
        print(
            f"encoder: {args.layers} layers, d_model {args.width}, ffn {args.ffn}, input ({args.batch}, 128, "
            f"{2 * WINDOW_FRAMES}), built in {build_s:.1f}s; hooked: {paths[0]} .. {paths[-1]} ({len(paths)} layers)",
            flush=True,
        )

        orders = list(itertools.permutations(range(len(variants))))
        warmup = max(1, args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 1))
        for index in range(warmup):
            start = time.perf_counter()
            reports = run_round(variants, device, orders[index % len(orders)], record=False)
            round_s = time.perf_counter() - start
        for variant, report in zip(variants[1:], reports[1:], strict=True):
            assert variant.patch is not None
            check_report(report, variant.label, args.batch, len(paths), len(variant.patch.profiles))

        repeats = args.repeats
        if repeats is None:
            fitting = max(len(orders), int(args.budget_s // round_s))
            repeats = 60 if device.type == "cuda" else fitting - fitting % len(orders)
        print(
            f"rounds: {warmup} warm-up + {repeats} timed, each round runs (a), (b), (c) once, the order "
            f"cycling through all {len(orders)} permutations; last warm-up round {round_s:.1f}s",
            flush=True,
        )
        for index in range(repeats):
            run_round(variants, device, orders[index % len(orders)], record=True)

    print()
    print_table(variants)


if __name__ == "__main__":
    main()
