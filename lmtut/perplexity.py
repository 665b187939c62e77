"""Chapter 6: the perplexity of a model on a split, each token scored once and unsmoothed.

Perplexity is exp of the mean negative log-likelihood over every scored label of the split, summed in float64.
``python -m lmtut.evaluate`` (``lmtut/evaluate.py``) is its command line.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmtut.datasets import LanguageModelingDataset
from lmtut.scoring import evaluating, scored_batches


@torch.no_grad()
def evaluate_perplexity(model: nn.Module, dataset: LanguageModelingDataset,
                        batch_size: int = 32) -> tuple[float, float]:
    """(mean negative log-likelihood in nats, perplexity) over every scored label of ``dataset``, unsmoothed,
    in eval mode (the model's training flag is restored after)."""
    total, count = 0.0, 0
    with evaluating(model):
        for scores in scored_batches(model, dataset, batch_size):
            total -= scores.log_probs.double().sum().item()
            count += len(scores.targets)
    nll = total / max(count, 1)
    return nll, math.exp(nll)
