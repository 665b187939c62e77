"""Chapter 6: sampling text from a trained model (temperature and top-k), and its command line.

``python -m lmtut.generate CHECKPOINT --prompt "The game" [--max_tokens 40] [--temperature 0.8] [--top_k 40]``
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

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
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = [tokenizer.eos_id] + tokenizer.encode(prompt)  # a line starts after an <eos>, as in training
    window = model.config.max_sequence_length
    banned = [tokenizer.unk_id, tokenizer.pad_id, tokenizer.bos_id]
    out: list[int] = []
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
    model.train(was_training)
    return tokenizer.decode(out)


def main(argv: list[str] | None = None) -> int:
    from lmtut.checkpoint import CheckpointError
    from lmtut.train import load_for_inference

    p = argparse.ArgumentParser(prog="python -m lmtut.generate", description="Sample text from a checkpoint.")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max_tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=40)
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        model, tokenizer, _ = load_for_inference(args.checkpoint)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(args.num_samples):
        text = generate_text(model, tokenizer, args.prompt, args.max_tokens, args.temperature, args.top_k, g)
        print(f"{args.prompt} {text}".replace(" <eos> ", "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
