"""Scoring (chapters 6 and 9): one way to score windows, the perplexity of a split, and
a split as one scored stream for the methods that adapt at test time. Every perplexity
of the package is reduced here.
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from lmtut.datasets import LanguageModelingDataLayer, LanguageModelingDataset
from lmtut.loss import perplexity
from lmtut.runtime import Precision, model_device

# --------------------------------------------------------------------------------------
# Chapters 6 and 9: one way to score windows, shared by perplexity, the scored stream,
# dynamic evaluation and its gradient statistics.
#
# A window's scored positions are those whose label is not padding.
# :func:`score_windows` asks the model to read the whole window (the context positions
# are needed for attention) and to run its softmax at the scored positions only, for
# each target's log-probability, never the whole distribution: with the adaptive softmax
# a tail cluster is touched only where a target lies in it. Whether gradients flow is
# the caller's choice (``torch.no_grad()`` to measure, a backward pass to adapt).


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (no dropout) within the block; its training flag restored
    after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass
class WindowScores:
    """A batch of windows' scored positions, row-major (window after window, left to
    right)."""

    # (n,) log p(target), float32, with its graph when gradients are on
    log_probs: torch.Tensor
    targets: torch.Tensor  # (n,) the token ids predicted
    # (n, d_model) the encoder's last hidden state at each scored position
    hidden: torch.Tensor

    def mean_loss(self) -> torch.Tensor:
        """The mean negative log-likelihood of the scored positions (0-d, float32): a
        step's loss."""
        return -self.log_probs.float().mean()


def score_windows(
    model: nn.Module,
    input_ids: torch.Tensor,
    input_mask: torch.Tensor | None,
    labels: torch.Tensor,
    pad_id: int,
    precision: Precision | None = None,
) -> WindowScores:
    """The log-probability of every scored target of a batch of windows (labels equal to
    ``pad_id`` are not scored).

    ``precision``: run under its autocast (None: as the model's weights are). The
    classifier runs in float32.
    """
    scored = labels != pad_id
    with precision.autocast() if precision is not None else contextlib.nullcontext():
        # (n, ...): the scored positions
        out = model(input_ids, labels, input_mask=input_mask, at=scored)
    return WindowScores(out.target_log_probs, labels[scored], out.hidden)


def scored_batches(
    model: nn.Module,
    dataset: LanguageModelingDataset,
    batch_size: int = 32,
    precision: Precision | None = None,
    show_bar: bool = False,
    desc: str = "scoring",
) -> Iterator[WindowScores]:
    """:func:`score_windows` over the dataset's windows in order, ``batch_size`` windows
    at a time, on the model's device. The caller decides about eval mode
    (:func:`evaluating`) and gradients."""
    device = model_device(model)
    # its iterator draws a seed from the global generator
    batches = LanguageModelingDataLayer(dataset, batch_size)
    if show_bar:
        batches = tqdm(batches, desc=desc, leave=False)
    for input_ids, input_mask, labels in batches:
        yield score_windows(
            model,
            input_ids.to(device),
            input_mask.to(device),
            labels.to(device),
            dataset.pad_id,
            precision,
        )


@torch.no_grad()
def loss_by_position(
    model: nn.Module, ids: torch.Tensor, window: int, batch_size: int = 16
) -> torch.Tensor:
    """The mean negative log-likelihood at each position 0 .. window-1 of
    non-overlapping windows over the token stream ``ids`` (1-D), each window predicting
    its next ``window`` tokens, in eval mode: (window,) float32."""
    n = (len(ids) - 1) // window
    if n < 1:
        raise ValueError(
            f"{len(ids)} tokens hold no window of {window} (and its next "
            "token): give more tokens"
        )
    inputs = ids[: n * window].view(n, window)
    targets = ids[1 : n * window + 1].view(n, window)
    device, total = model_device(model), torch.zeros(window)
    with evaluating(model):
        for start in range(0, n, batch_size):
            x, y = (
                inputs[start : start + batch_size].to(device),
                targets[start : start + batch_size].to(device),
            )
            total += -model(x, targets=y).target_log_probs.float().sum(0).cpu()
    return total / n


# --------------------------------------------------------------------------------------
# Chapter 6: the perplexity of a model on a split, each token scored once and
# unsmoothed.
#
# Perplexity is exp of the mean negative log-likelihood over every scored label of the
# split, summed in float64. ``python -m lmtut.evaluate`` (``lmtut/evaluate.py``) is its
# command line.


