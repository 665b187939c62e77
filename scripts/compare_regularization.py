"""Chapter 8's ablation over several seeds: the small-data recipe, then each regularizer
added in turn.

    python scripts/compare_regularization.py --seeds 0 1 2 --jobs 2

Every variant is ``make_config("cpu-small-data", ...)``, a small model trained on a
twentieth of WikiText-2 (its first training articles with their own vocabulary, made by
``lmtut.corpus``), plus the overrides of the variants above it and its own: plain
dropout (Srivastava et al., 2014), word dropout and input/output dropout (Gal &
Ghahramani, 2016; Merity et al., 2018), locked masks, weight decay and weight averaging.
Each variant runs with every seed (the seed sets the initialization, the dropout masks
and the order of the batches), through the functions that ``python -m lmtut.train``
uses, and is validated on the first 10,000 tokens of the validation split and, with the
same windows, on the first 10,000 training tokens (``train_ppl``). Every run's curves go
to ``results/regularization/ablation.json``, which chapter 8 reads: one seed cannot
carry the claim that one variant beats another.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402

from lmtut import download_wikitext2, make_config, prepare, train_variant  # noqa: E402
from lmtut.book import compare  # noqa: E402
from lmtut.corpus import small_corpus  # noqa: E402
from lmtut.runtime import (
    atomic_write_json,  # noqa: E402
    default_device,  # noqa: E402
    provenance,  # noqa: E402
)

PRESET, FRACTION, EVAL_TOKENS = "cpu-small-data", 0.05, 10_000
#: Each variant adds its overrides to those of the variants above it.
VARIANTS: dict[str, dict] = {
    "no regularization": {},
    # on every sublayer's output and the attention weights; the embeddings' dropout
    # (which would default to ``dropout``) stays off until the input/output row
    "+ dropout": dict(dropout=0.2, emb_dropout=0.0),
    "+ word dropout": dict(word_dropout=0.1),
    "+ input/output dropout": dict(emb_dropout=0.4, output_dropout=0.4),
    "+ locked masks": dict(locked_dropout=True),
    "+ weight decay": dict(weight_decay=0.1),
    "+ weight averaging": dict(ema_decay=0.99),
}


def overrides(variant: str) -> dict:
    """The settings of ``variant``: its own overrides and those of every variant above
    it."""
    names = list(VARIANTS)
    settings: dict = {}
    for name in names[: names.index(variant) + 1]:
        settings.update(VARIANTS[name])
    return settings


#: the settings a variant can change, read back from the built configuration (some
#: default to others: an unset ``attn_dropout`` or ``emb_dropout`` takes ``dropout``'s
#: value)
REGULARIZERS = (
    "dropout",
    "attn_dropout",
    "emb_dropout",
    "ffn_dropout",
    "word_dropout",
    "output_dropout",
    "locked_dropout",
    "weight_decay",
    "ema_decay",
)


def in_force(variant: str, **extra) -> dict:
    """The regularization settings ``variant`` trains with: those of the configuration
    built from its overrides."""
    flat = make_config(PRESET, **(overrides(variant) | extra)).flat()
    return {name: flat[name] for name in REGULARIZERS}


def comparisons(ablation: dict) -> list[dict]:
    """Each variant against the one above it, on the best and the last validation
    perplexity (lmtut.book)."""
    runs = {(r["variant"], r["seed"]): r for r in ablation["runs"]}
    variants, seeds = (
        list(ablation["variants"]),
        sorted({r["seed"] for r in ablation["runs"]}),
    )
    out = []
    for before, after in zip(variants, variants[1:]):
        for key in ("best_valid_ppl", "last_valid_ppl"):
            c = compare(
                [runs[after, s][key] for s in seeds],
                [runs[before, s][key] for s in seeds],
                after,
                before,
            )
            out.append(
                {
                    "variant": after,
                    "against": before,
                    "measure": key,
                    "verdict": c.verdict,
                    "holds": c.holds,
                    "mean_difference": c.mean_difference,
                    "sd_difference": c.sd_difference,
                    "relative": c.relative,
                    "spread": c.spread,
                    "why": c.why(),
                }
            )
    return out


def report(path: Path) -> None:
    """Print the comparisons of a recorded ablation, and the settings in force of each
    variant."""
    ablation = json.loads(path.read_text())
    for variant in ablation["variants"]:
        print(f"{variant:24s} {in_force(variant, **ablation.get('extra', {}))}")
    for c in comparisons(ablation):
        print(
            f"{c['variant']:24s} {c['measure']:15s} {c['mean_difference']:+8.2f} +- "
            f"{c['sd_difference']:6.2f} "
            f"({c['relative']:+.1%}, spread {c['spread']:.1f}): {c['verdict']} "
            f"({c['why']})"
        )


def train_one(
    variant: str, seed: int, extra: dict, threads: int, data_dir: str
) -> dict:
    """One run: its validation and training-slice curves, best and last validation
    perplexity, its time."""
    torch.set_num_threads(threads)
    config = make_config(
        PRESET, seed=seed, data_dir=data_dir, **(overrides(variant) | extra)
    )
    corpus, tokenizer = prepare(config, quiet=True)
    start = time.perf_counter()
    done = train_variant(config, corpus, tokenizer, EVAL_TOKENS)
    seconds = time.perf_counter() - start
    # read back from what was built
    settings = {**vars(done.model.config), **vars(config.train)}
    records = done.metrics
    valid = [(r["step"], r["valid_ppl"]) for r in records if "valid_ppl" in r]
    train = [(r["step"], r["train_ppl"]) for r in records if "train_ppl" in r]
    print(
        f"{variant:24s} seed {seed}: best valid {min(v for _, v in valid):7.1f}, "
        f"last {valid[-1][1]:7.1f} "
        f"({seconds:.0f} s)",
        flush=True,
    )
    return {
        "variant": variant,
        "seed": seed,
        "in_force": {name: settings[name] for name in REGULARIZERS},
        "steps": done.result.steps,
        "seconds": seconds,
        "valid_ppl": valid,
        "train_ppl": train,
        "best_valid_ppl": min(v for _, v in valid),
        "last_valid_ppl": valid[-1][1],
        "last_train_ppl": train[-1][1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS)
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at a time, each on --threads threads"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="further overrides for every run, e.g. num_epochs=10 (JSON values)",
    )
    parser.add_argument(
        "--out", default=str(ROOT / "results" / "regularization" / "ablation.json")
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="train nothing: print the comparisons of --out",
    )
    args = parser.parse_args()
    if args.report:
        report(Path(args.out))
        return 0
    extra = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    # the commit that runs, not the one checked out when it ends
    origin = provenance(default_device())
    jobs = [(variant, seed) for variant in args.variants for seed in args.seeds]
    with (
        tempfile.TemporaryDirectory(prefix="lmtut-small-") as folder,
        ProcessPoolExecutor(args.jobs) as pool,
    ):
        data_dir = str(small_corpus(download_wikitext2(quiet=True), folder, FRACTION))
        # the vocabulary, written once before the runs
        prepare(make_config(PRESET, data_dir=data_dir), quiet=True)
        same = [[x] * len(jobs) for x in (extra, args.threads, data_dir)]
        runs = list(pool.map(train_one, *zip(*jobs), *same))
    command = shlex.join(["python", "scripts/compare_regularization.py", *sys.argv[1:]])
    out = {
        "command": command,
        "preset": PRESET,
        "settings": make_config(PRESET, **extra).flat(),
        "fraction": FRACTION,
        "eval_tokens": EVAL_TOKENS,
        "variants": {v: overrides(v) for v in args.variants},
        "in_force": {v: in_force(v, **extra) for v in args.variants},
        "extra": extra,
        "threads_per_run": args.threads,
        **origin,
        "runs": runs,
    }
    out["comparisons"] = comparisons(out)
    print(f"wrote {atomic_write_json(args.out, out, indent=1)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
