"""Chapter 9: the neural cache of Grave et al. (2017), *Improving Neural Language Models
with a Continuous Cache*.

The cache stores the last ``cache_size`` pairs (h_i, w_i) of the stream: the model's
last hidden state at position i and the word that followed it, which is known by the
time it is stored. At position t it predicts

    p_cache(w) = sum_{i in cache, w_i = w} exp(theta h_t . h_i)
                 / sum_{i in cache} exp(theta h_t . h_i)

and the model's distribution is interpolated with it, ``p = (1 - lambda) p_model +
lambda p_cache``. A word that occurred recently in a similar context gets extra
probability: Wikipedia articles repeat their names and topic words. Nothing is trained;
theta (how sharply the cache prefers similar contexts) and lambda (how much it is
trusted) are chosen on the validation split (:func:`tune_neural_cache`), never on test.

Only the targets' probabilities are needed, so a cache over N entries costs one (chunk,
N) matrix product per chunk of positions: the whole cache of every position of a split
is scored at once, causally, from the hidden states that
:func:`lmtut.scoring.score_stream` keeps. The first token of a stream has an empty cache
and keeps p_model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from lmtut.loss import perplexity
from lmtut.scoring import ScoredStream, TokenScores

#: The default grids of :func:`tune_neural_cache`: theta multiplies dot products of
#: hidden states (after the encoder's final LayerNorm their squared norms are a few
#: hundred), lambda is a probability.
THETAS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
LAMBDAS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4)


def check_cache_args(
    cache_size: int, thetas: Sequence[float], lambdas: Sequence[float] = (0.0,)
) -> None:
    if cache_size < 1:
        raise ValueError(f"cache_size must be a positive integer, got {cache_size}")
    if not thetas or any(not 0 <= t < math.inf for t in thetas):
        raise ValueError(f"cache theta must be finite and >= 0, got {list(thetas)}")
    if not lambdas or any(not 0 <= lam <= 1 for lam in lambdas):
        raise ValueError(f"cache lambda must lie in [0, 1], got {list(lambdas)}")


@torch.no_grad()
def neural_cache_log_probs(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    cache_size: int,
    thetas: Sequence[float],
    chunk_size: int = 512,
    show_bar: bool = False,
) -> torch.Tensor:
    """(len(thetas), N) log p_cache(target_t) for every position t of a stream and every
    theta.

    Position t sees the cache entries i with ``t - cache_size <= i < t``: their words
    ``targets[i]`` are tokens the stream has already read. -inf where the target is not
    in the cache (and at t = 0, whose cache is empty).
    """
    check_cache_args(cache_size, thetas)
    n = len(targets)
    targets = targets.to(hidden.device)
    theta = torch.tensor(list(thetas), dtype=torch.float32, device=hidden.device).view(
        -1, 1, 1
    )
    out = torch.full((len(thetas), n), -math.inf, device=hidden.device)
    for start in tqdm(
        range(0, n, chunk_size), desc="cache", leave=False, disable=not show_bar
    ):
        end, lo = min(start + chunk_size, n), max(0, start - cache_size)
        t, i = (
            torch.arange(start, end, device=hidden.device)[:, None],
            torch.arange(lo, end, device=hidden.device),
        )
        # (chunk, keys): causal, and only the last cache_size
        in_cache = (i < t) & (i >= t - cache_size)
        same_word = targets[lo:end][None, :] == targets[start:end, None]
        # (thetas, chunk, keys)
        scores = theta * (hidden[start:end].float() @ hidden[lo:end].float().T)
        log_norm = scores.masked_fill(~in_cache, -math.inf).logsumexp(-1)
        log_mass = scores.masked_fill(~(in_cache & same_word), -math.inf).logsumexp(-1)
        out[:, start:end] = torch.where(
            torch.isfinite(log_norm), log_mass - log_norm, -math.inf
        )
    return out


def interpolate(
    model_log_probs: torch.Tensor, cache_log_probs: torch.Tensor, lam: float
) -> torch.Tensor:
    """log((1 - lambda) p_model + lambda p_cache), in float64; positions with an empty
    cache keep p_model."""
    model_lp, cache_lp = (
        model_log_probs.double(),
        cache_log_probs.double().to(model_log_probs.device),
    )
    if lam == 0:
        return model_lp
    mixed = torch.logaddexp(
        model_lp + math.log1p(-lam)
        if lam < 1
        else torch.full_like(model_lp, -math.inf),
        cache_lp + math.log(lam),
    )
    empty = torch.zeros_like(model_lp, dtype=torch.bool)
    empty[0] = True  # the first token has no cache
    return torch.where(empty, model_lp, mixed)


def neural_cache_scores(
    stream: ScoredStream, cache_size: int, theta: float, lam: float
) -> TokenScores:
    """The stream's tokens scored by the model interpolated with a neural cache (one
    theta, one lambda)."""
    check_cache_args(cache_size, [theta], [lam])
    if stream.hidden is None:
        raise ValueError(
            "the stream has no hidden states: score it with "
            "score_stream(..., keep_hidden=True)"
        )
    cached = neural_cache_log_probs(stream.hidden, stream.targets, cache_size, [theta])[
        0
    ].cpu()
    return TokenScores(stream.targets, interpolate(stream.log_probs, cached, lam))


@dataclass
class CacheTuning:
    """The grid search of :func:`tune_neural_cache`: the best (theta, lambda) and every
    grid point's perplexity."""

    cache_size: int
    theta: float
    lam: float
    perplexity: float  # at the best point, on the split it was tuned on
    thetas: list[float] = field(default_factory=list)
    lambdas: list[float] = field(default_factory=list)
    # grid[i][j]: perplexity at thetas[i], lambdas[j]
    grid: list[list[float]] = field(default_factory=list)


def tune_neural_cache(
    stream: ScoredStream,
    cache_size: int = 2000,
    thetas: Sequence[float] = THETAS,
    lambdas: Sequence[float] = LAMBDAS,
    show_bar: bool = True,
) -> CacheTuning:
    """The (theta, lambda) of the grid with the lowest perplexity on ``stream``: pass
    the validation split's.

    Every theta costs one pass of cache scores (computed together); every lambda only an
    interpolation.
    """
    check_cache_args(cache_size, thetas, lambdas)
    if stream.hidden is None:
        raise ValueError(
            "the stream has no hidden states: score it with "
            "score_stream(..., keep_hidden=True)"
        )
    cached = neural_cache_log_probs(
        stream.hidden, stream.targets, cache_size, thetas, show_bar=show_bar
    ).cpu()
    grid = [
        [
            perplexity(-interpolate(stream.log_probs, row, lam).sum().item(), len(row))[
                1
            ]
            for lam in lambdas
        ]
        for row in cached
    ]
    best = min(
        ((i, j) for i in range(len(thetas)) for j in range(len(lambdas))),
        key=lambda ij: grid[ij[0]][ij[1]],
    )
    return CacheTuning(
        cache_size,
        float(thetas[best[0]]),
        float(lambdas[best[1]]),
        grid[best[0]][best[1]],
        [float(t) for t in thetas],
        [float(lam) for lam in lambdas],
        grid,
    )
