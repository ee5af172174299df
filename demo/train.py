"""Train the demo model from a seed: ``python -m demo.train --out demo/assets/model``.

Two stages, both on espeak-ng speech from the training voices and sentences only, with an auxiliary
CTC loss on the audio encoder (:mod:`demo.ctc`, dropped from the saved checkpoint):

1. clean speech, AdamW with warm-up and cosine decay;
2. a short fine-tune where most batches carry light white, pink or brown noise at high SNR (30 to 45 dB).
   A model trained on clean speech alone breaks at the first hint of noise; this keeps it working at
   high SNR while every SNR below 30 dB and every other noise type (babble, engine, wind) stay unseen,
   so it degrades under noise the way real audio-language models do.

The default recipe takes about 22 minutes on 2 CPU cores (synthesis and both stages; the held-out
report adds under a minute) and writes the checkpoint, its processor and ``training.json`` (recipe,
timing, held-out accuracy).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from demo.ctc import EncoderCtc
from demo.data import NO_AUDIO_ANSWER, QUESTIONS, Example, held_out_pairs, speak, training_pairs
from demo.evaluate import answer, noisy, score
from demo.model import DemoArchitecture, build_model, build_processor
from seen.adapters import load_audio_lm
from seen.noise import generate_noise, mix_at_snr


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the checkpoint (with the seed and the espeak-ng version)."""

    seed: int = 0
    clips: int = 8000
    batch_size: int = 16
    clean_steps: int = 2600
    clean_lr: float = 2e-3
    tune_steps: int = 800
    tune_lr: float = 7e-4
    warmup_steps: int = 100
    noisy_batch_share: float = 0.7
    tune_noise: tuple[str, ...] = ("white", "pink", "brown")
    tune_snr_db: tuple[float, float] = (30.0, 45.0)
    max_shift_seconds: float = 0.5
    no_audio_share: float = 0.04
    ctc_weight: float = 0.3
    test_clips: int = 200


SMOKE = Recipe(clips=48, batch_size=4, clean_steps=4, tune_steps=2, warmup_steps=1, test_clips=8)
"""A few steps of everything, for the test suite."""


