"""The demo model card says what was measured: it is rendered from the committed measurements, and nothing else."""

from __future__ import annotations

import json
from typing import Any

from demo import DEMO_BUNDLE_DIR, DEMO_MODEL_DIR
from demo.card import render
from seen.bundle import NoiseBundle


def _committed() -> tuple[dict[str, Any], dict[str, Any]]:
    training = json.loads((DEMO_MODEL_DIR / "training.json").read_text())
    measured = json.loads((DEMO_MODEL_DIR / "evaluation.json").read_text())
    return training, measured


def test_the_committed_card_is_the_rendering_of_the_committed_measurements() -> None:
    training, measured = _committed()
    card = render(training, measured, NoiseBundle.load(DEMO_BUNDLE_DIR))
    assert (DEMO_MODEL_DIR / "README.md").read_text() == card


def test_the_card_follows_its_measurements() -> None:
    training, measured = _committed()
    measured["clean_new_sentences"] = {"exact_match": 0.5, "wer": 0.25, "count": 124}
    measured["noise"]["white"]["0"]["exact_match"] = 0.07
    card = render(training, measured, NoiseBundle.load(DEMO_BUNDLE_DIR))
    assert (
        "sentences never heard in training: exact match **0.500** (95 % interval 0.413 to 0.587, 124 clips), WER 0.250"
        in card
    )
    assert "(124 for the sentences never heard in training:" in card
    white_row = next(line for line in card.splitlines() if line.startswith("| white |"))
    assert " 0.07 |" in white_row
    assert f"- `steps`: {training['recipe']['steps']}" in card


def test_the_card_says_what_training_did_to_the_encoder() -> None:
    training, measured = _committed()
    bundle = NoiseBundle.load(DEMO_BUNDLE_DIR)
    assert training["audio_encoder"]["frozen"] == ("unchanged (frozen)" in render(training, measured, bundle))
    training["audio_encoder"] |= {"frozen": False, "tuned_parameters": 1_183_104}
    training["recipe"]["encoder_lr"] = 0.0002
    card = render(training, measured, bundle)
    assert "(frozen)" not in card and "The encoder is frozen" not in card
    assert "feed-forward block and the last layer norm (1,183,104 parameters, tuned at\n  learning rate 0.0002)" in card
