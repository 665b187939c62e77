"""Chapter 5: label-smoothed cross entropy that ignores padding (NeMo's
``PaddedSmoothedCrossEntropyLossNM``), and the plain negative log-likelihood and
perplexity that the book always reports.

Label smoothing (Szegedy et al., 2016; used by Vaswani et al., 2017) trains against a
softened target: the right word gets most of the probability mass and
``label_smoothing`` (eps) is spread over the vocabulary. As in ``F.cross_entropy(...,
label_smoothing=eps)``, the mass eps is spread uniformly over **all** V classes, the
right word, the ``<pad>`` column and the padded rows included:

    q = (1 - eps) * one_hot(target) + eps / V,
    loss = -sum_w q_w log p_w = (1 - eps) * NLL + eps * mean_w(-log p_w)

NeMo 0.x spread eps over the V - 1 *other* classes instead, so that the right word gets
exactly 1 - eps; ``exclude_target=True`` gives that variant. For V = 33,280 the two
differ by eps / V in the target's mass.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmtut.model import LMOutput, gather_targets


def perplexity(total_nll: float, count: int) -> tuple[float, float]:
    """(mean negative log-likelihood in nats per token, its exponential) from the summed
    NLL of ``count`` tokens: the package's one reduction to a perplexity, for a batch, a
    split or a stream."""
    if count == 0:
        raise ValueError("no token to score: every target is padding, or there is none")
    nll = total_nll / count
    return nll, math.exp(nll)


def nll_and_perplexity(
    log_probs: torch.Tensor, target_ids: torch.Tensor, pad_id: int
) -> tuple[float, float]:
    """The plain, unsmoothed mean negative log-likelihood of the non-pad targets (nats
    per token) and its exponential, the perplexity, from the whole (B, T, V)
    distribution. Summed in float64.

    Perplexity is always reported without smoothing: the smoothed loss is not the
    likelihood of the data.
    """
    mask = target_ids != pad_id
    picked = gather_targets(log_probs.detach(), target_ids).double()
    return perplexity(-torch.where(mask, picked, 0.0).sum().item(), int(mask.sum()))


class PaddedSmoothedCrossEntropyLoss(nn.Module):
    """``loss(log_probs, target_ids)``: label-smoothed cross entropy, averaged over the
    non-pad targets.

    ``log_probs``: (batch, time, V) log-probabilities; ``target_ids``: (batch, time).
    Equals ``F.cross_entropy(logits, targets, ignore_index=pad_id,
    label_smoothing=eps)``. A batch whose targets are all padding gives 0 (with zero
    gradients), where ``F.cross_entropy`` gives NaN. The Trainer calls :meth:`of_output`
    on the model's output, which without smoothing needs only the targets'
    log-probabilities (much cheaper with the adaptive softmax). ``label_smoothing`` is
    checked where it is set, in ``TrainConfig``.
    """

    def __init__(
        self, pad_id: int, label_smoothing: float = 0.0, exclude_target: bool = False
    ):
        super().__init__()
        self.pad_id, self.label_smoothing, self.exclude_target = (
            pad_id,
            label_smoothing,
            exclude_target,
        )

    @property
    def needs_distribution(self) -> bool:
        """Whether the loss reads every word's log-probability (smoothing does), or only
        the targets'."""
        return self.label_smoothing > 0

    def forward(
        self, log_probs: torch.Tensor, target_ids: torch.Tensor
    ) -> torch.Tensor:
        eps = self.label_smoothing
        if self.exclude_target:  # NeMo's variant: eps over the V - 1 other classes
            V = log_probs.size(-1)
            eps = eps * V / (V - 1)
        nll = -gather_targets(log_probs, target_ids)
        per_token = (1.0 - eps) * nll + eps * -log_probs.mean(dim=-1) if eps else nll
        return self.mean_over_targets(per_token, target_ids)

    def of_output(self, output: LMOutput, target_ids: torch.Tensor) -> torch.Tensor:
        """The loss of a :class:`lmtut.model.LMOutput`: from every word's
        log-probability when smoothing (ask the model with
        ``distribution=loss.needs_distribution``), else from the targets' alone."""
        if self.needs_distribution:
            return self(output.log_probs, target_ids)
        return self.mean_over_targets(-output.target_log_probs, target_ids)

    def mean_over_targets(
        self, per_token: torch.Tensor, target_ids: torch.Tensor
    ) -> torch.Tensor:
        mask = target_ids != self.pad_id
        return torch.where(mask, per_token, 0.0).sum() / mask.sum().clamp_min(1)
