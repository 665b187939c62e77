"""The short training loop and the perplexity evaluation used by Chapters 3 to 5."""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import nn

from lmtut import (
    LanguageModelingDataset,
    LMOutput,
    TransformerLM,
    TransformerLMConfig,
    WordTokenizer,
    build_vocab,
    evaluate_perplexity,
    quick_train,
)
from lmtut.tokenizer import write_vocab


def tokenizer(tmp_path) -> WordTokenizer:
    return WordTokenizer(
        write_vocab(build_vocab(Counter("a b c d".split())), tmp_path / "v.txt")
    )


class NextIsPlusOne(nn.Module):
    """Gives the token after ``x`` probability 1/2 to be ``x + 1``; the other n - 1
    classes share the rest.

    As every lmtut model: one ``forward`` that returns an ``LMOutput`` (here the token
    id is the hidden state, and the targets' log-probabilities are asked for at the
    ``at`` positions), and its parameters (none) in groups.
    """

    may_skip_parameters = False

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(
        self,
        input_ids,
        targets=None,
        kv_cache=None,
        *,
        input_mask=None,
        at=None,
        distribution=False,
    ):
        hidden = input_ids[..., None]
        if at is not None:
            hidden, targets = hidden[at], targets[at]
        return LMOutput(hidden, target_log_probs=self.log_prob(hidden[..., 0], targets))

    def parameter_groups(self):
        return {"decayed": [], "not_decayed": [], "block_matrices": []}

    def log_prob(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        return torch.where(nxt == prev + 1, math.log(0.5), math.log(0.5 / (self.n - 1)))


def test_evaluate_scores_each_token_once_with_the_plain_loss(tmp_path):
    tok = tokenizer(tmp_path)
    stream = torch.randint(4, 8, (37,), generator=torch.Generator().manual_seed(0))
    ds = LanguageModelingDataset(tok, stream, max_sequence_length=8, batch_step=3)
    model = NextIsPlusOne(10)
    # every target once
    expected = -model.log_prob(ds.ids[:-1], ds.ids[1:]).double().mean().item()
    nll, ppl = evaluate_perplexity(model, ds, batch_size=4)
    # the same float32 log-probabilities summed in float64, by batch or all at once
    assert math.isclose(nll, expected, rel_tol=1e-12) and math.isclose(
        ppl, math.exp(expected), rel_tol=1e-12
    )


def test_quick_train_learns_a_repeating_pattern_and_is_seeded(tmp_path):
    tok = tokenizer(tmp_path)
    stream = torch.tensor([4, 5, 6, 7] * 100)
    train = LanguageModelingDataset(tok, stream, max_sequence_length=16)

    def run():
        torch.manual_seed(0)
        model = TransformerLM(
            TransformerLMConfig(
                vocab_size=tok.vocab_size,
                d_model=32,
                num_layers=1,
                num_attn_heads=2,
                d_inner=64,
                max_sequence_length=16,
                dropout=0.0,
            )
        )
        return quick_train(
            model, train, train, steps=40, batch_size=8, lr=1e-2, eval_every=20
        )

    history = run()
    assert history["eval_step"] == [0, 20, 40]
    # the pattern is learned
    assert history["valid_ppl"][-1] < 1.5 < history["valid_ppl"][0]
    # the same seed gives the same run
    assert history["train_loss"] == run()["train_loss"]
