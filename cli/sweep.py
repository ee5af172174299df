"""``seen sweep``: a grid of SEEN configurations calibrated once per site and measured on one split."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from cli.commands import help_of
from cli.evaluate import _check_extras, _floats, _names
from cli.options import add_model_options, load_model
from seen.hooks import SiteKind


def _ks(value: str) -> list[int | None]:
    return [None if part == "auto" else int(part) for part in _names(value)]


def register(commands: Any) -> None:
    parser = commands.add_parser("sweep", help=help_of("sweep"))
    add_model_options(parser)
    parser.add_argument("--clean", required=True, type=Path, help="calibration clean clips (folder)")
    parser.add_argument(
        "--calibration-noise",
        required=True,
        action="append",
        metavar="NAME=DIR",
        help="calibration noise clips, one profile each (repeatable)",
    )
    parser.add_argument("--dataset", required=True, type=Path, help="the split measured: CSV file,transcript")
    parser.add_argument("--noise", action="append", metavar="TYPE|NAME=babble:DIR", help="noise mixed into the split")
    parser.add_argument("--snrs", type=_floats, default=[0.0, 10.0], help="comma-separated SNRs in dB")
    parser.add_argument("--sites", type=_names, default=[SiteKind.ENCODER_FFN.value], help="encoder site kinds")
    parser.add_argument("--layers", type=_names, default=["localized"], help="localized, all, last-N, layer-L")
    parser.add_argument("--bases", type=_names, default=["chance"], help="paper, chance, clean-mean, per-set, ...")
    parser.add_argument("--k", type=_ks, default=[None], help="directions per layer at most (auto: the recipe's)")
    parser.add_argument("--lambdas", type=_floats, default=[0.25, 0.5, 1.0], help="SEEN strengths")
    parser.add_argument("--routings", type=_names, default=["merged"], help="merged, auto, or a profile name")
    parser.add_argument("--adaptive", action="store_true", help="also measure the adaptive mode (seen-adaptive)")
    parser.add_argument("--factorial", action="store_true", help="every combination instead of one axis at a time")
    parser.add_argument("--limit", type=int, help="first N rows of the dataset")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the measured split")
    parser.add_argument("--out", required=True, type=Path, help="results folder (a rerun resumes here)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    _check_extras(["none"])
    from tqdm import tqdm

    from calibration.data import load_clip_set
    from cli.calibrate import _noise_source
    from evaluation.dataset import load_dataset, parse_noise
    from evaluation.runner import Condition
    from evaluation.sweep import grid, markdown, run_sweep

    sweep = grid(
        [SiteKind(s) for s in args.sites],
        args.layers,
        args.bases,
        args.k,
        args.lambdas,
        args.routings,
        factorial=args.factorial,
        adaptive=args.adaptive,
    )
    lm = load_model(args)
    clean = load_clip_set("clean", args.clean, lm.sample_rate, lm.max_clip_seconds)
    noises = [
        load_clip_set(*_noise_source(value), lm.sample_rate, lm.max_clip_seconds) for value in args.calibration_noise
    ]
    dataset = load_dataset(args.dataset, lm.sample_rate, args.limit)
    sources = [parse_noise(value) for value in (args.noise or ["white"])]
    conditions = [Condition(None, None)] + [Condition(n, snr) for n in sources for snr in sorted(args.snrs)]
    manifest = {
        key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items() if key != "run"
    }
    manifest["points"] = [point.key for point in sweep.points]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    started = time.perf_counter()
    steps = len({p.site for p in sweep.points}) + len(sweep.points) * (1 + len(sweep.routings)) + 1
    with tqdm(total=steps, unit="step", desc="sweeping") as bar:

        def step(text: str) -> None:
            bar.set_postfix_str(text[:60])
            bar.update()

        results = run_sweep(
            lm,
            clean,
            noises,
            dataset,
            conditions,
            sweep,
            args.out,
            batch_size=args.batch_size,
            max_tokens=args.max_tokens,
            seed=args.seed,
            on_step=step,
        )
    title = f"SEEN sweep on {Path(str(args.model)).name}, {dataset.name} ({len(dataset.items)} clips)"
    (args.out / "report.md").write_text(markdown(results, title))
    print(f"{len(results)} configurations in {time.perf_counter() - started:.0f} s; report: {args.out / 'report.md'}")
    return 0
