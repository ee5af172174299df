"""The demo task's grammar: size, vocabulary, and a stable held-out split."""

from __future__ import annotations

from demo.corpus import content_words, is_held_out, sentences


def test_the_task_is_large_and_compositional() -> None:
    texts = sentences()
    assert len(texts) == len(set(texts)) >= 200
    assert len(content_words(texts)) >= 40
    assert all(text == text.lower() and text.strip() == text for text in texts)


def test_some_sentences_are_never_trained_on() -> None:
    held = [text for text in sentences() if is_held_out(text)]
    assert 10 <= len(held) <= 40
    assert held == [text for text in sentences() if is_held_out(text)]  # stable across calls
