"""The ``seen`` command: one entry point, one subcommand module per area."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cli import calibrate, convert, evaluate, noise, score, serve, sweep
from seen import __version__

COMMANDS = (convert, calibrate, score, noise, serve, evaluate, sweep)
EXPECTED_ERRORS = (ValueError, LookupError, FileNotFoundError, NotADirectoryError, RuntimeError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seen", description="Noise-aware serving of audio-language models.")
    parser.add_argument("--version", action="version", version=f"seen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except EXPECTED_ERRORS as error:
        print(f"seen {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
