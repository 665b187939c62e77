"""Chapter 9: adapting at test time. The scored stream, the neural cache (Grave et al.,
2017), dynamic evaluation (Krause et al., 2018), and the command line that tunes them on
validation and reports them apart from static figures."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from helpers import TINY, tiny_model

import lmtut.evaluate as evaluate_cli
import lmtut.train as train_cli
from lmtut import (
    LanguageModelingDataset,
    TransformerLM,
    TransformerLMConfig,
    WordTokenizer,
    evaluate_perplexity,
    prepare_corpus,
    quick_train,
)
from lmtut.adapt.dynamic import (
    KrauseUpdate,
    bracketed,
    dynamic_evaluation,
    gradient_rms,
    lookup_only_embeddings,
    tune_dynamic_evaluation,
    widened,
)
from lmtut.adapt.neural_cache import (
    interpolate,
    neural_cache_log_probs,
    neural_cache_scores,
    tune_neural_cache,
)
from lmtut.checkpoint import list_checkpoints
from lmtut.scoring import TokenScores, score_stream, score_windows


@pytest.fixture(scope="module")
def bursty(tmp_path_factory):
    """A corpus of short 'articles', each about a few nouns of its own that it repeats:
    what a cache is for."""
    folder = tmp_path_factory.mktemp("bursty")
    rng = random.Random(0)
    nouns, verbs = [f"n{i}" for i in range(40)], [f"v{i}" for i in range(6)]
    for split, articles in (("train", 60), ("valid", 10), ("test", 10)):
        lines = []
        for _ in range(articles):
            topic = rng.sample(nouns, 3)
            lines += [
                " ".join(
                    [
                        "the",
                        rng.choice(topic),
                        rng.choice(verbs),
                        "a",
                        rng.choice(topic),
                        ".",
                    ]
                )
                for _ in range(8)
            ]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    tokenizer = WordTokenizer(prepare_corpus(folder).vocab_file)
    train = LanguageModelingDataset(tokenizer, folder / "train.txt", 16)
    valid = LanguageModelingDataset(tokenizer, folder / "valid.txt", 16, batch_step=4)
    model = tiny_model(tokenizer)
    quick_train(model, train, steps=60, batch_size=8, lr=1e-2, eval_every=1000)
    return model.eval(), train, valid


def windows(tokenizer, ids, k=4):
    return LanguageModelingDataset(
        tokenizer, torch.tensor(ids), max_sequence_length=16, batch_step=k
    )


def random_ids(tokenizer, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    # no special tokens
    return torch.randint(4, tokenizer.vocab_size, (n,), generator=g).tolist()


# --------------------------------------------------------------------------- the stream


def test_the_stream_is_the_split_in_order_and_scores_like_evaluate_perplexity(
    tokenizer, corpus
):
    model = tiny_model(tokenizer).eval()
    valid = LanguageModelingDataset(tokenizer, corpus / "valid.txt", 16, batch_step=4)
    stream = score_stream(model, valid, batch_size=5, show_bar=False)
    # every token once, in the split's order
    assert torch.equal(stream.targets, valid.ids[1:])
    assert stream.hidden.shape == (valid.num_targets, 16)
    # fp32 windows 5 at a time against 32 (another matmul blocking, as on AVX2): each
    # log-probability a few 2^-24 of ~4 apart, ~1e-7 in the mean nll
    assert math.isclose(
        stream.perplexity, evaluate_perplexity(model, valid)[1], rel_tol=1e-6
    )
    with pytest.raises(ValueError, match="two \\(N,\\) tensors"):
        TokenScores(torch.zeros(3, dtype=torch.long), torch.zeros(2))


# ---------------------------------------------------------------------------- the cache


def direct_cache_probs(hidden, targets, size, theta):
    """p_cache(target_t) by the definition, one position at a time (None: empty
    cache)."""
    out = []
    for t in range(len(targets)):
        keys = range(max(0, t - size), t)
        if not keys:
            out.append(None)
            continue
        weights = torch.stack(
            [torch.exp(theta * hidden[t] @ hidden[i]) for i in keys]
        ).double()
        same = torch.tensor(
            [int(targets[i] == targets[t]) for i in keys], dtype=torch.float64
        )
        out.append(float((weights * same).sum() / weights.sum()))
    return out


def test_cache_probabilities_follow_the_definition():
    g = torch.Generator().manual_seed(0)
    hidden, targets = (
        torch.randn(40, 5, generator=g),
        torch.randint(0, 6, (40,), generator=g),
    )
    got = neural_cache_log_probs(
        hidden, targets, cache_size=7, thetas=[0.3, 1.5], chunk_size=9
    )
    for row, theta in zip(got, (0.3, 1.5)):
        expected = direct_cache_probs(hidden, targets, 7, theta)
        # the first position's cache is empty
        assert expected[0] is None and row[0] == -math.inf
        for t in range(1, 40):
            # fp32 scores theta h.h of up to ~20 (5-term dot products): their logsumexps
            # are a few ulps of 20 (2e-6) apart, p relatively as much
            assert math.isclose(
                math.exp(row[t]), expected[t], rel_tol=1e-4, abs_tol=1e-7
            ), (t, theta)
    # a target that is not in the cache gets nothing
    assert any(row[t] == -math.inf for t in range(1, 40))


def test_the_cache_never_looks_ahead():
    g = torch.Generator().manual_seed(1)
    hidden, targets = (
        torch.randn(50, 4, generator=g),
        torch.randint(0, 5, (50,), generator=g),
    )
    changed_hidden, changed_targets = hidden.clone(), targets.clone()
    changed_hidden[30:] = torch.randn(20, 4, generator=g)
    changed_targets[30:] = (targets[30:] + 1) % 5
    a = neural_cache_log_probs(hidden, targets, 10, [1.0])
    b = neural_cache_log_probs(changed_hidden, changed_targets, 10, [1.0])
    assert torch.equal(a[:, :30], b[:, :30]) and not torch.equal(a[:, 30:], b[:, 30:])


def test_a_cache_with_lambda_zero_is_the_static_model(tokenizer, corpus):
    model = tiny_model(tokenizer).eval()
    valid = LanguageModelingDataset(tokenizer, corpus / "valid.txt", 16, batch_step=4)
    stream = score_stream(model, valid, show_bar=False)
    assert torch.equal(
        neural_cache_scores(stream, 50, 0.5, 0.0).log_probs, stream.log_probs
    )
    mixed = neural_cache_scores(stream, 50, 0.5, 0.3)
    # an empty cache leaves the first token alone
    assert mixed.log_probs[0] == stream.log_probs[0]
    cached = neural_cache_log_probs(stream.hidden, stream.targets, 50, [0.5])[0]
    by_hand = torch.log(0.7 * stream.log_probs.exp() + 0.3 * cached.double().exp())
    # float64: logaddexp against the log of a sum, ~1e-16 relative
    assert torch.allclose(mixed.log_probs[1:], by_hand[1:], rtol=1e-12, atol=0)
    assert torch.equal(
        interpolate(stream.log_probs, cached, 1.0)[1:], cached[1:].double()
    )
    for bad, message in (
        ((0, 0.5, 0.1), "cache_size"),
        ((5, -1.0, 0.1), "theta"),
        ((5, 0.5, 1.5), "lambda"),
    ):
        with pytest.raises(ValueError, match=message):
            neural_cache_scores(stream, *bad)


# ------------------------------------------------------------------- dynamic evaluation


def leaky_dynamic_evaluation(model, dataset, lr):
    """The wrong order, for the tests to tell apart: learn from a window, then score
    it."""
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer, log_probs = torch.optim.SGD(model.parameters(), lr=lr), []
    for idx in range(len(dataset)):
        batch = [t.unsqueeze(0) for t in dataset[idx]]
        loss = score_windows(model, *batch, dataset.pad_id).mean_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            log_probs.append(
                score_windows(model, *batch, dataset.pad_id).log_probs.double()
            )
    model.load_state_dict(trained)
    return torch.cat(log_probs)


def test_dynamic_evaluation_scores_every_token_once_before_learning_from_it(tokenizer):
    model = tiny_model(tokenizer).eval()
    ids = random_ids(tokenizer, 45)
    # windows of 16 sliding by 4: the fifth scores tokens 28-31; change token 30 and all
    # after it
    changed = ids[:30] + random_ids(tokenizer, 15, seed=1)
    a, b = (
        dynamic_evaluation(model, windows(tokenizer, x), lr=0.5, show_bar=False)
        for x in (ids, changed)
    )
    assert a.targets.tolist() == ids  # every token once, in order
    # nothing before 30 sees it: exact, the same steps on the same windows and a causal
    # model (masked scores are -inf, their weights exactly 0)
    assert torch.equal(a.log_probs[:30], b.log_probs[:30])
    assert not torch.allclose(a.log_probs[30:], b.log_probs[30:])  # O(1) apart
    leaky_a, leaky_b = (
        leaky_dynamic_evaluation(model, windows(tokenizer, x), lr=0.5)
        for x in (ids, changed)
    )
    assert torch.equal(leaky_a[:28], leaky_b[:28])  # exact, as above
    # the wrong order: 28, 29 scored after seeing 30 (by 0.05 here: 1e-3 is far above
    # rounding and far below the leak)
    assert (leaky_a[28:30] - leaky_b[28:30]).abs().max() > 1e-3


def test_a_repeated_sequence_gains_on_its_second_copy_only(tokenizer):
    model = tiny_model(tokenizer).eval()
    sequence = random_ids(tokenizer, 48)
    data = windows(tokenizer, sequence + sequence)
    static = score_stream(model, data, show_bar=False).log_probs
    adapted = dynamic_evaluation(model, data, lr=0.3, show_bar=False).log_probs
    gain = adapted - static
    first, second = gain[:48].mean().item(), gain[48:].mean().item()
    assert second > 0.5 and first < 0.2 * second, (first, second)
    # the first window: nothing learned yet
    assert torch.equal(adapted[:16], static[:16])
    leaky = leaky_dynamic_evaluation(model, data, lr=0.3)
    # the wrong order "gains" on text it has not read yet
    assert (leaky - static)[:48].mean().item() > 0.5


def test_dynamic_evaluation_with_lr_zero_is_static_and_restores_the_weights(
    tokenizer, corpus
):
    model = tiny_model(tokenizer).eval()
    valid = LanguageModelingDataset(tokenizer, corpus / "valid.txt", 16, batch_step=4)
    before, threads = (
        {k: v.clone() for k, v in model.state_dict().items()},
        torch.get_num_threads(),
    )
    static = score_stream(model, valid, show_bar=False)
    # lr 0 leaves every weight as it was: windows one at a time on one thread against
    # 32 on all (another blocking, as on AVX2), fp32 log-probabilities below ~8 a few
    # 2^-24 apart
    assert torch.allclose(
        dynamic_evaluation(model, valid, lr=0.0, show_bar=False).log_probs,
        static.log_probs,
        atol=1e-5,
    )
    dynamic_evaluation(model, valid, lr=0.1, show_bar=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # the sparse gradients were for the adaptation only
    assert not model.encoder.embedding.sparse
    assert torch.get_num_threads() == threads  # and so was the single CPU thread
    with pytest.raises(ValueError, match="unknown dynamic evaluation rule"):
        dynamic_evaluation(model, valid, lr=0.1, rule="adam")
    with pytest.raises(ValueError, match="needs gradient statistics"):
        dynamic_evaluation(model, valid, lr=0.1, rule="rms")


def test_krause_update_follows_its_formula():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    q = torch.nn.Parameter(p.detach().clone())
    sgd, plain = KrauseUpdate([p], lr=0.1), torch.optim.SGD([q], lr=0.1)
    for _ in range(3):
        for param, opt in ((p, sgd), (q, plain)):
            param.grad = torch.tensor([0.5, -1.0, 2.0])
            opt.step()
    # no RMS, no decay: SGD. Exact: both add -0.1 g to p, and 0.1 g is exact for
    # these g (powers of 2)
    assert torch.equal(p, q)

    start, rms = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 1.0, 4.0])
    r = torch.nn.Parameter(start.clone())
    update = KrauseUpdate([r], lr=0.1, decay=0.2, rms=[rms], eps=1e-3)
    rate = (0.2 * rms / rms.mean()).clamp(max=1.0)
    expected = start.clone()
    for grad in (torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 1.0, -1.0])):
        r.grad = grad
        update.step()
        expected = expected - 0.1 * grad / (rms + 1e-3) + rate * (start - expected)
        # fp32, the formula in another order: a few 2^-24 roundings of values below 3
        assert torch.allclose(r, expected)
    r.grad = None
    update.step()  # no gradient: only the pull back towards the start
    assert torch.allclose(r, expected + rate * (start - expected))  # as above
    with pytest.raises(ValueError, match="one tensor per parameter"):
        KrauseUpdate([r], lr=0.1, rms=[torch.ones(2)])


def test_the_decay_rates_are_normalized_as_in_krause_et_al_code():
    a, b = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2, 3))
    rms = [torch.tensor([1.0, 2.0, 3.0, 30.0]), torch.full((2, 3), 0.5)]
    update = KrauseUpdate([a, b], lr=0.1, decay=0.01, rms=rms)
    # the mean over the tensors of their mean RMS
    mean = (rms[0].mean() + rms[1].mean()) / 2
    # exact: the same means, and decay * rms / mean in the same order
    assert torch.equal(
        update.state[a]["decay_rate"], (0.01 * rms[0] / mean).clamp(max=1.0)
    )
    assert torch.equal(update.state[b]["decay_rate"], 0.01 * rms[1] / mean)
    huge = KrauseUpdate([a, b], lr=0.1, decay=0.5, rms=rms)
    # clipped at 1 / lambda: decay * r <= 1
    assert huge.state[a]["decay_rate"].max() == 1.0


@pytest.mark.parametrize("rule", ["sgd", "rms"])
def test_lazy_row_decay_equals_decaying_every_row_at_every_step(rule):
    torch.manual_seed(0)
    table = torch.randn(10, 3)
    rms = [torch.rand(10, 3) + 0.1] if rule == "rms" else None
    lazy, dense = torch.nn.Parameter(table.clone()), torch.nn.Parameter(table.clone())
    lazy_update = KrauseUpdate([lazy], lr=0.05, decay=0.1, rms=rms, lazy=[lazy])
    dense_update = KrauseUpdate([dense], lr=0.05, decay=0.1, rms=rms)
    lazy.data += 1.0  # move away from the start so that the decay has something to do
    dense.data += 1.0
    for step, rows in enumerate(([1, 2], [2, 7], [], [7, 7, 9], [0])):
        # before the rows are read
        lazy_update.catch_up(lazy, torch.tensor(rows, dtype=torch.long))
        # fp32: up to 4 lerps against one (1 - rate)^n: a few 2^-24 roundings of
        # values below 4 (rtol's 1e-5 for the large ones, atol for those near 0)
        assert torch.allclose(lazy[rows], dense[rows], atol=1e-6), step
        values = torch.randn(len(rows), 3)
        index = torch.tensor([rows], dtype=torch.long).reshape(1, -1)
        for p in (lazy, dense):
            p.grad = (
                torch.sparse_coo_tensor(index, values, (10, 3), check_invariants=True)
                if rows
                else None
            )
        lazy_update.step()
        dense_update.step()
    untouched = [3, 4, 5, 6, 8]
    # those rows still wait for their decay ...
    assert not torch.allclose(lazy[untouched], dense[untouched])
    lazy_update.catch_up(lazy)
    # ... and get exactly the steps they waited (up to rounding, as above)
    assert torch.allclose(lazy, dense, atol=1e-6)


def test_only_embeddings_read_by_lookups_alone_decay_lazily(tokenizer):
    untied = TransformerLM(
        TransformerLMConfig(
            vocab_size=tokenizer.vocab_size,
            d_model=16,
            num_layers=1,
            num_attn_heads=2,
            d_inner=32,
            max_sequence_length=16,
            tie_weights=False,
        )
    )
    assert lookup_only_embeddings(untied) == [untied.encoder.embedding]
    # the softmax layer reads every row of a tied embedding
    tied = tiny_model(tokenizer)
    assert tied.config.tie_weights and lookup_only_embeddings(tied) == []


def test_gradient_statistics_cover_the_whole_training_split_by_default(
    tokenizer, corpus
):
    model = tiny_model(tokenizer).eval()
    train = LanguageModelingDataset(tokenizer, corpus / "train.txt", 16)
    batches = -(-len(train) // 4)
    whole = gradient_rms(model, train, batch_size=4, show_bar=False)
    assert all(
        torch.equal(x, y)
        for x, y in zip(whole, gradient_rms(model, train, 4, batches, show_bar=False))
    )
    first = gradient_rms(model, train, batch_size=4, max_batches=1, show_bar=False)
    assert not all(torch.equal(x, y) for x, y in zip(whole, first))
    by_hand = [torch.zeros_like(p) for p in model.parameters()]
    for start in range(0, len(train), 4):
        batch = [
            torch.stack(t)
            for t in zip(*(train[i] for i in range(start, min(start + 4, len(train)))))
        ]
        # the mean loss from the model's own forward, not the scoring core
        input_ids, input_mask, labels = batch
        scored = labels != train.pad_id
        loss = (
            -model(input_ids, labels, input_mask=input_mask)
            .target_log_probs[scored]
            .mean()
        )
        for square, grad in zip(
            by_hand,
            torch.autograd.grad(loss, list(model.parameters()), allow_unused=True),
        ):
            square += 0 if grad is None else grad**2
    # fp32: the same gradients, the softmax at every position vs the scored ones: a
    # few 2^-24 roundings (rtol's 1e-5), atol for the RMS that are 0 but for rounding
    assert all(
        torch.allclose(x, (s / batches).sqrt(), atol=1e-7)
        for x, s in zip(whole, by_hand)
    )


def test_the_control_steps_on_other_text_and_gains_less_than_adapting(tokenizer):
    model = tiny_model(tokenizer).eval()
    sequence = random_ids(tokenizer, 48)
    data, other = (
        windows(tokenizer, sequence + sequence),
        windows(tokenizer, random_ids(tokenizer, 200, seed=3)),
    )
    static = score_stream(model, data, show_bar=False).log_probs
    adapted = dynamic_evaluation(model, data, lr=0.3, show_bar=False).log_probs
    control = dynamic_evaluation(model, data, lr=0.3, show_bar=False, update_on=other)
    # it scores the evaluated text, every token once
    assert control.targets.tolist() == sequence + sequence
    # the first window: no step taken yet
    assert torch.equal(control.log_probs[:16], static[:16])
    # the steps on other text change the scores (by far more than rounding)
    assert not torch.allclose(control.log_probs, static)
    gain = lambda lp: (lp - static)[48:].mean().item()  # noqa: E731  (on the second copy)
    # an untrained model gains from any text of the same kind (the control: more
    # training), and more from the text it is reading (adaptation: the second copy
    # repeats the first)
    assert (
        gain(control.log_probs) > 0.1 and gain(adapted) > gain(control.log_probs) + 0.2
    )
    with pytest.raises(ValueError, match="a window to step on per scored window"):
        dynamic_evaluation(
            model, data, lr=0.3, update_on=windows(tokenizer, random_ids(tokenizer, 20))
        )


def test_a_tuned_setting_must_lie_inside_its_grid():
    assert (
        bracketed([1, 2, 4], 2) is True
        and bracketed([1, 2, 4], 4) is False
        and bracketed([1, 2, 4], 1) is False
    )
    # 0 is the bound of the learning rate and the decay
    assert bracketed([0.0, 1e-3], 0.0) is True
    assert bracketed([3e-4], 3e-4) is None  # a single value: nothing was tuned
    # float64 products and quotients: a rounding or two, under approx's 1e-6
    assert widened([1e-4, 2e-4], 2e-4) == pytest.approx(4e-4) and widened(
        [1e-4, 2e-4], 1e-4
    ) == pytest.approx(5e-5)
    assert (
        widened([0.0, 1e-3], 1e-3) == pytest.approx(3e-3)
        and widened([0.0, 0.5], 0.5, upper=1.0) is None
    )


def test_sparse_embedding_gradients_give_the_same_adaptation(tokenizer, corpus):
    torch.manual_seed(0)
    model = TransformerLM(
        TransformerLMConfig(
            vocab_size=tokenizer.vocab_size,
            d_model=16,
            num_layers=1,
            num_attn_heads=2,
            d_inner=32,
            max_sequence_length=16,
            dropout=0.0,
            # untied: the embedding's own gradient
            tie_weights=False,
        )
    ).eval()
    valid = LanguageModelingDataset(tokenizer, corpus / "valid.txt", 16, batch_step=4)
    train = LanguageModelingDataset(tokenizer, corpus / "train.txt", 16)
    rms = gradient_rms(model, train, batch_size=4, max_batches=3, show_bar=False)
    assert len(rms) == len(list(model.parameters())) and all(
        (r >= 0).all() for r in rms
    )
    adapted = dynamic_evaluation(
        model, valid, lr=1e-4, rule="rms", decay=0.05, rms=rms, show_bar=False
    )
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    # dense gradients, by hand
    update = KrauseUpdate(model.parameters(), lr=1e-4, decay=0.05, rms=rms)
    reference = []
    for idx in range(len(valid)):
        scores = score_windows(
            model, *(t.unsqueeze(0) for t in valid[idx]), valid.pad_id
        )
        loss = scores.mean_loss()
        reference.append(scores.log_probs.detach().double())
        update.zero_grad()
        loss.backward()
        assert not model.encoder.embedding.weight.grad.is_sparse
        update.step()
    model.load_state_dict(trained)
    # fp32: sparse row updates and lazy decay against dense ones, ~1e-7 relative per
    # step, carried through a step of lr 1e-4 per window (log-probabilities below ~6)
    assert torch.allclose(adapted.log_probs, torch.cat(reference), atol=1e-5)
    # adapting moves them by ~0.3
    assert not torch.allclose(
        adapted.log_probs,
        score_stream(model, valid, show_bar=False).log_probs,
        atol=1e-3,
    )


@pytest.mark.parametrize("precision", ["amp-bf16", "amp-fp16"])
def test_adaptation_runs_in_the_mixed_precision_modes(tokenizer, corpus, precision):
    model = tiny_model(tokenizer).eval()
    data = LanguageModelingDataset(
        tokenizer, torch.tensor(random_ids(tokenizer, 40)), 16, batch_step=4
    )
    static = score_stream(model, data, precision="fp32", show_bar=False)
    mixed = score_stream(model, data, precision=precision, show_bar=False)
    # bf16 keeps 8 significant bits (fp16 11): each matmul operand up to 2^-8 off, so
    # each log-probability of this untrained model (logits of a few units) by a few
    # 1e-2 at worst, the mean by far less (3e-4 here on AMX, AVX-512 and AVX2)
    assert abs(mixed.nll - static.nll) < 0.05 and mixed.hidden.dtype == torch.float32
    adapted = dynamic_evaluation(
        model, data, lr=0.1, precision=precision, show_bar=False
    )
    assert adapted.num_tokens == 40 and math.isfinite(adapted.nll)


# ----------------------------------------------------------------------- both, for real


def test_both_lower_the_validation_perplexity_of_a_briefly_trained_model(bursty):
    model, train, valid = bursty
    stream = score_stream(model, valid, show_bar=False)
    cache = tune_neural_cache(stream, cache_size=100, show_bar=False)
    assert cache.perplexity < 0.9 * stream.perplexity, (cache, stream.perplexity)
    assert min(min(row) for row in cache.grid) == cache.perplexity
    # fp32 cache scores of six thetas at once against one: per element the same
    # arithmetic, at most a rounding apart
    assert cache.perplexity == pytest.approx(
        neural_cache_scores(stream, 100, cache.theta, cache.lam).perplexity
    )
    sgd = tune_dynamic_evaluation(model, valid, lrs=[0.01, 0.05], show_bar=False)
    assert sgd.perplexity < 0.95 * stream.perplexity, (sgd, stream.perplexity)
    rms = gradient_rms(model, train, batch_size=8, max_batches=10, show_bar=False)
    krause = tune_dynamic_evaluation(
        model,
        valid,
        lrs=[1e-3, 1e-2],
        decays=[0.0, 0.02],
        rule="rms",
        rms=rms,
        show_bar=False,
    )
    assert krause.perplexity < 0.95 * stream.perplexity and len(krause.grid) >= 4
    # the grid grew until its optimum lay inside it
    assert krause.bracketed == {"lr": True, "decay": True}


# --------------------------------------------------------------------- the command line


def test_the_command_line_tunes_on_valid_and_keeps_adapted_figures_apart(
    corpus, tmp_path, capsys
):
    work = tmp_path / "run"
    assert (
        train_cli.main(
            TINY
            + ["--data_dir", str(corpus), "--work_dir", str(work), "--max_steps", "6"]
        )
        == 0
    )
    ckpt = str(list_checkpoints(work)[-1])
    out = tmp_path / "adapted.json"
    capsys.readouterr()
    assert (
        evaluate_cli.main(
            [
                ckpt,
                "--split",
                "test",
                "--data_dir",
                str(corpus),
                "--cache",
                "--cache_size",
                "20",
                "--dynamic_eval",
                "--dynamic_lr",
                "1e-4",
                "1e-3",
                "--dynamic_rule",
                "rms",
                "--dynamic_decay",
                "0",
                "0.02",
                "--dynamic_control",
                "--calibrate_temperature",
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "test perplexity" in text and "adapted at test time" in text
    result = json.loads(out.read_text())
    static_test = json.loads((work / "results.json").read_text())["test_ppl"]
    # the run's own score: the same weights, windows, batch size and device (on a GPU,
    # TF32 as the run's Trainer left it), summed in float64 in another grouping;
    # 1e-6 lets a GPU kernel reorder an fp32 sum
    assert math.isclose(
        result["static"]["test"]["perplexity"], static_test, rel_tol=1e-6
    )
    adapted = result["adapted at test time"]
    assert set(adapted) == {"neural cache", "dynamic evaluation"}
    for method in adapted.values():
        assert method["tuned on"] == "valid" and set(method["perplexity"]) == {
            "valid",
            "test",
        }
        assert method["perplexity"]["valid"] == min(
            p["perplexity"] for p in method["grid"]
        )
    dynamic = adapted["dynamic evaluation"]
    assert len(dynamic["grid"]) >= 4 and set(dynamic["bracketed"]) == {"lr", "decay"}
    tried = {p["lr"] for p in dynamic["grid"]}
    assert (dynamic["bracketed"]["lr"] is True) == (
        min(tried) < dynamic["hyperparameters"]["lr"] < max(tried)
    )
    assert dynamic["hyperparameters"]["rule"] == "rms"
    assert (
        "(the whole training split)"
        in dynamic["hyperparameters"]["gradient_statistics"]
    )
    assert (
        set(dynamic["control"]["perplexity"]) == {"test"}
        and "training" in dynamic["control"]["method"]
    )
    assert set(dynamic["seconds per 1,000 tokens"]) == {"test"}
    assert set(adapted["neural cache"]["hyperparameters"]) == {
        "cache_size",
        "theta",
        "lambda",
    }
    assert result["temperature calibration"]["fitted on"] == "valid"


def test_the_command_line_refuses_bad_adaptation_flags(corpus, tmp_path, capsys):
    for argv, message in (
        (["--cache_lambda", "1.5", "--cache"], "cache lambda must lie in [0, 1]"),
        (["--dynamic_lr", "0.1"], "--dynamic_lr needs --dynamic_eval"),
        (["--dynamic_control"], "--dynamic_control needs --dynamic_eval"),
        (["--cache", "--split", "valid", "--max_tokens", "0"], "max_tokens"),
    ):
        with pytest.raises(SystemExit):
            evaluate_cli.main([str(tmp_path / "none.pt")] + argv)
        assert message in capsys.readouterr().err
