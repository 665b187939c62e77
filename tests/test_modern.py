"""The modern block's options (RMSNorm, rotary positions, SwiGLU, no biases, QK-norm),
Muon, and the KV cache."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from helpers import interrupted_run
from torch import nn

from lmtut import (
    LanguageModelingDataset,
    TrainConfig,
    Trainer,
    TransformerLM,
    TransformerLMConfig,
    evaluate_perplexity,
    generate_text,
)
from lmtut.model import (
    CausalSelfAttention,
    apply_rotary,
    attention_reference,
    rotary_angles,
)
from lmtut.optim import MuonAdamW, newton_schulz
from lmtut.scoring import loss_by_position

MODERN = dict(
    norm="rms", positions="rope", activation="swiglu", bias=False, qk_norm=True
)


def config(vocab_size=50, **kw):
    base = dict(
        vocab_size=vocab_size,
        d_model=32,
        num_layers=2,
        num_attn_heads=4,
        d_inner=64,
        max_sequence_length=16,
        dropout=0.0,
    )
    return TransformerLMConfig(**(base | kw))


# --------------------------------------------------------------------- rotary positions


def test_rotary_positions_are_a_complex_multiplication():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8)  # (B, heads, T, d_head)
    positions = torch.arange(5, 12)
    cos, sin = rotary_angles(positions, 8)
    theta = 10000.0 ** (-torch.arange(0, 8, 2) / 8)
    # e^{i p theta_k}
    turn = torch.polar(torch.ones(7, 4), positions[:, None].float() * theta)
    expected = torch.view_as_real(
        torch.view_as_complex(x.reshape(2, 3, 7, 4, 2)) * turn
    ).flatten(-2)
    # fp32: the complex product rounds a cos - b sin in its own order: an ulp or two of
    # values below ~4 (rtol's 1e-5 covers them)
    assert torch.allclose(apply_rotary(x, cos, sin), expected, atol=1e-6)


def test_rotary_dot_products_depend_on_the_offset_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        qm = apply_rotary(q, *rotary_angles(torch.tensor([m]), 16))
        kn = apply_rotary(k, *rotary_angles(torch.tensor([n]), 16))
        return (qm * kn).sum().item()

    # fp32: an angle p theta is off by about p 2^-23 radians (theta's rounding and the
    # product's), so these 16-term scores (|q_i k_i| summing to ~10) by ~1e-6 at
    # p = 10 and ~1e-5 at p = 100; one position more moves a score by O(1)
    assert (
        score(3, 1)
        == pytest.approx(score(10, 8), abs=1e-5)
        == pytest.approx(score(102, 100), abs=1e-4)
    )
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    with pytest.raises(ValueError, match="even head width"):
        rotary_angles(torch.arange(3), 7)


def test_rotary_attention_matches_the_reference_on_turned_queries_and_keys():
    torch.manual_seed(0)
    attention = CausalSelfAttention(config(positions="rope")).eval()
    x = torch.randn(2, 10, 32)
    y = attention(x)
    q, k, v = attention.split_heads(x)
    cos, sin = rotary_angles(torch.arange(10), attention.d_head)
    expected, _ = attention_reference(
        apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v
    )
    # fp32: SDPA's kernel against the reference math, a few 2^-24 of outputs below 1
    assert torch.allclose(y, attention.merge_heads(expected), atol=1e-5)


# ------------------------------------------------------------------ the block's options


def test_the_options_build_the_modern_block():
    model = TransformerLM(config(**MODERN))
    block = model.encoder.layers[0]
    assert isinstance(block.norm1, nn.RMSNorm) and isinstance(
        model.encoder.final_norm, nn.RMSNorm
    )
    assert (
        model.encoder.position_embedding is None
        and not model.encoder.additive_positions
    )
    assert isinstance(
        block.attn.q_norm, nn.RMSNorm
    ) and block.attn.q_norm.normalized_shape == (8,)
    biases = [name for name, _ in model.named_parameters() if name.endswith("bias")]
    assert biases == [], biases
    assert all(
        isinstance(m, nn.LayerNorm)
        for m in (TransformerLM(config()).encoder.layers[0].norm1,)
    )
    with pytest.raises(ValueError, match="norm must be one of"):
        config(norm="batch")


def test_swiglu_keeps_the_parameter_count_by_its_stated_rule():
    relu, swiglu = config(d_inner=96), config(d_inner=96, activation="swiglu")
    assert swiglu.ffn_hidden == 64  # 2/3 of d_inner, rounded up to a multiple of 8
    count = {
        name: TransformerLM(c).encoder.layers[0].ffn
        for name, c in (("relu", relu), ("swiglu", swiglu))
    }
    n = {name: sum(p.numel() for p in ffn.parameters()) for name, ffn in count.items()}
    # integer counts: 0.02 is the rule's slack (a width rounded up to a multiple of 8)
    assert abs(n["swiglu"] / n["relu"] - 1) < 0.02, n
    ffn = count["swiglu"]
    x = torch.randn(3, 32)
    # exact: forward is this expression (dropout 0 returns its input)
    assert torch.equal(ffn(x), ffn.down(F.silu(ffn.gate(x)) * ffn.up(x)))


def test_qk_norm_normalizes_each_heads_queries_and_keys():
    attention = CausalSelfAttention(config(qk_norm=True))
    q, k = attention.normalize_and_rotate(
        torch.randn(2, 4, 5, 8) * 30, torch.randn(2, 4, 5, 8) * 30
    )
    # fp32: 8 squares averaged, a rsqrt and a product, squared and averaged again: ~10
    # roundings of 2^-24 (6e-7); RMSNorm's eps (fp32's, 1.2e-7) is ~1e-9 of mean
    # squares of 100 or more. (1e-3 would pass an eps a million times too large.)
    assert torch.allclose(q.pow(2).mean(-1), torch.ones(2, 4, 5), atol=1e-5)
    assert torch.allclose(k.pow(2).mean(-1), torch.ones(2, 4, 5), atol=1e-5)


def test_the_modern_model_is_causal_and_trains_with_the_adaptive_softmax(
    tokenizer, corpus
):
    cfg = config(
        tokenizer.vocab_size,
        **MODERN,
        softmax="adaptive",
        tie_weights=False,
        adaptive_cutoffs=(8, 16),
    )
    torch.manual_seed(0)
    model = TransformerLM(cfg).eval()
    ids = torch.randint(4, tokenizer.vocab_size, (2, 12))
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % tokenizer.vocab_size
    a, b = model(ids).log_probs, model(changed).log_probs
    # exact before position 7 (masked scores are -inf, their weights exactly 0); O(1)
    # apart from it on
    assert torch.equal(a[:, :7], b[:, :7]) and not torch.allclose(a[:, 7:], b[:, 7:])
    train = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    valid = LanguageModelingDataset(
        tokenizer, corpus / "valid.txt", max_sequence_length=16, batch_step=4
    )
    before = evaluate_perplexity(model, valid)[1]
    Trainer(
        model,
        train,
        TrainConfig(batch_size=8, max_steps=30, lr=1e-2, precision="amp-bf16"),
        device="cpu",
    ).train()
    assert evaluate_perplexity(model, valid)[1] < before / 2


# --------------------------------------------------------------------------------- Muon


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = TransformerLM(config(tie_weights=False))
    optimizer = MuonAdamW(model, lr=1e-3, muon_lr=2e-3, weight_decay=0.1)
    muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in muon}
    assert names and all(
        ".layers." in f".{n}" and model.get_parameter(n).dim() == 2 for n in names
    )
    assert (
        "encoder.embedding.weight" not in names
        and "classifier.last.weight" not in names
    )
    every = [p for g in optimizer.param_groups for p in g["params"]]
    # each once, all of them
    assert len(every) == len({id(p) for p in every}) == len(list(model.parameters()))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert (
        optimizer.muon.param_groups[0]["lr"] == 1e-3
        and optimizer.adamw.param_groups[0]["lr"] == 5e-4
    )
    assert schedule.get_last_lr()[0] == 1e-3


class OneMatrix(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(16, 16, bias=False)])
        self.layers[0].weight = w

    def parameter_groups(self):  # what MuonAdamW reads: the one matrix is a block's
        return {
            "decayed": [self.layers[0].weight],
            "not_decayed": [],
            "block_matrices": [self.layers[0].weight],
        }


def test_muon_orthogonalizes_its_update():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(16, 16))
    model = OneMatrix(w)
    optimizer = MuonAdamW(model, lr=0.0, muon_lr=0.1, momentum=0.0)
    u, _, vt = torch.linalg.svd(torch.randn(16, 16))
    # singular values from 1 down to 0.001
    gradient = u @ torch.diag(torch.logspace(0, -3, 16)) @ vt
    before = w.detach().clone()
    (w * gradient).sum().backward()
    optimizer.step()
    singular = torch.linalg.svdvals(before - w.detach())
    # near-orthogonal: Newton-Schulz flattens the spectrum (was 1000; ~3 after, a
    # property of its five steps, not of rounding)
    assert singular.max() / singular.min() < 10


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_the_teaching_newton_schulz_is_torchs_muon_update(shape):
    torch.manual_seed(0)
    weight, gradient = torch.randn(shape), torch.randn(shape)
    param = nn.Parameter(weight.clone())
    muon = torch.optim.Muon(
        [param],
        lr=0.01,
        weight_decay=0.0,
        momentum=0.95,
        adjust_lr_fn="match_rms_adamw",
    )
    param.grad = gradient.clone()
    muon.step()
    # match_rms_adamw: 0.2 sqrt(max(A, B)) times the lr
    adjusted_lr = 0.01 * 0.2 * max(shape) ** 0.5
    # Nesterov's first step: (1 - m^2) g
    expected = weight - adjusted_lr * newton_schulz((1 - 0.95**2) * gradient)
    error = (param.detach() - expected).norm() / (weight - expected).norm()
    # torch's iteration runs in bfloat16, this one in float32. bf16 keeps 8 significant
    # bits: a product rounds by up to 2^-8 relative, ~2^-8 / sqrt(3) in the norm. The
    # last step alone adds a X (a = 3.4) to a product near -2.5 X, whose roundings
    # count at that size: sqrt(3.4^2 + 2.5^2 + 1) / sqrt(3) = 2.5 times 2^-8; the steps
    # before add theirs through the polynomial. 3.3 and 4.0 times 2^-8 here, the same
    # on AMX, AVX-512 and AVX2 (the same fp32 inputs round to the same bf16 numbers).
    assert error < 5 * 2**-8


def test_newton_schulz_flattens_the_spectrum_and_keeps_the_singular_vectors():
    torch.manual_seed(0)
    u, _, vt = torch.linalg.svd(torch.randn(32, 32))
    # singular values from 1 down to 0.01
    g = u @ torch.diag(torch.logspace(0, -2, 32)) @ vt
    x = newton_schulz(g)
    inside = u.T @ x @ vt.T  # diagonal when the singular vectors are kept
    # fp32: the products' 2^-24 roundings, grown by at most a = 3.4 a step along the
    # small singular values: 3.4^5 2^-24 = 3e-5 (1e-6 here)
    assert (inside - torch.diag(inside.diagonal())).abs().max() < 1e-4
    # the five steps' polynomial, not rounding: 0.68 to 1.15 here
    assert 0.6 < inside.diagonal().min() and inside.diagonal().max() < 1.25
    # only the scaling by the Frobenius norm (fp32: two norms of 1,024 squares, ~1e-7
    # each)
    assert newton_schulz(g, steps=0).norm().item() == pytest.approx(1.0)


def test_muon_resumes_exactly(tokenizer, corpus, tmp_path):
    ds = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    cfg = TrainConfig(
        batch_size=4,
        max_steps=8,
        lr=1e-2,
        optimizer_kind="muon",
        muon_lr=2e-2,
        weight_decay=0.01,
    )

    def run(work_dir, stop_at=None, resume=False):
        torch.manual_seed(0)
        model = TransformerLM(config(tokenizer.vocab_size, **MODERN, dropout=0.2))
        return interrupted_run(model, ds, cfg, work_dir, stop_at, resume)

    whole, trainer = run(tmp_path / "a")
    assert isinstance(trainer.optimization.optimizer, MuonAdamW)
    first, _ = run(tmp_path / "b", stop_at=5)
    second, _ = run(tmp_path / "b", resume=True)
    # exact: the resumed steps are the same arithmetic on the same state
    assert {**first, **second} == whole


# ------------------------------------------------------------------------- the KV cache


@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "rope"])
def test_the_kv_cache_gives_the_same_words(tokenizer, positions):
    torch.manual_seed(0)
    model = TransformerLM(
        config(tokenizer.vocab_size, positions=positions, max_sequence_length=12)
    )
    # within the window, and past it
    for prompt, n in (("the n1 v2", 6), ("the n1 v2 a n3 . the n4", 20)):
        texts = {
            cache: generate_text(
                model, tokenizer, prompt, n, temperature=0, kv_cache=cache
            )
            for cache in (True, False)
        }
        assert texts[True] == texts[False] and len(texts[True].split()) == n


def test_the_cached_states_are_the_full_forward_ones(tokenizer):
    torch.manual_seed(0)
    model = TransformerLM(config(tokenizer.vocab_size, **MODERN)).eval()
    ids = torch.randint(4, tokenizer.vocab_size, (1, 10))
    full = model.encoder(ids)
    cache = model.new_kv_cache()
    parts = [model.encoder(ids[:, :6], kv_cache=cache)] + [
        model.encoder(ids[:, t : t + 1], kv_cache=cache) for t in range(6, 10)
    ]
    # fp32: one-token queries against cached keys vs the full causal kernel (other
    # kernels and shapes): a few 2^-24 of states below ~3
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
    assert [layer.length for layer in cache] == [10, 10]
    # the model reads through the same cache: its log-probabilities are the full
    # forward's too
    cache = model.new_kv_cache()
    parts = [
        model(ids[:, :6], kv_cache=cache).log_probs,
        model(ids[:, 6:], kv_cache=cache).log_probs,
    ]
    # as above, log-probabilities below ~8 (rtol adds 1e-5 of them)
    assert torch.allclose(torch.cat(parts, dim=1), model(ids).log_probs, atol=1e-5)
    with pytest.raises(
        ValueError, match="17 tokens are more than max_sequence_length=16"
    ):
        model.encoder(torch.randint(4, 20, (1, 7)), kv_cache=cache)


def test_sampling_with_the_cache_draws_the_same_words(tokenizer):
    torch.manual_seed(0)
    model = TransformerLM(config(tokenizer.vocab_size))
    texts = [
        generate_text(
            model,
            tokenizer,
            "the",
            10,
            temperature=1.0,
            top_k=5,
            kv_cache=cache,
            generator=torch.Generator().manual_seed(3),
        )
        for cache in (True, False)
    ]
    assert texts[0] == texts[1]


def test_every_option_is_off_by_default():
    plain, modern = TransformerLMConfig(), replace(TransformerLMConfig(), **MODERN)
    assert (
        plain.norm,
        plain.positions,
        plain.activation,
        plain.bias,
        plain.qk_norm,
    ) == ("layer", "sinusoidal", "relu", True, False)
    assert TrainConfig().optimizer_kind == "adamw" and copy.copy(modern).qk_norm


def test_the_modern_model_adapts_at_test_time(tokenizer, corpus):
    from lmtut import (
        dynamic_evaluation,
        gradient_rms,
        neural_cache_scores,
        score_stream,
    )

    torch.manual_seed(0)
    model = TransformerLM(
        config(
            tokenizer.vocab_size,
            **MODERN,
            softmax="adaptive",
            tie_weights=False,
            adaptive_cutoffs=(8, 16),
        )
    ).eval()
    train = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    valid = LanguageModelingDataset(
        tokenizer, corpus / "valid.txt", max_sequence_length=16, batch_step=4
    )
    stream = score_stream(model, valid, show_bar=False)
    # the same fp32 scores (the same batches of 32), summed in float64 in another
    # grouping: ~1e-16 relative
    assert stream.perplexity == pytest.approx(
        evaluate_perplexity(model, valid)[1], rel=1e-12
    )
    assert neural_cache_scores(stream, 50, 0.1, 0.1).num_tokens == valid.num_targets
    rms = gradient_rms(model, train, batch_size=4, max_batches=3, show_bar=False)
    adapted = dynamic_evaluation(
        model, valid, 1e-3, rule="rms", decay=0.01, rms=rms, show_bar=False
    )
    assert adapted.perplexity < stream.perplexity


# ----------------------------------------------------------------------- longer windows


@pytest.mark.parametrize("positions", ["sinusoidal", "rope"])
def test_a_longer_window_keeps_the_weights_and_the_first_positions(positions):
    torch.manual_seed(0)
    model = TransformerLM(config(positions=positions)).eval()
    longer = model.with_window(48)
    ids = torch.randint(0, 50, (2, 48))
    first = longer(ids[:, :16]).log_probs
    # positions 0-15: the same model (fp32: the longer sinusoidal table's sin and cos
    # may round an element differently, an ulp, no more)
    assert torch.allclose(first, model(ids[:, :16]).log_probs, atol=1e-6)
    assert longer(ids).log_probs.shape == (2, 48, model.config.padded_vocab_size)
    with pytest.raises(
        ValueError, match="48 tokens are more than max_sequence_length=16"
    ):
        model(ids)


def test_learned_positions_cannot_read_a_longer_window():
    model = TransformerLM(config(positions="learned"))
    with pytest.raises(ValueError, match="train with max_sequence_length=48"):
        model.with_window(48)
    assert model.with_window(16).config.max_sequence_length == 16


def test_loss_by_position_is_the_cross_entropy_of_each_position():
    torch.manual_seed(0)
    model = TransformerLM(config()).train()
    ids = torch.randint(0, 50, (16 * 5 + 3,))
    losses = loss_by_position(model, ids, window=16, batch_size=2)
    assert model.training  # the mode is restored
    with torch.no_grad():
        log_probs = model.eval()(ids[:80].view(5, 16)).log_probs
    expected = F.nll_loss(
        log_probs.transpose(1, 2), ids[1:81].view(5, 16), reduction="none"
    ).mean(0)
    # fp32: two windows at a time against five, the mean over 5 in another order: a few
    # 2^-24 of losses below ~6
    assert torch.allclose(losses, expected, atol=1e-5)
    with pytest.raises(ValueError, match="hold no window of 16"):
        loss_by_position(model, ids[:16], window=16)
