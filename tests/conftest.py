"""Fixtures shared by the test modules: a tiny corpus in the WikiText layout and its
tokenizer."""

from __future__ import annotations

import random

import pytest

from lmtut import WordTokenizer, prepare_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A tiny corpus in the WikiText layout: 30 words, sentences with a little
    grammar."""
    folder = tmp_path_factory.mktemp("tiny")
    rng = random.Random(0)
    nouns, verbs = [f"n{i}" for i in range(12)], [f"v{i}" for i in range(8)]
    for split, lines in (("train", 300), ("valid", 40), ("test", 40)):
        text = "".join(
            " ".join(
                [
                    "the",
                    rng.choice(nouns),
                    rng.choice(verbs),
                    "a",
                    rng.choice(nouns),
                    ".",
                ]
            )
            + "\n"
            for _ in range(lines)
        )
        (folder / f"{split}.txt").write_text(text)
    return folder


@pytest.fixture(scope="session")
def tokenizer(corpus):
    return WordTokenizer(prepare_corpus(corpus).vocab_file)
