"""Words per second of ``generate_text`` with and without the KV cache, on a checkpoint
(chapter 7's benchmark).

    python benchmarks/generation.py runs/cpu-demo/checkpoints/ckpt-step0002000.pt \
        --json results/benchmarks/generation-cpu.json
    python benchmarks/generation.py --quick  # a tiny random model: a smoke test (CI)

The two ways run one after the other, alternately (``--rounds`` times each), greedily
from the same prompts, and must write the same words (checked): only the time differs.
Printed: each round's words per second, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from common import device_name, write_json

from lmtut import TransformerLM, TransformerLMConfig, WordTokenizer, generate_text
from lmtut.experiment import load_for_inference
from lmtut.runtime import provenance

PROMPTS = ("The game", "In 1990 , the", "The river")


def model_and_tokenizer(args):
    if args.quick:
        torch.manual_seed(0)
        tokenizer = WordTokenizer(
            tokens=["<pad>", "<unk>", "<eos>", "<bos>"] + [f"w{i}" for i in range(996)]
        )
        model = TransformerLM(
            TransformerLMConfig(
                vocab_size=tokenizer.vocab_size,
                d_model=32,
                num_layers=2,
                num_attn_heads=2,
                d_inner=64,
                max_sequence_length=32,
            )
        )
        return model.eval(), tokenizer, "a tiny random model"
    model, tokenizer, _ = load_for_inference(
        args.checkpoint, device=torch.device("cpu") if args.cpu else None
    )
    return model, tokenizer, args.checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--words",
        type=int,
        default=None,
        help="words per prompt (default: the window's length)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cpu", action="store_true", help="run on the CPU even where a GPU is"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not args.quick and not args.checkpoint:
        parser.error("give a checkpoint, or --quick")
    model, tokenizer, source = model_and_tokenizer(args)
    words = args.words or model.config.max_sequence_length
    device = next(model.parameters()).device
    origin = provenance(device)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    texts: dict[bool, list[str]] = {}
    # first calls (allocator, threads) not timed
    generate_text(model, tokenizer, PROMPTS[0], 4, temperature=0)
    for _ in range(args.rounds):
        for cache in (True, False):
            start = time.perf_counter()
            texts[cache] = [
                generate_text(model, tokenizer, p, words, temperature=0, kv_cache=cache)
                for p in PROMPTS
            ]
            seconds[cache].append(time.perf_counter() - start)
    if texts[True] != texts[False]:
        print("error: the cache changed the words", file=sys.stderr)
        return 1
    total = words * len(PROMPTS)
    rates = {cache: [total / s for s in seconds[cache]] for cache in seconds}
    median = {cache: statistics.median(r) for cache, r in rates.items()}
    for cache in (True, False):
        name = "with the KV cache" if cache else "re-reading the window"
        shown = ", ".join(f"{r:,.0f}" for r in rates[cache])
        print(f"{name:22s}: {shown} words/s (median {median[cache]:,.0f})")
    print(
        f"ratio {median[True] / median[False]:.2f}x; {len(PROMPTS)} prompts of "
        f"{words} words each, window "
        f"{model.config.max_sequence_length}, greedy; the same words both ways "
        f"({device_name(device)})"
    )
    if args.json:
        write_json(
            args.json,
            {
                "command": "python benchmarks/generation.py " + " ".join(sys.argv[1:]),
                "source": source,
                "words_per_prompt": words,
                "prompts": list(PROMPTS),
                "rounds": args.rounds,
                "window": model.config.max_sequence_length,
                "words_per_s": {"kv_cache": rates[True], "no_kv_cache": rates[False]},
                "median_words_per_s": {
                    "kv_cache": median[True],
                    "no_kv_cache": median[False],
                },
                "ratio": median[True] / median[False],
                "same_words": True,
                **origin,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