def _schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def training_batch(
    processor: Any, audios: Sequence[np.ndarray | None], questions: Sequence[str], answers: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Processor inputs for whole conversations, with labels on the answer (and its end-of-turn) only."""
    texts = []
    for audio, question, reply in zip(audios, questions, answers, strict=True):
        content = ([{"type": "audio"}] if audio is not None else []) + [{"type": "text", "text": question}]
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        texts.append(prompt + reply + "<|im_end|>")
    clips = [audio for audio in audios if audio is not None]
    inputs = processor(text=texts, audio=clips or None, sampling_rate=16000, return_tensors="pt", padding=True)
    labels = torch.full_like(inputs["input_ids"], -100)
    for row, reply in enumerate(answers):
        # Left padding: every sequence ends at the last position; the byte tokenizer gives one token per byte.
        length = len(reply.encode()) + 1
        labels[row, -length:] = inputs["input_ids"][row, -length:]
    return {**inputs, "labels": labels}


def _shift(audio: np.ndarray, recipe: Recipe, window_samples: int, rng: random.Random) -> np.ndarray:
    """Start the speech a little later in the window, so the model does not learn where words sit."""
    room = min(int(recipe.max_shift_seconds * 16000), window_samples - audio.size)
    return np.pad(audio, (rng.randint(0, max(0, room)), 0)) if room > 0 else audio


def _augment(audio: np.ndarray, recipe: Recipe, rng: random.Random) -> np.ndarray:
    kind = rng.choice(recipe.tune_noise)
    noise = generate_noise(kind, audio.size, 16000, seed=rng.randrange(2**31))
    return mix_at_snr(audio, noise, rng.uniform(*recipe.tune_snr_db))


def _stage(
    model: Any,
    ctc: EncoderCtc,
    processor: Any,
    examples: Sequence[Example],
    recipe: Recipe,
    *,
    steps: int,
    lr: float,
    augment: bool,
    rng: random.Random,
    label: str,
) -> list[float]:
    parameters = [*model.parameters(), *ctc.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    schedule = _schedule(optimizer, steps, recipe.warmup_steps)
    losses: list[float] = []
    model.train()
    progress = tqdm(range(steps), desc=label, unit="step")
    for _ in progress:
        picked = rng.sample(examples, recipe.batch_size)
        noisy_batch = augment and rng.random() < recipe.noisy_batch_share
        audios: list[np.ndarray | None] = []
        answers, spoken = [], []
        for example in picked:
            if rng.random() < recipe.no_audio_share:
                audios.append(None)
                answers.append(NO_AUDIO_ANSWER)
            else:
                audio = _shift(example.audio, recipe, processor.feature_extractor.n_samples, rng)
                audios.append(_augment(audio, recipe, rng) if noisy_batch else audio)
                answers.append(example.sentence)
                spoken.append(example.sentence)
        batch = training_batch(processor, audios, [rng.choice(QUESTIONS) for _ in picked], answers)
        loss = model(**batch).loss + recipe.ctc_weight * ctc.loss(spoken)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        progress.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    model.eval()
    return losses


def held_out_report(model_dir: Path, recipe: Recipe) -> dict[str, Any]:
    """Accuracy of the saved checkpoint, loaded back through the normal path, on held-out voices."""
    lm = load_audio_lm(str(model_dir), dtype="float32")
    window = lm.max_clip_seconds
    report: dict[str, Any] = {}
    for name, new_sentences in (("held_out_voices", False), ("held_out_voices_and_sentences", True)):
        examples = speak(held_out_pairs(recipe.test_clips, seed=recipe.seed + 7, new_sentences=new_sentences), window)
        references = [e.sentence for e in examples]
        clips = [e.audio for e in examples]
        report[name] = asdict(score(answer(lm, clips), references))
        if not new_sentences:
            for kind in ("white", "babble"):
                for snr in (20, 0):
                    accuracy = score(answer(lm, noisy(clips, kind, snr, seed=1000)), references)
                    report[f"{name}_{kind}_{snr}dB"] = asdict(accuracy)
    return report


def train(out: Path, recipe: Recipe, arch: DemoArchitecture) -> dict[str, Any]:
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    started = time.perf_counter()
    processor = build_processor(arch)
    model = build_model(arch, processor.tokenizer)
    ctc = EncoderCtc(model, arch.encoder_dim)
    examples = speak(training_pairs(recipe.clips, recipe.seed), arch.window_seconds)
    synthesis_seconds = time.perf_counter() - started
    clean = _stage(model, ctc, processor, examples, recipe, steps=recipe.clean_steps, lr=recipe.clean_lr,
                   augment=False, rng=rng, label="clean")  # fmt: skip
    tuned = _stage(model, ctc, processor, examples, recipe, steps=recipe.tune_steps, lr=recipe.tune_lr,
                   augment=True, rng=rng, label="noise fine-tune")  # fmt: skip
    ctc.remove()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    training_seconds = time.perf_counter() - started
    report = {
        "recipe": asdict(recipe),
        "architecture": arch.as_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "synthesis_seconds": round(synthesis_seconds, 1),
        "training_seconds": round(training_seconds, 1),
        "final_loss": {"clean": float(np.mean(clean[-50:])), "noise_fine_tune": float(np.mean(tuned[-50:]))},
        "evaluation": held_out_report(out, recipe),
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps of everything (for tests)")
    args = parser.parse_args(argv)
    recipe = SMOKE if args.smoke else Recipe()
    report = train(args.out, Recipe(**{**asdict(recipe), "seed": args.seed}), DemoArchitecture())
    evaluation = report["evaluation"]
    print(f"trained in {report['training_seconds']:.0f} s ({report['parameters']:,} parameters)")
    for name, figures in evaluation.items():
        print(f"{name:48s} exact match {figures['exact_match']:.3f}  WER {figures['wer']:.3f}  (n={figures['count']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
