"""Chapters 3 and 4: attention, the causal encoder, the token classifier and weight
tying."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmtut import (
    CausalSelfAttention,
    TokenClassifier,
    TransformerLM,
    TransformerLMConfig,
    attention_maps,
    attention_reference,
)
from lmtut.model import attention_mask, sinusoidal_positions

V, D, LAYERS, HEADS, INNER, T = 50, 32, 2, 4, 64, 12


def config(**kw) -> TransformerLMConfig:
    return TransformerLMConfig(
        **(
            dict(
                vocab_size=V,
                d_model=D,
                num_layers=LAYERS,
                num_attn_heads=HEADS,
                d_inner=INNER,
                max_sequence_length=T,
            )
            | kw
        )
    )


def tiny(**kw) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(config(**kw)).eval()


def test_reference_attention_matches_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, HEADS, T, 8, dtype=torch.float64)
    ref, weights = attention_reference(q, k, v)
    # float64, outputs below ~4: ~1e-15 apart (rtol=0: the default 1e-5 is fp32's)
    assert torch.allclose(
        ref,
        F.scaled_dot_product_attention(q, k, v, is_causal=True),
        rtol=0,
        atol=1e-12,
    )
    # float64: 12 weights summing to 1
    assert torch.allclose(
        weights.sum(-1),
        torch.ones(2, HEADS, T, dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )
    assert torch.all(weights.triu(1) == 0)  # nothing from the future
    mask = attention_mask(torch.rand(2, T) > 0.3, T, q.device)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    # float64, as above
    assert torch.allclose(
        attention_reference(q, k, v, mask)[0], expected, rtol=0, atol=1e-12
    )


def test_attention_module_matches_nn_multihead_attention():
    torch.manual_seed(0)
    ours = CausalSelfAttention(config(dropout=0.0)).double()
    theirs = nn.MultiheadAttention(D, HEADS, batch_first=True).double()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(ours.qkv.weight)
        theirs.in_proj_bias.copy_(ours.qkv.bias)
        theirs.out_proj.weight.copy_(ours.out.weight)
        theirs.out_proj.bias.copy_(ours.out.bias)
    x = torch.randn(2, T, D, dtype=torch.float64)
    # nn.MultiheadAttention masks where True
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    expected, expected_weights = theirs(x, x, x, attn_mask=future)
    out = ours(x)
    # float64: ~1e-16 apart (rtol=0: the default 1e-5 is fp32's)
    assert isinstance(out, torch.Tensor) and torch.allclose(
        out, expected, rtol=0, atol=1e-12
    )
    # its weights, by the reference math, are nn.MultiheadAttention's (which averages
    # them over heads)
    weights = ours.weights(x)
    assert weights.shape == (2, HEADS, T, T)
    _, _, v = ours.split_heads(x)
    # and they give the same output (float64, as above)
    out = ours.merge_heads(weights @ v)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)
    assert torch.allclose(weights.mean(1), expected_weights, rtol=0, atol=1e-12)


def test_the_model_returns_its_attention_maps():
    model = tiny()
    x = torch.randint(0, V, (2, T))
    with attention_maps(model) as maps:
        states = model.encoder(x)
    # exact: the same forward again (the hooks only read)
    assert torch.equal(states, model.encoder(x)) and len(maps) == LAYERS
    assert maps[0].shape == (2, HEADS, T, T) and torch.all(maps[-1].triu(1) == 0)
    model.encoder(x)
    assert len(maps) == LAYERS  # outside the block, the hooks are gone


def test_output_is_log_probabilities_over_the_padded_vocabulary():
    model = tiny()
    out = model(torch.randint(0, V, (2, T))).log_probs
    assert out.shape == (2, T, 56)  # 50 rounded up to a multiple of 8
    # fp32: 56 exps of log-probabilities, each a few 2^-24 off, summed: ~1e-6
    assert torch.allclose(out.exp().sum(-1), torch.ones(2, T), atol=1e-5)


@pytest.mark.parametrize("pre_norm", [True, False])
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_causality(pre_norm, positions):
    model = tiny(pre_norm=pre_norm, positions=positions)
    x = torch.randint(0, V, (3, T))
    t = 5
    y = x.clone()
    y[:, t + 1 :] = torch.randint(0, V, (3, T - t - 1))
    out_x, out_y = model(x).log_probs, model(y).log_probs
    # exact: the masked scores are -inf, their weights exactly 0, and every other
    # operation works position by position
    assert torch.equal(out_x[:, : t + 1], out_y[:, : t + 1])
    assert not torch.allclose(out_x[:, t + 1 :], out_y[:, t + 1 :])  # O(1) apart


@pytest.mark.parametrize("where", ["left", "middle", "right"])
def test_padding_positions_do_not_affect_the_others(where):
    model = tiny()
    x = torch.randint(4, V, (2, T))
    mask = torch.ones(2, T, dtype=torch.bool)
    pad = {"left": slice(0, 3), "middle": slice(4, 7), "right": slice(T - 3, T)}[where]
    mask[:, pad] = False
    y = x.clone()
    y[:, pad] = torch.randint(4, V, (2, 3))  # whatever sits at the padding positions
    out_x, out_y = (
        model(x, input_mask=mask).log_probs,
        model(y, input_mask=mask).log_probs,
    )
    # exact: masked keys get weight exactly 0 (as in test_causality)
    assert torch.equal(out_x[mask], out_y[mask])
    all_padding = torch.zeros(2, T, dtype=torch.bool)
    assert torch.isfinite(model(x, input_mask=all_padding).log_probs).all()  # no NaN


def test_tied_model_shares_one_tensor_and_has_the_expected_size():
    tied, untied = tiny(), tiny(tie_weights=False)
    assert tied.tied and tied.classifier.weight is tied.encoder.embedding.weight
    assert tied.classifier.weight.data_ptr() == tied.encoder.embedding.weight.data_ptr()
    assert not untied.tied
    P = 56  # padded vocabulary
    block = (
        (D * 3 * D + 3 * D)
        + (D * D + D)
        + (D * INNER + INNER)
        + (INNER * D + D)
        + 2 * 2 * D
    )
    # embedding, blocks, final norm, classifier bias
    expected = P * D + LAYERS * block + 2 * D + P
    assert tied.parameter_counts() == {
        "total": expected,
        "embedding": P * D,
        "untied_total": expected + P * D,
    }
    assert untied.parameter_counts()["total"] == expected + P * D
    # tying survives a state_dict round trip (one tensor, saved under both names)
    fresh = tiny()
    fresh.load_state_dict(tied.state_dict())
    assert fresh.tied


def test_gradients_reach_every_parameter():
    for kw in (
        {},
        {"tie_weights": False, "positions": "learned", "classifier_layers": 2},
    ):
        model = tiny(**kw).train()
        x = torch.randint(0, V, (4, T))
        loss = F.nll_loss(
            model(x).log_probs.flatten(0, 1), torch.randint(0, V, (4 * T,))
        )
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_sinusoidal_positions():
    table = sinusoidal_positions(100, 16)
    # exact: sin 0 and cos 0
    assert torch.equal(table[0, 0::2], torch.zeros(8)) and torch.equal(
        table[0, 1::2], torch.ones(8)
    )
    # fp32 exp, product and sin against a float64 angle: a few roundings
    assert torch.allclose(table[7, 2], torch.sin(torch.tensor(7 / 10000 ** (2 / 16))))
    assert sinusoidal_positions(10, 7).shape == (10, 7)


@pytest.mark.parametrize(
    "kw, message",
    [
        (
            {"num_attn_heads": 5},
            r"d_model \(32\) must be divisible by num_attn_heads "
            r"\(5\)",
        ),
        ({"vocab_multiple": 0}, "vocab_multiple must be a positive integer"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
        ({"positions": "rotary"}, "positions must be"),
        ({"num_layers": 0}, "num_layers must be a positive integer"),
    ],
)
def test_bad_configuration(kw, message):
    with pytest.raises(ValueError, match=message):
        config(**kw)


def test_a_model_needs_its_vocabulary():
    with pytest.raises(ValueError, match="no vocab_size"):
        TransformerLM(TransformerLMConfig())
    assert TransformerLMConfig().with_vocab(V).padded_vocab_size == 56


def test_sequence_longer_than_positions():
    # one message for a window and for a cache that would grow past the positions (see
    # test_modern.py)
    with pytest.raises(
        ValueError, match="13 tokens are more than max_sequence_length=12"
    ):
        tiny()(torch.zeros(1, T + 1, dtype=torch.long))


def test_config_defaults_and_classifier_logits():
    model = TransformerLM(
        TransformerLMConfig(
            vocab_size=V, d_model=D, num_layers=1, num_attn_heads=2, d_inner=INNER
        )
    )
    assert model.config.padded_vocab_size == 56 and model.config.attn_dropout == 0.2
    assert (
        TransformerLMConfig(vocab_size=V, vocab_multiple=128).padded_vocab_size == 128
    )
    head = TokenClassifier(D, 10, num_layers=2, log_softmax=False)
    h = torch.randn(2, 3, D)
    logits = head(h)
    head.log_softmax = True
    # exact: the same logits through the same log_softmax; logits are not log-probs
    assert torch.equal(head(h), F.log_softmax(logits, -1)) and not torch.allclose(
        logits, head(h)
    )
    assert len(head.mlp) == 3  # one hidden layer: Linear, activation, LayerNorm


def adaptive(**kw) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(
        config(
            vocab_size=200,
            softmax="adaptive",
            tie_weights=False,
            adaptive_cutoffs=(20, 80),
            **kw,
        )
    ).eval()


def test_adaptive_softmax_gives_a_distribution_and_its_targets():
    model = adaptive()
    x, y = torch.randint(0, 200, (3, T)), torch.randint(0, 200, (3, T))
    log_probs = model(x).log_probs
    assert log_probs.shape == (3, T, 200) and log_probs.dtype == torch.float32
    # fp32: 200 probabilities from two softmaxes multiplied, summed: ~1e-6
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, T), atol=1e-5)
    picked = model(x, targets=y).target_log_probs
    # fp32: the same softmaxes, a tail's projection on fewer rows (another blocking):
    # a few 2^-24 roundings of log-probabilities below ~12 (rtol's 1e-5 covers them)
    assert torch.allclose(
        picked, log_probs.gather(-1, y[..., None]).squeeze(-1), atol=1e-6
    )
    # the classifier runs in fp32 whatever the autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x, targets=y).target_log_probs.dtype == torch.float32
    assert not model.tied and isinstance(
        model.classifier.asm, nn.AdaptiveLogSoftmaxWithLoss
    )
    full = tiny(vocab_size=200, tie_weights=False)
    # the tail's projections are narrow
    assert model.parameter_counts()["total"] < full.parameter_counts()["total"]


def test_full_softmax_targets_equal_the_gathered_distribution():
    model = tiny()
    x, y = torch.randint(0, V, (2, T)), torch.randint(0, V, (2, T))
    gathered = model(x).log_probs.gather(-1, y[..., None]).squeeze(-1)
    assert torch.equal(model(x, targets=y).target_log_probs, gathered)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"softmax": "adaptive"}, "set tie_weights=False"),
        ({"softmax": "hierarchical"}, "softmax must be one of"),
        (
            {"softmax": "adaptive", "tie_weights": False, "adaptive_cutoffs": (30, 20)},
            "increasing",
        ),
        (
            {"softmax": "adaptive", "tie_weights": False, "adaptive_cutoffs": (20, 50)},
            "below the vocabulary size 50",
        ),
    ],
)
def test_bad_adaptive_configuration(kw, message):
    with pytest.raises(ValueError, match=message):
        config(**kw)
