"""The short training loop and the perplexity evaluation used by Chapters 3 to 5."""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import nn

from lmtut import (
    LanguageModelingDataset,
    TransformerLM,
    TransformerLMConfig,
    WordTokenizer,
    build_vocab,
    evaluate_perplexity,
    quick_train,
)
from lmtut.tokenizer import write_vocab


def tokenizer(tmp_path) -> WordTokenizer:
    return WordTokenizer(write_vocab(build_vocab(Counter("a b c d".split())), tmp_path / "v.txt"))


class NextIsPlusOne(nn.Module):
    """Gives the token after ``x`` probability 1/2 to be ``x + 1``; the other n - 1 classes share the rest.

    As every lmtut model, an encoder (here: the token id is the hidden state) and a classifier that scores targets.
    """

    class Encoder(nn.Module):
        def forward(self, input_ids, input_mask=None):
            return input_ids[..., None]

    class Classifier(nn.Module):
        def __init__(self, n: int):
            super().__init__()
            self.n = n

        def target_log_probs(self, hidden, targets):
            return torch.where(targets == hidden[..., 0] + 1, math.log(0.5), math.log(0.5 / (self.n - 1)))

    def __init__(self, n: int):
        super().__init__()
        self.encoder, self.classifier = self.Encoder(), self.Classifier(n)

    def log_prob(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        return self.classifier.target_log_probs(prev[..., None], nxt)


def test_evaluate_scores_each_token_once_with_the_plain_loss(tmp_path):
    tok = tokenizer(tmp_path)
    stream = torch.randint(4, 8, (37,), generator=torch.Generator().manual_seed(0))
    ds = LanguageModelingDataset(tok, stream, max_sequence_length=8, batch_step=3)
    model = NextIsPlusOne(10)
    expected = -model.log_prob(ds.ids[:-1], ds.ids[1:]).double().mean().item()  # every target once
    nll, ppl = evaluate_perplexity(model, ds, batch_size=4)
    assert math.isclose(nll, expected, rel_tol=1e-6) and math.isclose(ppl, math.exp(expected), rel_tol=1e-6)


def test_quick_train_learns_a_repeating_pattern_and_is_seeded(tmp_path):
    tok = tokenizer(tmp_path)
    stream = torch.tensor([4, 5, 6, 7] * 100)
    train = LanguageModelingDataset(tok, stream, max_sequence_length=16)

    def run():
        torch.manual_seed(0)
        model = TransformerLM(TransformerLMConfig(vocab_size=tok.vocab_size, d_model=32, num_layers=1,
                                                  num_attn_heads=2, d_inner=64, max_sequence_length=16, dropout=0.0))
        return quick_train(model, train, train, steps=40, batch_size=8, lr=1e-2, eval_every=20)

    history = run()
    assert history["eval_step"] == [0, 20, 40]
    assert history["valid_ppl"][-1] < 1.5 < history["valid_ppl"][0]  # the pattern is learned
    assert history["train_loss"] == run()["train_loss"]  # the same seed gives the same run
