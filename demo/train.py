"""Train the demo model: ``python -m demo.train --whisper models/whisper-tiny.en --out demo/assets/model``.

The audio encoder is a converted Whisper encoder (``seen convert``), moved into the Qwen2-Audio tower and
frozen (:mod:`demo.encoder`); the projector and a small Qwen2 language model learn to answer from its
output rows, with an auxiliary CTC loss on the projector's output (:mod:`demo.ctc`, dropped from the
saved checkpoint). Training speech is espeak-ng's, from the training voices and sentences only, plus
random strings of those sentences' words (:func:`demo.corpus.word_strings`).

Since the encoder is frozen, each clip's rows are computed once (:class:`demo.encoder.EncoderCache`):
every clip clean, and a share of them again under light white, pink or brown noise at high SNR (30 to
45 dB), which a share of each batch is drawn from. The language model then keeps working at high SNR while
every SNR below 30 dB and every other noise type (babble, engine, wind) stay unseen, so the model degrades
under noise the way real audio-language models do.

The default recipe takes about 45 minutes on 2 CPU cores (synthesis, encoding, training, the held-out
report) and writes the checkpoint in float16 (it loads to float32 for CPU serving), its processor and
``training.json`` (recipe, the encoder's provenance, timing, held-out accuracy).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from demo.ctc import LetterCtc
from demo.data import NO_AUDIO_ANSWER, QUESTIONS, SPOKEN_SECONDS, held_out_pairs, speak, training_pairs
from demo.encoder import (
    EncoderCache,
    read_whisper_encoder,
    top_feed_forward,
    transplant_whisper_encoder,
    unfreeze_top_feed_forward,
)
from demo.evaluate import answer, noisy, score
from demo.model import DemoArchitecture, build_model, build_processor
from seen.adapters import load_audio_lm
from seen.noise import generate_noise, mix_at_snr


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the checkpoint (with the seed, the Whisper weights and espeak-ng's version).

    The fields' notes record what was tried; "this recipe" there is the one that stood then, with the
    encoder frozen (before ``tune_top_feed_forward``), unless they say otherwise.
    """

    seed: int = 0
    clips: int = 8000
    word_strings: int = 2000
    """Extra clips of random strings of the training sentences' words (:func:`demo.corpus.word_strings`).

    More is not better: 3000 of them with 4000 steps lowered held-out voices from 0.99 to 0.95 and unseen
    sentences from 0.95 to 0.93 (training report, 100 clips each)."""
    swapped_sentences: int = 0
    """Extra clips of training sentences with one or two fillers swapped (:func:`demo.corpus.swapped_sentences`).

    1000 of them in place of 1000 sentence clips (``clips`` 7000) did not establish a gain and cost the
    training sentences: unseen sentences 0.97 on the training report (100 clips) and 0.95 on 200 more (seed
    11), 287 of 300 against this recipe's 286, but held-out voices on training sentences 0.96 against 0.99,
    and its misses turned to word salad ("send a message to the doctor" heard as "seat turn meeting turn
    to"). Training took 48.8 minutes (53.0 with the report)."""
    noisy_clips: int = 3000
    """Clips also encoded under light noise."""
    batch_size: int = 16
    steps: int = 3500
    lr: float = 2e-3
    warmup_steps: int = 100
    noisy_share: float = 0.3
    """The share of a batch's clips taken from the noisy encodings."""
    tune_noise: tuple[str, ...] = ("white", "pink", "brown")
    tune_snr_db: tuple[float, float] = (30.0, 45.0)
    max_shift_seconds: float = 0.5
    no_audio_share: float = 0.04
    token_noise: float = 0.0
    """The share of the answer's input tokens replaced by a random letter or space under teacher forcing
    (the labels stay the true ones), so that the language model reads the next word from the audio rather
    than from the words it already wrote.

    0.1 did not establish a gain on unseen sentences: 0.97 on the training report (100 clips) but 0.95 on
    200 more (seed 11), against 0.95 and 0.955 for this recipe, 287 against 286 of the 300; 6 of its 10
    misses on those 200 were one sentence, "find a hotel nearby". It made the model harder to disturb
    (white noise at 0 dB 0.50 against 0.37, babble at 0 dB 0.94 against 0.90)."""
    ctc_weight: float = 0.3
    """Raising it to 1.0, with the saved weights an exponential moving average of the trained ones (decay
    0.998), did worse: unseen sentences 0.94 (training report, 100 clips) and 0.935 on 200 more, against
    0.95 and 0.955 for this recipe on the same clips, and training took 51.5 minutes instead of 41.3."""
    tune_top_feed_forward: bool = True
    """Whether the top encoder layer's feed-forward block (and the tower's last layer norm) learns too, at
    ``encoder_lr``; the cache then stops before it and each step finishes the tower
    (:func:`demo.encoder.top_feed_forward`).

    Against the frozen encoder (everything else as this recipe, 1.18 M encoder parameters at 2e-4): unseen
    sentences 0.98 on the training report (100 clips) and 0.98 on 200 more (seed 11), 294 of 300 against
    286; held-out voices 0.98 (report) and 0.995 (200 more, seed 11); white noise at 20 / 0 dB 0.96 / 0.45
    against 0.99 / 0.37, babble 0.99 / 0.91 against 1.00 / 0.90. Each step costs about 0.7 s instead of 0.5;
    fewer steps do not pay for it: 2500 of them gave unseen sentences 0.94 (report) and 0.895 (200 more),
    "set the fan speed to two" cut short to "set the fan speed to" in 14 of its 16 clips. The committed
    checkpoint (this recipe, with the tuned block run on valid positions only): unseen sentences 0.97
    (report) and 0.98 (196 of 200, seed 11), held-out voices 0.99; 48.7 minutes of training, 52.2 with the
    report, about 56.5 with the bundle."""
    encoder_lr: float = 2e-4
    test_clips: int = 100


