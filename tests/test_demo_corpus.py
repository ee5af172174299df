"""The demo task's grammar: size, vocabulary, and a stable held-out split."""

from __future__ import annotations

from demo.corpus import content_words, is_held_out, sentences
from demo.data import split_sentences, training_pairs


def test_the_task_is_large_and_compositional() -> None:
    texts = sentences()
    assert len(texts) == len(set(texts)) >= 200
    assert len(content_words(texts)) >= 40
    assert all(text == text.lower() and text.strip() == text for text in texts)


def test_some_sentences_are_never_trained_on() -> None:
    held = [text for text in sentences() if is_held_out(text)]
    assert 10 <= len(held) <= 40
    assert held == [text for text in sentences() if is_held_out(text)]  # stable across calls


def test_training_hears_word_strings_but_never_a_held_out_sentence() -> None:
    train_sentences, held = split_sentences()
    pairs = training_pairs(40, seed=0, word_string_count=200)
    spoken = [sentence for sentence, _voice in pairs]
    strings = spoken[40:]
    assert len(strings) == 200 and not set(strings) & set(sentences())
    assert {word for text in strings for word in text.split()} <= {w for s in train_sentences for w in s.split()}
    assert not set(spoken) & set(held)
    assert strings == [s for s, _ in training_pairs(40, seed=0, word_string_count=200)][40:]  # reproducible


def test_swapped_sentences_keep_a_training_frame_and_change_its_fillers() -> None:
    train_sentences, _ = split_sentences()
    pairs = training_pairs(40, seed=0, word_string_count=10, swapped_count=200)
    swapped = [sentence for sentence, _voice in pairs][50:]
    assert len(swapped) == 200 and not set(swapped) & set(sentences())
    fillers = content_words(train_sentences)
    for text in swapped:
        frames = [s.split() for s in train_sentences if len(s.split()) == len(text.split())]
        swaps = [[(old, new) for old, new in zip(frame, text.split(), strict=True) if old != new] for frame in frames]
        # One or two fillers away from a training sentence, swapped for fillers, never "the" or "on".
        assert any(1 <= len(swap) <= 2 and {w for pair in swap for w in pair} <= fillers for swap in swaps), text
    assert swapped == [s for s, _ in training_pairs(40, seed=0, word_string_count=10, swapped_count=200)][50:]
