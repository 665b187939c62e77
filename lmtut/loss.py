"""Chapter 5: label-smoothed cross entropy that ignores padding (NeMo's ``PaddedSmoothedCrossEntropyLossNM``),
and the plain negative log-likelihood and perplexity that the book always reports.

Label smoothing (Szegedy et al., 2016; used by Vaswani et al., 2017) trains against a softened target: the right
word gets most of the probability mass and ``label_smoothing`` (eps) is spread over the vocabulary. As in
``F.cross_entropy(..., label_smoothing=eps)``, the mass eps is spread uniformly over **all** V classes, the right
word, the ``<pad>`` column and the padded rows included:

    q = (1 - eps) * one_hot(target) + eps / V,    loss = -sum_w q_w log p_w = (1 - eps) * NLL + eps * mean_w(-log p_w)

NeMo 0.x spread eps over the V - 1 *other* classes instead, so that the right word gets exactly
1 - eps; ``exclude_target=True`` gives that variant. For V = 33,280 the two differ by eps / V in the target's mass.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def target_log_probs(log_probs: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """Each target's log-probability, (B, T), from the whole (B, T, V) distribution or given as such already
    (``model(input_ids, targets=...)``)."""
    if log_probs.dim() == target_ids.dim():
        return log_probs
    return log_probs.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)


def summed_nll(log_probs: torch.Tensor, target_ids: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of -log p(target) over non-pad targets, their count): the pieces of a corpus-level perplexity.

    ``log_probs`` is the (B, T, V) distribution or the (B, T) log-probabilities of the targets.
    """
    mask = target_ids != pad_id
    picked = target_log_probs(log_probs, target_ids).double()  # sum in float64, copy only (B, T)
    return -torch.where(mask, picked, 0.0).sum(), mask.sum()


def nll_and_perplexity(log_probs: torch.Tensor, target_ids: torch.Tensor, pad_id: int) -> tuple[float, float]:
    """The plain, unsmoothed mean negative log-likelihood (nats per token) and its exponential, the perplexity.

    Perplexity is always reported without smoothing: the smoothed loss is not the likelihood of the data.
    """
    total, count = summed_nll(log_probs.detach(), target_ids, pad_id)
    if count == 0:
        raise ValueError("no target to score: every target is padding")
    nll = (total / count).item()
    return nll, math.exp(nll)


def needs_distribution(loss_fn) -> bool:
    """Whether ``loss_fn`` needs every word's log-probability; if not, the model scores the targets alone
    (``model(input_ids, targets=labels)``). A loss that does not say is given the whole distribution."""
    return getattr(loss_fn, "needs_distribution", True)


class PaddedSmoothedCrossEntropyLoss(nn.Module):
    """``loss(log_probs, target_ids)``: label-smoothed cross entropy, averaged over the non-pad targets.

    ``log_probs``: (batch, time, V) log-probabilities, as ``TransformerLM`` returns them, or without smoothing just
    the (batch, time) log-probabilities of the targets (``model(input_ids, targets=target_ids)``, much cheaper with
    the adaptive softmax); ``target_ids``: (batch, time). Equals ``F.cross_entropy(logits, targets,
    ignore_index=pad_id, label_smoothing=eps)``. A batch whose targets are all padding gives 0 (with zero gradients),
    where ``F.cross_entropy`` gives NaN.
    """

    def __init__(self, pad_id: int, label_smoothing: float = 0.0, exclude_target: bool = False):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.pad_id, self.label_smoothing, self.exclude_target = pad_id, label_smoothing, exclude_target

    @property
    def needs_distribution(self) -> bool:
        """Whether the loss needs every word's log-probability (smoothing does), or only the targets'."""
        return self.label_smoothing > 0

    def forward(self, log_probs: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        eps = self.label_smoothing
        if eps and log_probs.dim() == target_ids.dim():
            raise ValueError("label smoothing needs the whole (batch, time, V) distribution, not only the targets'")
        if self.exclude_target:  # NeMo's variant: eps over the V - 1 other classes
            V = log_probs.size(-1)
            eps = eps * V / (V - 1)
        mask = target_ids != self.pad_id
        nll = -target_log_probs(log_probs, target_ids)
        per_token = (1.0 - eps) * nll + eps * -log_probs.mean(dim=-1) if eps else nll
        return torch.where(mask, per_token, 0.0).sum() / mask.sum().clamp_min(1)
