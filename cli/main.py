"""The ``seen`` command: one entry point, one subcommand module per area, each imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from cli.commands import COMMANDS
from seen import __version__

EXPECTED_ERRORS = (ValueError, LookupError, FileNotFoundError, NotADirectoryError, RuntimeError)


class _DefaultsShown(argparse.HelpFormatter):
    """``--help`` says every option's default, unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or action.option_strings == []:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsShown)
        super().__init__(*args, **kwargs)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The full parser of the command named in ``argv``; every other command is a one-line stub."""
    parser = _Parser(prog="seen", description="Noise-aware serving of audio-language models.")
    parser.add_argument("--version", action="version", version=f"seen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    if chosen in COMMANDS:
        importlib.import_module(COMMANDS[chosen][0]).register(commands)
    for name, (_, help_text) in COMMANDS.items():
        if name not in commands.choices:
            commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(arguments).parse_args(arguments)
    try:
        return int(args.run(args))
    except EXPECTED_ERRORS as error:
        print(f"seen {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
