"""Chapter 6: sampling text from a trained model, one word at a time (temperature and top-k).

``python -m lmtut.generate`` (``lmtut/generate.py``) is its command line.
"""

from __future__ import annotations

import torch
from torch import nn

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
) -> str:
    """Continue ``prompt`` by sampling one token at a time from the model's distribution.

    ``temperature`` < 1 sharpens the distribution (0 means greedy); ``top_k`` keeps only the k most likely words.
    ``<unk>``, ``<pad>`` and ``<bos>`` are never sampled. The context is cut to the model's last
    ``max_sequence_length`` tokens.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    device = next(model.parameters()).device
    ids = [tokenizer.eos_id] + tokenizer.encode(prompt)  # a line starts after an <eos>, as in training
    window = model.config.max_sequence_length
    banned = [tokenizer.unk_id, tokenizer.pad_id, tokenizer.bos_id]
    out: list[int] = []
    with evaluating(model):
        for _ in range(max_tokens):
            context = torch.tensor([ids[-window:]], device=device)
            logits = model(context)[0, -1, : tokenizer.vocab_size].float()  # the padded rows are never words
            logits[banned] = float("-inf")
            if temperature == 0:
                nxt = int(logits.argmax())
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                    logits[logits < kth] = float("-inf")
                nxt = int(torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator))
            ids.append(nxt)
            out.append(nxt)
            if stop_at_eos and nxt == tokenizer.eos_id:
                break
    return tokenizer.decode(out)
