"""The levers tried on the ``cpu-demo`` budget, each a whole run on the full splits, one after the other.

    python scripts/cpu_recipe_levers.py                  # every lever not yet in the file
    python scripts/cpu_recipe_levers.py --only "modern block"

The budget is the recipe's promise: ten minutes of wall time on this 2-core CPU, evaluation included. Each lever is
a set of overrides of the recipe as it was first recorded (:data:`RECORDED`: the 2017 block, 2,200 steps, five
validations), and its number of steps is what its own speed fits in ``--train_seconds`` of training, measured first
by a short timed run: a lever that makes the step slower gets fewer steps. Every run's results, settings and steps go
to ``results/modern/cpu-recipe-levers.json`` as soon as it ends; its work dir is ``runs/levers/NAME``. One seed each:
a lever table, not a comparison that settles small differences.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from lmtut import build_datasets, build_model, build_trainer, make_config, prepare, run  # noqa: E402
from lmtut.files import atomic_write_json  # noqa: E402

#: The cpu-demo recipe as its first record trained it (results/runs/cpu-demo-2017).
RECORDED = dict(norm="layer", positions="sinusoidal", activation="relu", bias=True, qk_norm=False,
                optimizer_kind="adamw", max_sequence_length=64, batch_size=32, lr=2e-3, dropout=0.1)
MODERN = dict(norm="rms", positions="rope", activation="swiglu", bias=False, qk_norm=True)
ONE_EVALUATION = dict(eval_every=10**6)  # validation once, at the end (the checkpoints stay every 440 steps)
SWEEP = ROOT / "results" / "modern" / "muon-lr.json"


def best_muon_lr(default: float = 6e-3) -> float:
    """The Muon learning rate with the lowest mean validation perplexity of chapter 7's sweep (its file)."""
    if not SWEEP.exists():
        return default
    by_lr: dict[float, list[float]] = {}
    for r in json.loads(SWEEP.read_text())["runs"]:
        by_lr.setdefault(r["muon_lr"], []).append(r["valid_ppl"])
    return min(by_lr, key=lambda lr: sum(by_lr[lr]) / len(by_lr[lr]))


LEVERS: dict[str, dict] = {
    "modern block, one validation": {**MODERN, **ONE_EVALUATION},
    "+ windows of 128, batches of 16": {**MODERN, **ONE_EVALUATION, "max_sequence_length": 128, "batch_size": 16},
    "+ Muon": {**MODERN, **ONE_EVALUATION, "optimizer_kind": "muon", "muon_lr": best_muon_lr()},
}
OUT = ROOT / "results" / "modern" / "cpu-recipe-levers.json"


def steps_per_second(settings: dict, corpus, tokenizer, probe_steps: int) -> float:
    """A short timed run of these settings: how many of its steps a second of training holds."""
    config = make_config("cpu-demo", **{**settings, "max_steps": probe_steps, "eval_every": 10**9,
                                        "checkpoint_every": 10**9, "keep_checkpoints": 1},
                         work_dir=tempfile.mkdtemp(prefix="lmtut-probe-"))
    datasets = build_datasets(config, corpus, tokenizer, eval_tokens=1000)
    trainer = build_trainer(config, build_model(config, tokenizer), datasets, show_bar=False).train()
    return trainer.step / trainer.train_seconds


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(LEVERS), help="these levers (default: every one)")
    parser.add_argument("--train_seconds", type=float, default=460.0, help="seconds of training each lever gets")
    parser.add_argument("--probe_steps", type=int, default=60)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {"recorded": RECORDED, "runs": []}
    record["command"] = "python scripts/cpu_recipe_levers.py " + shlex.join(sys.argv[1:])
    done = {r["lever"] for r in record["runs"]}
    corpus, tokenizer = prepare(make_config("cpu-demo"))
    for name in args.only or list(LEVERS):
        if name in done:
            continue
        settings = {**RECORDED, **LEVERS[name]}
        rate = steps_per_second(settings, corpus, tokenizer, args.probe_steps)
        steps = max(10, int(args.train_seconds * rate / 10) * 10)
        work_dir = ROOT / "runs" / "levers" / slug(name)
        config = make_config("cpu-demo", **settings, max_steps=steps, work_dir=str(work_dir))
        result = run(config, show_bar=False)
        record["runs"].append({"lever": name, "overrides": LEVERS[name], "steps_per_second": rate,
                               "train_seconds": args.train_seconds, "config": config.flat(), **result.to_dict()})
        atomic_write_json(out, record, indent=1)
        print(f"{name}: {steps} steps, valid {result.valid_ppl:.2f}, test {result.test_ppl:.2f}, "
              f"{result.wall_time_s:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
