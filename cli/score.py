"""``seen score``: the noise report of audio files against a bundle, as a table or JSON.

Each file gets the report ``POST /v1/see`` gives for the same audio and bundle (the one policy in
:mod:`seen.policy` fills both), under the bundle's default profile and lambda unless told otherwise.
A file longer than the model's window is scored window by window and averaged, as the service does.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cli.commands import help_of
from cli.options import add_model_options, load_model
from seen.adapters import Clip
from seen.audio import AudioError, is_digital_silence, load_audio_file, split_into_windows
from seen.bundle import NoiseBundle
from seen.policy import Control, NoiseAssessment, NoisePolicy
from seen.scoring import PatchedModel


def register(commands: Any) -> None:
    parser = commands.add_parser("score", help=help_of("score"))
    add_model_options(parser)
    parser.add_argument("--bundle", required=True, type=Path, help="noise-basis bundle folder")
    parser.add_argument("--profile", help="bundle profile, or auto for the dominant one (default: the bundle's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file instead of a table")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    bundle = NoiseBundle.load(args.bundle)
    policy = NoisePolicy(bundle)
    control = Control(enabled=True, strength=bundle.default_strength, profile=args.profile or bundle.default_profile)
    policy.check_profile(control.profile)
    lm = load_model(args)
    scorer = PatchedModel(lm, bundle)
    clips: list[Clip] = []
    files: list[tuple[Path, list[int]]] = []  # each file's rows among the clips
    failures = []
    for path in args.files:
        try:
            audio = load_audio_file(path, lm.sample_rate)
        except (AudioError, FileNotFoundError) as error:
            failures.append((path, str(error)))
            continue
        windows = split_into_windows(audio, lm.sample_rate, lm.max_clip_seconds)
        files.append((path, list(range(len(clips), len(clips) + len(windows)))))
        clips.extend(windows)
    rows: list[tuple[Path, NoiseAssessment]] = []
    if clips:
        report = scorer.score(clips, args.batch_size)
        for path, indices in files:
            silent = sum(is_digital_silence(clips[index]) for index in indices)
            rows.append((path, policy.assess_scored(report, indices, control, silent_clips=silent)))
    if args.json:
        for path, assessment in rows:
            print(json.dumps({"path": str(path), **asdict(assessment)}))
        for path, message in failures:
            print(json.dumps({"path": str(path), "error": message}))
    else:
        _print_table(rows, failures)
    return 1 if failures else 0


def _print_table(rows: list[tuple[Path, NoiseAssessment]], failures: list[tuple[Path, str]]) -> None:
    table = Table(title="SEE per file")
    for column in ("file", "SEE", "profile", "noisy", "dominant noise"):
        table.add_column(column, justify="right" if column == "SEE" else "left")
    for path, assessment in rows:
        noisy = "-" if assessment.noisy is None else ("yes" if assessment.noisy else "no")
        table.add_row(str(path), f"{assessment.see:.4f}", assessment.profile, noisy, assessment.dominant_noise or "-")
    Console().print(table)
    for path, message in failures:
        print(f"{path}: error: {message}", file=sys.stderr)
