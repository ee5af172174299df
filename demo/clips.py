"""Write the demo model's clean calibration speech (``--out DIR``), the README's example clips (``--example``)
and a held-out evaluation set for ``seen eval`` (``--held-out DIR``).

Calibration clips are fresh takes by training voices (a seed of their own), never the test voices, so the
bundle is calibrated on speech the tests do not score. The example is a held-out voice.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from demo.data import SPOKEN_SECONDS, held_out_pairs, speak, training_pairs
from demo.evaluate import QUESTION
from demo.speech import Voice, split_variants, synthesize
from seen.noise import generate_noise, mix_at_snr

CALIBRATION_SEED = 4242
EXAMPLE_SENTENCE = "turn on the heater in the back"


EXAMPLE_NOISE = ("white", 0.0)


def with_example_noise(clean: np.ndarray, snr_db: float) -> np.ndarray:
    """The example clip in its own noise (the quick start's kind and seed) at any SNR, as the README's lower levels."""
    return mix_at_snr(clean, generate_noise(EXAMPLE_NOISE[0], clean.size, 16000, seed=2024), snr_db)


def write_example(path: Path) -> list[Path]:
    """The quick start's clips (16-bit PCM WAV, a voice never heard in training): clean, and in white noise at 0 dB."""
    _, held_out = split_variants()
    clean = synthesize(EXAMPLE_SENTENCE, Voice("en-gb", held_out[0], rate=160, pitch=55))
    kind, snr = EXAMPLE_NOISE
    noisy = with_example_noise(clean, snr)
    noisy_path = path.with_name(f"{path.stem}-{kind}-{snr:g}db{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, clean, 16000, subtype="PCM_16")
    sf.write(noisy_path, noisy, 16000, subtype="PCM_16")
    return [path, noisy_path]


def write_clean_clips(out: Path, count: int, window_seconds: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, example in enumerate(speak(training_pairs(count, CALIBRATION_SEED), window_seconds)):
        path = out / f"clean_{index:04d}.wav"
        sf.write(path, example.audio, 16000, subtype="FLOAT")
        paths.append(path)
    return paths


def write_held_out_set(out: Path, count: int, window_seconds: float, seed: int = 7) -> Path:
    """Held-out voices saying training sentences, as an evaluation CSV (``file,question,answer``)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "held_out.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "question", "answer"])
        for index, example in enumerate(speak(held_out_pairs(count, seed=seed), window_seconds)):
            name = f"held_out_{index:04d}.wav"
            sf.write(out / name, example.audio, 16000, subtype="FLOAT")
            writer.writerow([name, QUESTION, example.sentence])
    return out / "held_out.csv"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder to write calibration WAV files into")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--example", type=Path, help="also write the example clip to this path")
    parser.add_argument("--held-out", type=Path, help="also write a held-out evaluation set (CSV + WAV) here")
    args = parser.parse_args(argv)
    if args.out is None and args.example is None and args.held_out is None:
        parser.error("give --out, --example or --held-out")
    if args.out is not None:
        paths = write_clean_clips(args.out, args.count, SPOKEN_SECONDS)
        print(f"wrote {len(paths)} clean speech clips to {args.out}")
    if args.example is not None:
        print("wrote the example clips " + ", ".join(str(p) for p in write_example(args.example)))
    if args.held_out is not None:
        path = write_held_out_set(args.held_out, args.count, SPOKEN_SECONDS)
        print(f"wrote {args.count} held-out clips and {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
