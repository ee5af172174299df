"""``seen examples``: where the installed example clips are, so the README's requests work from any folder."""

from __future__ import annotations

import argparse
from typing import Any

from cli.commands import help_of


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "examples",
        help=help_of("examples"),
        description="Print the folder of the example clips installed with the package, e.g. "
        "curl ... -F file=@$(seen examples)/request.wav",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from demo import ASSETS

    print(ASSETS / "examples")
    return 0