SMOKE = Recipe(clips=24, word_strings=4, noisy_clips=8, batch_size=4, steps=4, warmup_steps=1, test_clips=4)
"""A few steps of everything, for the test suite."""


@dataclass(frozen=True)
class Heard:
    """A training clip as the language model sees it: the encoder's rows (or its states before the top
    feed-forward block, when that learns), and the sentence spoken."""

    rows: torch.Tensor
    sentence: str


def _schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


_ANSWER_ALPHABET = torch.tensor(list(b"abcdefghijklmnopqrstuvwxyz "))
"""The byte tokens an answer is written in (the byte tokenizer's ids are the bytes)."""


def training_batch(
    model: Any, processor: Any, heard: Sequence[Heard | None], questions: Sequence[str], answers: Sequence[str],
    token_noise: float = 0.0, generator: torch.Generator | None = None, finish_tower: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor]:  # fmt: skip
    """Model inputs for whole conversations (labels on the answer and its end-of-turn only), the projected
    audio rows (clips x rows x width, or None) and each clip's row count.

    The processor's own expansion: one ``<|AUDIO|>`` per audio row, each replaced by its projected row.
    ``token_noise`` replaces that share of the answer's input tokens by random letters (labels unchanged).
    ``finish_tower``: the clips hold states before the top feed-forward block, which runs here.
    """
    clips = [clip.rows for clip in heard if clip is not None]
    lengths = torch.tensor([len(rows) for rows in clips], dtype=torch.long)
    rows = None
    if clips:
        dtype = model.get_input_embeddings().weight.dtype
        rows = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True).to(dtype)
        if finish_tower:
            rows, lengths = top_feed_forward(model, rows, lengths)
    row_counts = iter(lengths.tolist())
    tokenizer = processor.tokenizer
    texts = []
    for clip, question, reply in zip(heard, questions, answers, strict=True):
        content = ([{"type": "audio"}] if clip is not None else []) + [{"type": "text", "text": question}]
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        if clip is not None:
            prompt = prompt.replace(tokenizer.audio_token, tokenizer.audio_token * next(row_counts))
        texts.append(prompt + reply + "<|im_end|>")
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    ids = encoded["input_ids"]
    labels = torch.full_like(ids, -100)
    for row, reply in enumerate(answers):
        # Left padding: every sequence ends at the last position; the byte tokenizer gives one token per byte.
        length = len(reply.encode()) + 1
        labels[row, -length:] = ids[row, -length:]
    if token_noise > 0:
        replaced = (labels != -100) & (torch.rand(ids.shape, generator=generator) < token_noise)
        letters = _ANSWER_ALPHABET[torch.randint(len(_ANSWER_ALPHABET), ids.shape, generator=generator)]
        ids = torch.where(replaced, letters, ids)
    embeds = model.get_input_embeddings()(ids)
    projected = None
    if rows is not None:
        projected = model.get_submodule("model.multi_modal_projector")(rows)
        valid = torch.arange(rows.shape[1])[None, :] < lengths[:, None]
        audio = (ids == model.config.audio_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(audio, projected[valid])
    inputs = {"inputs_embeds": embeds, "attention_mask": encoded["attention_mask"], "labels": labels}
    return inputs, projected, lengths


def _shift(audio: np.ndarray, recipe: Recipe, rng: random.Random) -> np.ndarray:
    """Start the speech a little later, so the model does not learn where words sit."""
    return np.pad(audio, (rng.randint(0, int(recipe.max_shift_seconds * 16000)), 0))


def _augment(audio: np.ndarray, recipe: Recipe, rng: random.Random) -> np.ndarray:
    kind = rng.choice(recipe.tune_noise)
    noise = generate_noise(kind, audio.size, 16000, seed=rng.randrange(2**31))
    return mix_at_snr(audio, noise, rng.uniform(*recipe.tune_snr_db))


def _fit(
    model: Any, ctc: LetterCtc, processor: Any, clean: Sequence[Heard], noisy_: Sequence[Heard], recipe: Recipe,
    rng: random.Random, encoder_parameters: Sequence[torch.nn.Parameter] = (),
) -> list[float]:  # fmt: skip
    """Train; ``encoder_parameters`` (pretrained, already trainable) learn at ``recipe.encoder_lr``."""
    parameters = [p for p in [*model.parameters(), *ctc.parameters()] if p.requires_grad]
    pretrained = {id(p) for p in encoder_parameters}
    groups: list[dict[str, Any]] = [{"params": [p for p in parameters if id(p) not in pretrained]}]
    if encoder_parameters:
        groups.append({"params": list(encoder_parameters), "lr": recipe.encoder_lr})
    optimizer = torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=0.01)
    schedule = _schedule(optimizer, recipe.steps, recipe.warmup_steps)
    losses: list[float] = []
    generator = torch.Generator().manual_seed(recipe.seed)
    model.train()
    progress = tqdm(range(recipe.steps), desc="train", unit="step")
    for _ in progress:
        heard: list[Heard | None] = []
        answers = []
        for _ in range(recipe.batch_size):
            if rng.random() < recipe.no_audio_share:
                heard.append(None)
                answers.append(NO_AUDIO_ANSWER)
            else:
                clip = rng.choice(noisy_ if noisy_ and rng.random() < recipe.noisy_share else clean)
                heard.append(clip)
                answers.append(clip.sentence)
        questions = [rng.choice(QUESTIONS) for _ in heard]
        inputs, projected, lengths = training_batch(
            model, processor, heard, questions, answers, recipe.token_noise, generator, recipe.tune_top_feed_forward
        )
        loss = model(**inputs).loss
        if projected is not None:
            spoken = [clip.sentence for clip in heard if clip is not None]
            loss = loss + recipe.ctc_weight * ctc.loss(projected, lengths, spoken)
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
    report: dict[str, Any] = {}
    for name, new_sentences in (("held_out_voices", False), ("held_out_voices_and_sentences", True)):
        pairs = held_out_pairs(recipe.test_clips, seed=recipe.seed + 7, new_sentences=new_sentences)
        examples = speak(pairs, SPOKEN_SECONDS)
        references = [e.sentence for e in examples]
        clips = [e.audio for e in examples]
        report[name] = asdict(score(answer(lm, clips), references))
        if not new_sentences:
            for kind in ("white", "babble"):
                for snr in (20, 0):
                    accuracy = score(answer(lm, noisy(clips, kind, snr, seed=1000)), references)
                    report[f"{name}_{kind}_{snr}dB"] = asdict(accuracy)
    return report


