"""Chapter 2: the word vocabulary and the word tokenizer (NeMo's ``WordTokenizer`` and
``LanguageModelDataDesc``).

WikiText-2 is already tokenized (Merity et al., 2016): words are separated by single
spaces and rare words are ``<unk>``. A vocabulary file lists one token a line; a token's
id is its line number. The four special tokens come first, with fixed ids, then the
words of the training split, most frequent first (ties in code-point order, so the file
is the same on every machine).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch

from lmtut.runtime import atomic_write_text

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
#: The special tokens and their fixed ids: <pad>=0, <bos>=1, <eos>=2, <unk>=3.
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


class VocabError(ValueError):
    """A missing or malformed vocabulary file; the message says which line and what to
    do."""


def count_words(path: str | os.PathLike, lower: bool = False) -> Counter:
    """Word counts of a split file (white-space separated; ``<eos>`` is not counted, it
    is added per line)."""
    counts: Counter = Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            counts.update((line.lower() if lower else line).split())
    return counts


def build_vocab(counts: Counter, min_freq: int = 1) -> list[str]:
    """The special tokens, then every word seen at least ``min_freq`` times, most
    frequent first, ties sorted."""
    words = [w for w, c in counts.items() if c >= min_freq and w not in SPECIAL_TOKENS]
    words.sort(key=lambda w: (-counts[w], w))
    return list(SPECIAL_TOKENS) + words


def write_vocab(tokens: Iterable[str], path: str | os.PathLike) -> Path:
    """Write one token a line, atomically (``lmtut.runtime.atomic_write_text``)."""
    return atomic_write_text(path, "".join(t + "\n" for t in tokens))


class WordTokenizer:
    """Maps white-space separated words to ids and back, as NeMo's
    ``WordTokenizer(vocab_file)`` did.

    Unknown words map to ``<unk>``. ``encode`` works on one line of text;
    ``encode_file`` turns a whole split into one tensor with ``<eos>`` at every line end
    (about a second for WikiText-2's 2M training tokens).
    """

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        *,
        tokens: list[str] | None = None,
    ):
        """From a vocabulary file, or (``tokens=``) from the token list a checkpoint
        carries."""
        if tokens is None:
            if vocab_file is None:
                raise ValueError("give a vocab_file or tokens")
            self.vocab_file = Path(vocab_file)
            tokens = self._read(self.vocab_file)
        else:
            self.vocab_file = None
            self._check(list(tokens), "the token list")
        self.id_to_token = list(tokens)
        self.token_to_id = {t: i for i, t in enumerate(self.id_to_token)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (
            self.token_to_id[t] for t in SPECIAL_TOKENS
        )

    @classmethod
    def _read(cls, path: Path) -> list[str]:
        if not path.is_file():
            raise VocabError(
                f"vocabulary file {path} not found; build it with lmtut.prepare_corpus"
            )
        tokens = path.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()  # the final newline
        cls._check(tokens, str(path))
        return tokens

    @staticmethod
    def _check(tokens: list[str], source: str) -> None:
        seen: dict[str, int] = {}
        for i, token in enumerate(tokens, start=1):
            if not token.strip() or token != token.strip() or " " in token:
                raise VocabError(
                    f"{source}, line {i}: {token!r} is empty or holds "
                    "white space; one token a line"
                )
            if token in seen:
                raise VocabError(
                    f"{source}, line {i}: {token!r} duplicates line {seen[token]}"
                )
            seen[token] = i
        missing = [t for t in SPECIAL_TOKENS if t not in seen]
        if missing:
            raise VocabError(
                f"{source} lacks the special tokens {', '.join(missing)}; "
                "rebuild it with build_vocab"
            )

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def encode(self, text: str) -> list[int]:
        unk, ids = self.unk_id, self.token_to_id
        return [ids.get(w, unk) for w in text.split()]

    def decode(self, ids: Iterable[int]) -> str:
        """Tokens joined by spaces; padding is dropped."""
        return " ".join(self.id_to_token[i] for i in map(int, ids) if i != self.pad_id)

    def encode_file(self, path: str | os.PathLike, lower: bool = False) -> torch.Tensor:
        """A whole split as one int64 tensor: each line's ids followed by ``<eos>``."""
        unk, eos, ids = self.unk_id, self.eos_id, self.token_to_id
        out: list[int] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                out.extend(
                    [ids.get(w, unk) for w in (line.lower() if lower else line).split()]
                )
                out.append(eos)
        return torch.tensor(out, dtype=torch.long)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (
            f"WordTokenizer({str(self.vocab_file or '<tokens>')!r}, "
            f"vocab_size={self.vocab_size})"
        )
