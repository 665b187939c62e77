"""The 2017 block against today's, one change at a time, over several seeds, at equal
steps and at equal wall time.

    python scripts/compare_modern.py --seeds 0 1 2 3 4 --steps 600 --seconds 150
    python scripts/compare_modern.py --report  # the verdicts again, from the file
    python scripts/compare_modern.py --seeds 0 1 --steps 150
        --muon_lrs 2e-3 4e-3 6e-3 1e-2 2e-2  # Muon's learning rate

Every variant is the ``cpu-demo`` recipe (its model, batch and schedule shape) with the
2017 block (:data:`BLOCK_2017`) and one change of the modern Transformer block (RMSNorm,
rotary positions, SwiGLU, no biases, QK-norm, Muon), or all of them together. Each runs
with every seed twice: for ``--steps`` optimizer steps (equal steps: what the change
does per update), and for as many steps as fit in ``--seconds`` of training on this
machine (equal wall time: what it does for a budget), its steps per second measured
first by short timed runs of its own (every variant's before any run). The cosine
schedule always ends with the run. Validation perplexity is measured at the end on the
first ``--valid_tokens`` of the validation split. Every run goes to
``results/modern/comparison.json`` as soon as it ends, with the verdicts of
``lmtut.book.compare`` against the 2017 block; a second call with the same budgets skips
the runs the file holds (add seeds, or resume after Ctrl-C). ``--muon_lrs`` instead
sweeps Muon's learning rate at equal steps (after :data:`MUON`'s 6e-3 was chosen; its
lowest mean was 1e-2, which the lever script uses)
into ``results/modern/muon-lr.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402

from lmtut import make_config, prepare, train_variant  # noqa: E402
from lmtut.book import compare  # noqa: E402
from lmtut.config import BLOCK_2017 as BLOCK_OF_2017  # noqa: E402
from lmtut.runtime import (
    atomic_write_json,  # noqa: E402
    provenance,  # noqa: E402
)

PRESET = "cpu-demo"
#: The block of Vaswani et al. (2017) as the cpu-demo recipe first had it, spelled out
#: so the preset may change.
BLOCK_2017 = {**BLOCK_OF_2017, "optimizer_kind": "adamw"}
MUON = dict(optimizer_kind="muon", muon_lr=6e-3)
VARIANTS: dict[str, dict] = {
    "2017 block": {},
    "RMSNorm": dict(norm="rms"),
    "rotary positions": dict(positions="rope"),
    "SwiGLU": dict(activation="swiglu"),
    "no biases": dict(bias=False),
    "QK-norm": dict(qk_norm=True),
    "Muon": MUON,
    "all of them": dict(
        norm="rms",
        positions="rope",
        activation="swiglu",
        bias=False,
        qk_norm=True,
        **MUON,
    ),
}
OUT = ROOT / "results" / "modern" / "comparison.json"


def train(
    variant: str | dict, seed: int, steps: int, corpus, tokenizer, valid_tokens: int
) -> dict:
    """One run of ``variant`` (a name of :data:`VARIANTS`, or its settings) for
    ``steps`` steps: its validation perplexity, steps and seconds of training."""
    settings = VARIANTS[variant] if isinstance(variant, str) else variant
    config = make_config(
        PRESET,
        **{**BLOCK_2017, **settings},
        seed=seed,
        max_steps=steps,
        eval_every=10**9,
        checkpoint_every=10**9,
        keep_checkpoints=1,
    )
    done = train_variant(config, corpus, tokenizer, eval_tokens=valid_tokens).result
    return {
        "steps": done.steps,
        "seconds": done.train_seconds,
        "valid_ppl": done.evaluations["valid"]["valid_ppl"],
    }


def steps_per_second(variant: str, corpus, tokenizer, probe_steps: int) -> float:
    """A short timed run (its first steps excluded): how many steps of this variant a
    second of training holds."""
    short = train(variant, 0, probe_steps, corpus, tokenizer, valid_tokens=1000)
    return short["steps"] / short["seconds"]


def verdicts(runs: list[dict]) -> dict:
    """Each variant against the 2017 block, at each budget: lmtut.book.compare of the
    final perplexities."""
    out = {}
    for budget in ("equal steps", "equal time"):
        by = {
            (r["variant"], r["seed"]): r["valid_ppl"]
            for r in runs
            if r["budget"] == budget
        }
        seeds = sorted({s for v, s in by if v == "2017 block"})
        for variant in VARIANTS:
            if variant == "2017 block" or any((variant, s) not in by for s in seeds):
                continue
            c = compare(
                [by[variant, s] for s in seeds],
                [by["2017 block", s] for s in seeds],
                variant,
                "2017 block",
            )
            out.setdefault(budget, {})[variant] = {
                "verdict": c.verdict,
                "summary": str(c),
                "mean_difference": c.mean_difference,
                "relative": c.relative,
            }
            print(f"{budget:11s} {c}")
    return out


def sweep_muon(args, corpus, tokenizer) -> None:
    """Muon's learning rate (``muon_lr``; AdamW's stays the recipe's) at equal steps,
    each with every seed."""
    out = Path(args.out).with_name("muon-lr.json")
    record = {
        "command": "python scripts/compare_modern.py " + shlex.join(sys.argv[1:]),
        "preset": PRESET,
        "block_2017": BLOCK_2017,
        "steps": args.steps,
        "valid_tokens": args.valid_tokens,
        **provenance(torch.device("cpu")),
        "runs": [],
    }
    for lr in args.muon_lrs:
        for seed in args.seeds:
            run = train(
                {**MUON, "muon_lr": lr},
                seed,
                args.steps,
                corpus,
                tokenizer,
                args.valid_tokens,
            )
            record["runs"].append({"muon_lr": lr, "seed": seed, **run})
            atomic_write_json(out, record, indent=1)
            print(
                f"muon_lr {lr:g} seed {seed}: valid {run['valid_ppl']:.1f}", flush=True
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=600, help="the equal-steps budget")
    parser.add_argument(
        "--seconds",
        type=float,
        default=150.0,
        help="the equal-time budget, seconds of training",
    )
    parser.add_argument(
        "--probe_steps",
        type=int,
        default=40,
        help="steps of the timed run that sets equal time",
    )
    parser.add_argument("--valid_tokens", type=int, default=81_920)
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS)
    )
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument(
        "--report", action="store_true", help="print the verdicts of the file and stop"
    )
    parser.add_argument(
        "--muon_lrs", type=float, nargs="+", help="sweep Muon's learning rate instead"
    )
    args = parser.parse_args()
    if args.muon_lrs:
        sweep_muon(args, *prepare(make_config(PRESET)))
        return 0
    if args.report:
        verdicts(json.loads(Path(args.out).read_text())["runs"])
        return 0
    out = Path(args.out)
    budgets = {
        "steps": args.steps,
        "seconds": args.seconds,
        "valid_tokens": args.valid_tokens,
    }
    record = json.loads(out.read_text()) if out.exists() else {}
    # another budget: start a new file
    if any(record.get(k) != v for k, v in budgets.items()):
        record = {
            "command": "python scripts/compare_modern.py " + shlex.join(sys.argv[1:]),
            "preset": PRESET,
            "block_2017": BLOCK_2017,
            **budgets,
            "steps_per_second": {},
            **provenance(torch.device("cpu")),
            "runs": [],
        }
    done = {(r["variant"], r["seed"], r["budget"]) for r in record["runs"]}
    corpus, tokenizer = prepare(make_config(PRESET))
    rates = record["steps_per_second"]
    probes = [v for v in args.variants if v not in rates]
    # every speed first, twice in turn, the faster kept: a busy moment slows one probe
    # only
    for _ in range(2):
        for variant in probes:
            rate = steps_per_second(variant, corpus, tokenizer, args.probe_steps)
            rates[variant] = max(rates.get(variant, 0.0), rate)
    for variant in args.variants:
        timed = max(1, int(args.seconds * rates[variant]))
        for seed in args.seeds:
            for budget, steps in (("equal steps", args.steps), ("equal time", timed)):
                if (variant, seed, budget) in done:
                    continue
                start = time.perf_counter()
                run = train(variant, seed, steps, corpus, tokenizer, args.valid_tokens)
                record["runs"].append(
                    {
                        "variant": variant,
                        "settings": VARIANTS[variant],
                        "seed": seed,
                        "budget": budget,
                        **run,
                    }
                )
                # nothing lost when the comparison is interrupted
                atomic_write_json(out, record, indent=1)
                print(
                    f"{variant:17s} seed {seed} {budget:11s}: {run['steps']:4d} "
                    f"steps, {run['seconds']:5.0f} s, "
                    f"valid {run['valid_ppl']:.1f} "
                    f"({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    # the call that completed it
    record["command"] = "python scripts/compare_modern.py " + shlex.join(sys.argv[1:])
    record["comparisons"] = verdicts(record["runs"])
    print(f"wrote {atomic_write_json(out, record, indent=1)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
