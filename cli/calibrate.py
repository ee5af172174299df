"""``seen calibrate`` and ``seen import-basis``: make a noise-basis bundle for a model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from tqdm import tqdm

from calibration.data import load_clip_set
from calibration.importer import bundle_from_imports, check_profile_names, read_basis_file
from calibration.pipeline import CalibrationConfig, calibrate
from calibration.summary import print_report
from cli.commands import help_of
from cli.options import add_model_options, load_model
from seen.basis import BasisOptions
from seen.hooks import SiteKind


def _noise_source(value: str) -> tuple[str, Path]:
    name, separator, folder = value.partition("=")
    if not separator or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {value!r}")
    return name, Path(folder)


SINGLE_PROFILE = "paper"
"""Profile name of a single imported file given as a bare path without --profile."""


def _basis_source(value: str) -> tuple[str | None, Path]:
    """``NAME=FILE`` or a bare path (a path that exists is bare even when it holds '=')."""
    if Path(value).is_file() or "=" not in value:
        return None, Path(value)
    name, _, file = value.partition("=")
    if not name or not file:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE or FILE, got {value!r}")
    return name, Path(file)


def _layers(value: str) -> list[int]:
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {value!r}") from error


def register(commands: Any) -> None:
    parser = commands.add_parser("calibrate", help=help_of("calibrate"))
    add_model_options(parser)
    parser.add_argument("--clean", required=True, type=Path, help="folder of clean speech clips")
    parser.add_argument(
        "--noise", required=True, action="append", type=_noise_source, metavar="NAME=DIR", help="a noise profile"
    )
    parser.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    # Defaults: the recipe the SEEN study found the best noise detector on real Whisper (docs/calibration.md);
    # the paper's literal recipe is --delta 0.1 --delta-mode absolute --max-directions 0 (no cap).
    parser.add_argument("--alpha", type=float, default=0.95, help="energy share of kept directions")
    parser.add_argument("--delta", type=float, default=14.0, help="threshold on a direction's |cosine| with speech")
    parser.add_argument(
        "--delta-mode", choices=("absolute", "chance"), default="chance", help="chance: delta in units of 1/sqrt(D)"
    )
    parser.add_argument("--center", choices=("none", "clean_mean", "per_set"), default="none")
    parser.add_argument(
        "--max-directions", type=int, default=4, help="cap on directions per layer and profile (0: no cap)"
    )
    parser.add_argument(
        "--method",
        choices=("svd", "contrastive", "paired"),
        default="svd",
        help="svd: the paper's noise directions far from clean ones; contrastive: noise variance over clean "
        "variance; paired: principal directions of (noisy mix - clean) on the same clips",
    )
    parser.add_argument("--paired-snr", type=float, default=5.0, help="SNR (dB) of the paired method's mixes")
    parser.add_argument(
        "--layers", type=_layers, default=None, help="critical layers, e.g. 23,24,25 (skips localization)"
    )
    parser.add_argument("--site", choices=[kind.value for kind in SiteKind], default=SiteKind.ENCODER_FFN.value)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--strength", type=float, default=1.0, help="default lambda stored in the bundle")
    parser.set_defaults(run=run_calibrate)

    importer = commands.add_parser("import-basis", help=help_of("import-basis"))
    importer.add_argument(
        "files",
        nargs="+",
        type=_basis_source,
        metavar="[NAME=]FILE",
        help="torch.save file holding a list of (D x k) tensors, one per layer; one profile each, named NAME "
        "or the file's stem. Several files also give 'merged', the union of their subspaces, as the default",
    )
    add_model_options(importer)
    importer.add_argument("--start-layer", required=True, type=int, help="encoder layer of the first basis")
    importer.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    importer.add_argument(
        "--profile", default=None, help=f"name of the profile of a single bare FILE (default {SINGLE_PROFILE})"
    )
    importer.set_defaults(run=run_import)


def run_calibrate(args: argparse.Namespace) -> int:
    console = Console()
    lm = load_model(args)
    window = lm.max_clip_seconds
    clean = load_clip_set("clean", args.clean, lm.sample_rate, window)
    noises = [load_clip_set(name, folder, lm.sample_rate, window) for name, folder in args.noise]
    config = CalibrationConfig(
        site=SiteKind(args.site),
        layers=args.layers,
        basis=BasisOptions(
            alpha=args.alpha,
            delta=args.delta,
            delta_mode=args.delta_mode,
            center=args.center,
            max_directions=args.max_directions or None,
            method=args.method,
            paired_snr_db=args.paired_snr,
        ),
        batch_size=args.batch_size,
        default_strength=args.strength,
    )
    total = 2 * (len(clean.clips) + sum(len(n.clips) for n in noises))
    total += len(clean.clips) * len(noises) if args.method == "paired" else 0
    with tqdm(total=total, unit="clip", desc="calibrating") as bar:
        result = calibrate(lm, clean, noises, config, progress=bar.update)
    result.bundle.save(args.out)
    print_report(result, console)
    console.print(f"bundle written to {args.out} ({len(result.bundle.layers)} critical layers)")
    return 0


def run_import(args: argparse.Namespace) -> int:
    sources: list[tuple[str | None, Path]] = args.files
    if len(sources) > 1 and args.profile is not None:
        raise ValueError("--profile names the profile of a single file; with several, name each as NAME=FILE")
    if len(sources) == 1 and sources[0][0] is not None and args.profile is not None:
        raise ValueError("give the profile name either as NAME=FILE or with --profile, not both")
    if len(sources) == 1:
        names = [sources[0][0] or args.profile or SINGLE_PROFILE]
    else:
        names = [name or path.stem for name, path in sources]
    check_profile_names(names)
    imports = [read_basis_file(name, path) for name, (_, path) in zip(names, sources, strict=True)]
    lm = load_model(args)
    bundle = bundle_from_imports(lm, imports, args.start_layer)
    bundle.save(args.out)
    for name, profile in bundle.profiles.items():
        ranks = ", ".join(str(k) for k in profile.ranks)
        print(f"{name}: k = {ranks}")
    print(
        f"imported {len(bundle.layers)} layer bases from layer {args.start_layer} into {args.out}: "
        f"profiles {', '.join(bundle.profiles)}, default {bundle.default_profile}"
    )
    return 0
