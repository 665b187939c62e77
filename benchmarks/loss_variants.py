"""Chapter 12's loss benchmark: three ways to compute the softmax loss of the training
step, speed and peak memory.

    python benchmarks/loss_variants.py  # cpu-demo shapes on a CPU, gpu-base on a GPU
    python benchmarks/loss_variants.py --quick --json FILE.json

- ``log-probs``: what lmtut does, the classifier's full (batch, time, vocabulary)
  log-probabilities, then a gather;
- ``cross-entropy``: ``F.cross_entropy`` on the full logits (the log-softmax fused into
  the loss);
- ``chunked``: the logits and their loss a chunk of tokens at a time, each chunk
  recomputed in the backward pass (``torch.utils.checkpoint``), so that the full logits
  never exist at once.

Each variant runs in a fresh process (its own peak memory), on random ids, forward +
backward + AdamW.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F
from common import (
    SHAPES,
    default_device,
    default_shape,
    device_name,
    peak_memory_bytes,
    reset_peak_memory,
    seconds_per_step,
    synthetic_dataset,
    write_json,
)
from torch.utils.checkpoint import checkpoint

from lmtut import TransformerLM, make_config

VARIANTS = ("log-probs", "cross-entropy", "chunked")


def measure(variant: str, shape: str, steps: int, rounds: int, chunk: int) -> dict:
    device = default_device()
    # the variants are three ways to a full softmax
    config = make_config(shape, softmax="full", tie_weights=True)
    batch, seq = config.train.batch_size, config.model.max_sequence_length
    ds = synthetic_dataset(seq, batch)
    ids, _, labels = (
        torch.stack(t).to(device) for t in zip(*(ds[i] for i in range(batch)))
    )
    torch.manual_seed(0)
    model = TransformerLM(config.model.with_vocab(ds.tokenizer.vocab_size)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    head, pad = model.classifier.last, ds.pad_id

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), y, ignore_index=pad, reduction="sum")

    def step() -> float:
        if variant == "log-probs":
            log_probs = model(ids).log_probs
            loss = -log_probs.gather(-1, labels.unsqueeze(-1)).mean()
        elif variant == "cross-entropy":
            loss = F.cross_entropy(
                head(model.encoder(ids)).flatten(0, 1),
                labels.flatten(),
                ignore_index=pad,
            )
        else:
            h, y = model.encoder(ids).flatten(0, 1), labels.flatten()
            parts = [
                checkpoint(
                    chunk_loss, h[i : i + chunk], y[i : i + chunk], use_reentrant=False
                )
                for i in range(0, len(y), chunk)
            ]
            loss = torch.stack(parts).sum() / (y != pad).sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    reset_peak_memory(device)
    # the same in every variant: they compute one loss three ways
    first_loss = float(step())
    step()
    times = [seconds_per_step(step, device, steps) for _ in range(rounds)]
    return {
        "variant": variant,
        "tokens_per_s": batch * seq / statistics.median(times),
        "peak_memory_bytes": peak_memory_bytes(device),
        "first_loss": first_loss,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=SHAPES)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--chunk", type=int, default=512, help="tokens per chunk of the chunked variant"
    )
    p.add_argument("--quick", action="store_true", help="1 round of 1 step")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.steps, args.rounds = 1, 1
    device = default_device()
    shape = args.shape or default_shape(device)
    if args.child:
        print(
            json.dumps(measure(args.child, shape, args.steps, args.rounds, args.chunk))
        )
        return 0
    rows = []
    for variant in VARIANTS:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--shape",
            shape,
            "--steps",
            str(args.steps),
            "--rounds",
            str(args.rounds),
            "--chunk",
            str(args.chunk),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"{variant}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    memory = "peak CUDA memory" if device.type == "cuda" else "peak RSS"
    print(
        f"{device_name(device)}, torch {torch.__version__}, {shape} shapes, chunks "
        f"of {args.chunk} tokens"
    )
    for r in rows:
        mib = r["peak_memory_bytes"] / 2**20
        print(
            f"{r['variant']:<14} {r['tokens_per_s']:>9,.0f} tokens/s  {memory} "
            f"{mib:>7,.0f} MiB"
        )
    write_json(
        args.json,
        {
            "device": device_name(device),
            "torch": torch.__version__,
            "shape": shape,
            "chunk": args.chunk,
            "variants": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
