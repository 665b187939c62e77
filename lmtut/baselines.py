"""Chapter 6: what a model must beat. Unigram and bigram perplexities with add-k smoothing (Jurafsky & Martin,
*Speech and Language Processing*, chapter 3), k tuned on the validation split.

A unigram model predicts every word with its training frequency, ignoring the context; a bigram model uses the one
word before. Add-k smoothing, ``p(w | v) = (c(v, w) + k) / (c(v) + k V)``, gives unseen pairs a little mass. Both are
scored like the Transformer: the split's stream with an ``<eos>`` in front (``LanguageModelingDataset.ids``), every
token predicted once.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


def _counts(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct keys and how often each occurs."""
    return torch.unique(keys, return_counts=True)


def _lookup(keys: torch.Tensor, counts: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """The count of each query key (0 where unseen)."""
    pos = torch.searchsorted(keys, queries).clamp(max=len(keys) - 1)
    return torch.where(keys[pos] == queries, counts[pos], 0).double()


def unigram_perplexity(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int, k: float = 1.0) -> float:
    """Perplexity of ``eval_ids[1:]`` under add-k smoothed unigram frequencies of ``train_ids[1:]``."""
    counts = torch.bincount(train_ids[1:], minlength=vocab_size).double()
    probs = (counts + k) / (counts.sum() + k * vocab_size)
    return math.exp(-probs[eval_ids[1:]].log().mean().item())


def bigram_perplexity(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int, k: float) -> float:
    """Perplexity of each ``eval_ids[t]`` given ``eval_ids[t - 1]`` under add-k smoothed bigram counts."""
    pairs, pair_counts = _counts(train_ids[:-1] * vocab_size + train_ids[1:])
    context_counts = torch.bincount(train_ids[:-1], minlength=vocab_size).double()
    prev, nxt = eval_ids[:-1], eval_ids[1:]
    joint = _lookup(pairs, pair_counts, prev * vocab_size + nxt)
    probs = (joint + k) / (context_counts[prev] + k * vocab_size)
    return math.exp(-probs.log().mean().item())


def tune_k(score, train_ids: torch.Tensor, valid_ids: torch.Tensor, vocab_size: int,
           ks: Iterable[float] = (1.0, 0.1, 0.03, 0.01, 0.003, 0.001, 1e-4, 1e-5)) -> tuple[float, float]:
    """The k of ``ks`` with the lowest validation perplexity, and that perplexity."""
    return min(((k, score(train_ids, valid_ids, vocab_size, k)) for k in ks), key=lambda kp: kp[1])
