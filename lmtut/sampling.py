"""Chapter 6: sampling text from a trained model, one word at a time (temperature and
top-k).

``python -m lmtut.generate`` (``lmtut/generate.py``) is its command line.
"""

from __future__ import annotations

import torch
from torch import nn

from lmtut.runtime import model_device
from lmtut.scoring import evaluating
from lmtut.tokenizer import WordTokenizer


@torch.no_grad()
def generate_text(
    model: nn.Module,
    tokenizer: WordTokenizer,
    prompt: str,
    max_tokens: int = 40,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    stop_at_eos: bool = False,
    kv_cache: bool = True,
) -> str:
    """Continue ``prompt`` by sampling one token at a time from the model's
    distribution.

    ``temperature`` < 1 sharpens the distribution (0 means greedy); ``top_k`` keeps only
    the k most likely words. ``<unk>``, ``<pad>`` and ``<bos>`` are never sampled. Each
    token is predicted from the last ``max_sequence_length`` tokens. ``kv_cache``: keep
    every layer's keys and values and feed only the new token
    (:class:`lmtut.model.KVCache`); once the text outgrows the window, the window slides
    and is read anew, as without the cache. The words are the same either way.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    # a line starts after an <eos>, as in training
    ids = [tokenizer.eos_id] + tokenizer.encode(prompt)
    out: list[int] = []
    with evaluating(model):
        states = ContextStates(model, kv_cache)
        for _ in range(max_tokens):
            # the padded rows are never words
            logits = states.next_log_probs(ids)[: tokenizer.vocab_size]
            nxt = sample(
                logits,
                [tokenizer.unk_id, tokenizer.pad_id, tokenizer.bos_id],
                temperature,
                top_k,
                generator,
            )
            ids.append(nxt)
            out.append(nxt)
            if stop_at_eos and nxt == tokenizer.eos_id:
                break
    return tokenizer.decode(out)


class ContextStates:
    """The model's distribution after the last token of the context: the last window
    re-read at every token, or (with the KV cache) the new token alone while the text
    fits in the window."""

    def __init__(self, model: nn.Module, kv_cache: bool = True):
        self.model, self.use_cache = model, kv_cache
        self.window, self.device = model.config.max_sequence_length, model_device(model)
        self.cache, self.cached = None, 0  # how many tokens of ids the cache holds

    def next_log_probs(self, ids: list[int]) -> torch.Tensor:
        """(V,) float32: every word's log-probability after ``ids``, from its last
        ``max_sequence_length`` tokens."""
        if not self.use_cache:
            new = ids[-self.window :]
        else:
            # a new window: read it whole into a fresh cache
            if len(ids) > self.window or self.cache is None:
                self.cache, self.cached = (
                    self.model.new_kv_cache(),
                    max(len(ids) - self.window, 0),
                )
            new = ids[self.cached + self.cache[0].length :]
        last = torch.zeros(1, len(new), dtype=torch.bool, device=self.device)
        last[0, -1] = True  # the softmax runs at the last position only
        out = self.model(
            torch.tensor([new], device=self.device), kv_cache=self.cache, at=last
        )
        return out.log_probs[-1].float()


def sample(
    logits: torch.Tensor,
    banned: list[int],
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
) -> int:
    """One token id from ``logits`` (V,): greedy at temperature 0, else from the
    tempered, top-k cut softmax."""
    logits[banned] = float("-inf")
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits[logits < kth] = float("-inf")
    return int(torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator))
