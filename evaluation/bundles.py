"""Calibration options side by side: directions kept per layer, and what SEE then does on held-out clips.

Each bundle (calibrated on the same clips with different options) scores the same held-out clips clean
and mixed with each noise at each SNR; the table gives the directions per layer of the default profile
and its mean SEE per condition, so the options can be compared before any generation is run::

    python -m evaluation.bundles --model models/whisper-tiny.en --dataset runs/librispeech/test.csv \\
        --bundle paper-literal=bundles/paper-literal --bundle chance-delta=bundles/chance-delta \\
        --noise white --noise babble=babble:runs/librispeech/calibration --snrs 0,10 --limit 10
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from evaluation.dataset import load_dataset, parse_noise
from seen.adapters import load_audio_lm
from seen.bundle import NoiseBundle
from seen.noise import mix_components
from seen.scoring import PatchedModel


def _named(value: str) -> tuple[str, Path]:
    name, _, folder = value.partition("=")
    if not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=BUNDLE_DIR, got {value!r}")
    return name, Path(folder)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--bundle", required=True, action="append", type=_named, metavar="NAME=DIR")
    parser.add_argument("--noise", action="append", default=[], metavar="TYPE|NAME=babble:DIR")
    parser.add_argument("--snrs", default="0,10", help="comma-separated SNRs in dB")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    lm = load_audio_lm(args.model)
    dataset = load_dataset(args.dataset, lm.sample_rate, args.limit)
    clean = [item.audio for item in dataset.items]
    conditions = {"clean": clean}
    for source in [parse_noise(value) for value in args.noise]:
        for snr in [float(part) for part in args.snrs.split(",")]:
            conditions[f"{source.name}@{snr:g}dB"] = [
                mix_components(
                    item.audio,
                    source.for_clip(i, item.audio.size, lm.sample_rate, args.seed, clip_id=item.clip_id),
                    snr,
                ).mixture
                for i, item in enumerate(dataset.items)
            ]
    print("| option | layers | directions per layer (default profile) | " + " | ".join(conditions) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in conditions) + " |")
    for name, folder in args.bundle:
        bundle = NoiseBundle.load(folder)
        scorer = PatchedModel(lm, bundle)
        profile = list(bundle.profiles).index(bundle.default_profile)
        means = [float(scorer.score(clips).see[:, profile].mean()) for clips in conditions.values()]
        ranks = bundle.profiles[bundle.default_profile].ranks
        cells = " | ".join(f"{value:.3f}" for value in means)
        print(f"| {name} | {bundle.layers} | {ranks} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
