"""Chapter 6: the perplexity of a model on a split, each token scored once and unsmoothed.

Perplexity is exp of the mean negative log-likelihood over every scored label of the split, summed in float64.
``python -m lmtut.evaluate`` (``lmtut/evaluate.py``) is its command line.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmtut.datasets import LanguageModelingDataLayer, LanguageModelingDataset
from lmtut.loss import summed_nll


@torch.no_grad()
def evaluate_perplexity(model: nn.Module, dataset: LanguageModelingDataset,
                        batch_size: int = 32) -> tuple[float, float]:
    """(mean negative log-likelihood in nats, perplexity) over every scored label of ``dataset``, unsmoothed.

    The model is asked for the targets' log-probabilities only (``model(input_ids, input_mask, targets=labels)``).
    """
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    pad = dataset.pad_id
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for input_ids, input_mask, labels in LanguageModelingDataLayer(dataset, batch_size):
        input_ids, input_mask, labels = input_ids.to(device), input_mask.to(device), labels.to(device)
        batch_total, batch_count = summed_nll(model(input_ids, input_mask, targets=labels), labels, pad)
        total += batch_total
        count += int(batch_count)
    model.train(was_training)
    nll = total.item() / max(count, 1)
    return nll, math.exp(nll)