@torch.no_grad()
def evaluate_perplexity(
    model: nn.Module, dataset: LanguageModelingDataset, batch_size: int = 32
) -> tuple[float, float]:
    """(mean negative log-likelihood in nats, perplexity) over every scored label of
    ``dataset``, unsmoothed, in eval mode (the model's training flag is restored
    after)."""
    total, count = 0.0, 0
    with evaluating(model):
        for scores in scored_batches(model, dataset, batch_size):
            total -= scores.log_probs.double().sum().item()
            count += len(scores.targets)
    return perplexity(total, count)


# --------------------------------------------------------------------------------------
# Chapter 9: a split as one ordered stream of scored tokens, for the methods that adapt
# at test time.
#
# A neural cache (Grave et al., 2017, *Improving Neural Language Models with a
# Continuous Cache*) and dynamic evaluation (Krause et al., 2018, *Dynamic Evaluation of
# Neural Sequence Models*) both read a split in order, as one text: what helps at token
# t is what came before it. lmtut's evaluation windows already give that order. The
# ``predict_last_k`` windows of a split, taken in order, score every token exactly once
# (the first window all its positions, every later one its last k), each with between
# ``L - k + 1`` and ``L`` tokens of context, so that their scored positions, read window
# after window, are the split's tokens in their order.
#
# :func:`score_stream` runs the static model over those windows and keeps, for every
# scored token in stream order, its target, its log-probability and the encoder's last
# hidden state (what the cache stores and the temperature of ``lmtut.adapt.calibration``
# is fitted on). :class:`TokenScores` is what every method returns: one log-probability
# per token of the stream, so that per-token gains can be compared and plotted.


@dataclass
class TokenScores:
    """The log-probability a method gave each token of a stream, in stream order
    (float64, on the CPU)."""

    targets: torch.Tensor  # (N,) the token ids that were predicted
    log_probs: torch.Tensor  # (N,) log p(target), float64

    def __post_init__(self) -> None:
        if self.targets.shape != self.log_probs.shape or self.targets.dim() != 1:
            raise ValueError(
                f"targets and log_probs must be two (N,) tensors, got "
                f"{tuple(self.targets.shape)} "
                f"and {tuple(self.log_probs.shape)}"
            )

    @property
    def num_tokens(self) -> int:
        return len(self.targets)

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood in nats per token."""
        return self.nll_and_perplexity()[0]

    @property
    def perplexity(self) -> float:
        return self.nll_and_perplexity()[1]

    def nll_and_perplexity(self) -> tuple[float, float]:
        """Both, through the package's one reduction (``lmtut.loss.perplexity``)."""
        return perplexity(-self.log_probs.double().sum().item(), self.num_tokens)


@dataclass
class ScoredStream(TokenScores):
    """A static model's scores of a stream, with the last hidden state that produced
    each one."""

    hidden: torch.Tensor | None = None  # (N, d_model) float32, on the model's device

    def first(self, n: int | None) -> "ScoredStream":
        """The stream's first ``n`` tokens (all of them for None): what scoring the
        split's first n gives."""
        hidden = None if self.hidden is None else self.hidden[:n]
        return ScoredStream(self.targets[:n], self.log_probs[:n], hidden)


@torch.no_grad()
def score_stream(
    model: nn.Module,
    dataset: LanguageModelingDataset,
    batch_size: int = 32,
    precision: str = "fp32",
    keep_hidden: bool = True,
    show_bar: bool = True,
) -> ScoredStream:
    """Every token of ``dataset`` scored once by the static model, in stream order, with
    its last hidden state.

    Any windows of a ``LanguageModelingDataset`` read in order give the split's tokens
    in order (``predict_last_k`` windows, ``batch_step=k``, are the ones with context);
    the stream's perplexity is :func:`lmtut.evaluate_perplexity`'s, from the same scores
    (``lmtut.scoring``). ``precision`` is a mode of ``lmtut.runtime`` (``fp32``,
    ``amp-bf16``, ``amp-fp16``, ``auto``).
    """
    mode = Precision.of(precision, model_device(model))
    targets, log_probs, hidden = [], [], []
    with evaluating(model):
        for scores in scored_batches(model, dataset, batch_size, mode, show_bar):
            targets.append(scores.targets.cpu())
            log_probs.append(scores.log_probs.double().cpu())
            if keep_hidden:
                hidden.append(scores.hidden.float())
    return ScoredStream(
        torch.cat(targets),
        torch.cat(log_probs),
        torch.cat(hidden) if keep_hidden else None,
    )
