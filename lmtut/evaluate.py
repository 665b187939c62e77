"""Chapter 6: ``python -m lmtut.evaluate CHECKPOINT`` (or ``lmtut-evaluate``): the perplexity of a checkpoint.

    python -m lmtut.evaluate runs/cpu-demo/checkpoints/ckpt-step0000500.pt --split test [--predict_last_k K]

The computation is :func:`lmtut.perplexity.evaluate_perplexity`; this module is its command line.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from lmtut.checkpoint import CheckpointError
from lmtut.corpus import DataError
from lmtut.datasets import split_dataset
from lmtut.device import DeviceError
from lmtut.experiment import load_for_inference, prepare
from lmtut.perplexity import evaluate_perplexity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmtut.evaluate", description="Perplexity of a checkpoint.")
    parser.add_argument("checkpoint")
    parser.add_argument("--split", choices=["train", "valid", "test"], default="test")
    parser.add_argument("--predict_last_k", "--predict-last-k", type=int, default=None,
                        help="score the last K positions of windows sliding by K (default: the run's)")
    parser.add_argument("--data_dir", "--data-dir", default=None, help="folder with the splits (default: the run's, "
                        "else download)")
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        model, tokenizer, config = load_for_inference(args.checkpoint)
        k = args.predict_last_k or config.data.predict_last_k
        if args.data_dir:
            config = replace(config, data=replace(config.data, data_dir=args.data_dir))
        corpus, _ = prepare(config)  # the checkpoint's own tokenizer scores it
        dataset = split_dataset(corpus, tokenizer, args.split, config.model.max_sequence_length, k)
    except (CheckpointError, DataError, DeviceError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    nll, ppl = evaluate_perplexity(model, dataset, args.batch_size)
    print(f"{args.split} perplexity {ppl:.2f} (nll {nll:.4f} nats/token, {dataset.num_targets:,} tokens, "
          f"window {dataset.max_sequence_length}, predict_last_k {k})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
