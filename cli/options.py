"""Options shared by the subcommands that load a model."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seen.adapters import AudioLM


def add_model_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--model", required=required, help="model folder or hub id")
    parser.add_argument("--device", default="cpu", help="torch device: auto, cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument(
        "--dtype",
        default="float32",
        help="float32, bfloat16, float16, auto (bfloat16 on a GPU, else float32) or checkpoint (as stored) "
        "(default: float32)",
    )


def load_model(args: argparse.Namespace) -> AudioLM:
    from seen.adapters import load_audio_lm  # torch and transformers: only when a model is loaded

    return load_audio_lm(args.model, device=args.device, dtype=args.dtype)
