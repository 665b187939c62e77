"""Chapters 6 and 9: one way to score windows, shared by perplexity, the scored stream, dynamic evaluation and its
gradient statistics.

A window's scored positions are those whose label is not padding. :func:`score_windows` runs the encoder over the
whole window (the context positions are needed for attention) and the classifier on the scored positions only,
asking it for each target's log-probability, never the whole distribution: with the adaptive softmax a tail
cluster is touched only where a target lies in it. Whether gradients flow is the caller's choice
(``torch.no_grad()`` to measure, a backward pass to adapt).
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
from lmtut.precision import Precision


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters are (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (no dropout) within the block; its training flag restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass
class WindowScores:
    """A batch of windows' scored positions, row-major (window after window, left to right)."""

    log_probs: torch.Tensor  # (n,) log p(target), float32, with its graph when gradients are on
    targets: torch.Tensor  # (n,) the token ids predicted
    hidden: torch.Tensor  # (n, d_model) the encoder's last hidden state at each scored position

    def mean_loss(self) -> torch.Tensor:
        """The mean negative log-likelihood of the scored positions (0-d, float32): a step's loss."""
        return -self.log_probs.float().mean()


def score_windows(model: nn.Module, input_ids: torch.Tensor, input_mask: torch.Tensor | None, labels: torch.Tensor,
                  pad_id: int, precision: Precision | None = None) -> WindowScores:
    """The log-probability of every scored target of a batch of windows (labels equal to ``pad_id`` are not scored).

    ``precision``: run under its autocast (None: as the model's weights are). The classifier runs in float32.
    """
    scored = labels != pad_id
    with precision.autocast() if precision is not None else contextlib.nullcontext():
        hidden = model.encoder(input_ids, input_mask)[scored]  # (n, d): the softmax runs on scored positions only
        log_probs = model.classifier.target_log_probs(hidden, labels[scored])
    return WindowScores(log_probs, labels[scored], hidden)


def scored_batches(model: nn.Module, dataset: LanguageModelingDataset, batch_size: int = 32,
                   precision: Precision | None = None, show_bar: bool = False,
                   desc: str = "scoring") -> Iterator[WindowScores]:
    """:func:`score_windows` over the dataset's windows in order, ``batch_size`` windows at a time, on the model's
    device. The caller decides about eval mode (:func:`evaluating`) and gradients."""
    device = model_device(model)
    batches = LanguageModelingDataLayer(dataset, batch_size)  # its iterator draws a seed from the global generator
    if show_bar:
        batches = tqdm(batches, desc=desc, leave=False)
    for input_ids, input_mask, labels in batches:
        yield score_windows(model, input_ids.to(device), input_mask.to(device), labels.to(device), dataset.pad_id,
                            precision)


@torch.no_grad()
def loss_by_position(model: nn.Module, ids: torch.Tensor, window: int, batch_size: int = 16) -> torch.Tensor:
    """The mean negative log-likelihood at each position 0 .. window-1 of non-overlapping windows over the token
    stream ``ids`` (1-D), each window predicting its next ``window`` tokens, in eval mode: (window,) float32."""
    n = (len(ids) - 1) // window
    if n < 1:
        raise ValueError(f"{len(ids)} tokens hold no window of {window} (and its next token): give more tokens")
    inputs = ids[: n * window].view(n, window)
    targets = ids[1 : n * window + 1].view(n, window)
    device, total = model_device(model), torch.zeros(window)
    with evaluating(model):
        for start in range(0, n, batch_size):
            x, y = inputs[start : start + batch_size].to(device), targets[start : start + batch_size].to(device)
            total += -model(x, targets=y).float().sum(0).cpu()
    return total / n
