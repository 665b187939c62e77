"""Chapter 8: word dropout, locked dropout, output dropout, weight averaging, the
training-slice perplexity and the small corpus."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY, Recorder, interrupted_run
from torch import nn

import lmtut.train as train_cli
from lmtut import (
    LanguageModelingDataset,
    TrainConfig,
    Trainer,
    TransformerLM,
    TransformerLMConfig,
    WordTokenizer,
    evaluate_perplexity,
    load_for_inference,
    make_config,
    prepare_corpus,
)
from lmtut.checkpoint import list_checkpoints, load_checkpoint
from lmtut.corpus import small_corpus
from lmtut.model import LockedDropout, WordDropout
from lmtut.optim import WeightAverage

V, D, T = 50, 32, 12
ALL_ON = dict(
    dropout=0.5,
    ffn_dropout=0.5,
    word_dropout=0.5,
    output_dropout=0.5,
    locked_dropout=True,
)


def model(**kw) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(
        TransformerLMConfig(
            **(
                dict(
                    vocab_size=V,
                    d_model=D,
                    num_layers=2,
                    num_attn_heads=4,
                    d_inner=64,
                    max_sequence_length=T,
                    dropout=0.0,
                )
                | kw
            )
        )
    )


# ------------------------------------------------------------------------- the dropouts


def test_every_option_is_the_identity_in_eval_mode():
    x = torch.randint(0, V, (3, T))
    regularized, plain = model(**ALL_ON).eval(), model().eval()
    # the same weights, no dropout in eval mode
    assert torch.equal(regularized(x).log_probs, plain(x).log_probs)
    # while training they do act (by O(1), far beyond rounding)
    assert not torch.allclose(regularized.train()(x).log_probs, plain(x).log_probs)
    h = torch.randn(3, T, D)
    assert WordDropout(V, 0.5).eval()(h, x) is h and LockedDropout(0.5).eval()(h) is h


@pytest.mark.parametrize("locked", [False, True])
def test_options_left_off_draw_no_random_numbers(locked):
    # every dropout probability 0
    lm, x = model(locked_dropout=locked).train(), torch.randint(0, V, (3, T))
    torch.manual_seed(1)
    lm(x)
    after_forward = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after_forward)


def test_word_dropout_drops_the_same_word_type_everywhere_in_a_batch():
    torch.manual_seed(0)
    # 20 word types, each at many positions of the batch
    ids = torch.randint(0, 20, (4, 30))
    embedded = torch.randn(4, 30, 8)
    # 0 where dropped, 1 / 0.6 where kept
    scale = WordDropout(V, 0.4).train()(embedded, ids) / embedded
    # a whole vector is dropped or kept (fp32: (x * s) / x is s within two roundings,
    # here and below)
    assert torch.allclose(scale, scale[..., :1].expand_as(scale))
    scale = scale[..., 0]
    for word in ids.unique():
        values = scale[ids == word]
        # one decision per word type
        assert torch.allclose(values, values[0].expand_as(values)), word
    # kept vectors rescaled by 1 / (1 - p)
    dropped, kept = scale == 0, torch.isclose(scale, torch.tensor(1 / 0.6))
    assert (dropped | kept).all() and dropped.any() and kept.any()


def test_word_dropout_in_the_model_zeroes_a_dropped_words_embedding_gradient():
    # untied: only the input lookup reaches the embedding
    lm = model(word_dropout=0.5, tie_weights=False).train()
    seen = {}
    lm.encoder.word_drop.register_forward_hook(
        lambda m, args, out: seen.update(out=out)
    )
    ids = torch.randint(0, 10, (4, T))
    F.nll_loss(lm(ids).log_probs.flatten(0, 1), ids.flatten()).backward()
    # (B, T): the positions whose word was dropped
    dropped = seen["out"].abs().sum(-1) == 0
    grad = lm.encoder.embedding.weight.grad.abs().sum(-1)
    for word in ids.unique():
        assert dropped[ids == word].all() == (grad[word] == 0), word
    assert dropped.any() and not dropped.all()


def test_locked_masks_are_constant_across_time():
    torch.manual_seed(0)
    x = torch.ones(5, T, 16)
    y = LockedDropout(0.5).train()(x)
    # the same features dropped at every position
    assert torch.equal(y, y[:, :1].expand_as(y))
    assert not torch.equal(y[0], y[1])  # a mask per sequence
    # kept features rescaled by 1 / (1 - p)
    assert set(y.unique().tolist()) == {0.0, 2.0}
    plain = nn.Dropout(0.5).train()(x)
    # nn.Dropout draws a mask per position
    assert not torch.equal(plain, plain[:, :1].expand_as(plain))


def test_locked_dropout_reaches_the_embedding_residual_and_output_dropouts():
    locked, plain = model(**ALL_ON), model(**(ALL_ON | dict(locked_dropout=False)))
    encoder = locked.encoder
    for module in (
        encoder.emb_drop,
        encoder.output_drop,
        *(block.drop for block in encoder.layers),
    ):
        assert isinstance(module, LockedDropout) and module.p == 0.5
    assert all(
        type(m) is nn.Dropout
        for m in (plain.encoder.emb_drop, plain.encoder.output_drop)
    )
    # not locked: per position
    assert encoder.word_drop.p == 0.5 and type(encoder.layers[0].ffn[2]) is nn.Dropout
    seen = {}
    encoder.output_drop.register_forward_hook(
        lambda m, args, out: seen.update(ratio=out / args[0])
    )
    locked.train()(torch.randint(0, V, (2, T)))
    # fp32: (x * m) / x is m within two roundings (exactly, for m = 0 or 2)
    assert torch.allclose(seen["ratio"], seen["ratio"][:, :1].expand_as(seen["ratio"]))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(word_dropout=1.0), "word_dropout must lie in"),
        (dict(output_dropout=-0.1), "output_dropout must lie in"),
    ],
)
def test_bad_dropout_configuration(kw, message):
    with pytest.raises(ValueError, match=message):
        TransformerLMConfig(vocab_size=V, **kw)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(ema_decay=1.0), "ema_decay must lie in"),
        (dict(ema_decay=-0.5), "ema_decay must lie in"),
        (dict(train_eval_tokens=-1), "train_eval_tokens must be 0"),
    ],
)
def test_bad_training_configuration(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kw)


# ---------------------------------------------------------------------------- averaging


def by_hand(history: list[list[torch.Tensor]], decay: float) -> list[torch.Tensor]:
    """sum_k d^(n-k) w_k / sum_k d^(n-k) over the weights after steps k = 1 .. n."""
    n = len(history)
    weights = [decay ** (n - k) for k in range(1, n + 1)]
    return [
        sum(w * h[i] for w, h in zip(weights, history)) / sum(weights)
        for i in range(len(history[0]))
    ]


def test_weight_average_equals_the_hand_computed_average():
    layer = nn.Linear(3, 2)
    average = WeightAverage(layer, decay=0.7)
    history = []
    for value in (1.0, -2.0, 5.0, 0.5):
        with torch.no_grad():
            for p in layer.parameters():
                p.fill_(value)
        average.update(layer)
        history.append([p.detach().clone() for p in layer.parameters()])
    for got, want in zip(average.model.parameters(), by_hand(history, 0.7)):
        # fp32: four lerps against the closed form, a few 2^-24 of values below 5
        assert torch.allclose(got, want, atol=1e-6)
    assert average.count == 4 and not any(
        p.requires_grad for p in average.model.parameters()
    )
    # the range is the config's, not the average's
    with pytest.raises(ValueError, match="ema_decay must lie in"):
        TrainConfig(ema_decay=1.0)


class WeightRecorder(Recorder):
    """The losses, and the model's weights after every step (a callback never sees the
    trainer: it is handed the model)."""

    def __init__(self, model, stop_at=None):
        super().__init__(stop_at)
        self.model, self.weights = model, []

    def on_step_end(self, record):
        self.weights.append([p.detach().clone() for p in self.model.parameters()])
        super().on_step_end(record)


def test_the_trainer_averages_its_weights_and_evaluates_the_average(tokenizer, corpus):
    ds = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    valid = LanguageModelingDataset(
        tokenizer, corpus / "valid.txt", max_sequence_length=16, batch_step=4
    )
    lm = model(vocab_size=tokenizer.vocab_size, max_sequence_length=16)
    rec = WeightRecorder(lm)
    trainer = Trainer(
        lm,
        ds,
        TrainConfig(batch_size=4, max_steps=5, lr=1e-2, ema_decay=0.6, eval_every=100),
        {"valid": valid},
        device="cpu",
        callbacks=[rec],
    )
    result = trainer.train()
    assert trainer.eval_model is trainer.average.model and trainer.average.count == 5
    for got, want in zip(trainer.average.model.parameters(), by_hand(rec.weights, 0.6)):
        # fp32: five lerps against the closed form, a few 2^-24 of weights below ~1
        assert torch.allclose(got, want, atol=1e-6)
    # the copy keeps the embedding and the softmax layer one tensor
    assert trainer.average.model.tied
    averaged, last = (
        evaluate_perplexity(trainer.average.model, valid)[1],
        evaluate_perplexity(lm, valid)[1],
    )
    # exact: the trainer's own evaluation, the same call on the same weights
    assert trainer.last_eval["valid"]["valid_ppl"] == averaged
    assert averaged != pytest.approx(last)  # several per cent apart
    assert result.evaluations == trainer.last_eval and result.steps == 5


def test_averaged_weights_survive_a_resume(tokenizer, corpus, tmp_path):
    ds = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    cfg = TrainConfig(
        batch_size=4, max_steps=10, lr=1e-2, warmup_ratio=0.2, ema_decay=0.8
    )

    def run(work_dir, stop_at=None, resume=False):
        lm = model(vocab_size=tokenizer.vocab_size, max_sequence_length=16, **ALL_ON)
        return interrupted_run(lm, ds, cfg, work_dir, stop_at, resume)

    whole, uninterrupted = run(tmp_path / "a")
    first, _ = run(tmp_path / "b", stop_at=6)
    assert "ema" in load_checkpoint(list_checkpoints(tmp_path / "b")[-1])
    second, resumed = run(tmp_path / "b", resume=True)
    # exact: the resumed steps are the same arithmetic on the same state
    assert {**first, **second} == whole
    assert resumed.average.count == 10
    for a, b in zip(
        resumed.average.model.parameters(), uninterrupted.average.model.parameters()
    ):
        assert torch.equal(a, b)
    plain = Trainer(
        model(vocab_size=tokenizer.vocab_size, max_sequence_length=16),
        ds,
        TrainConfig(batch_size=4, max_steps=2),
        device="cpu",
        work_dir=tmp_path / "c",
    )
    plain.train()
    averaging = Trainer(
        model(vocab_size=tokenizer.vocab_size, max_sequence_length=16),
        ds,
        cfg,
        device="cpu",
        work_dir=tmp_path / "c",
    )
    with pytest.raises(Exception, match="has no averaged weights"):
        averaging.checkpointer.restore(plain.checkpointer.snapshot())


# ------------------------------------------------------------------------------ the run


def test_a_run_logs_train_ppl_and_keeps_its_averaged_weights(corpus, tmp_path, capsys):
    work = tmp_path / "run"
    args = TINY + [
        "--data_dir",
        str(corpus),
        "--work_dir",
        str(work),
        "--max_steps",
        "6",
        "--ema_decay",
        "0.9",
        "--train_eval_tokens",
        "200",
        "--word_dropout",
        "0.1",
        "--output_dropout",
        "0.2",
        "--locked_dropout",
    ]
    assert train_cli.main(args) == 0
    capsys.readouterr()
    records = [
        json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()
    ]
    valid_steps = [r["step"] for r in records if "valid_ppl" in r]
    assert (
        valid_steps == [4, 6]
        and [r["step"] for r in records if "train_ppl" in r] == valid_steps
    )
    results = json.loads((work / "results.json").read_text())
    assert (
        results["train_ppl"]
        == [r for r in records if "train_ppl" in r][-1]["train_ppl"]
    )
    checkpoint = list_checkpoints(work)[-1]
    state = load_checkpoint(checkpoint)
    lm, tokenizer, config = load_for_inference(checkpoint, device="cpu")
    assert config.train.ema_decay == 0.9 and config.model.locked_dropout
    # the saved model to use is the averaged one
    for name, tensor in lm.state_dict().items():
        assert torch.equal(tensor, state["ema"]["model"][name]), name
    assert any(
        not torch.equal(state["ema"]["model"][k], v) for k, v in state["model"].items()
    )
    test = LanguageModelingDataset(
        tokenizer, corpus / "test.txt", 16, config.data.predict_last_k
    )
    # On the run's device, as the run scored it: the same weights, windows, batches
    # and kernels (on a GPU, TF32 as the run's Trainer left it), so equal on the CPU;
    # 1e-6 lets a GPU reorder an fp32 sum. (The CPU's fp32 against a GPU's TF32, which
    # reads 10 of the 23 mantissa bits, is ~1e-4 apart: more than the 1e-5 once here.)
    assert evaluate_perplexity(lm.to(results["device"]), test)[1] == pytest.approx(
        results["test_ppl"], rel=1e-6
    )


def test_the_gpu_recipe_builds_and_regularizes():
    config = make_config("gpu-reg")
    assert (
        config.model.locked_dropout
        and config.model.word_dropout > 0
        and config.model.output_dropout > 0
    )
    assert (
        config.train.ema_decay > 0
        and config.train.train_eval_tokens > 0
        and config.train.label_smoothing == 0
    )
    lm = TransformerLM(config.model.with_vocab(33_278))
    assert lm.tied and lm.config.num_layers > make_config("gpu-base").model.num_layers


def test_a_small_corpus_keeps_whole_first_articles_and_has_its_own_vocabulary(tmp_path):
    source = tmp_path / "big"
    source.mkdir()
    articles = [
        f" = Title {name} = \n\n {name} words here {name}{name} . \n\n"
        for name in ("alpha", "beta", "gamma")
    ]
    (source / "train.txt").write_text("\n" + "".join(articles))
    for split in ("valid", "test"):
        (source / f"{split}.txt").write_text(" gamma alpha words . \n")
    small = prepare_corpus(small_corpus(source, tmp_path / "small", fraction=0.3))
    # the first whole article
    assert (tmp_path / "small" / "train.txt").read_text() == "\n" + articles[0]
    assert (tmp_path / "small" / "valid.txt").read_text() == (
        source / "valid.txt"
    ).read_text()
    tokenizer = WordTokenizer(small.vocab_file)
    assert tokenizer.decode(tokenizer.encode_file(small.valid_file)) == (
        "<unk> alpha words . <eos>"
    )
    assert (
        small_corpus(source, tmp_path / "all", 1.0).joinpath("train.txt").read_text()
        == (source / "train.txt").read_text()
    )
    with pytest.raises(ValueError, match="fraction must lie in"):
        small_corpus(source, tmp_path / "none", 0.0)
