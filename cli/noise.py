"""``seen noise``: write deterministic synthetic noise clips, e.g. for ``seen calibrate --noise``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import soundfile as sf

from cli.commands import help_of
from seen.noise import NOISE_TYPES, generate_noise


def register(commands: Any) -> None:
    parser = commands.add_parser("noise", help=help_of("noise"))
    parser.add_argument("--kind", required=True, choices=NOISE_TYPES)
    parser.add_argument("--out", required=True, type=Path, help="folder to write WAV files into")
    parser.add_argument("--count", type=int, default=50, help="number of clips (default: 50)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each clip (default: 5)")
    parser.add_argument("--rate", type=int, default=16000, help="sample rate (default: 16000)")
    parser.add_argument("--seed", type=int, default=0, help="first seed; clip i uses seed + i (default: 0)")
    parser.add_argument("--level", type=float, default=0.1, help="RMS level of each clip (default: 0.1)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.count < 1 or args.seconds <= 0:
        raise ValueError("--count must be >= 1 and --seconds > 0")
    args.out.mkdir(parents=True, exist_ok=True)
    for index in range(args.count):
        clip = generate_noise(args.kind, int(args.seconds * args.rate), args.rate, seed=args.seed + index)
        sf.write(args.out / f"{args.kind}_{index:04d}.wav", clip * args.level, args.rate, subtype="FLOAT")
    print(f"wrote {args.count} {args.kind} clips of {args.seconds:g} s to {args.out}")
    return 0