def _encode(model: Any, processor: Any, recipe: Recipe, rng: random.Random) -> tuple[list[Heard], list[Heard], float]:
    """Synthesize the training clips and cache the frozen encoder's rows (or its states before the top
    feed-forward block, when that learns): all clean, a share noisy too."""
    started = time.perf_counter()
    examples = speak(
        training_pairs(recipe.clips, recipe.seed, recipe.word_strings, recipe.swapped_sentences), SPOKEN_SECONDS
    )
    synthesis_seconds = time.perf_counter() - started
    seconds = math.ceil(SPOKEN_SECONDS + recipe.max_shift_seconds) + 1
    cache = EncoderCache(model, processor, seconds, before_top_feed_forward=recipe.tune_top_feed_forward)
    audio = [_shift(example.audio, recipe, rng) for example in examples]
    sentences = [example.sentence for example in examples]
    clean = [Heard(rows, sentence) for rows, sentence in zip(cache.encode(audio), sentences, strict=True)]
    picked = rng.sample(range(len(examples)), recipe.noisy_clips)
    rows = cache.encode([_augment(audio[index], recipe, rng) for index in picked])
    noisy_ = [Heard(clip_rows, sentences[index]) for clip_rows, index in zip(rows, picked, strict=True)]
    return clean, noisy_, synthesis_seconds


