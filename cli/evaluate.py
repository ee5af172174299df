"""``seen eval``: SEE against generation success, and SEEN against waveform denoisers, on a dataset under noise."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cli.commands import help_of
from cli.options import add_model_options, load_model
from demo import DEMO_BUNDLE_DIR, DEMO_MODEL_DIR
from evaluation.analysis import analyze
from evaluation.dataset import DEFAULT_BABBLE_TALKERS, load_dataset, parse_noise
from evaluation.rows import ResultStore, rows_to_csv
from evaluation.runner import DEFAULT_METHODS, DEFAULT_SNRS_DB, Condition, Evaluator, parse_method, run_all
from seen.bundle import NoiseBundle
from seen.noise import NOISE_TYPES

DEFAULT_NOISES = ("white", "pink", "babble")


def _floats(value: str) -> list[float]:
    try:
        return [float(part) for part in value.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from error


def _names(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def register(commands: Any) -> None:
    parser = commands.add_parser("eval", help=help_of("eval"))
    add_model_options(parser, required=False)
    parser.add_argument("--bundle", type=Path, help="noise-basis bundle (default with no --model: the demo's)")
    parser.add_argument("--dataset", required=True, type=Path, help="CSV: file,question,answer or file,transcript")
    parser.add_argument("--limit", type=int, help="use only the first N rows of the dataset")
    parser.add_argument(
        "--noise",
        action="append",
        metavar="TYPE|NAME=DIR|NAME=babble[:K]:DIR",
        help=(
            f"noise source, repeatable (default: {','.join(DEFAULT_NOISES)}): a synthetic TYPE "
            f"({', '.join(NOISE_TYPES)}); NAME=DIR, a folder of noise recordings (clip i gets recording i); or "
            f"NAME=babble:DIR / NAME=babble:K:DIR, babble of K (default {DEFAULT_BABBLE_TALKERS}) speech recordings "
            "from DIR by speakers other than the clip's (speaker = file name up to the first '-', as in "
            "LibriSpeech's SPEAKER-CHAPTER-UTTERANCE), each at equal level, chosen per clip by --seed"
        ),
    )
    parser.add_argument("--snrs", type=_floats, default=list(DEFAULT_SNRS_DB), help="comma-separated SNRs in dB")
    parser.add_argument("--methods", type=_names, default=list(DEFAULT_METHODS), help="comma-separated methods")
    parser.add_argument("--profile", help="bundle profile SEE and SEEN use (default: the bundle's default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128, help="longest answer generated")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (clip i uses seed + i)")
    parser.add_argument("--language", help="spoken language (ISO 639-1) for speech recognizers, e.g. en")
    parser.add_argument("--out", required=True, type=Path, help="results folder (an interrupted run resumes here)")
    parser.set_defaults(run=run)


def _check_extras(methods: list[str]) -> None:
    """The eval extra is optional (serving does not need it): say what is missing before any work starts."""
    needed = ["matplotlib", "pystoi", "speechmos", "onnxruntime"]  # STOI and DNSMOS are measured on every input
    needed += ["noisereduce"] if any(m.startswith("noisereduce") for m in methods) else []
    needed += ["pyrnnoise"] if "rnnoise" in methods else []
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(f"seen eval needs {', '.join(missing)}: pip install 'seen[eval]' (or '.[eval]')")


def run(args: argparse.Namespace) -> int:
    _check_extras(args.methods)
    from evaluation.markdown import write_report  # matplotlib: only with the eval extra

    if args.model is None and args.bundle is None:
        args.model, args.bundle = str(DEMO_MODEL_DIR), DEMO_BUNDLE_DIR
    elif args.model is None or args.bundle is None:
        raise ValueError("give both --model and --bundle (a bundle belongs to the model it was calibrated on)")
    methods = [parse_method(name) for name in args.methods]
    noises = [parse_noise(value) for value in (args.noise or DEFAULT_NOISES)]
    bundle = NoiseBundle.load(args.bundle)
    lm = load_model(args)
    dataset = load_dataset(args.dataset, lm.sample_rate, args.limit)
    conditions = [Condition(None, None)] + [Condition(n, snr) for n in noises for snr in sorted(args.snrs)]
    settings = {
        "model": str(args.model),
        "bundle_sha256": bundle.bases_sha256,
        "dataset": str(args.dataset),
        "dataset_fingerprint": dataset.fingerprint,
        "clips": len(dataset.items),
        "task": dataset.task,
        "noises": [n.spec for n in noises],
        "snrs_db": sorted(args.snrs),
        "methods": [m.name for m in methods],
        "profile": args.profile or bundle.default_profile,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        **({"language": args.language} if args.language else {}),  # absent when unset: older runs still resume
    }
    store = ResultStore(args.out, settings)
    evaluator = Evaluator.for_model(lm, bundle, dataset, batch_size=args.batch_size, max_tokens=args.max_tokens,
                          profile=args.profile, seed=args.seed, language=args.language)  # fmt: skip
    started = time.perf_counter()
    try:
        with tqdm(total=len(conditions), unit="condition", desc="evaluating") as bar:
            rows = run_all(evaluator, store, conditions, methods, on_condition=lambda c: bar.update())
    finally:
        evaluator.close()
    seconds = time.perf_counter() - started
    analysis = analyze(rows, wrong_below=1.0 if dataset.task == "qa" else 0.5)
    rows_to_csv(rows, args.out / "requests.csv")
    results = {"settings": settings, "run_seconds": seconds, **analysis.to_dict()}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _write_conditions_csv(results["conditions"], args.out / "conditions.csv")
    title = f"SEE and SEEN on {Path(str(args.model)).name}, {dataset.name}"
    written = write_report(analysis, args.out, title=title, run_seconds=seconds, settings=settings)
    print(f"{len(rows)} requests in {seconds:.0f} s; wrote {', '.join(p.name for p in written)} to {args.out}")
    return 0


def _write_conditions_csv(conditions: list[dict[str, Any]], path: Path) -> None:
    if not conditions:
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(conditions[0]))
        writer.writeheader()
        writer.writerows(conditions)
