"""espeak-ng synthesis for the demo task (CI installs espeak-ng; these tests never skip)."""

from __future__ import annotations

import numpy as np

from demo.speech import Voice, split_variants, synthesize, variants


def test_voices_are_split_into_disjoint_training_and_held_out_sets() -> None:
    train, held_out = split_variants()
    assert len(variants()) >= 50
    assert not set(train) & set(held_out) and len(held_out) >= 10 and len(train) >= 40
    assert split_variants() == (train, held_out)


def test_synthesis_gives_16_khz_speech_that_depends_on_the_voice() -> None:
    train, held_out = split_variants()
    text = "turn off the heater in the back"
    one = synthesize(text, Voice("en-us", train[0]))
    other = synthesize(text, Voice("en-gb", held_out[0], rate=200, pitch=70))
    for clip in (one, other):
        assert clip.dtype == np.float32 and 0.8 < len(clip) / 16000 < 4.0 and np.abs(clip).max() > 0.05
    assert len(one) != len(other) or not np.allclose(one, other)
    slow = synthesize(text, Voice("en-us", train[0], rate=120))
    assert len(slow) > len(one)  # the rate is honoured