def train(out: Path, recipe: Recipe, whisper: Path) -> dict[str, Any]:
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    started = time.perf_counter()
    encoder = read_whisper_encoder(whisper)
    arch = replace(DemoArchitecture(), **encoder.dims)
    processor = build_processor(arch)
    model = build_model(arch, processor.tokenizer)
    transplant_whisper_encoder(model, encoder)
    tuned = unfreeze_top_feed_forward(model) if recipe.tune_top_feed_forward else []
    ctc = LetterCtc(arch.text_dim)
    clean, noisy_, synthesis_seconds = _encode(model, processor, recipe, rng)
    encoding_seconds = time.perf_counter() - started - synthesis_seconds
    losses = _fit(model, ctc, processor, clean, noisy_, recipe, rng, tuned)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out)
    processor.save_pretrained(out)
    training_seconds = time.perf_counter() - started
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    report = {
        "recipe": asdict(recipe),
        "architecture": arch.as_dict(),
        "audio_encoder": {
            "whisper": encoder.provenance,
            "tensors": len(encoder.state),
            "frozen": not tuned,
            "tuned_parameters": sum(p.numel() for p in tuned),
        },
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained_parameters": trained,
        "checkpoint_megabytes": round((out / "model.safetensors").stat().st_size / 1e6, 1),
        "torch_threads": torch.get_num_threads(),
        "synthesis_seconds": round(synthesis_seconds, 1),
        "encoding_seconds": round(encoding_seconds, 1),
        "training_seconds": round(training_seconds, 1),
        "final_loss": float(np.mean(losses[-50:])),
    }
    report["evaluation"] = held_out_report(out, recipe)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--whisper", type=Path, required=True, help="a Whisper folder written by seen convert")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    parser.add_argument("--smoke", action="store_true", help="a few steps of everything (for tests)")
    args = parser.parse_args(argv)
    recipe = replace(SMOKE if args.smoke else Recipe(), seed=args.seed)
    if args.steps is not None:
        recipe = replace(recipe, steps=args.steps)
    report = train(args.out, recipe, args.whisper)
    evaluation = report["evaluation"]
    print(
        f"trained in {report['training_seconds']:.0f} s, {report['total_seconds']:.0f} s with the held-out report "
        f"({report['trained_parameters']:,} of {report['parameters']:,} parameters trained)"
    )
    for name, figures in evaluation.items():
        print(f"{name:48s} exact match {figures['exact_match']:.3f}  WER {figures['wer']:.3f}  (n={figures['count']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
