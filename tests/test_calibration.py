"""Chapter 9: one softmax temperature (Guo et al., 2017), for the full and the adaptive softmax, checked against a
direct computation: a copy of the classifier whose output weights are divided by T."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lmtut import TransformerLM, TransformerLMConfig
from lmtut.adapt.calibration import fit_temperature, logit_groups, temperature_log_probs


def classifier(softmax: str) -> torch.nn.Module:
    torch.manual_seed(0)
    extra = dict(softmax="adaptive", tie_weights=False, adaptive_cutoffs=(6, 20)) if softmax == "adaptive" else {}
    config = TransformerLMConfig(vocab_size=40, d_model=16, num_layers=1, num_attn_heads=2, d_inner=32,
                                 max_sequence_length=8, **extra)
    head = TransformerLM(config).classifier.eval()
    if softmax == "full":
        with torch.no_grad():
            head.last.bias.normal_()  # as after training: the bias starts at zero
    return head


def divided_by(head: torch.nn.Module, temperature: float) -> torch.nn.Module:
    """A copy whose last linear layers (the full softmax's; the adaptive head's and every cluster's) are / T."""
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
    head = classifier(softmax)
    g = torch.Generator().manual_seed(0)
    hidden, targets = torch.randn(200, 16, generator=g) * 3, torch.randint(0, 40, (200,), generator=g)
    with torch.no_grad():
        plain = head.target_log_probs(hidden, targets).double()
        assert torch.allclose(temperature_log_probs(head, hidden, targets, 1.0, chunk_size=37), plain, atol=1e-5)
        for T in (0.5, 1.7):
            direct = divided_by(head, T).target_log_probs(hidden, targets).double()
            assert torch.allclose(temperature_log_probs(head, hidden, targets, T, chunk_size=37), direct, atol=1e-5)
            if softmax == "full":  # the textbook form: log_softmax(logits / T)
                logits = head.last(head.mlp(hidden))
                textbook = F.log_softmax(logits / T, -1).gather(-1, targets[:, None])[:, 0].double()
                assert torch.allclose(temperature_log_probs(head, hidden, targets, T), textbook, atol=1e-5)
    if softmax == "adaptive":  # the head, plus one softmax per cluster that a target falls in
        assert [g[1].shape[1] for g in logit_groups(head, hidden, targets)] == [8, 14, 20]
    # Dividing the hidden state by T instead is the same only for bias-free linear projections (the adaptive
    # softmax's); the full softmax's last layer has a bias.
    hidden_divided = head.target_log_probs(hidden / 1.7, targets).double()
    same = torch.allclose(hidden_divided, temperature_log_probs(head, hidden, targets, 1.7), atol=1e-5)
    assert same == (softmax == "adaptive")
    with pytest.raises(ValueError, match="positive"):
        temperature_log_probs(head, hidden, targets, 0.0)


@pytest.mark.parametrize("softmax", ["full", "adaptive"])
def test_the_fit_recovers_the_temperature_the_targets_were_drawn_at(softmax):
    head = classifier(softmax)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(6000, 16, generator=g) * 3
    true_T = 1.6
    with torch.no_grad():
        probs = divided_by(head, true_T)(hidden).exp()  # (N, V): the model's distribution at T = 1.6
    targets = torch.multinomial(probs, 1, generator=g)[:, 0]
    T = fit_temperature(head, hidden, targets, show_bar=False)
    assert abs(T - true_T) < 0.1, T

    def nll(t):
        return -temperature_log_probs(head, hidden, targets, t).mean().item()

    assert nll(T) < min(nll(T * 1.05), nll(T / 1.05)) and nll(T) < nll(1.0)  # a minimum, and better than T = 1
    with pytest.raises(ValueError, match="no token"):
        fit_temperature(head, hidden[:0], targets[:0])


def test_calibration_refuses_an_unknown_classifier():
    with pytest.raises(TypeError, match="TokenClassifier and AdaptiveClassifier"):
        logit_groups(torch.nn.Linear(4, 4), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
