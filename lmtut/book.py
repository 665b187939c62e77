"""What only the book uses: the package's source on the page, the evidence rule for
claims over seeds, and the n-gram baselines a model must beat.
"""

from __future__ import annotations

import inspect
import math
import statistics
import textwrap
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from lmtut.loss import perplexity

# --------------------------------------------------------------------------------------
# The code on the page: chapters show the package's own source next to the prose that
# explains it.


class Source:
    """Source code that a notebook shows as a highlighted block (``_repr_markdown_``)
    and a terminal as text."""

    def __init__(self, name: str, code: str):
        self.name, self.code = name, code

    def _repr_markdown_(self) -> str:
        return f"`{self.name}`:\n\n```python\n{self.code}```"

    def __repr__(self) -> str:
        return f"# {self.name}\n{self.code}"


def show_source(obj: Any) -> Source:
    """The source of a function, method or class of lmtut, as it runs
    (``inspect.getsource``)."""
    return Source(
        f"{obj.__module__}.{obj.__qualname__}", textwrap.dedent(inspect.getsource(obj))
    )


# --------------------------------------------------------------------------------------
# Chapters 4, 5 and 8: when a run over several seeds supports the claim "A is lower than
# B".
#
# Two recipes trained with the same seeds are compared seed by seed. The book states an
# ordering only when
#
# 1. it holds in **every** seed (every paired difference has the same sign),
# 2. the mean difference is **larger than the spread between seeds** (the larger of the
#    two recipes' ranges, highest minus lowest over the seeds), so that it is not within
#    the noise of changing the seed, and
# 3. it rests on at least three seeds (with fewer, the spread is not measured), and an
#    effect under 2 % of B's mean on **at least five**.
#
# Otherwise the verdict is "no measurable difference at this scale". :func:`compare`
# reports the mean paired difference with its spread (standard deviation and range of
# the differences), not just their signs.

NO_DIFFERENCE = "no measurable difference at this scale"
MIN_SEEDS, SMALL_EFFECT, SEEDS_FOR_SMALL_EFFECTS = 3, 0.02, 5


@dataclass(frozen=True)
class Comparison:
    """A against B over paired seeds (lower is better): the figures and the verdict of
    the evidence rule."""

    a: str
    b: str
    values_a: tuple[float, ...]
    values_b: tuple[float, ...]
    mean_difference: float  # mean over the seeds of A - B
    sd_difference: float  # their sample standard deviation (0 for one seed)
    range_difference: tuple[float, float]  # lowest and highest A - B
    spread: float  # the spread between seeds: the larger of A's and B's ranges
    relative: float  # mean difference / mean of B
    every_seed: bool  # every A - B has the same sign (and none is 0)
    exceeds_spread: bool
    enough_seeds: bool

    @property
    def seeds(self) -> int:
        return len(self.values_a)

    @property
    def holds(self) -> bool:
        """True when the ordering the means show may be stated."""
        return self.every_seed and self.exceeds_spread and self.enough_seeds

    @property
    def lower(self) -> str | None:
        """The name of the lower recipe when the ordering holds, else None."""
        if not self.holds:
            return None
        return self.a if self.mean_difference < 0 else self.b

    @property
    def verdict(self) -> str:
        if not self.holds:
            return NO_DIFFERENCE
        higher = self.b if self.lower == self.a else self.a
        return f"{self.lower} lower than {higher}"

    def why(self) -> str:
        """Which condition of the rule failed, or that all three hold."""
        failed = [
            text
            for ok, text in (
                (self.every_seed, "not every seed agrees"),
                (self.exceeds_spread, "within the spread between seeds"),
                (self.enough_seeds, self._seeds_needed()),
            )
            if not ok
        ]
        return "; ".join(failed) if failed else "every seed, beyond the spread"

    def _seeds_needed(self) -> str:
        if self.seeds < MIN_SEEDS:
            return f"fewer than {MIN_SEEDS} seeds"
        return (
            f"under {SMALL_EFFECT:.0%} with fewer than {SEEDS_FOR_SMALL_EFFECTS} seeds"
        )

    def __str__(self) -> str:
        low, high = self.range_difference
        return (
            f"{self.a} - {self.b}: {self.mean_difference:+.4g} +- "
            f"{self.sd_difference:.3g} "
            f"({self.relative:+.1%}; {self.seeds} seeds, from {low:+.4g} to "
            f"{high:+.4g}; spread between seeds "
            f"{self.spread:.4g}): {self.verdict} ({self.why()})"
        )


