"""Levers on the ``cpu-demo`` budget, each a whole run on the full splits, one after the
other, against its record.

    python scripts/cpu_recipe_levers.py  # every lever not yet in the file
    python scripts/cpu_recipe_levers.py --only "Muon"

The budget is the recipe's promise: ten minutes of wall time on this 2-core CPU,
evaluation included. Each lever is a change of today's ``cpu-demo`` recipe, and its
number of steps is the recorded run's (``results/runs/cpu- demo/results.json``) times
the ratio of its speed to the recipe's, both measured first by short timed runs, one
after the other: a lever that makes the step slower gets fewer steps for the same time.
Every run's results, settings and steps go to ``results/modern/cpu-recipe-levers.json``
as soon as it ends, with the recipe it changed; its work dir is ``runs/levers/NAME``.
One seed each: a lever table, not a comparison that settles small differences.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from lmtut import make_config, prepare, run, train_variant  # noqa: E402
from lmtut.runtime import atomic_write_json  # noqa: E402

RECORD = ROOT / "results" / "runs" / "cpu-demo" / "results.json"
SWEEP = ROOT / "results" / "modern" / "muon-lr.json"


def best_muon_lr(default: float = 6e-3) -> float:
    """The Muon learning rate with the lowest mean validation perplexity of chapter 7's
    sweep (its file)."""
    if not SWEEP.exists():
        return default
    by_lr: dict[float, list[float]] = {}
    for r in json.loads(SWEEP.read_text())["runs"]:
        by_lr.setdefault(r["muon_lr"], []).append(r["valid_ppl"])
    return min(by_lr, key=lambda lr: sum(by_lr[lr]) / len(by_lr[lr]))


LEVERS: dict[str, dict] = {
    "windows of 128, batches of 16": dict(max_sequence_length=128, batch_size=16),
    "Muon": dict(optimizer_kind="muon", muon_lr=best_muon_lr()),
}
OUT = ROOT / "results" / "modern" / "cpu-recipe-levers.json"


def steps_per_second(settings: dict, corpus, tokenizer, probe_steps: int) -> float:
    """A short timed run of these settings: how many of its steps a second of training
    holds."""
    config = make_config(
        "cpu-demo",
        **{
            **settings,
            "max_steps": probe_steps,
            "eval_every": 10**9,
            "checkpoint_every": 10**9,
            "keep_checkpoints": 1,
        },
    )
    done = train_variant(config, corpus, tokenizer, eval_tokens=1000).result
    return done.steps / done.train_seconds


def slug(name: str) -> str:
    return (
        "".join(c if c.isalnum() else "-" for c in name.lower())
        .strip("-")
        .replace("--", "-")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(LEVERS),
        help="these levers (default: every one)",
    )
    parser.add_argument("--probe_steps", type=int, default=60)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    out = Path(args.out)
    recorded = json.loads(RECORD.read_text())
    record = json.loads(out.read_text()) if out.exists() else {"runs": []}
    record["recipe"] = {
        "preset": "cpu-demo",
        "settings": make_config("cpu-demo").flat(),
        "record": str(RECORD.relative_to(ROOT)),
        "recorded at": recorded["git_commit"],
    }
    record["command"] = "python scripts/cpu_recipe_levers.py " + shlex.join(
        sys.argv[1:]
    )
    done = {r["lever"] for r in record["runs"]}
    corpus, tokenizer = prepare(make_config("cpu-demo"))
    base_rate = steps_per_second({}, corpus, tokenizer, args.probe_steps)
    for name in args.only or list(LEVERS):
        if name in done:
            continue
        settings = LEVERS[name]
        rate = steps_per_second(settings, corpus, tokenizer, args.probe_steps)
        steps = max(10, round(recorded["steps"] * rate / base_rate / 10) * 10)
        work_dir = ROOT / "runs" / "levers" / slug(name)
        config = make_config(
            "cpu-demo", **settings, max_steps=steps, work_dir=str(work_dir)
        )
        result = run(config, show_bar=False)
        record["runs"].append(
            {
                "lever": name,
                "overrides": LEVERS[name],
                "steps_per_second": rate,
                "recipe_steps_per_second": base_rate,
                "config": config.flat(),
                **result.to_dict(),
            }
        )
        atomic_write_json(out, record, indent=1)
        print(
            f"{name}: {steps} steps, valid {result.valid_ppl:.2f}, test "
            f"{result.test_ppl:.2f}, "
            f"{result.wall_time_s:.0f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
