"""Chapter 6: perplexity of a model on a split, each token scored once and unsmoothed; and its command line.

``python -m lmtut.evaluate CHECKPOINT [--split test] [--predict-last-k K] [--data_dir DIR]`` prints perplexity.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
from torch import nn

from lmtut.datasets import LanguageModelingDataLayer, LanguageModelingDataset
from lmtut.loss import summed_nll


@torch.no_grad()
def evaluate_perplexity(model: nn.Module, dataset: LanguageModelingDataset, batch_size: int = 32) -> tuple[float, float]:
    """(mean negative log-likelihood in nats, perplexity) over every scored label of ``dataset``, unsmoothed."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    pad = dataset.tokenizer.pad_id
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for input_ids, input_mask, labels in LanguageModelingDataLayer(dataset, batch_size):
        input_ids, input_mask, labels = input_ids.to(device), input_mask.to(device), labels.to(device)
        batch_total, batch_count = summed_nll(model(input_ids, input_mask), labels, pad)
        total += batch_total
        count += int(batch_count)
    model.train(was_training)
    nll = total.item() / max(count, 1)
    return nll, math.exp(nll)


def main(argv: list[str] | None = None) -> int:
    from lmtut.checkpoint import CheckpointError
    from lmtut.train import load_for_inference, split_dataset

    parser = argparse.ArgumentParser(prog="python -m lmtut.evaluate", description="Perplexity of a checkpoint.")
    parser.add_argument("checkpoint")
    parser.add_argument("--split", choices=["train", "valid", "test"], default="test")
    parser.add_argument("--predict-last-k", "--predict_last_k", dest="predict_last_k", type=int, default=None,
                        help="score the last K positions of windows sliding by K (default: the run's)")
    parser.add_argument("--data_dir", "--data-dir", default=None, help="folder with the splits (default: download)")
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        model, tokenizer, config = load_for_inference(args.checkpoint)
        k = args.predict_last_k or config["predict_last_k"]
        dataset = split_dataset(tokenizer, config, args.split, k, args.data_dir)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    nll, ppl = evaluate_perplexity(model, dataset, args.batch_size)
    print(f"{args.split} perplexity {ppl:.2f} (nll {nll:.4f} nats/token, {dataset.num_targets:,} tokens, "
          f"window {dataset.max_sequence_length}, predict_last_k {k})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
