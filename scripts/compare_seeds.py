"""Repeat the short side-by-side runs of chapters 4 and 5 over several seeds, and record
every run's curve.

    python scripts/compare_seeds.py --seeds 0 1 2

Chapter 4 compares a tied with an untied output layer, chapter 5 label smoothing eps = 0
with eps = 0.1, each with one live run of one seed. A single seed cannot carry a claim
that one variant beats the other: this script trains each variant with every seed (the
seed sets the initialization and the order of the batches), on exactly the chapters'
setup (the cpu-2017 model at half width with a tied full softmax, 80 steps of 16 windows
of 64 tokens on the first 200,000 training tokens, validation perplexity on the first
10,000 validation tokens every 20 steps), and writes
``results/comparisons/short-runs.json``; the chapters read it and show the spread.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402

import lmtut  # noqa: E402
from lmtut import (  # noqa: E402
    LanguageModelingDataset,
    PaddedSmoothedCrossEntropyLoss,
    TransformerLM,
    WordTokenizer,
    download_wikitext2,
    make_config,
    prepare_corpus,
    quick_train,
)
from lmtut.runtime import (
    atomic_write_json,  # noqa: E402
    provenance,  # noqa: E402
)

SETUP = dict(
    train_tokens=200_000,
    valid_tokens=10_000,
    max_sequence_length=64,
    steps=80,
    batch_size=16,
    lr=2e-3,
    eval_every=20,
)
VARIANTS = {  # name: (tie_weights, label_smoothing)
    "tied": (True, 0.0),
    "untied": (False, 0.0),
    "tied, eps 0.1": (True, 0.1),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--out", default=str(ROOT / "results" / "comparisons" / "short-runs.json")
    )
    args = parser.parse_args()
    desc = prepare_corpus(download_wikitext2())
    tokenizer = WordTokenizer(desc.vocab_file)
    length = SETUP["max_sequence_length"]
    train = LanguageModelingDataset(
        tokenizer,
        tokenizer.encode_file(desc.train_file)[: SETUP["train_tokens"]],
        length,
    )
    valid = LanguageModelingDataset(
        tokenizer,
        tokenizer.encode_file(desc.valid_file)[: SETUP["valid_tokens"]],
        length,
    )
    small = make_config(
        "cpu-2017", softmax="full", tie_weights=True, d_model=128, d_inner=512
    ).model
    small = small.with_vocab(tokenizer.vocab_size)
    # the commit that runs, not the one checked out when it ends
    origin = provenance(torch.device("cpu"))
    runs = []
    for name, (tied, eps) in VARIANTS.items():
        for seed in args.seeds:
            lmtut.seed_everything(seed)
            model = TransformerLM(replace(small, tie_weights=tied))
            loss_fn = PaddedSmoothedCrossEntropyLoss(
                tokenizer.pad_id, label_smoothing=eps
            )
            start = time.perf_counter()
            history = quick_train(
                model,
                train,
                valid,
                steps=SETUP["steps"],
                batch_size=SETUP["batch_size"],
                lr=SETUP["lr"],
                eval_every=SETUP["eval_every"],
                loss_fn=loss_fn,
                seed=seed,
                desc=f"{name} seed {seed}",
            )
            runs.append(
                dict(
                    variant=name,
                    tie_weights=tied,
                    label_smoothing=eps,
                    seed=seed,
                    eval_step=history["eval_step"],
                    valid_ppl=history["valid_ppl"],
                )
            )
            print(
                f"{name:14s} seed {seed}: validation perplexity "
                f"{history['valid_ppl'][-1]:.1f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    record = dict(
        command="python scripts/compare_seeds.py " + shlex.join(sys.argv[1:]),
        setup=SETUP,
        model=asdict(small),
        **origin,
        runs=runs,
    )
    print(f"wrote {atomic_write_json(args.out, record, indent=1)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
