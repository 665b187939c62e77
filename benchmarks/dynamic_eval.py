"""Chapter 9's benchmark: seconds per 1,000 scored tokens of dynamic evaluation, before
and after a change.

    python benchmarks/dynamic_eval.py CHECKPOINT --before 89a747c
    python benchmarks/dynamic_eval.py --quick  # a tiny random model: a smoke test (CI)

``--before`` names a git revision: its ``lmtut/adapt/dynamic.py`` is loaded beside
today's, and the two run one after the other, alternately (``--rounds`` times each), on
the same windows of the validation split with the same gradient statistics and settings
(the RMS rule, on one CPU thread as both do). Printed: each round's seconds per 1,000
tokens, the medians and their ratio, and the perplexity each computed (the two must
agree up to float rounding where the computation is the same; a change of the rule
itself shows there too).
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from common import device_name, write_json

from lmtut import (
    LanguageModelingDataset,
    TransformerLM,
    TransformerLMConfig,
    WordTokenizer,
    prepare,
)
from lmtut.adapt import dynamic as today
from lmtut.datasets import split_dataset
from lmtut.experiment import load_for_inference
from lmtut.runtime import provenance

ROOT = Path(__file__).resolve().parents[1]


def module_at(revision: str):
    """Dynamic evaluation's module as it was at ``revision``, with the package of that
    revision around it: the whole ``lmtut/`` of the revision, extracted and imported as
    ``lmtut_before``."""
    archive = subprocess.run(
        ["git", "archive", revision, "lmtut"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="lmtut-before-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / "lmtut_before"
    (folder / "lmtut").rename(package)
    for source in package.rglob("*.py"):  # its own modules, not today's
        source.write_text(re.sub(r"\blmtut\.", "lmtut_before.", source.read_text()))
    sys.path.insert(0, str(folder))
    try:
        try:
            return importlib.import_module("lmtut_before.adapt.dynamic")
        except ModuleNotFoundError:  # a revision before the package's layout by concern
            return importlib.import_module("lmtut_before.dynamic_eval")
    finally:
        sys.path.remove(str(folder))


def windows_and_statistics(args):
    """(model, validation windows, gradient statistics): the checkpoint's, or a tiny
    random model's (--quick)."""
    if args.quick:
        torch.manual_seed(0)
        tokenizer = WordTokenizer(
            tokens=["<pad>", "<unk>", "<eos>", "<bos>"] + [f"w{i}" for i in range(996)]
        )
        model = TransformerLM(
            TransformerLMConfig(
                vocab_size=tokenizer.vocab_size,
                d_model=32,
                num_layers=1,
                num_attn_heads=2,
                d_inner=64,
                max_sequence_length=16,
                tie_weights=False,
                softmax="adaptive",
                adaptive_cutoffs=(100, 400),
            )
        ).eval()
        ids = torch.randint(
            4, tokenizer.vocab_size, (4000,), generator=torch.Generator().manual_seed(0)
        )
        train = LanguageModelingDataset(tokenizer, ids[:3000], 16)
        valid = LanguageModelingDataset(
            tokenizer, ids[3000 : 3000 + args.tokens], 16, 8
        )
        return model, valid, today.gradient_rms(model, train, 8, show_bar=False)
    model, tokenizer, config = load_for_inference(args.checkpoint, torch.device("cpu"))
    corpus, _ = prepare(config, quiet=True)
    L, k = config.model.max_sequence_length, config.data.predict_last_k
    valid = split_dataset(corpus, tokenizer, "valid", L, k, args.tokens)
    train = split_dataset(corpus, tokenizer, "train", L)
    rms = today.gradient_rms(model, train, 32, args.stat_batches, show_bar=False)
    return model, valid, rms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument(
        "--before",
        default="HEAD",
        help="git revision of the code to compare with (default HEAD)",
    )
    parser.add_argument(
        "--tokens", type=int, default=5000, help="the first N validation tokens"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--decay", type=float, default=1e-3)
    parser.add_argument(
        "--stat_batches",
        type=int,
        default=None,
        help="gradient statistics from N batches only",
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.rounds = min(args.tokens, 400), 1
    elif not args.checkpoint:
        parser.error("give a checkpoint (or --quick)")
    model, valid, rms = windows_and_statistics(args)
    codes = {"before": module_at(args.before), "after": today}
    seconds: dict[str, list[float]] = {name: [] for name in codes}
    perplexity: dict[str, float] = {}
    warmup = valid.first(4 * valid.batch_step)
    # first calls (allocator, thread pools) are not what is compared
    for code in codes.values():
        code.dynamic_evaluation(
            model, warmup, args.lr, "rms", args.decay, rms, show_bar=False
        )
    for round_ in range(args.rounds):
        for name, code in codes.items():
            start = time.perf_counter()
            scores = code.dynamic_evaluation(
                model, valid, args.lr, "rms", args.decay, rms, show_bar=False
            )
            seconds[name].append(
                1000 * (time.perf_counter() - start) / scores.num_tokens
            )
            perplexity[name] = scores.perplexity
            print(
                f"round {round_ + 1}, {name:6s}: {seconds[name][-1]:.3f} s per 1,000 "
                "tokens, "
                f"perplexity {scores.perplexity:.3f}",
                flush=True,
            )
    median = {name: statistics.median(s) for name, s in seconds.items()}
    ratio = median["before"] / median["after"]
    print(
        f"median seconds per 1,000 tokens: before ({args.before}) "
        f"{median['before']:.3f}, after "
        f"{median['after']:.3f}: {ratio:.2f}x faster, on {valid.num_targets:,} "
        "validation tokens, "
        f"{device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads "
        "available"
    )
    if args.json:
        write_json(
            args.json,
            {
                "command": "python benchmarks/dynamic_eval.py "
                + " ".join(sys.argv[1:]),
                "before": args.before,
                "tokens": valid.num_targets,
                "rule": "rms",
                "lr": args.lr,
                "decay": args.decay,
                "seconds_per_1000_tokens": seconds,
                "median": median,
                "speedup": ratio,
                "perplexity": perplexity,
                **provenance(torch.device("cpu")),
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
