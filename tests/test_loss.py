"""Chapter 5: the padded, label-smoothed cross entropy and the unsmoothed perplexity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmtut import (
    LMOutput,
    PaddedSmoothedCrossEntropyLoss,
    TrainConfig,
    nll_and_perplexity,
    perplexity,
)

PAD = 0


def batch(seed: int, B=3, T=7, V=11, pad_share=0.5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(1, V, (B, T), generator=g)
    targets[torch.rand(B, T, generator=g) < pad_share] = PAD
    return logits, targets


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.1, 0.3, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("seed, pad_share", [(0, 0.0), (1, 0.5), (2, 0.9)])
def test_equals_pytorch_cross_entropy(eps, seed, pad_share):
    logits, targets = batch(seed, pad_share=pad_share)
    targets[0, 0] = 3  # at least one real target
    ours = PaddedSmoothedCrossEntropyLoss(PAD, eps)(F.log_softmax(logits, -1), targets)
    theirs = F.cross_entropy(
        logits.transpose(1, 2), targets, ignore_index=PAD, label_smoothing=eps
    )
    # float64, two formulas: ~1e-16 relative apart, far under 1e-10
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_gradients_equal_pytorch(eps):
    logits, targets = batch(3)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    PaddedSmoothedCrossEntropyLoss(PAD, eps)(F.log_softmax(a, -1), targets).backward()
    F.cross_entropy(
        b.transpose(1, 2), targets, ignore_index=PAD, label_smoothing=eps
    ).backward()
    # float64 gradients below 0.1: ~1e-17 apart (rtol=0: the default 1e-5 is fp32's)
    assert torch.allclose(a.grad, b.grad, rtol=0, atol=1e-12)
    assert torch.all(a.grad[targets == PAD] == 0)  # padding positions get no gradient


def test_all_padding_batch_gives_zero_not_nan():
    logits, _ = batch(4)
    targets = torch.full(logits.shape[:2], PAD)
    x = logits.clone().requires_grad_()
    loss = PaddedSmoothedCrossEntropyLoss(PAD, 0.1)(F.log_softmax(x, -1), targets)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(x.grad == 0)
    # what PyTorch does
    assert torch.isnan(
        F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=PAD)
    )


def test_seed_variant_gives_the_target_exactly_one_minus_eps():
    V, eps = 5, 0.2
    # With log p = log q for the smoothed target q, the loss is the entropy of q,
    # minimal over p.
    for exclude, q_target, q_other in [
        (False, 1 - eps + eps / V, eps / V),
        (True, 1 - eps, eps / (V - 1)),
    ]:
        q = torch.full((1, 1, V), q_other, dtype=torch.float64)
        q[0, 0, 2] = q_target
        loss = PaddedSmoothedCrossEntropyLoss(PAD, eps, exclude_target=exclude)(
            q.log(), torch.tensor([[2]])
        )
        # float64: five terms in another order
        assert math.isclose(loss.item(), -(q * q.log()).sum().item(), rel_tol=1e-12)


def test_unsmoothed_perplexity_by_hand():
    # two real targets with probabilities 1/2 and 1/8, one padding position
    probs = torch.tensor(
        [[[0.25, 0.5, 0.25], [0.25, 0.25, 0.5], [0.75, 0.125, 0.125]]],
        dtype=torch.float64,
    )
    nll, ppl = nll_and_perplexity(probs.log(), torch.tensor([[1, PAD, 2]]), PAD)
    # float64 logs of 1/2 and 1/8: a rounding or two, under isclose's 1e-9
    assert math.isclose(nll, (math.log(2) + math.log(8)) / 2)
    assert math.isclose(ppl, 4.0)  # the geometric mean of 2 and 8
    with pytest.raises(ValueError, match="every target is padding"):
        nll_and_perplexity(probs.log(), torch.tensor([[PAD, PAD, PAD]]), PAD)


def test_bad_smoothing():
    # the range is checked where it is set, in the train config (the loss no longer
    # checks it)
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\)"):
        TrainConfig(label_smoothing=1.0)


def test_the_loss_takes_the_targets_log_probabilities_alone():
    log_probs = F.log_softmax(torch.randn(2, 5, 11, dtype=torch.float64), -1)
    targets = torch.tensor([[1, 2, 0, 4, 5], [0, 0, 7, 8, 9]])
    picked = log_probs.gather(-1, targets[..., None]).squeeze(-1)
    hidden = torch.zeros(2, 5, 4)
    plain, smoothed = (
        PaddedSmoothedCrossEntropyLoss(0),
        PaddedSmoothedCrossEntropyLoss(0, 0.1),
    )
    assert not plain.needs_distribution and smoothed.needs_distribution
    targets_only = LMOutput(hidden, target_log_probs=picked)
    # exact: the same gathered values through the same reduction
    assert torch.equal(
        plain.of_output(targets_only, targets), plain(log_probs, targets)
    )
    # the perplexity of the targets' log-probabilities alone, through the one reduction,
    # is the distribution's
    real = targets != 0
    # float64: the same 7 terms summed with and without the padding's zeros
    assert perplexity(-picked[real].sum().item(), int(real.sum())) == pytest.approx(
        nll_and_perplexity(log_probs, targets, 0), rel=1e-12
    )
    with pytest.raises(ValueError, match="every target is padding"):
        perplexity(0.0, 0)
    # smoothing reads the whole distribution, never the targets' log-probabilities (the
    # loss no longer takes a (B, T) input and refuses to smooth it: of_output picks what
    # it reads)
    output = LMOutput(
        hidden, log_probs=log_probs, target_log_probs=torch.zeros_like(picked)
    )
    # exact: of_output calls the loss itself on the same log-probabilities
    assert torch.equal(
        smoothed.of_output(output, targets), smoothed(log_probs, targets)
    )
    # eps = 0.1 moves the loss by ~1e-2, far outside the default tolerance
    assert not torch.allclose(smoothed(log_probs, targets), plain(log_probs, targets))
