"""Chapter 9: one softmax temperature (Guo et al., 2017), for the full and the adaptive
softmax, checked against a direct computation: a copy of the classifier whose output
weights are divided by T."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lmtut import TransformerLM, TransformerLMConfig
from lmtut.adapt.calibration import fit_temperature, temperature_log_probs


def tiny_model(softmax: str) -> TransformerLM:
    torch.manual_seed(0)
    extra = (
        dict(softmax="adaptive", tie_weights=False, adaptive_cutoffs=(6, 20))
        if softmax == "adaptive"
        else {}
    )
    config = TransformerLMConfig(
        vocab_size=40,
        d_model=16,
        num_layers=1,
        num_attn_heads=2,
        d_inner=32,
        max_sequence_length=8,
        **extra,
    )
    model = TransformerLM(config).eval()
    if softmax == "full":
        with torch.no_grad():
            # as after training: the bias starts at zero
            model.classifier.last.bias.normal_()
    return model


def divided_by(head: torch.nn.Module, temperature: float) -> torch.nn.Module:
    """A copy whose last linear layers (the full softmax's; the adaptive head's and
    every cluster's) are / T."""
    scaled = copy.deepcopy(head)
    with torch.no_grad():
        if hasattr(scaled, "asm"):
            last = [scaled.asm.head] + [cluster[-1] for cluster in scaled.asm.tail]
        else:
            last = [scaled.last]
        for layer in last:
            layer.weight /= temperature
            if layer.bias is not None:
                layer.bias /= temperature
    return scaled


@pytest.mark.parametrize("softmax", ["full", "adaptive"])
def test_temperature_divides_the_logits_of_every_softmax(softmax):
    model = tiny_model(softmax)
    # the direct computations below take the classifier apart; calibration does not
    head = model.classifier
    g = torch.Generator().manual_seed(0)
    hidden, targets = (
        torch.randn(200, 16, generator=g) * 3,
        torch.randint(0, 40, (200,), generator=g),
    )
    with torch.no_grad():
        plain = head.target_log_probs(hidden, targets).double()
        # fp32: the log-softmax taken again, 37 rows at a time: a few 2^-24 of
        # log-probabilities down to ~-30 (rtol's 1e-5 of them is the bound that counts)
        assert torch.allclose(
            temperature_log_probs(model, hidden, targets, 1.0, chunk_size=37),
            plain,
            atol=1e-5,
        )
        for T in (0.5, 1.7):
            direct = divided_by(head, T).target_log_probs(hidden, targets).double()
            # fp32: (W / T) h against (W h) / T, a few 2^-24 of log-probabilities to -60
            assert torch.allclose(
                temperature_log_probs(model, hidden, targets, T, chunk_size=37),
                direct,
                atol=1e-5,
            )
            if softmax == "full":  # the textbook form: log_softmax(logits / T)
                logits = head.last(head.mlp(hidden))
                textbook = (
                    F.log_softmax(logits / T, -1)
                    .gather(-1, targets[:, None])[:, 0]
                    .double()
                )
                # as above: the same division, the log-softmax in another order
                assert torch.allclose(
                    temperature_log_probs(model, hidden, targets, T),
                    textbook,
                    atol=1e-5,
                )
    # the head, plus one softmax per cluster that a target falls in
    if softmax == "adaptive":
        assert [g[1].shape[1] for g in model.logit_groups(hidden, targets)] == [
            8,
            14,
            20,
        ]
    # Dividing the hidden state by T instead is the same only for bias-free linear
    # projections (the adaptive softmax's); the full softmax's last layer has a bias.
    hidden_divided = head.target_log_probs(hidden / 1.7, targets).double()
    # as above: fp32 rounding for the adaptive softmax; the full one's bias / T moves
    # the log-probabilities by O(1)
    same = torch.allclose(
        hidden_divided, temperature_log_probs(model, hidden, targets, 1.7), atol=1e-5
    )
    assert same == (softmax == "adaptive")
    with pytest.raises(ValueError, match="positive"):
        temperature_log_probs(model, hidden, targets, 0.0)


@pytest.mark.parametrize("softmax", ["full", "adaptive"])
def test_the_fit_recovers_the_temperature_the_targets_were_drawn_at(softmax):
    model = tiny_model(softmax)
    head = model.classifier
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(6000, 16, generator=g) * 3
    true_T = 1.6
    with torch.no_grad():
        # (N, V): the model's distribution at T = 1.6
        probs = divided_by(head, true_T)(hidden).exp()
    targets = torch.multinomial(probs, 1, generator=g)[:, 0]
    T = fit_temperature(model, hidden, targets, show_bar=False)
    # statistics, not rounding: from 6,000 draws T has a standard error of ~0.02 (the
    # NLL's curvature), so 0.1 is five of them
    assert abs(T - true_T) < 0.1, T

    def nll(t):
        return -temperature_log_probs(model, hidden, targets, t).mean().item()

    # a minimum, and better than T = 1
    assert nll(T) < min(nll(T * 1.05), nll(T / 1.05)) and nll(T) < nll(1.0)
    with pytest.raises(ValueError, match="no token"):
        fit_temperature(model, hidden[:0], targets[:0])


# Every classifier now gives its own softmaxes (TransformerLM.logit_groups), so
# calibration no longer refuses an unknown one; what it relies on instead is checked
# here: the groups' log-softmaxes add up to each target's log-probability, for both
# softmaxes, in fp32 whatever the autocast.
@pytest.mark.parametrize("softmax", ["full", "adaptive"])
def test_the_logit_groups_add_up_to_the_targets_log_probabilities(softmax):
    model = tiny_model(softmax)
    g = torch.Generator().manual_seed(2)
    hidden, targets = (
        torch.randn(50, 16, generator=g) * 3,
        torch.randint(0, 40, (50,), generator=g),
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        groups = model.logit_groups(hidden, targets)
        total = torch.zeros(50, dtype=torch.float64)
        for rows, logits, column in groups:
            assert logits.dtype == torch.float32 and logits.shape[0] == len(
                rows
            ) == len(column)
            total.index_add_(
                0,
                rows,
                F.log_softmax(logits, -1).gather(-1, column[:, None])[:, 0].double(),
            )
    with torch.no_grad():
        expected = model.classifier.target_log_probs(hidden, targets).double()
    # fp32 (logit_groups turns autocast off): the log-softmax taken again per group, a
    # few 2^-24 of log-probabilities down to ~-20
    assert torch.allclose(total, expected, atol=1e-5)
    if softmax == "full":  # one softmax over the padded vocabulary, for every target
        ((rows, logits, column),) = groups
        assert (
            torch.equal(rows, torch.arange(50))
            and torch.equal(column, targets)
            and logits.shape == (50, 40)
        )
    # the head's, for every target, and one per tail cluster that a target falls in
    else:
        assert len(groups) == 3 and torch.equal(groups[0][0], torch.arange(50))
