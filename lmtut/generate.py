"""Chapter 6: ``python -m lmtut.generate CHECKPOINT --prompt TEXT`` (or
``lmtut-generate``): sample from a checkpoint.

    python -m lmtut.generate runs/cpu-demo/checkpoints/ckpt-step0000500.pt
        --prompt "The game" [--max_tokens 40]
        [--temperature 0.8] [--top_k 40] [--num_samples 1] [--seed 0]

The sampling is :func:`lmtut.sampling.generate_text`; this module is its command line
(NeMo's ``--interactive`` mode, reading prompts in a loop, became this one-prompt
command).
"""

from __future__ import annotations

import argparse
import sys

import torch

from lmtut.checkpoint import CheckpointError
from lmtut.experiment import load_for_inference
from lmtut.runtime import DeviceError
from lmtut.sampling import generate_text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lmtut.generate", description="Sample text from a checkpoint."
    )
    p.add_argument("checkpoint")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max_tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=40)
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--kv_cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the keys and values of the text read so far "
        "(--no-kv_cache: re-read the window at "
        "every word; the same words, slower while the text fits the window)",
    )
    args = p.parse_args(argv)
    try:
        model, tokenizer, _ = load_for_inference(args.checkpoint)
    except (CheckpointError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(args.num_samples):
        text = generate_text(
            model,
            tokenizer,
            args.prompt,
            args.max_tokens,
            args.temperature,
            args.top_k,
            g,
            kv_cache=args.kv_cache,
        )
        print(f"{args.prompt} {text}".replace(" <eos> ", "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
