"""Chapter 9: a split as one ordered stream of scored tokens, for the methods that adapt at test time.

A neural cache (Grave et al., 2017, *Improving Neural Language Models with a Continuous Cache*) and dynamic
evaluation (Krause et al., 2018, *Dynamic Evaluation of Neural Sequence Models*) both read a split in order, as one
text: what helps at token t is what came before it. lmtut's evaluation windows already give that order. The
``predict_last_k`` windows of a split, taken in order, score every token exactly once (the first window all its
positions, every later one its last k), each with between ``L - k + 1`` and ``L`` tokens of context, so that their
scored positions, read window after window, are the split's tokens in their order.

:func:`score_stream` runs the static model over those windows and keeps, for every scored token in stream order,
its target, its log-probability and the encoder's last hidden state (what the cache stores and the temperature of
``lmtut.calibration`` is fitted on). :class:`TokenScores` is what every method returns: one log-probability per
token of the stream, so that per-token gains can be compared and plotted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from lmtut.datasets import LanguageModelingDataset
from lmtut.precision import Precision
from lmtut.scoring import evaluating, model_device, scored_batches


@dataclass
class TokenScores:
    """The log-probability a method gave each token of a stream, in stream order (float64, on the CPU)."""

    targets: torch.Tensor  # (N,) the token ids that were predicted
    log_probs: torch.Tensor  # (N,) log p(target), float64

    def __post_init__(self) -> None:
        if self.targets.shape != self.log_probs.shape or self.targets.dim() != 1:
            raise ValueError(f"targets and log_probs must be two (N,) tensors, got {tuple(self.targets.shape)} "
                             f"and {tuple(self.log_probs.shape)}")

    @property
    def num_tokens(self) -> int:
        return len(self.targets)

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood in nats per token."""
        if self.num_tokens == 0:
            raise ValueError("no token was scored")
        return -self.log_probs.double().mean().item()

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)


@dataclass
class ScoredStream(TokenScores):
    """A static model's scores of a stream, with the last hidden state that produced each one."""

    hidden: torch.Tensor | None = None  # (N, d_model) float32, on the model's device

    def first(self, n: int | None) -> "ScoredStream":
        """The stream's first ``n`` tokens (all of them for None): what scoring the split's first n gives."""
        hidden = None if self.hidden is None else self.hidden[:n]
        return ScoredStream(self.targets[:n], self.log_probs[:n], hidden)


@torch.no_grad()
def score_stream(model: nn.Module, dataset: LanguageModelingDataset, batch_size: int = 32,
                 precision: str = "fp32", keep_hidden: bool = True, show_bar: bool = True) -> ScoredStream:
    """Every token of ``dataset`` scored once by the static model, in stream order, with its last hidden state.

    Any windows of a ``LanguageModelingDataset`` read in order give the split's tokens in order (``predict_last_k``
    windows, ``batch_step=k``, are the ones with context); the stream's perplexity is
    :func:`lmtut.evaluate_perplexity`'s, from the same scores (``lmtut.scoring``).
    ``precision`` is a mode of ``lmtut.precision`` (``fp32``, ``amp-bf16``, ``amp-fp16``, ``auto``).
    """
    mode = Precision.of(precision, model_device(model))
    targets, log_probs, hidden = [], [], []
    with evaluating(model):
        for scores in scored_batches(model, dataset, batch_size, mode, show_bar):
            targets.append(scores.targets.cpu())
            log_probs.append(scores.log_probs.double().cpu())
            if keep_hidden:
                hidden.append(scores.hidden.float())
    return ScoredStream(torch.cat(targets), torch.cat(log_probs), torch.cat(hidden) if keep_hidden else None)