def compare(
    values_a: Sequence[float], values_b: Sequence[float], a: str = "A", b: str = "B"
) -> Comparison:
    """Compare A's and B's results (one per seed, the same seeds in the same order;
    lower is better)."""
    values_a, values_b = tuple(map(float, values_a)), tuple(map(float, values_b))
    if len(values_a) != len(values_b) or not values_a:
        raise ValueError(
            f"need one result per seed for both, the same seeds; got "
            f"{len(values_a)} and "
            f"{len(values_b)}"
        )
    if not all(math.isfinite(v) for v in values_a + values_b):
        raise ValueError("every result must be a finite number")
    differences = [x - y for x, y in zip(values_a, values_b)]
    mean = statistics.fmean(differences)
    spread = max(max(values_a) - min(values_a), max(values_b) - min(values_b))
    relative = mean / statistics.fmean(values_b)
    return Comparison(
        a=a,
        b=b,
        values_a=values_a,
        values_b=values_b,
        mean_difference=mean,
        sd_difference=statistics.stdev(differences) if len(differences) > 1 else 0.0,
        range_difference=(min(differences), max(differences)),
        spread=spread,
        relative=relative,
        every_seed=all(d < 0 for d in differences) or all(d > 0 for d in differences),
        exceeds_spread=abs(mean) > spread,
        enough_seeds=len(differences) >= MIN_SEEDS
        and (
            abs(relative) >= SMALL_EFFECT or len(differences) >= SEEDS_FOR_SMALL_EFFECTS
        ),
    )


# --------------------------------------------------------------------------------------
# Chapter 6: what a model must beat. Unigram and bigram perplexities with add-k
# smoothing (Jurafsky & Martin, *Speech and Language Processing*, chapter 3), k tuned on
# the validation split.
#
# A unigram model predicts every word with its training frequency, ignoring the context;
# a bigram model uses the one word before. Add-k smoothing, ``p(w | v) = (c(v, w) + k) /
# (c(v) + k V)``, gives unseen pairs a little mass. Both are scored like the
# Transformer: the split's stream with an ``<eos>`` in front
# (``LanguageModelingDataset.ids``), every token predicted once.


def _counts(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct keys and how often each occurs."""
    return torch.unique(keys, return_counts=True)


def _lookup(
    keys: torch.Tensor, counts: torch.Tensor, queries: torch.Tensor
) -> torch.Tensor:
    """The count of each query key (0 where unseen)."""
    pos = torch.searchsorted(keys, queries).clamp(max=len(keys) - 1)
    return torch.where(keys[pos] == queries, counts[pos], 0).double()


def unigram_perplexity(
    train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int, k: float = 1.0
) -> float:
    """Perplexity of ``eval_ids[1:]`` under add-k smoothed unigram frequencies of
    ``train_ids[1:]``."""
    counts = torch.bincount(train_ids[1:], minlength=vocab_size).double()
    probs = (counts + k) / (counts.sum() + k * vocab_size)
    return perplexity(-probs[eval_ids[1:]].log().sum().item(), len(eval_ids) - 1)[1]


def bigram_perplexity(
    train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int, k: float
) -> float:
    """Perplexity of each ``eval_ids[t]`` given ``eval_ids[t - 1]`` under add-k smoothed
    bigram counts."""
    pairs, pair_counts = _counts(train_ids[:-1] * vocab_size + train_ids[1:])
    context_counts = torch.bincount(train_ids[:-1], minlength=vocab_size).double()
    prev, nxt = eval_ids[:-1], eval_ids[1:]
    joint = _lookup(pairs, pair_counts, prev * vocab_size + nxt)
    probs = (joint + k) / (context_counts[prev] + k * vocab_size)
    return perplexity(-probs.log().sum().item(), len(probs))[1]


def tune_k(
    score,
    train_ids: torch.Tensor,
    valid_ids: torch.Tensor,
    vocab_size: int,
    ks: Iterable[float] = (1.0, 0.1, 0.03, 0.01, 0.003, 0.001, 1e-4, 1e-5),
) -> tuple[float, float]:
    """The k of ``ks`` with the lowest validation perplexity, and that perplexity."""
    return min(
        ((k, score(train_ids, valid_ids, vocab_size, k)) for k in ks),
        key=lambda kp: kp[1],
    )
