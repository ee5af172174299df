"""``seen score``: SEE of audio files against a bundle, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cli.options import add_model_options, load_model
from seen.audio import AudioError, load_audio_file
from seen.bundle import NoiseBundle
from seen.scoring import Scorer


def register(commands: Any) -> None:
    parser = commands.add_parser("score", help="SEE of audio files (no generation)")
    add_model_options(parser)
    parser.add_argument("--bundle", required=True, type=Path, help="noise-basis bundle folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file instead of a table")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    bundle = NoiseBundle.load(args.bundle)
    lm = load_model(args)
    scorer = Scorer(lm, bundle)
    clips, paths, failures = [], [], []
    for path in args.files:
        try:
            clips.append(load_audio_file(path, lm.sample_rate, max_seconds=lm.max_clip_seconds))
            paths.append(path)
        except (AudioError, FileNotFoundError) as error:
            failures.append((path, str(error)))
    rows = []
    if clips:
        report = scorer.score(clips, args.batch_size)
        default = report.profiles.index(bundle.default_profile)
        for index, path in enumerate(paths):
            per_profile = {name: float(report.see[index, p]) for p, name in enumerate(report.profiles)}
            rows.append(
                {
                    "path": str(path),
                    "see": per_profile[bundle.default_profile],
                    "profile": bundle.default_profile,
                    "dominant_noise": max(per_profile, key=lambda name: per_profile[name]),
                    "see_by_profile": per_profile,
                    "see_by_layer": dict(zip(bundle.layers, report.per_layer[index, :, default].tolist(), strict=True)),
                }
            )
    if args.json:
        for row in rows:
            print(json.dumps(row))
        for path, message in failures:
            print(json.dumps({"path": str(path), "error": message}))
    else:
        _print_table(rows, failures)
    return 1 if failures else 0


def _print_table(rows: list[dict[str, Any]], failures: list[tuple[Path, str]]) -> None:
    table = Table(title="SEE per file")
    for column in ("file", "SEE", "profile", "dominant noise"):
        table.add_column(column, justify="right" if column == "SEE" else "left")
    for row in rows:
        table.add_row(row["path"], f"{row['see']:.4f}", row["profile"], row["dominant_noise"])
    Console().print(table)
    for path, message in failures:
        print(f"{path}: error: {message}", file=sys.stderr)
